"""EAGLE-2 (and EAGLE-3 drafts) on the one speculative loop.

- prepare(): a forward hook on the target's final norm keeps the (post-norm) features of
  every position of each target forward (the prefill's whole prompt included).
- start(): the draft model runs over the prompt's pairs ``(f_t, x_{t+1})`` into its own KV
  cache; its last output predicts the feature after the first token.
- propose(): the dynamic tree (dyntree.py): depth 1 is the top-k of the draft's last logits;
  each further depth runs the draft layer once over the ``top_k`` most confident nodes of the
  previous depth (tree attention over the draft cache + their ancestors' entries) and takes
  each one's top-k children; then the ``total_tokens`` most confident nodes are verified.
  The draft entries written while drafting are cropped before returning.
- observe(): the draft cache is rolled to the committed sequence with the target's *true*
  features of the accepted path (``Verified.hidden[keep]``) and the committed tokens.

:class:`Eagle3Drafter` (an EAGLE-3 draft, eagle3.py): the features are the inputs of three
target layers, kept by hooks on those layers (:class:`LayerCapture`, only while the loop's own
forward runs: between ``propose`` and ``observe``); the loop then needs no hidden states
(``needs_hidden`` False: the default, cheaper forward); the draft's logits are its own head over
its reduced vocabulary, whose ids are mapped to the target's through ``d2t`` before anything is
proposed.

Greedy: lossless by the loop's verification. Sampling: the tree is a deterministic top-k
set, so ``Proposal.q`` stays None (one-hot q is right for a fixed set of siblings).

Tuning (tune.py) sets ``record``: every full-depth step then stores, per depth ``d``, the ranks
(among the drafted nodes of depth <= d, by path confidence) of the nodes the target accepted,
from which the accepted length of any smaller tree (depth, budget) follows.
"""

from __future__ import annotations

from typing import Any

import torch
from accbench.methods.core import Drafter, Proposal
from accbench.methods.core.tree import crop_cache, tree_visibility
from accbench.methods.eagle.dyntree import DraftTree, dynamic_tree, rank_key
from accbench.methods.eagle.model import draft_logits
from transformers import DynamicCache


class FeatureCapture:
    def __init__(self, module):
        self.h: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.h = output[0] if isinstance(output, tuple) else output

    def remove(self) -> None:
        self._handle.remove()


