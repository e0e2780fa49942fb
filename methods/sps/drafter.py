"""The SpS drafter and decoder.

Each step the draft model runs autoregressively from the last committed token for gamma
tokens (argmax when greedy; under sampling a draw from ``probs_from_logits`` of its logits,
the target's own temperature / top-p transform, whose rows become ``Proposal.q``). The loop
verifies ``[last committed token, d1..d_gamma]`` as a chain in one target forward: greedy
keeps drafts while they equal the target's argmax; sampling uses speculative sampling
(accept ``d`` with probability ``min(1, p(d)/q(d))``, bonus from ``norm(max(0, p - q))``).

Draft KV cache:

* ``draft=MODEL`` (a registry name, hub id or local directory, loaded on the target's device
  and dtype; it must have the target's vocabulary): the draft owns a DynamicCache. After a
  step it is rolled back (cropped) to the committed prefix it has seen: the prompt, the
  committed tokens and the accepted drafts it fed (``d_gamma`` is drafted but never fed);
  the next step feeds the committed tokens it lacks (at least the bonus) in one forward.
* ``draft=self:N`` (``self``: N = half the layers): the target's first N decoder layers,
  then its final norm and LM head (transformers' ``assistant_early_exit``). The draft
  *shares the target's KV cache* (the loop's, ``Verified.cache``) for those N layers: the
  committed prefix's entries in layers 0..N-1, written by the target's own forwards, are
  exactly what the N-layer draft would compute, so the draft needs no prefill and no copy.
  While drafting it appends the root and d1..d_{gamma-1} to layers 0..N-1 of that cache and
  crops them back to the prefix before the proposal returns, so the verification forward
  sees the cache the loop left. Nothing else is shared or kept between steps.

Gamma: ``schedule=constant`` drafts ``gamma`` tokens every step; ``schedule=heuristic`` is
transformers' heuristic schedule (``AssistedCandidateGenerator.update_candidate_strategy``):
+2 after a step whose drafts were all accepted, else -1 (at least 1), starting from ``gamma``
at every generation (transformers' ``"heuristic_transient"``; its ``"heuristic"`` carries the
value over to the next ``generate`` call). The budget caps a step's drafts either way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from accbench.methods.core import AccbenchError, Drafter, OptionError, Proposal, SpeculativeDecoder, option
from accbench.methods.core.quirks import logits_from_hidden, text_config
from accbench.methods.core.sampling import probs_from_logits
from accbench.methods.core.tree import crop_cache
from torch import nn
from transformers import DynamicCache


def tokenizer_mismatch(target, draft) -> str | None:
    """Why two tokenizers cannot share token ids, or None when their vocabularies are equal."""
    if target is draft:
        return None
    a, b = target.get_vocab(), draft.get_vocab()
    if a == b:
        return None
    differ = sum(1 for t, i in a.items() if b.get(t) != i) + sum(1 for t in b if t not in a)
    return f"vocabularies differ ({len(a)} vs {len(b)} tokens, {differ} token ids disagree)"


def early_exit_view(model, n_layers: int) -> nn.Module:
    """The target's decoder (``model.model``) cut to its first ``n_layers`` layers, sharing
    every module and parameter with it (nothing is copied but the config)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList) or getattr(base, "norm", None) is None:
        raise AccbenchError(f"sps: draft=self:N needs a decoder with .model.layers and .model.norm; "
                            f"{type(model).__name__} has none")
    if not 1 <= n_layers <= len(layers):
        raise OptionError(f"sps.draft=self:{n_layers}: N must be 1..{len(layers)} (the target's layers)")
    view = copy.copy(base)
    view._modules = dict(base._modules)  # own module table: the original keeps all its layers
    view.layers = nn.ModuleList(list(layers[:n_layers]))
    cfg = copy.deepcopy(base.config)
    cfg.num_hidden_layers = n_layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types[:n_layers])
    view.config = cfg
    return view


