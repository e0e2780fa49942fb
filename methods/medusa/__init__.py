"""Medusa-1 and Medusa-2 (Cai et al. 2024): K extra decoding heads on the backbone's last
hidden state propose candidates for the next K+1 tokens; the candidates, laid out as a tree
of top-k choices per head, are verified in one forward pass with a tree attention mask.

- Head k (k = 1..K) reads the final (normed) hidden state h_t and predicts token t+1+k
  (the base lm_head predicts t+1). A head is ``num_layers`` residual blocks
  ``x + SiLU(W x + b)`` (W zero-initialised, so an untrained head equals the base predictor)
  followed by a vocabulary projection: the shared lm_head (default; tiny artifacts) or a
  projection per head initialised from it. The projection may be restricted to a subset of
  the vocabulary (``head_vocab``: the tokens the backbone predicts most often on the training
  text): drafting then costs a fraction of a full lm_head pass, which matters on a CPU, and
  only tokens outside the subset can never be drafted (verification keeps output exact).
- A tree is a list of paths; a path ``(r1, ..., rd)`` is the node at depth d whose token is
  head d's rank-rd candidate, under the node ``(r1, ..., r(d-1))``. The root is the last
  committed token. One forward over root + nodes (methods/tree.py block_forward with the
  ancestor mask, position = prefix + depth) gives the backbone's prediction at every node.
- Greedy: the longest path whose every token equals the argmax at its parent is accepted,
  plus the bonus token (argmax at the last accepted node); the KV cache keeps only the
  accepted nodes. Lossless. Sampling: typical acceptance (p(x) > min(eps, delta exp(-H))),
  not lossless.
- Medusa-2 trains the backbone too (LoRA, merged): its decoder keeps a private copy of the
  backbone with the delta applied, so other methods see the original model. It is lossless
  against its own backbone; its quality differs from the original model's.

Training: ``accbench train medusa1|medusa2`` (bench/medusa_train.py). Tree fitted to the
device: ``accbench tune-tree --method medusa1`` (bench/medusa_trees.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from accbench.methods import register
from accbench.methods.core.base import Clock, DecoderBase, GenerationRecord, sample_from_logits, sampling_probs
from accbench.methods.core.tree import (
    accept_greedy,
    block_forward,
    commit,
    compact_cache,
    logits_from_hidden,
    longest_accepted_path,
    make_cache,
    tree_visibility,
)

HEADS_FILE = "heads.safetensors"
DELTA_FILE = "backbone_delta.safetensors"
CONFIG_FILE = "config.json"


# --------------------------------------------------------------------------------------
# the heads
# --------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """x + SiLU(W x + b), W and b zero-initialised (identity at start)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.silu(self.linear(x))


class MedusaHeads(nn.Module):
    """K heads over the backbone's final hidden state. ``vocab_ids`` (a buffer) is the
    vocabulary the heads score; head logits index into it."""

    def __init__(self, hidden_size: int, vocab_size: int, num_heads: int = 4, num_layers: int = 1,
                 own_proj: bool = False, vocab_ids: torch.Tensor | None = None):
        super().__init__()
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.num_heads, self.num_layers, self.own_proj = num_heads, num_layers, own_proj
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResBlock(hidden_size) for _ in range(num_layers)]) for _ in range(num_heads))
        ids = torch.arange(vocab_size) if vocab_ids is None else vocab_ids.to(torch.long)
        self.register_buffer("vocab_ids", ids)
        self.proj = nn.Parameter(torch.zeros(num_heads, len(ids), hidden_size)) if own_proj else None

    def config(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "vocab_size": self.vocab_size, "num_heads": self.num_heads,
                "num_layers": self.num_layers, "own_proj": self.own_proj, "head_vocab": int(self.vocab_ids.numel())}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], vocab_ids: torch.Tensor | None = None) -> "MedusaHeads":
        return cls(cfg["hidden_size"], cfg["vocab_size"], cfg["num_heads"], cfg["num_layers"], cfg["own_proj"],
                   vocab_ids)

    def init_proj_from(self, lm_weight: torch.Tensor) -> None:
        if self.proj is not None:
            with torch.no_grad():
                self.proj.copy_(lm_weight[self.vocab_ids].to(self.proj.dtype)[None].expand_as(self.proj))

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """``h [..., H]`` -> ``[..., K, H]``."""
        return torch.stack([b(h) for b in self.blocks], dim=-2)

    def logits(self, h: torch.Tensor, lm_weight: torch.Tensor, lm_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., K, Vsub]`` over ``vocab_ids``; ``lm_weight``/``lm_bias`` are the backbone's
        lm_head restricted to ``vocab_ids`` (used when the heads share it)."""
        f = self.features(h)
        if self.proj is not None:
            return torch.einsum("...kh,kvh->...kv", f, self.proj)
        out = f @ lm_weight.t()
        return out + lm_bias if lm_bias is not None else out


def lm_head_sub(model, vocab_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The backbone's lm_head rows for ``vocab_ids`` (a contiguous copy: gathered once)."""
    head = model.get_output_embeddings()
    w = head.weight.detach()
    b = head.bias.detach() if getattr(head, "bias", None) is not None else None
    if vocab_ids.numel() == w.shape[0]:
        return w, b
    ids = vocab_ids.to(w.device)
    return w[ids].contiguous(), (b[ids].contiguous() if b is not None else None)


