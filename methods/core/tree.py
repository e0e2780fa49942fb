"""Shared helpers for methods that verify several candidate tokens in one forward pass
(Medusa trees, Lookahead windows, MTP / prompt-lookup chains). The one implementation of
4D-mask verification, KV-cache compaction and greedy acceptance in the project.

Conventions. A verification block is ``n`` tokens fed after the committed prefix that is in
the KV cache. Token 0 is the *root*: the last committed token, not yet in the cache. Every
other token ``i`` has a parent (``parents[i] < i``: blocks are topologically ordered) and a
depth (root 0). ``visible[i, j]`` says whether block token ``i`` attends to block token ``j``
(for a tree: j is i or an ancestor of i); every token sees the whole prefix. Position ids are
``prefix_len + depth``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from accbench.methods.core.quirks import logits_from_hidden, sliding_window
from transformers import DynamicCache


def make_cache(model) -> DynamicCache:
    """A KV cache whose every layer keeps all positions (no sliding-window eviction), so the
    entries of rejected candidates can always be dropped. Sliding-window layers still attend
    only inside their window: the masks built here and by the model enforce it."""
    return DynamicCache()


# --------------------------------------------------------------------------------------
# tree structure
# --------------------------------------------------------------------------------------


def tree_visibility(parents: Sequence[int]) -> torch.Tensor:
    """Ancestor-or-self matrix of a tree given by ``parents`` (parents[0] = -1)."""
    n = len(parents)
    vis = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        vis[i, i] = True
        if i:
            p = parents[i]
            assert 0 <= p < i, "tree nodes must come after their parents"
            vis[i] |= vis[p]
    return vis


def tree_depths(parents: Sequence[int]) -> list[int]:
    depth = [0] * len(parents)
    for i in range(1, len(parents)):
        depth[i] = depth[parents[i]] + 1
    return depth


def chain_parents(n: int) -> list[int]:
    """A single chain: root -> 1 -> 2 -> ... (prompt lookup, MTP drafts)."""
    return [-1] + list(range(n - 1))


# --------------------------------------------------------------------------------------
# the verification forward
# --------------------------------------------------------------------------------------


def block_attention_mask(model, prefix_len: int, positions: torch.Tensor, visible: torch.Tensor,
                         dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """The 4D mask ``[1, 1, n, prefix_len + n]`` for a block: every token sees the prefix and
    the block tokens ``visible`` allows. Boolean (True = attend) for SDPA/flash kernels, additive
    float for eager attention. Models with sliding-window layers get a dict with a windowed
    variant for those layers."""
    n = visible.shape[0]
    device = positions.device
    allowed = torch.ones(n, prefix_len + n, dtype=torch.bool, device=device)
    allowed[:, prefix_len:] = visible.to(device)
    masks = {"full_attention": allowed}
    window = sliding_window(model)
    if window is not None:
        key_pos = torch.cat([torch.arange(prefix_len, device=device), positions])
        masks["sliding_attention"] = allowed & ((positions[:, None] - key_pos[None, :]) < window)
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    out = {}
    for k, m in masks.items():
        m = m[None, None]
        if impl == "eager":
            m = torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(~m, torch.finfo(dtype).min)
        out[k] = m
    return out if window is not None else out["full_attention"]


def block_forward(model, cache, tokens: torch.Tensor, depths: Sequence[int] | torch.Tensor, visible: torch.Tensor,
                  *, want_hidden: bool = False, logits_rows: torch.Tensor | None = None):
    """Run ``tokens`` ([1, n]) after the cached prefix with the given visibility; their KV
    entries are appended to ``cache``. Returns ``(logits [n, V], hidden [n, H] or None)``;
    the hidden states are the backbone's final (normed) states, for heads that read them.

    ``logits_rows`` (a 1D index tensor) computes logits only for those block rows (returned
    in that order, ``[len(logits_rows), V]``): the LM head over a large vocabulary costs as
    much as the backbone for small models, and methods such as Lookahead need few rows."""
    device = tokens.device
    prefix = cache.get_seq_length()
    n = tokens.shape[1]
    depth_t = depths if isinstance(depths, torch.Tensor) else torch.tensor(list(depths), device=device)
    positions = prefix + depth_t.to(device)
    mask = block_attention_mask(model, prefix, positions, visible, model.dtype)
    cache_position = torch.arange(prefix, prefix + n, device=device)
    if want_hidden:
        out = model.model(input_ids=tokens, attention_mask=mask, position_ids=positions[None],
                          cache_position=cache_position, past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[0]
        rows = hidden if logits_rows is None else hidden[logits_rows]
        return logits_from_hidden(model, rows), hidden
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions[None],
                cache_position=cache_position, past_key_values=cache, use_cache=True,
                logits_to_keep=0 if logits_rows is None else logits_rows)
    return out.logits[0], None


# --------------------------------------------------------------------------------------
# acceptance and cache surgery
# --------------------------------------------------------------------------------------


def longest_accepted_path(parents: Sequence[int], edge_ok: Sequence[bool]) -> list[int]:
    """Deepest node whose whole chain from the root has accepted edges (``edge_ok[i]``: node
    ``i`` is acceptable given its parent; ``edge_ok[0]`` is ignored). Returns node indices from
    the root (0) down. Ties in depth go to the first node (the highest-ranked candidate)."""
    n = len(parents)
    ok = [False] * n
    ok[0] = True
    depth = [0] * n
    best = 0
    for i in range(1, n):
        p = parents[i]
        if ok[p] and edge_ok[i]:
            ok[i] = True
            depth[i] = depth[p] + 1
            if depth[i] > depth[best]:
                best = i
    path = []
    i = best
    while i != -1:
        path.append(i)
        i = parents[i] if i else -1
    return path[::-1]


def accept_greedy(tokens: Sequence[int], parents: Sequence[int], pred: Sequence[int]) -> list[int]:
    """Longest path of block tokens each equal to the argmax (``pred``) at its parent.

    Returns the accepted node indices from the root (0) down; the bonus token is
    ``pred[path[-1]]``."""
    edge_ok = [True] + [tokens[i] == pred[parents[i]] for i in range(1, len(tokens))]
    return longest_accepted_path(parents, edge_ok)


def compact_cache(cache, prefix_len: int, keep: Sequence[int]) -> None:
    """Keep only the block entries ``keep`` (indices within the block, ascending) after the
    prefix, dropping every other block entry, in every layer."""
    m = len(keep)
    contiguous = list(keep) == list(range(m))
    idx = None
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", True) or layer.keys is None or layer.keys.numel() == 0:
            continue
        if getattr(layer, "is_sliding", False):
            raise TypeError("compact_cache needs full (non-sliding) cache layers: build the cache with make_cache()")
        if not contiguous:
            if idx is None:
                idx = torch.tensor([prefix_len + k for k in keep], device=layer.keys.device)
            layer.keys[:, :, prefix_len:prefix_len + m] = layer.keys.index_select(2, idx)
            layer.values[:, :, prefix_len:prefix_len + m] = layer.values.index_select(2, idx)
        layer.keys = layer.keys[:, :, : prefix_len + m]
        layer.values = layer.values[:, :, : prefix_len + m]


def crop_cache(cache, length: int) -> None:
    """Drop every cached position from ``length`` on."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", True) and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys[:, :, :length]
            layer.values = layer.values[:, :, :length]
