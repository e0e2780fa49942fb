"""Lookahead's block layout, its n-gram pool and the Jacobi window update.

One forward per step carries, after the committed prefix in the KV cache:

* index 0: the current token (the last committed one, not yet cached), depth 0;
* the lookahead branch, ``N-1`` levels x ``W`` columns, level ``l`` column ``i`` at index
  ``1 + l*W + i`` and depth ``l + i + 1``. It sees the current token, level-0 columns ``0..i``
  and the tokens of its own column at levels ``1..l``: a causal chain of consecutive
  positions, so its output is the model's next-token guess after that chain;
* up to ``G`` candidate n-grams of ``N-1`` tokens, candidate ``c`` token ``j`` at index
  ``1 + (N-1)*W + c*(N-1) + j``, depth ``j + 1``, each a causal chain from the current token.

Only the current token, the last level and the candidates need logits (:func:`candidate_tree`
names those rows); the verification tree is the current token plus the candidate chains.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def layout_block_size(W: int, N: int, G: int) -> int:
    return 1 + (N - 1) * W + G * (N - 1)


def lookahead_layout(W: int, N: int, G: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Visibility matrix ``[n, n]`` and depths ``[n]`` of the full block with ``G`` candidates,
    ``n = layout_block_size(W, N, G)``. A step with ``g < G`` candidates uses the leading
    ``layout_block_size(W, N, g)`` rows and columns (candidates come last)."""
    L = N - 1
    n = layout_block_size(W, N, G)
    vis = torch.zeros(n, n, dtype=torch.bool)
    depth = torch.zeros(n, dtype=torch.long)
    vis[:, 0] = True
    for lvl in range(L):
        for i in range(W):
            k = 1 + lvl * W + i
            depth[k] = lvl + i + 1
            vis[k, 1:2 + i] = True  # level 0, columns 0..i
            for m in range(1, lvl + 1):  # own column, levels 1..lvl (itself included)
                vis[k, 1 + m * W + i] = True
    base = 1 + L * W
    for c in range(G):
        for j in range(L):
            k = base + c * L + j
            depth[k] = j + 1
            vis[k, base + c * L: k + 1] = True
    return vis, depth


class CandidateTree(NamedTuple):
    """The verification tree of a step with ``g`` candidates, each verified to ``depth`` tokens."""

    nodes: list[int]  # block rows of the tree nodes: the current token, then each candidate's tokens
    rows: list[int]  # block rows whose logits are computed: current token, last level, tree nodes
    node_rows: list[int]  # where each tree node's logits sit among ``rows``
    parents: list[int]  # the tree over ``nodes`` (root -1, each token after its predecessor)


def candidate_tree(W: int, N: int, g: int, depth: int) -> CandidateTree:
    """The tree of ``g`` candidate chains cut to their first ``depth`` (1..N-1) tokens; the
    tokens past ``depth`` stay in the block (the layout is unchanged) but get no logits."""
    L = N - 1
    base = 1 + L * W
    nodes, parents = [0], [-1]
    for c in range(g):
        for j in range(depth):
            parents.append(0 if j == 0 else len(nodes) - 1)
            nodes.append(base + c * L + j)
    last_level = list(range(1 + (L - 1) * W, base))
    node_rows = [0] + list(range(1 + W, 1 + W + len(nodes) - 1))
    return CandidateTree(nodes, [0] + last_level + nodes[1:], node_rows, parents)


class NgramPool:
    """N-gram pool keyed by first token: at most ``cap`` continuations (tuples of N-1 tokens)
    per key, deduplicated, most recent first."""

    def __init__(self, cap: int):
        self.cap = cap
        self.table: dict[int, list[tuple[int, ...]]] = {}

    def add(self, key: int, cont: tuple[int, ...]) -> None:
        if self.cap <= 0:
            return
        lst = self.table.get(key)
        if lst is None:
            self.table[key] = [cont]
            return
        if lst[0] == cont:
            return
        try:
            lst.remove(cont)
        except ValueError:
            if len(lst) >= self.cap:
                lst.pop()
        lst.insert(0, cont)

    def add_sequence(self, seq: list[int], n: int, start: int = 0) -> None:
        """Every n-gram of ``seq`` starting at index >= start (older first, so the latest wins)."""
        for j in range(start, len(seq) - n + 1):
            self.add(seq[j], tuple(seq[j + 1: j + n]))

    def get(self, key: int) -> list[tuple[int, ...]]:
        return self.table.get(key, [])


def advance_window(window: list[list[int]], new_level: list[int], pool: NgramPool, collect: bool) -> None:
    """One Jacobi update of the window (levels oldest first): with ``collect``, each column
    read down the levels plus its new output is an N-gram for the pool (key = its first
    token); then the oldest level is dropped and ``new_level`` becomes the last one."""
    if collect:
        levels = len(window)
        for i, nxt in enumerate(new_level):
            pool.add(window[0][i], tuple(window[lvl][i] for lvl in range(1, levels)) + (nxt,))
    window.pop(0)
    window.append(new_level)