# --------------------------------------------------------------------------------------
# LoRA (Medusa-2's backbone delta)
# --------------------------------------------------------------------------------------

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """``base(x) + scale * B(A(x))`` with A random, B zero (starts as the base layer)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, dtype=base.weight.dtype) / base.in_features ** 0.5)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def add_lora(model, rank: int, alpha: float, targets: Sequence[str] = LORA_TARGETS) -> dict[str, LoRALinear]:
    """Wrap the backbone's target linear layers in place; returns {module name: LoRALinear}."""
    found: dict[str, LoRALinear] = {}
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear) and child_name in targets:
                lora = LoRALinear(child, rank, alpha).to(child.weight.device)
                setattr(mod, child_name, lora)
                found[f"{name}.{child_name}" if name else child_name] = lora
    return found


def lora_delta(loras: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """Tensors to save: per module its A, B and scale."""
    out = {}
    for name, m in loras.items():
        out[f"{name}.lora_a"] = m.lora_a.detach().float().cpu().contiguous()
        out[f"{name}.lora_b"] = m.lora_b.detach().float().cpu().contiguous()
        out[f"{name}.scale"] = torch.tensor([m.scale])
    return out


@torch.no_grad()
def merge_delta(model, delta: dict[str, torch.Tensor]) -> int:
    """W += scale * B @ A for every module in ``delta`` (in place); returns modules merged."""
    mods = dict(model.named_modules())
    names = {k.rsplit(".", 1)[0] for k in delta}
    for name in names:
        lin = mods.get(name)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"backbone delta names {name!r}, which is not a linear layer of this model")
        a, b, s = delta[f"{name}.lora_a"], delta[f"{name}.lora_b"], float(delta[f"{name}.scale"][0])
        lin.weight += (s * (b @ a)).to(lin.weight.dtype).to(lin.weight.device)
    return len(names)


# --------------------------------------------------------------------------------------
# trees
# --------------------------------------------------------------------------------------


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
    """A candidate tree: node 0 is the root, node i+1 is ``paths[i]``."""

    def __init__(self, paths: Sequence[Sequence[int]]):
        self.paths = normalize_paths(paths)
        index = {p: i + 1 for i, p in enumerate(self.paths)}
        self.parents = [-1] + [index.get(p[:-1], 0) for p in self.paths]
        self.depths = [0] + [len(p) for p in self.paths]
        self.depth = max(self.depths)
        self.topk = max((p[-1] for p in self.paths), default=-1) + 1  # candidates needed per head
        self.visible = tree_visibility(self.parents)
        self.size = len(self.parents)  # nodes including the root

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
    have: set[tuple[int, ...]] = set()
    cands = {p: w for p, w in weights.items() if len(p) == 1}
    while len(chosen) < n_nodes and cands:
        p = max(cands, key=lambda q: (cands[q], -len(q), tuple(-r for r in q)))
        del cands[p]
        chosen.append(p)
        have.add(p)
        for q, w in weights.items():
            if len(q) == len(p) + 1 and q[:-1] == p:
                cands[q] = w
    return chosen


def expected_accepted(weights: dict[tuple[int, ...], float], paths: Sequence[tuple[int, ...]]) -> float:
    """Expected tokens per step of a tree: 1 (bonus) + sum of its paths' acceptance weights."""
    return 1.0 + sum(weights.get(tuple(p), 0.0) for p in paths)


# --------------------------------------------------------------------------------------
# artifacts
# --------------------------------------------------------------------------------------