class LayerCapture:
    """The inputs of the target's decoder layers ``ids`` (``ids[i] == L``: the last layer's
    output, before the final norm), kept while ``active``."""

    def __init__(self, layers, ids):
        self.ids = list(ids)
        self.h: dict[int, torch.Tensor] = {}
        self.active = False
        self._handles = []
        n = len(layers)
        for i in self.ids:
            if i == 0:
                self._handles.append(layers[0].register_forward_pre_hook(self._pre(0), with_kwargs=True))
            else:
                self._handles.append(layers[i - 1].register_forward_hook(self._post(i)))
        assert all(0 <= i <= n for i in self.ids)

    def _pre(self, i):
        def hook(module, args, kwargs):
            if self.active:
                self.h[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def _post(self, i):
        def hook(module, args, output):
            if self.active:
                self.h[i] = output[0] if isinstance(output, tuple) else output
        return hook

    def features(self, rows=None) -> torch.Tensor:
        """``[n, len(ids) * H]``: the captured states of the last forward, concatenated in
        layer order (``rows``: those block rows only)."""
        hs = [self.h[i][0] for i in self.ids]
        if rows is not None:
            hs = [h[rows] for h in hs]
        return torch.cat(hs, dim=-1)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.h = {}


class EagleDrafter(Drafter):
    needs_hidden = True

    def __init__(self, dec):
        self.dec = dec
        self.depth, self.top_k, self.total = dec.depth, dec.top_k, dec.total_tokens
        self.shape = {"kind": "dynamic", "nodes": self.total, "depth": self.depth, "heads": None}
        self.capture: Any = None
        self.cache = DynamicCache()
        self.length = 0  # pairs in the draft cache (= committed tokens - 1)
        self.last: torch.Tensor | None = None  # draft feature predicted after the last token
        self.tokens: list[int] | None = None
        self.kept_hist: list[int] = []
        self.record: list[dict[int, list[int]]] | None = None  # set by tune.py
        self._pending: tuple | None = None

    # -- what differs between EAGLE-2 and EAGLE-3 ----------------------------------------
    def _emb(self, ids) -> torch.Tensor:
        t = torch.as_tensor(ids, device=self.dec.device).view(1, -1)
        return self.dec.target.model.embed_tokens(t)

    def _probs(self, feats: torch.Tensor) -> torch.Tensor:
        """Draft distributions for the draft outputs ``feats`` ([h] or [m, h])."""
        return torch.softmax(draft_logits(self.dec.target, feats).float(), dim=-1)

    def _ids(self, idx: torch.Tensor) -> torch.Tensor:
        """Target token ids of draft-vocabulary indices."""
        return idx

    def _draft(self, emb, feat, pos, visible=None, *, fuse: bool):
        return self.dec.draft(emb, feat, pos, self.cache, visible=visible)

    def _prompt_features(self) -> torch.Tensor:
        return self.capture.h[0]  # [T, h] post-norm features of the prompt

    def _step_features(self, info) -> torch.Tensor:
        n_c = info.committed
        return info.hidden[info.keep[:n_c]] if info.hidden.dim() == 2 else info.hidden[None]

    # -- helpers -------------------------------------------------------------------------
    def _extend(self, feats: torch.Tensor, next_tokens: list[int]) -> None:
        """Append pairs (feats[i], next_tokens[i]) causally; keep the last predicted feature."""
        m = len(next_tokens)
        pos = torch.arange(self.length, self.length + m, device=self.dec.device)
        out = self._draft(self._emb(next_tokens), feats[None, :m], pos, fuse=True)
        self.length += m
        self.last = out[0, -1]

    # -- the loop's hooks ----------------------------------------------------------------
    def prepare(self) -> None:
        self.capture = FeatureCapture(self.dec.target.model.norm)

    def start(self, prompt, first, info) -> None:
        self._extend(self._prompt_features(), list(prompt[1:]) + [first])

    def propose(self, tokens, budget):
        self.tokens = tokens
        self._pending = None
        depth = min(self.depth, budget)
        if depth <= 0 or self.total <= 0:
            return None
        dec, k, base = self.dec, self.top_k, self.length
        top0 = self._probs(self.last).topk(k)
        root = list(zip(self._ids(top0.indices).tolist(), top0.values.tolist()))
        state = {"rows": {}, "vis_rows": []}  # draft node -> its cache row among this step's
        parent_feat = {-1: self.last}
        tree_ref = {}

        def expand(frontier: list[int]) -> list[list[tuple[int, float]]]:
            tree = tree_ref["tree"]
            n_old = len(state["vis_rows"])
            m = len(frontier)
            # visibility of the new cache rows among all rows appended in this step
            vis = torch.zeros(m, n_old + m, dtype=torch.bool, device=dec.device)
            for j, node in enumerate(frontier):
                a = tree.parents[node]
                while a >= 0:
                    vis[j, state["rows"][a]] = True
                    a = tree.parents[a]
                vis[j, n_old + j] = True
            for j, node in enumerate(frontier):
                state["rows"][node] = n_old + j
                state["vis_rows"].append(node)
            # previously appended rows stay in the cache: the new rows see them via ``vis``
            emb = self._emb([tree.tokens[n] for n in frontier])
            feat = torch.stack([parent_feat[tree.parents[n]] for n in frontier])[None]
            pos = torch.tensor([base + tree.depths[n] - 1 for n in frontier], device=dec.device)
            out = self._draft(emb, feat, pos, visible=vis, fuse=False)[0]
            top = self._probs(out).topk(k, dim=-1)
            ids, ps = self._ids(top.indices).tolist(), top.values.tolist()
            for j, node in enumerate(frontier):
                parent_feat[node] = out[j]
            return [list(zip(ids[j], ps[j])) for j in range(m)]

        tree_ref["tree"] = tree = DraftTree()
        _, kept, parents = dynamic_tree(root, expand, depth, k, self.total, tree=tree)
        crop_cache(self.cache, base)
        if not kept:
            return None
        toks = [tree.tokens[i] for i in kept]
        parents = [-1] + parents
        depths = torch.tensor([0] + [tree.depths[i] for i in kept], device=dec.device)
        visible = tree_visibility(parents).to(dec.device)
        self.kept_hist.append(len(kept))
        if self.record is not None and depth == self.depth:
            self._pending = (tree, kept)
        return Proposal(toks, depths, visible, parents, depth=int(depths.max()))

    def observe(self, info) -> None:
        if self._pending is not None and info.path is not None:
            self.record.append(accepted_ranks(*self._pending, info.path, self.depth))
            self._pending = None
        n_c = info.committed
        feats = self._step_features(info)
        crop_cache(self.cache, self.length)
        self._extend(feats, self.tokens[-n_c:])

    def finish(self) -> dict[str, Any]:
        if self.capture is not None:
            self.capture.remove()
            self.capture = None
        mean = sum(self.kept_hist) / len(self.kept_hist) if self.kept_hist else 0.0
        return {"eagle_depth": self.depth, "eagle_top_k": self.top_k, "eagle_total_tokens": self.total,
                "mean_tree_nodes": mean, "eagle_version": getattr(self.dec.draft, "version", 2),
                "eagle_params": getattr(self.dec, "params_source", None)}


class Eagle3Drafter(EagleDrafter):
    """The same dynamic tree over an EAGLE-3 draft (see the module docstring)."""

    needs_hidden = False

    def _emb(self, ids) -> torch.Tensor:
        t = torch.as_tensor(ids, device=self.dec.device).view(1, -1)
        return self.dec.draft.embed(t)

    def _probs(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.dec.draft.logits(feats).float(), dim=-1)

    def _ids(self, idx: torch.Tensor) -> torch.Tensor:
        return self.dec.draft.to_target(idx)

    def _draft(self, emb, feat, pos, visible=None, *, fuse: bool):
        return self.dec.draft(emb, feat, pos, self.cache, visible=visible, fuse=fuse)

    def _prompt_features(self) -> torch.Tensor:
        feats = self.capture.features()
        self.capture.active = False
        return feats

    def _step_features(self, info) -> torch.Tensor:
        feats = self.capture.features(info.keep[: info.committed])
        self.capture.active = False
        return feats

    def prepare(self) -> None:
        self.capture = LayerCapture(self.dec.target.model.layers, self.dec.draft.layers_used)
        self.capture.active = True  # the prefill

    def propose(self, tokens, budget):
        p = super().propose(tokens, budget)
        self.capture.active = True  # the loop's forward comes next (a block or a plain step)
        return p


def accepted_ranks(tree: DraftTree, kept: list[int], path: list[int], depth: int) -> dict[int, list[int]]:
    """For every depth ``d`` <= ``depth``: the ranks, among the drafted nodes of depth <= d
    ordered by :func:`~accbench.methods.eagle.dyntree.rank_key`, of the accepted nodes of depth
    <= d. A tree of depth d and budget n keeps the top n of those nodes (prefix-closed), so it
    would have accepted exactly the accepted nodes of rank < n."""
    acc = {kept[j - 1] for j in path[1:]}
    order = sorted(range(len(tree.tokens)), key=lambda i: rank_key(tree, i))
    out: dict[int, list[int]] = {}
    for d in range(1, depth + 1):
        ranks, r = [], 0
        for i in order:
            if tree.depths[i] <= d:
                if i in acc:
                    ranks.append(r)
                r += 1
        out[d] = ranks
    return out
