"""Multi-token prediction (Gloeckle et al. 2024): extra transformer-block heads on a shared
trunk, used for lossless self-speculative decoding.

heads.py: the heads, the branch-point hook and their artifact files; drafter.py: the drafter
and the decoder on the one speculative loop; meta.py: Meta's released checkpoints (and their
converter, ``python -m accbench.methods.mtp.meta convert SRC OUT``); train.py: ``accbench
train mtp``.
"""

from accbench.methods import register
from accbench.methods.mtp.drafter import MTPDecoder, MTPDrafter
from accbench.methods.mtp.heads import (
    DRAFT_VOCAB_KEY,
    HEADS_FILE,
    META_FILE,
    BranchCapture,
    MTPHeads,
    head_logits,
    resolve_branch,
)

register(MTPDecoder)

_META = ("convert_meta_checkpoint", "load_meta_checkpoint", "read_meta_state_dict")

__all__ = ["DRAFT_VOCAB_KEY", "HEADS_FILE", "META_FILE", "BranchCapture", "MTPDecoder", "MTPDrafter", "MTPHeads",
           "head_logits", "resolve_branch", *_META]


def __getattr__(name: str):
    # meta.py is imported on first use, not here: `python -m accbench.methods.mtp.meta` then
    # runs it as __main__ without importing it twice
    if name in _META:
        from accbench.methods.mtp import meta

        return getattr(meta, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