def device_tag(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return "cuda-" + torch.cuda.get_device_name(dev).replace(" ", "_")
    return dev.type


def load_artifact(path: Path, device, dtype) -> tuple[MedusaHeads, dict, dict[str, torch.Tensor] | None]:
    from safetensors.torch import load_file

    cfg = json.loads((path / CONFIG_FILE).read_text())
    tensors = load_file(str(path / HEADS_FILE))
    heads = MedusaHeads.from_config(cfg["heads"], tensors["vocab_ids"])
    heads.load_state_dict(tensors)
    heads.to(device=device, dtype=dtype).eval()
    heads.requires_grad_(False)
    delta = load_file(str(path / DELTA_FILE)) if (path / DELTA_FILE).exists() else None
    return heads, cfg, delta


def tree_default_key(method: str, device) -> str:
    return f"{method}-tree-{device_tag(device)}"


def resolve_tree(spec: Any, *, method: str, model_name: str | None, device, cfg: dict) -> tuple[MedusaTree, str]:
    """``spec``: a list of paths, a JSON string of one, ``default`` (the tuned tree for this
    model and device, else a size-fitted greedy tree), ``chain``, or ``greedyN`` (the N-node
    tree of highest expected acceptance under the heads' measured accuracies)."""
    from accbench.training.artifacts import get_default

    num_heads = int(cfg["heads"]["num_heads"])
    if isinstance(spec, str) and spec.strip().startswith("["):
        spec = json.loads(spec)
    if isinstance(spec, (list, tuple)):
        tree, label = MedusaTree(spec), f"custom{len(normalize_paths(spec))}"
    elif spec in (None, "", "default", "tuned"):
        tuned = get_default(model_name, tree_default_key(method, device)) if model_name else None
        if tuned is not None:
            data = json.loads((tuned / "tree.json").read_text())
            tree, label = MedusaTree(data["paths"]), f"tuned{len(data['paths'])}"
        elif spec == "tuned":
            raise ValueError(f"no tuned tree for {model_name} on {device_tag(device)}: run "
                             f"`accbench tune-tree --method {method} --model {model_name}`")
        else:
            n = 63 if torch.device(device).type == "cuda" else 15
            tree, label = MedusaTree(best_tree(path_weights(cfg.get("stats", {}), num_heads), n)), f"greedy{n}"
    elif spec == "chain":
        tree, label = MedusaTree(chain_tree(num_heads)), "chain"
    elif isinstance(spec, str) and spec.startswith("greedy") and spec[6:].isdigit():
        n = int(spec[6:])
        tree, label = MedusaTree(best_tree(path_weights(cfg.get("stats", {}), num_heads), n)), spec
    else:
        raise ValueError(f"tree {spec!r}: give a JSON list of paths, 'default', 'tuned', 'chain' or 'greedyN'")
    if tree.depth > num_heads:
        raise ValueError(f"tree depth {tree.depth} exceeds the {num_heads} trained heads")
    return tree, label


# --------------------------------------------------------------------------------------
# the decoders
# --------------------------------------------------------------------------------------


class _MedusaBase(DecoderBase):
    lossless = True
    options = {"tree": "default", "heads": None, "eps": 0.09, "delta": 0.3}

    def __init__(self, model, tokenizer, *, sampling=None, model_name=None, **options):
        super().__init__(model, tokenizer, sampling=sampling, model_name=model_name, **options)
        from accbench.training.artifacts import get_default
        from accbench.errors import AccbenchError, NeedsTraining

        path = self.opts["heads"]
        if path:
            path = Path(path)
            if not (path / HEADS_FILE).exists():
                raise AccbenchError(f"{self.name}: no {HEADS_FILE} in {path}")
        else:
            path = get_default(model_name, self.name) if model_name else None
            if path is None:
                raise NeedsTraining(self.name, model_name or "MODEL")
        dtype = next(model.parameters()).dtype
        self.heads, self.artifact_cfg, delta = load_artifact(path, self.device, dtype)
        self.artifact_path = path
        if self.artifact_cfg["heads"]["hidden_size"] != _hidden_size(model) or \
                self.artifact_cfg["heads"]["vocab_size"] != model.get_output_embeddings().weight.shape[0]:
            raise AccbenchError(f"{self.name}: the heads in {path} were trained for another model")
        self.backbone = model
        if self.name == "medusa2":
            if delta is None:
                raise AccbenchError(f"{self.name}: {path} has no {DELTA_FILE}")
            self.backbone = copy.deepcopy(model)  # private: other decoders keep the original
            merge_delta(self.backbone, delta)
            self.backbone.requires_grad_(False)
        self.tree, self.tree_label = resolve_tree(self.opts["tree"], method=self.name, model_name=model_name,
                                                  device=self.device, cfg=self.artifact_cfg)
        self._setup_tree()
        w, b = lm_head_sub(self.backbone, self.heads.vocab_ids)
        self._lm_w, self._lm_b = w, b
        self._vocab_ids = self.heads.vocab_ids.to(self.device)

    def _setup_tree(self) -> None:
        t, dev = self.tree, self.device
        self._topk = max(1, t.topk)
        self._flat = t.flat_index(self._topk).to(dev)
        self._depths = torch.tensor(t.depths, device=dev)
        self._vis = t.visible.to(dev)
        self._parents = t.parents
        self._parents_t = torch.tensor([max(p, 0) for p in t.parents], device=dev)

    def _draft(self, h: torch.Tensor, committed: list[int]) -> torch.Tensor:
        """Candidate token ids ``[K * topk]`` (flattened head-major) from the hidden state of the
        last accepted node (``committed``: the tokens so far, unused by the heads)."""
        logits = self.heads.logits(h, self._lm_w, self._lm_b)  # [K, Vsub]
        idx = logits.topk(self._topk, dim=-1).indices  # [K, topk]
        return self._vocab_ids[idx].reshape(-1)

    def _accept_typical(self, logits: torch.Tensor, tokens: torch.Tensor) -> tuple[list[int], int]:
        cfg, eps, delta = self.sampling, float(self.opts["eps"]), float(self.opts["delta"])
        probs = sampling_probs(logits, cfg)  # [n, V]
        ent = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
        thr = torch.minimum(torch.full_like(ent, eps), delta * torch.exp(-ent))
        par = self._parents_t[1:]
        ok_edge = (probs[par, tokens[1:]] > thr[par]).tolist()
        path = longest_accepted_path(self._parents, [True] + ok_edge)
        bonus = int(torch.multinomial(probs[path[-1]], 1, generator=self._generator))
        return path, bonus

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, stop=None) -> GenerationRecord:
        stopper = self._stop_checker(stop)
        model, sampling, gen = self.backbone, self.sampling, self._generator
        greedy = sampling.greedy
        ids = self._prompt_tensor(prompt_ids)
        n_prompt = ids.shape[1]
        device = self.device
        depth_max = self.tree.depth
        drafted = [0] * depth_max
        accepted = [0] * depth_max
        accept_hist = [0] * (depth_max + 1)
        parents, flat, depths, vis = self._parents, self._flat, self._depths, self._vis
        draft_s = 0.0
        cache = make_cache(model)
        clock = Clock(device)

        clock.start()
        hidden = model.model(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state[0, -1]
        logits = logits_from_hidden(model, hidden)
        first = sample_from_logits(logits, sampling, gen)
        tokens = [int(first)]
        ttft = clock.elapsed()
        steps = [1]
        forwards = 1
        root = first.reshape(1)
        hit = stopper.first_stop(tokens)
        while hit is None and len(tokens) < max_new_tokens:
            t0 = clock.elapsed()
            cands = self._draft(hidden, tokens)
            block = torch.cat([root, cands[flat]])
            draft_s += clock.elapsed() - t0
            prefix = n_prompt + len(tokens) - 1
            logits, hid = block_forward(model, cache, block[None], depths, vis, want_hidden=True)
            forwards += 1
            if greedy:
                pred = logits.argmax(dim=-1).tolist()
                path = accept_greedy(block.tolist(), parents, pred)
                bonus = pred[path[-1]]
            else:
                path, bonus = self._accept_typical(logits, block)
            a = len(path) - 1
            accept_hist[a] += 1
            for d in range(depth_max):
                drafted[d] += 1
                accepted[d] += d < a
            compact_cache(cache, prefix, path)
            new = block[path[1:]].tolist() + [bonus] if a else [bonus]
            n_c, hit = commit(tokens, new, stopper, max_new_tokens)
            steps.append(n_c)
            hidden = hid[path[-1]]
            root = torch.tensor([bonus], device=device)
        total = clock.elapsed()
        return GenerationRecord(
            tokens=tokens, ttft_s=ttft, total_s=total, forward_passes=forwards, tokens_per_step=steps,
            drafted=drafted, accepted=accepted, lossless=self.is_lossless,
            finish_reason=hit[1] if hit else "length",
            extra={"draft_s": draft_s, "verify_s": total - ttft - draft_s, "tree": self.tree_label,
                   "tree_nodes": self.tree.size, "accepted_depth_hist": accept_hist},
        )

    # ---- training and tuning (bench/medusa_train.py, bench/medusa_trees.py) ----

    @classmethod
    def train(cls, request, console) -> Path:
        from accbench.methods.medusa.train import train_medusa

        return train_medusa(cls.name, request, console)

    @classmethod
    def tune(cls, options: dict, console) -> Path:
        from accbench.methods.medusa.tune import tune_tree

        return tune_tree(cls.name, options, console)


def _hidden_size(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.hidden_size)


@register
class Medusa1Decoder(_MedusaBase):
    name = "medusa1"
    description = "Medusa-1: trained heads on a frozen backbone, tree verification (lossless)."


@register
class Medusa2Decoder(_MedusaBase):
    name = "medusa2"
    description = ("Medusa-2: heads and backbone (LoRA) trained together; lossless against its own "
                   "fine-tuned backbone, quality vs the original model reported.")
