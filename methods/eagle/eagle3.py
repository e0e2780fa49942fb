"""The EAGLE-3 draft model (Li et al. 2025, arXiv 2503.01840) in the layout of SafeAILab/EAGLE's
published checkpoints (``yuhuili/EAGLE3-*``: ``config.json`` + ``pytorch_model.bin`` or
``model.safetensors``; the module is ``Model`` in ``eagle/model/cnets.py``).

Input at position t: the target's hidden states of token t at three depths, concatenated
(``[low; mid; high]``, ``3 * target_hidden``), and the embedding of the next token x_{t+1}.

- The three states are the *inputs* of the target's decoder layers ``2``, ``L // 2`` and
  ``L - 3`` (SafeAILab/EAGLE ``modeling_llama_kv.py``: ``if idx == len(self.layers) - 3 or idx
  == len(self.layers) // 2 or idx == 2: all_hidden_states += (hidden_states,)`` before layer
  ``idx`` runs), i.e. the outputs of layers 1, L//2 - 1 and L - 4, in layer order, before the
  final norm; in Hugging Face's ``output_hidden_states`` numbering, ``hidden_states[2]``,
  ``[L // 2]`` and ``[L - 3]``. ``config.json`` may name other layers with
  ``eagle_aux_hidden_state_layer_ids`` (top level or under ``eagle_config``; the key vLLM and
  SpecForge use), read in the same convention (the input of layer ``idx``; ``idx = L`` is the
  last layer's output before the final norm).
- ``fc.weight`` [h, 3 * target_hidden] (no bias) fuses them to the draft width ``h``; the
  draft's own output (width ``h``) is fed back unfused when drafting deeper levels (cnets.py
  applies ``fc`` only when the feature is wider than the embedding).
- ``midlayer``: one Llama decoder layer whose attention reads ``2h``: ``cat(input_layernorm(emb),
  hidden_norm(feature))``; ``q_proj``/``k_proj``/``v_proj`` are ``[heads * head_dim, 2h]``
  (head_dim = h // heads), ``o_proj`` ``[h, heads * head_dim]``, no biases; the residual is the
  un-normed fused feature; then ``post_attention_layernorm`` + a SiLU-gated MLP.
- ``norm.weight`` [h] and ``lm_head.weight`` [draft_vocab, h]: the draft's own head over its
  reduced vocabulary (``config.json``: ``draft_vocab_size``).
- ``d2t`` (int64 [draft_vocab]): target id = draft id + ``d2t[draft id]``; ``t2d`` (bool
  [vocab]): which target ids the draft vocabulary covers (used in training; here checked to
  agree with ``d2t``). When ``draft_vocab_size == vocab_size`` EAGLE ignores both (ids are the
  target's); they are then optional and only shape-checked.
- ``embed_tokens.weight`` [vocab, h] optional: without it the target's embedding matrix is
  used (as EAGLE loads it from the base model), read as a plain lookup (no Gemma scaling).

Rotary: ``rope_theta`` from config.json (10000 when absent, as cnets.py's default), ``rope_scaling``
``linear`` / ``dynamic`` as in cnets.py.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from accbench.methods.core.errors import AccbenchError
from accbench.methods.core.quirks import text_config
from torch import nn
from transformers import DynamicCache, LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

AUX_KEY = "eagle_aux_hidden_state_layer_ids"
REQUIRED_CONFIG = ("hidden_size", "num_attention_heads", "intermediate_size")


def is_eagle3(state: dict[str, Any]) -> bool:
    return any(k.startswith("midlayer.") for k in state) or "d2t" in state


def default_aux_layers(n_layers: int) -> list[int]:
    """EAGLE-3's layers: the inputs of decoder layers 2, L // 2 and L - 3."""
    return [2, n_layers // 2, n_layers - 3]


def aux_layers(cfg: dict, n_layers: int, where: str) -> list[int]:
    """The target layers whose inputs feed the draft (see the module docstring), checked."""
    ids = cfg.get(AUX_KEY)
    if ids is None and isinstance(cfg.get("eagle_config"), dict):
        ids = cfg["eagle_config"].get(AUX_KEY)
    given = ids is not None
    if not given:
        ids = default_aux_layers(n_layers)
    if (not isinstance(ids, (list, tuple)) or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise AccbenchError(f"eagle: {where}: {AUX_KEY} must be a list of layer indices, got {ids!r}")
    bad = [i for i in ids if not 0 <= i <= n_layers]
    if bad or len(set(ids)) != len(ids) or list(ids) != sorted(ids):
        how = f"{AUX_KEY}={list(ids)}" if given else f"EAGLE-3's default layers (2, L//2, L-3) = {list(ids)}"
        raise AccbenchError(f"eagle: {where}: {how} do not name distinct increasing layers of a {n_layers}-layer "
                            f"target (0..{n_layers}); set {AUX_KEY} in config.json")
    return list(ids)


def _rope(cfg: dict, where: str) -> dict[str, Any]:
    theta = float(cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    if not scaling:
        return {"rope_theta": theta}
    kind = scaling.get("type", scaling.get("rope_type")) if isinstance(scaling, dict) else None
    if kind not in ("linear", "dynamic") or "factor" not in scaling:
        raise AccbenchError(f"eagle: {where}: rope_scaling {scaling!r} is not supported (EAGLE-3's cnets.py "
                            "knows linear and dynamic)")
    return {"rope_theta": theta, "rope_scaling": {"rope_type": kind, "factor": float(scaling["factor"])}}


def draft_config(model, cfg: dict, where: str) -> LlamaConfig:
    missing = [k for k in REQUIRED_CONFIG if k not in cfg]
    if missing:
        raise AccbenchError(f"eagle: {where}: an EAGLE-3 config.json needs {', '.join(missing)}")
    tcfg = text_config(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if int(cfg.get("vocab_size", vocab)) != vocab:
        raise AccbenchError(f"eagle: {where}: vocab_size={cfg['vocab_size']} but the target's vocabulary has {vocab}")
    target_h = int(tcfg.hidden_size)
    if int(cfg.get("target_hidden_size", target_h)) != target_h:
        raise AccbenchError(f"eagle: {where}: target_hidden_size={cfg['target_hidden_size']} but the target's "
                            f"hidden size is {target_h}")
    h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if h % heads:
        raise AccbenchError(f"eagle: {where}: hidden_size {h} is not a multiple of num_attention_heads {heads}")
    max_pos = max(int(cfg.get("max_position_embeddings", 2048)), int(getattr(tcfg, "max_position_embeddings", 0) or 0))
    lc = LlamaConfig(vocab_size=int(cfg.get("draft_vocab_size", vocab)), hidden_size=h,
                     intermediate_size=int(cfg["intermediate_size"]), num_hidden_layers=1,
                     num_attention_heads=heads, num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                     head_dim=h // heads, hidden_act=cfg.get("hidden_act", "silu"),
                     rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), max_position_embeddings=max_pos,
                     attention_bias=False, mlp_bias=False, **_rope(cfg, where))
    lc._attn_implementation = "eager" if getattr(tcfg, "_attn_implementation", "sdpa") == "eager" else "sdpa"
    return lc


class Eagle3Layer(nn.Module):
    """cnets.py's ``LlamaDecoderLayeremb``: attention over ``[norm(emb); norm(feature)]``."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        h = cfg.hidden_size
        self.self_attn = LlamaAttention(cfg, layer_idx=0)
        hd = self.self_attn.head_dim
        self.self_attn.q_proj = nn.Linear(2 * h, cfg.num_attention_heads * hd, bias=False)
        self.self_attn.k_proj = nn.Linear(2 * h, cfg.num_key_value_heads * hd, bias=False)
        self.self_attn.v_proj = nn.Linear(2 * h, cfg.num_key_value_heads * hd, bias=False)
        self.mlp = LlamaMLP(cfg)
        self.hidden_norm = LlamaRMSNorm(h, eps=cfg.rms_norm_eps)
        self.input_layernorm = LlamaRMSNorm(h, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(h, eps=cfg.rms_norm_eps)
        params = inspect.signature(self.self_attn.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def forward(self, emb, feat, mask, rope, cache=None):
        x = torch.cat([self.input_layernorm(emb), self.hidden_norm(feat)], dim=-1)
        a = self.self_attn(hidden_states=x, position_embeddings=rope, attention_mask=mask,
                           **{self._cache_kw: cache})[0]
        h = feat + a
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Draft(nn.Module):
    """``fc`` + ``midlayer`` + ``norm`` + ``lm_head`` (+ ``d2t``/``t2d``, optional ``embed_tokens``)."""

    version = 3

    def __init__(self, model, cfg: dict, layers: Sequence[int], *, mapped: bool, own_embeddings: bool,
                 where: str = "config.json"):
        super().__init__()
        lc = draft_config(model, cfg, where)
        self.config = lc
        self.layers_used = list(layers)
        self.hidden = h = lc.hidden_size
        self.target_hidden = int(text_config(model).hidden_size)
        vocab = int(model.get_input_embeddings().weight.shape[0])
        self.vocab, self.draft_vocab = vocab, lc.vocab_size
        self.fc = nn.Linear(len(self.layers_used) * self.target_hidden, h, bias=False)
        self.midlayer = Eagle3Layer(lc)
        self.norm = LlamaRMSNorm(h, eps=lc.rms_norm_eps)
        self.lm_head = nn.Linear(h, lc.vocab_size, bias=False)
        self.mapped = mapped
        if mapped:
            self.register_buffer("d2t", torch.zeros(lc.vocab_size, dtype=torch.long))
            self.register_buffer("t2d", torch.zeros(vocab, dtype=torch.bool))
        self.embed_tokens = nn.Embedding(vocab, h) if own_embeddings else None
        if not own_embeddings and h != self.target_hidden:
            raise AccbenchError(f"eagle: {where}: the draft's hidden_size {h} differs from the target's "
                                f"{self.target_hidden} and the checkpoint has no embed_tokens.weight")
        self._target_emb = [model.get_input_embeddings()]  # a list: not a submodule
        self.rotary = LlamaRotaryEmbedding(config=lc)
        self._eager = lc._attn_implementation == "eager"
        p = next(model.parameters())
        self.to(device=p.device, dtype=p.dtype)

    # -- pieces the drafter uses ---------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("rotary.")}

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.embed_tokens.weight if self.embed_tokens is not None else self._target_emb[0].weight
        return F.embedding(ids, w).to(self.fc.weight.dtype)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """Draft logits over the draft vocabulary."""
        return self.lm_head(self.norm(out))

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids] if self.mapped else draft_ids

    def init_random(self, seed: int = 0, std: float = 0.02) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for prm in self.parameters():
                if prm.dim() >= 2:
                    prm.copy_(torch.randn(prm.shape, generator=g) * std)
                else:
                    prm.copy_(1.0 + torch.randn(prm.shape, generator=g) * std)

    def mask(self, prefix: int, visible: torch.Tensor):
        m = visible.shape[0]
        allowed = torch.ones(m, prefix + m, dtype=torch.bool, device=visible.device)
        allowed[:, prefix + m - visible.shape[1]:] = visible
        allowed = allowed[None, None]
        if self._eager:
            dtype = self.fc.weight.dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)
        return allowed

    def forward(self, emb: torch.Tensor, feat: torch.Tensor, positions: torch.Tensor,
                cache: DynamicCache | None = None, visible: torch.Tensor | None = None,
                fuse: bool | None = None) -> torch.Tensor:
        """``emb`` [B, m, h]; ``feat`` [B, m, 3 * target_h] (the target's layers: ``fc``
        applies) or [B, m, h] (the draft's own outputs, fed back as they are); ``fuse`` says
        which (None: by width, as cnets.py). Returns the draft outputs [B, m, h] (before
        ``norm``); ``visible`` as in :class:`EagleDraft`."""
        m = emb.shape[1]
        prefix = cache.get_seq_length() if cache is not None else 0
        if visible is None:
            visible = torch.ones(m, m, dtype=torch.bool, device=emb.device).tril_()
        if feat.shape[-1] != self.hidden if fuse is None else fuse:
            feat = self.fc(feat)
        pos = positions.view(1, -1)
        rope = self.rotary(feat, pos)
        return self.midlayer(emb, feat, self.mask(prefix, visible), rope, cache)


def config_shapes(cfg: dict, where: str) -> dict[str, tuple[int, ...]]:
    """The tensor shapes an EAGLE-3 ``config.json`` implies, without the target model (the
    preflight check; ``t2d`` only when the config names ``vocab_size``). Loading checks them
    again against the module built for the target."""
    missing = [k for k in REQUIRED_CONFIG if k not in cfg]
    if missing:
        raise AccbenchError(f"eagle: {where}: an EAGLE-3 config.json needs {', '.join(missing)}")
    h, heads, inter = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), int(cfg["intermediate_size"])
    if h % heads:
        raise AccbenchError(f"eagle: {where}: hidden_size {h} is not a multiple of num_attention_heads {heads}")
    kv, hd = int(cfg.get("num_key_value_heads") or heads), h // heads
    th = int(cfg.get("target_hidden_size", h))
    ids = cfg.get(AUX_KEY) or (cfg.get("eagle_config") or {}).get(AUX_KEY) or [2, 1, 0]
    vocab = cfg.get("vocab_size")
    dv = cfg.get("draft_vocab_size", vocab)
    a = "midlayer.self_attn."
    m = "midlayer.mlp."
    shapes = {"fc.weight": (h, len(ids) * th), a + "q_proj.weight": (heads * hd, 2 * h),
              a + "k_proj.weight": (kv * hd, 2 * h), a + "v_proj.weight": (kv * hd, 2 * h),
              a + "o_proj.weight": (h, heads * hd), m + "gate_proj.weight": (inter, h), m + "up_proj.weight": (inter, h),
              m + "down_proj.weight": (h, inter), "midlayer.hidden_norm.weight": (h,),
              "midlayer.input_layernorm.weight": (h,), "midlayer.post_attention_layernorm.weight": (h,),
              "norm.weight": (h,)}
    if dv is not None:
        shapes["lm_head.weight"] = (int(dv), h)
        shapes["d2t"] = (int(dv),)
    if vocab is not None:
        shapes["t2d"] = (int(vocab),)
        shapes["embed_tokens.weight"] = (int(vocab), h)
    return shapes


def check_shapes(cfg: dict, shapes: dict[str, tuple[int, ...]], path) -> None:
    """Preflight: the checkpoint's tensor ``shapes`` against its config (one line on a mismatch)."""
    want = config_shapes(cfg, str(path))
    optional = {"embed_tokens.weight", "d2t", "t2d"}
    if cfg.get("vocab_size") is not None and cfg.get("draft_vocab_size", cfg["vocab_size"]) != cfg["vocab_size"]:
        optional -= {"d2t", "t2d"}
    for k, shape in want.items():
        if k not in shapes and k not in optional:
            raise AccbenchError(f"eagle: {path} lacks tensor {k} (expected shape {list(shape)})")
    for k, shape in shapes.items():
        if k not in want and k not in ("lm_head.weight", "d2t", "t2d", "embed_tokens.weight"):
            raise AccbenchError(f"eagle: {path}: unexpected tensor {k} {list(shape)} (not an EAGLE-3 draft)")
        if k in want and tuple(shape) != want[k]:
            raise AccbenchError(f"eagle: {path}: tensor {k} has shape {list(shape)}, expected {list(want[k])}")


def _check_mapping(draft: Eagle3Draft, path) -> None:
    d2t, t2d = draft.d2t, draft.t2d
    ids = torch.arange(draft.draft_vocab, device=d2t.device) + d2t
    if int(ids.min()) < 0 or int(ids.max()) >= draft.vocab:
        raise AccbenchError(f"eagle: {path}: d2t maps draft ids outside the target vocabulary (0..{draft.vocab - 1})")
    if ids.unique().numel() != ids.numel():
        raise AccbenchError(f"eagle: {path}: d2t maps two draft ids to the same target id")
    if int(t2d.sum()) != draft.draft_vocab or not bool(t2d[ids].all()):
        raise AccbenchError(f"eagle: {path}: t2d does not mark exactly the {draft.draft_vocab} target ids d2t maps to")


def load_eagle3(model, cfg: dict, state: dict[str, torch.Tensor], path) -> Eagle3Draft:
    """An EAGLE-3 checkpoint's ``state`` (read safely by published.py) loaded strictly."""
    where = str(path)
    if cfg.get("num_hidden_layers", 1) not in (1, None):
        raise AccbenchError(f"eagle: {where}: config.json has num_hidden_layers={cfg['num_hidden_layers']}, expected 1")
    n_layers = len(model.model.layers)
    layers = aux_layers(cfg, n_layers, where)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    dv = int(cfg.get("draft_vocab_size", vocab))
    reduced = dv != vocab
    if reduced and not ("d2t" in state and "t2d" in state):
        raise AccbenchError(f"eagle: {path} lacks tensor {'d2t' if 'd2t' not in state else 't2d'} "
                            f"(draft_vocab_size {dv} != vocab_size {vocab} needs d2t and t2d)")
    draft = Eagle3Draft(model, cfg, layers, mapped=reduced, own_embeddings="embed_tokens.weight" in state, where=where)
    expected = {k: tuple(v.shape) for k, v in draft.weights().items()}
    shapes = dict(expected)
    if not reduced:  # EAGLE ignores them when the vocabularies agree; shape-checked only
        shapes.update({k: s for k, s in (("d2t", (dv,)), ("t2d", (vocab,))) if k in state})
    for k, shape in expected.items():
        if k not in state:
            raise AccbenchError(f"eagle: {path} lacks tensor {k} (expected shape {list(shape)})")
    for k, v in state.items():
        if k not in shapes:
            raise AccbenchError(f"eagle: {path}: unexpected tensor {k} {list(v.shape)} (not an EAGLE-3 draft)")
        if tuple(v.shape) != shapes[k]:
            raise AccbenchError(f"eagle: {path}: tensor {k} has shape {list(v.shape)}, expected {list(shapes[k])}")
        if k == "d2t" and (v.dtype.is_floating_point or v.dtype == torch.bool):
            raise AccbenchError(f"eagle: {path}: d2t has dtype {v.dtype}, expected an integer tensor")
        if k == "t2d" and v.dtype.is_floating_point:
            raise AccbenchError(f"eagle: {path}: t2d has dtype {v.dtype}, expected bool")
        if k not in ("d2t", "t2d") and not v.dtype.is_floating_point:
            raise AccbenchError(f"eagle: {path}: tensor {k} has dtype {v.dtype}, expected floating point")
    p = next(model.parameters())
    load = {}
    for k in expected:
        v = state[k]
        if k == "d2t":
            v = v.to(device=p.device, dtype=torch.long)
        elif k == "t2d":
            v = v.to(device=p.device).bool()
        else:
            v = v.to(device=p.device, dtype=p.dtype)
        load[k] = v
    draft.load_state_dict(load, strict=False)
    if reduced:
        _check_mapping(draft, path)
    draft.requires_grad_(False)
    return draft


def synthetic_eagle3(model, directory, *, layers: Sequence[int] | None = None, draft_vocab: int | None = None,
                     seed: int = 0, std: float = 0.2, fmt: str = "safetensors", **cfg_over: Any):
    """Write a random EAGLE-3 checkpoint in the published layout for ``model`` (tests, demos):
    ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``); ``draft_vocab``: a
    reduced vocabulary (the first ``draft_vocab`` ids after a seeded shuffle)."""
    import json
    from pathlib import Path

    tcfg = text_config(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "hidden_size": int(tcfg.hidden_size),
           "intermediate_size": int(tcfg.intermediate_size), "num_attention_heads": int(tcfg.num_attention_heads),
           "num_key_value_heads": int(tcfg.num_key_value_heads), "num_hidden_layers": 1,
           "rms_norm_eps": float(getattr(tcfg, "rms_norm_eps", 1e-6)), "hidden_act": "silu",
           "vocab_size": vocab, "draft_vocab_size": draft_vocab or vocab, **cfg_over}
    if layers is not None:
        cfg[AUX_KEY] = list(layers)
    n_layers = len(model.model.layers)
    ids = aux_layers(cfg, n_layers, "synthetic")
    reduced = cfg["draft_vocab_size"] != vocab
    d = Eagle3Draft(model, cfg, ids, mapped=reduced, own_embeddings=False)
    d.init_random(seed, std)
    state = {k: v.detach().to("cpu").contiguous() for k, v in d.weights().items()}
    if reduced:
        g = torch.Generator().manual_seed(seed)
        used = torch.randperm(vocab, generator=g)[: cfg["draft_vocab_size"]].sort().values
        state["d2t"] = used - torch.arange(len(used))
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[used] = True
        state["t2d"] = t2d
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if fmt == "bin":
        torch.save(state, out / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(out / "model.safetensors"))
    return out