class SpsDrafter(Drafter):
    """Drafts a chain of gamma tokens with the draft model; keeps its cache and the schedule."""

    def __init__(self, dec: "SpsDecoder"):
        self.dec = dec
        self.gamma = dec.options.gamma
        self.shape = {"kind": "chain", "nodes": self.gamma, "depth": self.gamma, "heads": None,
                      "schedule": dec.options.schedule}
        self.k = 0  # drafts proposed by the latest step
        self.draft_forwards = 0
        self.gammas: list[int] = []

    def start(self, prompt, first, info) -> None:
        self.prompt = prompt
        self.cache = info.cache if self.dec.self_layers else DynamicCache()
        self.n_cached = 0  # own cache: positions of prompt + tokens it holds

    def propose(self, tokens, budget):
        dec = self.dec
        k = min(self.gamma, budget)
        self.k = 0
        if k <= 0:
            return None
        if dec.self_layers:  # the target's cache holds every committed position but the last
            prefix = len(self.prompt) + len(tokens) - 1
            x = torch.tensor([[tokens[-1]]], device=dec.device)
        else:
            seq = self.prompt + tokens
            prefix = len(seq)
            x = torch.tensor([seq[self.n_cached:]], device=dec.device)
        sampled = not dec.sampling.greedy
        picks, qs = [], []
        for _ in range(k):
            logits = dec.draft_logits(x, self.cache)
            self.draft_forwards += 1
            if sampled:
                q = probs_from_logits(logits, dec.sampling)
                t = torch.multinomial(q, 1, generator=dec._generator)
                qs.append(q)
            else:
                t = logits.argmax(dim=-1, keepdim=True)
            picks.append(t)
            x = t.view(1, 1)
        if dec.self_layers:
            crop_cache(self.cache, prefix)  # layers 0..N-1 back to the loop's prefix
        else:
            self.n_cached = prefix + k - 1  # d_k was never fed
        self.base, self.k = prefix, k
        self.gammas.append(k)
        n = k + 1
        depths, visible, parents = dec.chain(n)
        return Proposal(torch.cat(picks), depths, visible, parents, depth=k, q=torch.stack(qs) if qs else None)

    def observe(self, info) -> None:
        if not self.k:
            return
        a = min(info.accepted, info.committed)
        if not self.dec.self_layers:  # roll back to the accepted prefix (drafts d1..d_{k-1} were fed)
            self.n_cached = self.base + min(a, self.k - 1)
            crop_cache(self.cache, self.n_cached)
        if self.dec.options.schedule == "heuristic":
            self.gamma = self.gamma + 2 if info.accepted == self.k else max(1, self.gamma - 1)
        self.k = 0

    def finish(self):
        d = self.dec
        return {"draft": d.options.draft, "draft_layers": d.self_layers, "schedule": d.options.schedule,
                "gamma_start": d.options.gamma, "gamma_end": self.gamma,
                "mean_gamma": sum(self.gammas) / len(self.gammas) if self.gammas else 0.0,
                "draft_forwards": self.draft_forwards,
                "draft_cache": f"shared: target layers 0..{d.self_layers - 1}" if d.self_layers else "own"}


class SpsDecoder(SpeculativeDecoder):
    """Speculative decoding with a draft model sharing the target's tokenizer (see the module)."""

    name = "sps"
    lossless = True
    description = ("Speculative decoding with a draft model (or the target's first N layers): gamma drafts per "
                   "step verified in one forward; speculative sampling when sampling.")

    @dataclass
    class Options:
        draft: str = option("self", "draft model: a registry name, hub id or local directory with the target's "
                                    "tokenizer; self:N: the target's first N layers + final norm + LM head "
                                    "(self: half the layers)")
        gamma: int = option(5, "draft tokens per step (heuristic schedule: the starting value)", ge=1)
        schedule: str = option("constant", "constant: gamma every step; heuristic: transformers' schedule, "
                                           "+2 when all drafts were accepted, else -1 (>= 1)",
                               choices=("constant", "heuristic"))

    def __init__(self, model, tokenizer, **kw):
        super().__init__(model, tokenizer, **kw)
        spec = self.options.draft.strip()
        self.self_layers = 0
        self._chains: dict[int, tuple] = {}
        self.target_vocab = model.get_output_embeddings().weight.shape[0]
        if spec == "self" or spec.startswith("self:"):
            n_layers = int(text_config(model).num_hidden_layers)
            try:
                n = max(1, n_layers // 2) if spec == "self" else int(spec[5:])
            except ValueError:
                raise OptionError(f"sps.draft={spec!r}: expected self:N with an integer N") from None
            self.draft_model = early_exit_view(model, n)
            self.self_layers = n
        elif self.model_name and spec == self.model_name:
            self.draft_model = model  # the target drafting for itself (own cache): a test of the plumbing
        else:
            from accbench.models import load_model  # the harness, only when a draft model is named

            loaded = load_model(spec, dtype=model.dtype, device=self.device)
            why = tokenizer_mismatch(tokenizer, loaded.tokenizer)
            if why:
                raise AccbenchError(f"sps: draft {spec!r} does not share the target's tokenizer ({why}); "
                                    "use a draft with the same vocabulary, or draft=self:N")
            self.draft_model = loaded.model

    def draft_logits(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """The draft's next-token logits after ``ids`` ([1, n], appended to ``cache``), over
        the target's vocabulary width."""
        if self.self_layers:
            h = self.draft_model(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state[0, -1]
            return logits_from_hidden(self.model, h)
        logits = self.draft_model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        v = logits.shape[-1]
        if v > self.target_vocab:  # padded draft head: ids past the target's are never drawn
            return logits[: self.target_vocab]
        if v < self.target_vocab:
            return torch.cat([logits, logits.new_full((self.target_vocab - v,), float("-inf"))])
        return logits

    def chain(self, n: int):
        """Depths, visibility and parents of a chain of ``n`` block tokens (root included)."""
        if n not in self._chains:
            self._chains[n] = (torch.arange(n, device=self.device),
                               torch.ones(n, n, dtype=torch.bool, device=self.device).tril_(), [-1] + list(range(n - 1)))
        return self._chains[n]

    def drafter(self, n_positions: int) -> SpsDrafter:
        return SpsDrafter(self)
