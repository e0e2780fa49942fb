"""Speculative decoding with a draft model (SpS: Leviathan et al. 2023, Chen et al. 2023) on
the one speculative loop: a small model with the target's tokenizer, or the target's own
first layers (``draft=self:N``), drafts gamma tokens per step; the target verifies them in
one forward. Greedy: lossless; sampling: speculative sampling, lossless in distribution."""

from accbench.methods import register
from accbench.methods.sps.drafter import SpsDecoder, SpsDrafter, early_exit_view, tokenizer_mismatch

register(SpsDecoder)

__all__ = ["SpsDecoder", "SpsDrafter", "early_exit_view", "tokenizer_mismatch"]
