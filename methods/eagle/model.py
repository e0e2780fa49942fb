"""The EAGLE draft model (Li et al. 2024, arXiv 2401.15077).

Input at position t: the target's feature ``f_t`` and the embedding of the next token
``x_{t+1}``, fused by ``fc`` over ``[emb; feature]`` (2h -> h, with bias; EAGLE's cnets.py
concatenates the embedding first), then one decoder layer of the target's own class with its
``input_layernorm`` removed (as in EAGLE-1/2's checkpoints), whose output is the predicted
feature ``f_{t+1}``; the target's frozen lm_head turns it into draft logits for ``x_{t+2}``.

Feature: EAGLE-1/2 train on the base model's final hidden states *after* the final norm
(``outputs[0]`` of the base ``LlamaModel``, i.e. HF ``hidden_states[-1]``) and feed the draft
output straight into the lm_head, with no norm of its own; the loop's ``Verified.hidden`` is
exactly that state (``model.model(...).last_hidden_state``).

Artifact: ``draft.safetensors`` (fc.*, layers.0.*) + ``config.json``; keys follow EAGLE-1's
``pytorch_model.bin`` so published checkpoints load into the same module (published.py).
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from accbench.methods.core.quirks import logits_from_hidden, text_config
from torch import nn
from transformers import DynamicCache

WEIGHTS_FILE = "draft.safetensors"
CONFIG_FILE = "config.json"


class EagleDraft(nn.Module):
    """``fc`` + one decoder layer of the target's type; embeddings and lm_head are the target's."""

    def __init__(self, model, fuse: int = 1):
        super().__init__()
        cfg = copy.deepcopy(text_config(model))
        cfg.num_hidden_layers = 1
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = ["full_attention"]
        self.config = cfg
        h = int(cfg.hidden_size)
        self.hidden = h
        self.fuse = fuse
        self.fc = nn.Linear(h * (1 + fuse), h, bias=True)
        layer_cls = type(model.model.layers[-1])
        self.layer_class = layer_cls.__name__
        layer = layer_cls(cfg, 0)
        layer.input_layernorm = nn.Identity()  # EAGLE-1/2: no input norm on the draft layer
        self.layers = nn.ModuleList([layer])
        self.rotary = type(model.model.rotary_emb)(config=cfg)
        self._rope_kw = ({"layer_type": "full_attention"}
                         if "layer_type" in inspect.signature(self.rotary.forward).parameters else {})
        self._eager = getattr(text_config(model), "_attn_implementation", "sdpa") == "eager"
        p = next(model.parameters())
        self.to(device=p.device, dtype=p.dtype)

    def init_random(self, seed: int = 0, std: float | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        std = float(getattr(self.config, "initializer_range", 0.02)) if std is None else std
        with torch.no_grad():
            for name, prm in self.named_parameters():
                if prm.dim() >= 2:
                    prm.copy_(torch.randn(prm.shape, generator=g) * std)
                elif name.startswith("fc."):
                    prm.zero_()

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("rotary.")}

    # -- forward -------------------------------------------------------------------------
    def mask(self, prefix: int, visible: torch.Tensor) -> torch.Tensor | None:
        m = visible.shape[0]
        allowed = torch.ones(m, prefix + m, dtype=torch.bool, device=visible.device)
        allowed[:, prefix + m - visible.shape[1]:] = visible  # visible may cover earlier rows too
        allowed = allowed[None, None]
        if self._eager:
            dtype = self.fc.weight.dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)
        return allowed

    def forward(self, emb: torch.Tensor, feat: torch.Tensor, positions: torch.Tensor,
                cache: DynamicCache | None = None, visible: torch.Tensor | None = None) -> torch.Tensor:
        """``emb`` / ``feat`` [B, m, h]: predicted features [B, m, h]. ``visible`` [m, m] (the
        new rows among themselves; default causal) after the cache's prefix; ``[m, j + m]`` covers
        the last ``j`` cached rows too (tree drafting), the earlier prefix being visible to all."""
        m = emb.shape[1]
        prefix = cache.get_seq_length() if cache is not None else 0
        if visible is None:
            visible = torch.ones(m, m, dtype=torch.bool, device=emb.device).tril_()
        x = self.fc(torch.cat([emb, feat], dim=-1))
        pos = positions.view(1, -1)
        rope = self.rotary(x, pos, **self._rope_kw)
        out = self.layers[0](x, attention_mask=self.mask(prefix, visible), position_ids=pos,
                             past_key_values=cache, use_cache=cache is not None, position_embeddings=rope)
        return out[0] if isinstance(out, tuple) else out

    # -- (de)serialisation ---------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"format": "accbench-eagle", "hidden_size": self.hidden, "fuse": self.fuse,
                "layer_class": self.layer_class,
                "shapes": {k: list(v.shape) for k, v in self.weights().items()}}

    def save(self, directory: str | Path, **info: Any) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to("cpu").contiguous() for k, v in self.weights().items()}, str(d / WEIGHTS_FILE))
        (d / CONFIG_FILE).write_text(json.dumps({**self.meta(), **info}, indent=2, default=str))
        return d


def draft_logits(model, feats: torch.Tensor) -> torch.Tensor:
    return logits_from_hidden(model, feats)
