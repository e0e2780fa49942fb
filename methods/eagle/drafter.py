"""EAGLE-2 on the one speculative loop.

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

Greedy: lossless by the loop's verification. Sampling: the tree is a deterministic top-k
set, so ``Proposal.q`` stays None (one-hot q is right for a fixed set of siblings).
"""

from __future__ import annotations

from typing import Any

import torch
from accbench.methods.core import Drafter, Proposal
from accbench.methods.core.tree import crop_cache, tree_visibility
from accbench.methods.eagle.dyntree import DraftTree, dynamic_tree
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


class EagleDrafter(Drafter):
    needs_hidden = True

    def __init__(self, dec):
        self.dec = dec
        o = dec.options
        self.depth, self.top_k, self.total = o.depth, o.top_k, o.total_tokens
        self.shape = {"kind": "dynamic", "nodes": self.total, "depth": self.depth, "heads": None}
        self.capture: FeatureCapture | None = None
        self.cache = DynamicCache()
        self.length = 0  # pairs in the draft cache (= committed tokens - 1)
        self.last: torch.Tensor | None = None  # draft feature predicted after the last token
        self.tokens: list[int] | None = None
        self.kept_hist: list[int] = []

    # -- helpers -------------------------------------------------------------------------
    def _emb(self, ids) -> torch.Tensor:
        t = torch.as_tensor(ids, device=self.dec.device).view(1, -1)
        return self.dec.target.model.embed_tokens(t)

    def _extend(self, feats: torch.Tensor, next_tokens: list[int]) -> None:
        """Append pairs (feats[i], next_tokens[i]) causally; keep the last predicted feature."""
        m = len(next_tokens)
        pos = torch.arange(self.length, self.length + m, device=self.dec.device)
        out = self.dec.draft(self._emb(next_tokens), feats[None, :m], pos, self.cache)
        self.length += m
        self.last = out[0, -1]

    # -- the loop's hooks ----------------------------------------------------------------
    def prepare(self) -> None:
        self.capture = FeatureCapture(self.dec.target.model.norm)

    def start(self, prompt, first, info) -> None:
        feats = self.capture.h[0]  # [T, h] post-norm features of the prompt
        self._extend(feats, list(prompt[1:]) + [first])

    def propose(self, tokens, budget):
        self.tokens = tokens
        depth = min(self.depth, budget)
        if depth <= 0 or self.total <= 0:
            return None
        dec, k, base = self.dec, self.top_k, self.length
        probs0 = torch.softmax(draft_logits(dec.target, self.last).float(), dim=-1)
        top0 = probs0.topk(k)
        root = list(zip(top0.indices.tolist(), top0.values.tolist()))
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
            out = dec.draft(emb, feat, pos, self.cache, visible=vis)[0]
            probs = torch.softmax(draft_logits(dec.target, out).float(), dim=-1)
            top = probs.topk(k, dim=-1)
            ids, ps = top.indices.tolist(), top.values.tolist()
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
        return Proposal(toks, depths, visible, parents, depth=int(depths.max()))

    def observe(self, info) -> None:
        n_c = info.committed
        feats = info.hidden[info.keep[:n_c]] if info.hidden.dim() == 2 else info.hidden[None]
        crop_cache(self.cache, self.length)
        self._extend(feats, self.tokens[-n_c:])

    def finish(self) -> dict[str, Any]:
        if self.capture is not None:
            self.capture.remove()
            self.capture = None
        mean = sum(self.kept_hist) / len(self.kept_hist) if self.kept_hist else 0.0
        return {"eagle_depth": self.depth, "eagle_top_k": self.top_k, "eagle_total_tokens": self.total,
                "mean_tree_nodes": mean}

