"""Medusa's candidate trees.

A tree is a list of paths; a path ``(r1, ..., rd)`` is the node at depth d whose token is
head d's rank-rd candidate, under the node ``(r1, ..., r(d-1))``. The root is the last
committed token. Trees are chosen from the heads' held-out accuracies: the joint frequency of
each rank tuple is the probability that its path is accepted, and the best n-node tree is the
n highest-weight paths (prefix-closed). ``accbench tune`` picks n for the device (tune.py).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from accbench.methods.core.errors import AccbenchError
from accbench.methods.core.options import OptionError
from accbench.methods.core.protocol import ArtifactStore
from accbench.methods.core.tree import tree_visibility

TREE_FILE = "tree.json"
NAMED_TREES_FILE = Path(__file__).with_name("named_trees.json")


@functools.lru_cache(maxsize=1)
def named_trees() -> dict[str, list[list[int]]]:
    """Medusa's published trees (FasterDecoding/Medusa medusa_choices.py), by name."""
    data = json.loads(NAMED_TREES_FILE.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def normalize_paths(paths: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Unique paths, every prefix included, sorted by depth then rank (parents first)."""
    out: set[tuple[int, ...]] = set()
    for p in paths:
        p = tuple(int(r) for r in p)
        if not p or any(r < 0 for r in p):
            raise ValueError(f"bad tree path {list(p)}: ranks are non-negative, paths non-empty")
        for d in range(1, len(p) + 1):
            out.add(p[:d])
    return sorted(out, key=lambda q: (len(q), q))


class MedusaTree:
    """A candidate tree: node 0 is the root, node i+1 is ``paths[i]``. Nodes are sorted by
    depth, so the nodes of depth <= d are a prefix of the tree (``prefix_size(d)`` of them)."""

    def __init__(self, paths: Sequence[Sequence[int]]):
        self.paths = normalize_paths(paths)
        index = {p: i + 1 for i, p in enumerate(self.paths)}
        self.parents = [-1] + [index.get(p[:-1], 0) for p in self.paths]
        self.depths = [0] + [len(p) for p in self.paths]
        self.depth = max(self.depths)
        self.topk = max((p[-1] for p in self.paths), default=-1) + 1  # candidates needed per head
        self.visible = tree_visibility(self.parents)
        self.size = len(self.parents)  # nodes including the root

    def prefix_size(self, depth: int) -> int:
        """Nodes (root included) of depth <= ``depth``."""
        return sum(d <= depth for d in self.depths)

    def flat_index(self, topk: int) -> torch.Tensor:
        """Index of each non-root node into a flattened ``[K, topk]`` candidate matrix."""
        return torch.tensor([(len(p) - 1) * topk + p[-1] for p in self.paths], dtype=torch.long)

    def to_json(self) -> list[list[int]]:
        return [list(p) for p in self.paths]


def chain_tree(depth: int) -> list[tuple[int, ...]]:
    return [tuple([0] * d) for d in range(1, depth + 1)]


def path_weights(stats: dict[str, Any], num_heads: int, topk: int = 10) -> dict[tuple[int, ...], float]:
    """Estimated probability that each path (ranks < topk, depth <= num_heads) is accepted.

    ``stats`` is what training/tuning measured on held-out text: ``positions`` and
    ``prefix_counts`` ("r1,r2,..." -> positions whose heads 1..d ranked the backbone's tokens
    r1..rd: the joint frequency, no independence assumption) and ``topk_acc`` (per head, the
    marginal frequency of each rank). Joint counts are smoothed towards the product of the
    marginals so that unseen paths are still ordered sensibly."""
    n = max(1, int(stats.get("positions", 0)))
    counts = {tuple(int(r) for r in k.split(",")): v for k, v in stats.get("prefix_counts", {}).items()}
    marg = stats.get("topk_acc") or [[0.5 ** (r + 1) / (d + 1) for r in range(topk)] for d in range(num_heads)]
    prior = 1.0  # pseudo-count weight of the product estimate
    out: dict[tuple[int, ...], float] = {}
    frontier: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
    for d in range(min(num_heads, len(marg))):
        nxt = []
        for p, prod in frontier:
            for r in range(min(topk, len(marg[d]))):
                q = p + (r,)
                pq = prod * float(marg[d][r])
                w = (counts.get(q, 0) + prior * pq) / (n + prior)
                out[q] = w
                nxt.append((q, pq))
        # keep the frontier small: only extend paths that could matter
        nxt.sort(key=lambda t: -out[t[0]])
        frontier = nxt[:256]
    return out


def best_tree(weights: dict[tuple[int, ...], float], n_nodes: int) -> list[tuple[int, ...]]:
    """The ``n_nodes`` paths of highest weight, kept prefix-closed (a node enters only after
    its parent), so it maximizes the expected accepted length among trees of that size
    whenever weights do not increase along a path (true for the joint frequencies)."""
    chosen: list[tuple[int, ...]] = []
    cands = {p: w for p, w in weights.items() if len(p) == 1}
    while len(chosen) < n_nodes and cands:
        p = max(cands, key=lambda q: (cands[q], -len(q), tuple(-r for r in q)))
        del cands[p]
        chosen.append(p)
        for q, w in weights.items():
            if len(q) == len(p) + 1 and q[:-1] == p:
                cands[q] = w
    return chosen


def expected_accepted(weights: dict[tuple[int, ...], float], paths: Sequence[tuple[int, ...]]) -> float:
    """Expected tokens per step of a tree: 1 (bonus) + sum of its paths' acceptance weights."""
    return 1.0 + sum(weights.get(tuple(p), 0.0) for p in paths)


# --------------------------------------------------------------------------------------
# choosing a decoder's tree
# --------------------------------------------------------------------------------------


def device_tag(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return "cuda-" + torch.cuda.get_device_name(dev).replace(" ", "_")
    return dev.type


def tree_default_key(method: str, device) -> str:
    """The artifact key of the tree tuned for ``method`` on ``device``."""
    return f"{method}-tree-{device_tag(device)}"


def parse_tree_spec(spec: str) -> tuple[str, Any]:
    """``("paths", [...])`` for a JSON list of paths, ``("greedy", N)`` for ``greedyN``,
    ``(spec, None)`` for ``default`` / ``tuned`` / ``chain``; OptionError otherwise."""
    s = spec.strip()
    if s.startswith("["):
        try:
            paths = json.loads(s)
            normalize_paths(paths)
        except (ValueError, TypeError) as e:
            raise OptionError(f"tree {spec!r}: not a JSON list of paths ({e})") from None
        return "paths", paths
    if s in ("", "default"):
        return "default", None
    if s in ("tuned", "chain"):
        return s, None
    if s in named_trees():
        return "paths", named_trees()[s]
    if s.startswith("greedy") and s[6:].isdigit() and int(s[6:]) > 0:
        return "greedy", int(s[6:])
    raise OptionError(f"tree {spec!r}: give a JSON list of paths, 'default', 'tuned', 'chain', 'greedyN' or a "
                      f"named tree ({', '.join(sorted(named_trees()))})")


def resolve_tree(spec: str, *, method: str, artifacts: ArtifactStore, device, cfg: dict,
                 model_name: str | None = None) -> tuple[MedusaTree, str]:
    """The tree ``spec`` names and its label. ``default`` is the tree tuned for this model and
    device (``artifacts.default(tree_default_key(method, device))``), else a size-fitted
    greedy tree; ``greedyN`` is the N-node tree of highest expected acceptance under the
    heads' measured accuracies (``cfg["stats"]``)."""
    num_heads = int(cfg["heads"]["num_heads"])
    kind, arg = parse_tree_spec(spec)
    if kind in ("default", "tuned"):
        tuned = artifacts.default(tree_default_key(method, device))
        if tuned is not None:
            paths = json.loads((tuned / TREE_FILE).read_text())["paths"]
            tree, label = MedusaTree(paths), f"tuned{len(paths)}"
        elif kind == "tuned":
            raise AccbenchError(f"no tuned {method} tree for {model_name or 'this model'} on {device_tag(device)}: "
                                f"run `accbench tune {method} --model {model_name or 'MODEL'}`")
        else:
            kind, arg = "greedy", 63 if torch.device(device).type == "cuda" else 15
    if kind == "paths":
        label = spec.strip() if spec.strip() in named_trees() else f"custom{len(normalize_paths(arg))}"
        tree = MedusaTree(arg)
    elif kind == "chain":
        tree, label = MedusaTree(chain_tree(num_heads)), "chain"
    elif kind == "greedy":
        tree, label = MedusaTree(best_tree(path_weights(cfg.get("stats", {}), num_heads), arg)), f"greedy{arg}"
    if tree.depth > num_heads:
        raise OptionError(f"{method}.tree: depth {tree.depth} exceeds the {num_heads} loaded heads "
                          f"(a tree of depth <= {num_heads}, or heads with more heads)")
    return tree, label
