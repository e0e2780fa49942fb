"""Medusa-1 and Medusa-2 (Cai et al. 2024) on the one speculative loop.

- The drafter reads the final hidden state of the last accepted node (the prefill's last
  position first), runs the K heads on it, takes each head's top-k tokens and lays them out
  as the candidate tree: node ``(r1, ..., rd)`` is head d's rank-rd token. The loop verifies
  root + tree in one forward with the ancestor mask (position = prefix + depth).
- Greedy: the loop accepts the longest path whose every token equals the argmax at its
  parent, plus the bonus token; the KV cache keeps only the accepted nodes. Lossless.
  Sampling: the drafter's typical acceptance (p(x) > min(eps, delta exp(-H))), not lossless.
- Near the budget only the tree's nodes of depth <= budget are proposed (a prefix, as the
  nodes are sorted by depth); with no budget left the loop takes a plain step.
- Medusa-2 trains the backbone too (LoRA, merged): its decoder keeps a private copy of the
  backbone with the delta applied, so other methods see the original model. It is lossless
  against its own backbone; its quality differs from the original model's. A published
  Medusa-2 model (``-o medusa2.source=ID|DIR``, published.py) supplies that private backbone
  (every tensor replaced) and the heads instead; ``--model`` stays the original model.

Training: ``accbench train medusa1|medusa2`` (train.py). Tree fitted to the device:
``accbench tune medusa1|medusa2`` (tune.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accbench.methods.core import (
    Drafter,
    OptionError,
    Proposal,
    SpeculativeDecoder,
    option,
    sampling_probs,
)
from accbench.methods.core.errors import AccbenchError, NeedsTraining
from accbench.methods.core.tree import longest_accepted_path
from accbench.methods.medusa.heads import DELTA_FILE, HEADS_FILE, lm_head_sub, load_artifact, merge_delta
from accbench.methods.medusa.trees import parse_tree_spec, resolve_tree


class MedusaDrafter(Drafter):
    """Drafts the decoder's candidate tree from the heads' top-k at the last accepted node."""

    needs_hidden = True

    def __init__(self, dec: "MedusaDecoder"):
        self.dec = dec
        tree = dec.tree
        self.shape = {"kind": "chain" if tree.size - 1 == tree.depth else "tree", "nodes": tree.size - 1,
                      "depth": tree.depth, "heads": dec.heads.num_heads}
        self.hidden: torch.Tensor | None = None
        self.block: Proposal | None = None  # the proposal being verified (None: a plain step)
        self.accept_hist = [0] * (dec.tree.depth + 1)  # steps by accepted depth

    def start(self, prompt, first, info) -> None:
        self.hidden = info.hidden

    def propose(self, tokens, budget):
        depth = min(budget, self.dec.tree.depth)
        if depth <= 0:
            self.block = None
            return None
        flat, depths, visible, parents = self.dec.prefixes[depth]
        cands = self.dec.candidates(self.hidden, tokens)
        self.block = Proposal(cands[flat], depths, visible, parents, depth=depth)
        return self.block

    def accept(self, tree_logits: torch.Tensor, tree_tokens: list[int]) -> tuple[list[int], int]:
        """Typical acceptance (sampling only): node x is acceptable under its parent's
        distribution p when p(x) > min(eps, delta * exp(-H(p))); the longest acceptable path
        wins and the bonus is sampled at its last node. Not lossless."""
        dec = self.dec
        probs = sampling_probs(tree_logits, dec.sampling)  # [n, V]
        path = [0]
        if self.block is not None:
            opts = dec.options
            ent = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
            threshold = torch.minimum(torch.full_like(ent, opts.eps), opts.delta * torch.exp(-ent))
            parents = self.block.parents
            par = dec.parents_t[1: len(parents)]
            edge_ok = (probs[par, self.block.tokens] > threshold[par]).tolist()
            path = longest_accepted_path(parents, [True] + edge_ok)
        bonus = int(torch.multinomial(probs[path[-1]], 1, generator=dec._generator))
        return path, bonus

    def observe(self, info) -> None:
        self.hidden = info.hidden[info.keep[-1]]
        self.accept_hist[info.accepted] += 1

    def finish(self) -> dict[str, Any]:
        out = {"tree": self.dec.tree_label, "tree_nodes": self.dec.tree.size, "accepted_depth_hist": self.accept_hist}
        pub = self.dec.artifact_cfg.get("published")
        if pub:
            out["published_heads"] = {k: pub[k] for k in ("source", "layout", "heads_in_file", "heads_used",
                                                          "config_medusa_num_heads", "notes")}
        return out


class MedusaDecoder(SpeculativeDecoder):
    """What Medusa-1 and Medusa-2 share: the heads artifact, the tree and the drafter."""

    lossless = True

    @dataclass
    class Options:
        tree: str = option("default", "candidate tree: default (tuned for this device, else greedyN sized for it), "
                                      "tuned, chain, greedyN, or a JSON list of rank paths")
        heads: str | None = option(None, "heads: an accbench artifact folder, or a published Medusa checkpoint "
                                         "(a hub id such as FasterDecoding/medusa-vicuna-7b-v1.3, or a local dir "
                                         "with medusa_lm_head.pt|.safetensors) (default: the model's trained default)")
        num_heads: int | None = option(None, "published heads: use only the first K heads (default: all)")
        eps: float = option(0.09, "typical acceptance (sampling): probability threshold eps, > 0")
        delta: float = option(0.3, "typical acceptance (sampling): entropy-scaled threshold delta, > 0")

        def __post_init__(self):
            parse_tree_spec(self.tree)
            if self.num_heads is not None and self.num_heads < 1:
                raise OptionError(f"medusa num_heads={self.num_heads}: must be >= 1")
            for key in ("eps", "delta"):
                if getattr(self, key) <= 0:
                    raise OptionError(f"medusa {key}={getattr(self, key)}: must be > 0")

    def __init__(self, model, tokenizer, **kw):
        super().__init__(model, tokenizer, **kw)
        src = self.options.heads
        model_src = getattr(self.options, "source", None)  # medusa2: a published Medusa-2 model
        if model_src:
            from accbench.methods.medusa.published import canonical_model, load_medusa2_source

            base = getattr(self.options, "base", None)
            if base and self.model_name and canonical_model(base) != canonical_model(self.model_name):
                raise AccbenchError(f"{self.name}.base={base} but the model is {self.model_name}: the model is the "
                                    f"original (AR runs it), so load {base}")

            self.heads, self.artifact_cfg, self.backbone, path = load_medusa2_source(
                model_src, model, self.options.num_heads)
            self.artifact_path = path
        else:
            if src and not (Path(src).expanduser() / HEADS_FILE).exists():
                from accbench.methods.medusa.published import load_published_heads

                self.heads, self.artifact_cfg, path = load_published_heads(src, model, self.options.num_heads)
                delta = None
            else:
                path = self._heads_path()
                self.heads, self.artifact_cfg, delta = load_artifact(path, model)
            self.artifact_path = path
            self.backbone = self._backbone(model, delta)
        self.tree, self.tree_label = resolve_tree(self.options.tree, method=self.name, artifacts=self.artifacts,
                                                  device=self.device, cfg=self.artifact_cfg, model_name=self.model_name)
        self.lm_w, self.lm_b = lm_head_sub(self.backbone, self.heads.vocab_ids)
        self.vocab_ids = self.heads.vocab_ids.to(self.device)
        self._prepare_tree()

    @classmethod
    def preflight(cls, model_name: str, options: dict[str, str], artifacts) -> None:
        """Checks, without loading the model, that the heads the options name exist (a local
        dir with the files, a hub id cached or reachable) or that the trained default does."""
        from accbench.methods.medusa.published import check_source

        src = (options or {}).get("heads")
        if src:
            check_source(src, f"{cls.name}.heads")
            return
        if artifacts is not None and artifacts.default(cls.name) is None:
            raise AccbenchError(f"{cls.name} has no trained heads for {model_name}: run "
                                f"`accbench train {cls.name} --model {model_name}` or pass -o {cls.name}.heads=DIR|HUB_ID")

    def _heads_path(self) -> Path:
        if self.options.heads:
            path = Path(self.options.heads)
            if not (path / HEADS_FILE).exists():
                raise AccbenchError(f"{self.name}: no {HEADS_FILE} in {path}")
            return path
        path = self.artifacts.default(self.name)
        if path is None:
            raise NeedsTraining(self.name, self.model_name or "MODEL")
        return path

    def _backbone(self, model, delta):
        """The model the drafts are verified with (Medusa-1: the shared model itself)."""
        return model

    def _prepare_tree(self) -> None:
        """Device tensors of the tree, and for every budget depth d the prefix of nodes of
        depth <= d: (candidate index, depths, visibility, parents)."""
        t, dev = self.tree, self.device
        self.topk = max(1, t.topk)
        flat = t.flat_index(self.topk).to(dev)
        depths = torch.tensor(t.depths, device=dev)
        visible = t.visible.to(dev)
        self.parents_t = torch.tensor([max(p, 0) for p in t.parents], device=dev)
        self.prefixes = {}
        for d in range(1, t.depth + 1):
            n = t.prefix_size(d)
            self.prefixes[d] = (flat[: n - 1], depths[:n], visible[:n, :n], t.parents[:n])

    def candidates(self, hidden: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """Candidate token ids ``[K * topk]`` (flattened head-major) from the hidden state of
        the last accepted node (``tokens``: committed so far; the heads do not read them)."""
        logits = self.heads.logits(hidden, self.lm_w, self.lm_b)  # [K, Vsub]
        return self.vocab_ids[logits.topk(self.topk, dim=-1).indices].reshape(-1)

    @property
    def target(self):
        return self.backbone  # Medusa-2: the private merged backbone

    def drafter(self, n_positions: int) -> MedusaDrafter:
        return MedusaDrafter(self)

    @classmethod
    def train(cls, job) -> Path:
        from accbench.methods.medusa.train import train_medusa

        return train_medusa(cls.name, job)

    @classmethod
    def tune(cls, job) -> Path:
        from accbench.methods.medusa.tune import tune

        return tune(job)


class Medusa1Decoder(MedusaDecoder):
    name = "medusa1"
    description = "Medusa-1: trained heads on a frozen backbone, tree verification (lossless)."


class Medusa2Decoder(MedusaDecoder):
    name = "medusa2"
    description = ("Medusa-2: heads and backbone (LoRA) trained together; lossless against its own "
                   "fine-tuned backbone, quality vs the original model reported.")

    @dataclass
    class Options(MedusaDecoder.Options):
        source: str | None = option(None, "a published Medusa-2 model (fine-tuned backbone + medusa_head.* in one "
                                          "Hugging Face model folder): a hub id such as "
                                          "FasterDecoding/medusa-1.0-zephyr-7b-beta, or a local dir. It replaces "
                                          "the backbone for this method only; --model stays the ORIGINAL model "
                                          "(AR runs it, quality is compared with it)")
        base: str | None = option(None, "with source: the original model it was fine-tuned from; must name the "
                                        "same model as --model (a check: --model is what AR runs)")

        def __post_init__(self):
            super().__post_init__()
            if self.source and self.heads:
                raise OptionError("medusa2: give source (a published Medusa-2 model) or heads (an accbench "
                                  "medusa2 artifact), not both")
            if self.base and not self.source:
                raise OptionError("medusa2.base names the original model of a published Medusa-2 model: "
                                  "give medusa2.source too")

    @classmethod
    def preflight(cls, model_name: str, options: dict[str, str], artifacts) -> None:
        """``source``: the folder (config.json and complete weights) or a cached / reachable hub id;
        ``base``, when given, names the run's --model. Else the trained artifact (Medusa-1's check)."""
        options = options or {}
        source, base = options.get("source"), options.get("base")
        if not source:
            if base:
                raise AccbenchError("medusa2.base names the original model of a published Medusa-2 model: give "
                                    "medusa2.source too")
            return super().preflight(model_name, options, artifacts)
        from accbench.methods.medusa.published import canonical_model, check_medusa2_source

        if options.get("heads"):
            raise AccbenchError("medusa2: give source (a published Medusa-2 model) or heads (an accbench medusa2 "
                                "artifact), not both")
        if base and canonical_model(base) != canonical_model(model_name):
            raise AccbenchError(f"medusa2.base={base} but --model is {model_name}: --model is the original model "
                                f"(AR runs it and medusa2's quality is compared with it), so pass --model {base}")
        check_medusa2_source(source)

    def _backbone(self, model, delta):
        """A private copy of the model with the trained LoRA delta merged: other decoders keep
        the original."""
        if delta is None:
            if self.artifact_cfg.get("published"):
                raise AccbenchError(f"{self.name}.heads={self.options.heads}: Medusa-1 heads (no fine-tuned backbone): "
                                    f"run them with --methods medusa1, or give a published Medusa-2 model as "
                                    f"-o {self.name}.source=ID|DIR")
            raise AccbenchError(f"{self.name}: {self.artifact_path} has no {DELTA_FILE}")
        backbone = copy.deepcopy(model)
        merge_delta(backbone, delta)
        backbone.requires_grad_(False)
        return backbone
