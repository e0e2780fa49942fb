"""Medusa's heads and artifacts: K residual heads over the backbone's final hidden state, the
LoRA delta Medusa-2 trains into the backbone, and the artifact folder that holds them.

- Head k (k = 1..K) reads the final (normed) hidden state h_t and predicts token t+1+k
  (the base lm_head predicts t+1). A head is ``num_layers`` residual blocks
  ``x + SiLU(W x + b)`` (W zero-initialised, so an untrained head equals the base predictor)
  followed by a vocabulary projection: the shared lm_head (default; tiny artifacts) or a
  projection per head initialised from it. The projection may be restricted to a subset of
  the vocabulary (``head_vocab``: the tokens the backbone predicts most often on the training
  text): drafting then costs a fraction of a full lm_head pass, which matters on a CPU, and
  only tokens outside the subset can never be drafted (verification keeps output exact).
- An artifact folder holds ``heads.safetensors``, ``config.json`` (the heads' shape, the
  training recipe, held-out statistics) and, for Medusa-2, ``backbone_delta.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from accbench.methods.core.errors import AccbenchError
from accbench.methods.core.quirks import hidden_size
from torch import nn

HEADS_FILE = "heads.safetensors"
DELTA_FILE = "backbone_delta.safetensors"
CONFIG_FILE = "config.json"


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
# the artifact folder
# --------------------------------------------------------------------------------------


def load_artifact(path: Path, model) -> tuple[MedusaHeads, dict, dict[str, torch.Tensor] | None]:
    """The heads (on ``model``'s device and dtype, frozen), the artifact's config and the
    backbone delta (None when the folder has none). The heads must fit ``model``."""
    from safetensors.torch import load_file

    cfg = json.loads((path / CONFIG_FILE).read_text())
    shape = cfg["heads"]
    if shape["hidden_size"] != hidden_size(model) or \
            shape["vocab_size"] != model.get_output_embeddings().weight.shape[0]:
        raise AccbenchError(f"the Medusa heads in {path} were trained for another model")
    tensors = load_file(str(path / HEADS_FILE))
    heads = MedusaHeads.from_config(shape, tensors["vocab_ids"])
    heads.load_state_dict(tensors)
    param = next(model.parameters())
    heads.to(device=param.device, dtype=param.dtype).eval()
    heads.requires_grad_(False)
    delta = load_file(str(path / DELTA_FILE)) if (path / DELTA_FILE).exists() else None
    return heads, cfg, delta
