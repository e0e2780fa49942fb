"""EAGLE-2's dynamic draft tree as pure functions (Li et al. 2024, arXiv 2406.16858).

Expansion: the root's top-k children form depth 1; at every further depth, the ``top_k``
drafted nodes of the previous depth with the highest *path confidence* (the product of draft
probabilities from the root) are expanded, each with its own top-k children. Re-ranking: of
all drafted nodes, the ``budget`` with the highest path confidence are kept. A child's
confidence never exceeds its parent's, and ties are broken by (depth, draft index), so the
kept set is prefix-closed. The result is ordered by (depth, draft index): parents first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass
class DraftTree:
    """Drafted nodes in draft order. ``parents[i]``: index of node i's parent (-1: the root)."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # draft probability given the parent
    scores: list[float] = field(default_factory=list)  # path confidence (product of probs)
    depths: list[int] = field(default_factory=list)  # 1 for the root's children

    def add(self, token: int, parent: int, prob: float) -> int:
        prob = min(max(float(prob), 0.0), 1.0)
        base = 1.0 if parent < 0 else self.scores[parent]
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.probs.append(prob)
        self.scores.append(base * prob)
        self.depths.append(1 if parent < 0 else self.depths[parent] + 1)
        return len(self.tokens) - 1


def rank_key(tree: DraftTree, i: int) -> tuple:
    """Deterministic order: higher confidence first, then shallower, then drafted earlier."""
    return (-tree.scores[i], tree.depths[i], i)


def top_nodes(tree: DraftTree, candidates: Sequence[int], k: int) -> list[int]:
    return sorted(candidates, key=lambda i: rank_key(tree, i))[:k]


def rerank(tree: DraftTree, budget: int) -> tuple[list[int], list[int]]:
    """Keep the ``budget`` most confident drafted nodes. Returns ``(kept, parents)``: kept draft
    indices ordered by (depth, index), and each one's parent as a *tree node* index (0 = the
    root, kept[j] is tree node j + 1)."""
    kept = top_nodes(tree, range(len(tree.tokens)), max(0, budget))
    kept.sort(key=lambda i: (tree.depths[i], i))
    where = {n: j + 1 for j, n in enumerate(kept)}
    parents = []
    for n in kept:
        p = tree.parents[n]
        if p >= 0 and p not in where:  # cannot happen (confidence is monotone, ties go shallow)
            raise AssertionError("dynamic tree is not prefix-closed")
        parents.append(0 if p < 0 else where[p])
    return kept, parents


ExpandFn = Callable[[list[int]], list[list[tuple[int, float]]]]


def dynamic_tree(root_children: Sequence[tuple[int, float]], expand: ExpandFn, depth: int, top_k: int,
                 budget: int, tree: DraftTree | None = None) -> tuple[DraftTree, list[int], list[int]]:
    """The whole EAGLE-2 draft: ``root_children`` are the root's top-k ``(token, prob)``;
    ``expand(frontier)`` returns each frontier node's top-k ``(token, prob)`` children (it runs
    the draft model on the frontier). ``depth`` levels are drafted (``depth - 1`` expansions).
    Returns ``(tree, kept, parents)`` as :func:`rerank` (``tree``: fill this one, which
    ``expand`` may read)."""
    tree = DraftTree() if tree is None else tree
    level = [tree.add(t, -1, p) for t, p in list(root_children)[:top_k]]
    for _ in range(depth - 1):
        if not level:
            break
        frontier = top_nodes(tree, level, top_k)
        children = expand(frontier)
        level = []
        for node, kids in zip(frontier, children):
            level += [tree.add(t, node, p) for t, p in list(kids)[:top_k]]
    kept, parents = rerank(tree, budget)
    return tree, kept, parents
