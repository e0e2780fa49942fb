"""Lookahead decoding (Fu et al. 2024, arXiv 2402.02057): the block layout, n-gram pool and
Jacobi window (``layout``), the drafter and decoder on the one speculative loop (``drafter``)
and the per-device grid search of W, N, G (``tune``)."""

from accbench.methods.lookahead.drafter import BUILTIN_DEFAULT, LookaheadDecoder, LookaheadDrafter, device_key
from accbench.methods.lookahead.layout import NgramPool, advance_window, layout_block_size, lookahead_layout

__all__ = ["BUILTIN_DEFAULT", "LookaheadDecoder", "LookaheadDrafter", "NgramPool", "advance_window", "device_key",
           "layout_block_size", "lookahead_layout"]
