"""The MTP heads (Gloeckle et al. 2024): ``n - 1`` extra transformer blocks on a shared trunk.

Architecture. ``n`` heads share the trunk, the final norm and the unembedding. Head 1 is the
model's own next-token path. Heads 2..n are each one decoder layer of the backbone's own type
(``LlamaDecoderLayer``, ``Gemma3DecoderLayer``... built from the model's config, with their own
rotary embedding and their own KV cache), reading the trunk's hidden state at the *branch
point* and followed by the shared final norm and unembedding; head i at position t predicts
token t+i.

Branch point (``branch_layer``): the residual-stream state after that many backbone layers,
before the final norm. The default is all layers (the final pre-norm state), so the whole model
is head 1 and the base model is untouched. Meta's released MTP models branch one layer earlier
(see ``meta.py``).

Artifacts: a directory with ``heads.safetensors`` and ``mtp.json`` (and, for a fine-tuned or
converted backbone, a full Hugging Face model beside them, loadable with ``--model DIR``).
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from accbench.methods.core.errors import AccbenchError
from accbench.methods.core.quirks import logits_from_hidden, text_config
from torch import nn
from transformers import DynamicCache

HEADS_FILE = "heads.safetensors"
META_FILE = "mtp.json"
DRAFT_VOCAB_KEY = "draft_vocab"  # optional in HEADS_FILE: the token ids drafts are drawn from


def resolve_branch(model, branch_layer: int | None) -> int:
    """``None`` -> all layers; negative counts from the end (``-1``: before the last layer)."""
    n_layers = len(model.model.layers)
    b = n_layers if branch_layer is None else int(branch_layer)
    if b < 0:
        b += n_layers
    if not 0 <= b <= n_layers:
        raise ValueError(f"branch_layer {branch_layer} out of range for a {n_layers}-layer model")
    return b


class MTPHeads(nn.Module):
    """``n_extra`` decoder layers of the backbone's type (heads 2..n), with their own rotary
    embedding; the final norm and unembedding stay the backbone's (not stored here)."""

    def __init__(self, model, n_extra: int, branch_layer: int | None = None):
        super().__init__()
        if n_extra < 1:
            raise ValueError("MTP needs at least one extra head (n >= 2)")
        base_cfg = text_config(model)
        cfg = copy.deepcopy(base_cfg)
        cfg.num_hidden_layers = n_extra
        if getattr(cfg, "layer_types", None) is not None:
            # every head attends over the whole prefix (no sliding window)
            cfg.layer_types = ["full_attention"] * n_extra
        self.config = cfg
        self.n_extra = n_extra
        self.branch_layer = resolve_branch(model, branch_layer)
        layer_cls = type(model.model.layers[-1])
        self.layer_class = layer_cls.__name__
        self.layers = nn.ModuleList([layer_cls(cfg, i) for i in range(n_extra)])
        self.rotary = type(model.model.rotary_emb)(config=cfg)
        self._rope_kw = ({"layer_type": "full_attention"}
                         if "layer_type" in inspect.signature(self.rotary.forward).parameters else {})
        self._eager = getattr(base_cfg, "_attn_implementation", "sdpa") == "eager"
        self.draft_vocab: torch.Tensor | None = None  # set by load() when the artifact has one
        p = next(model.parameters())
        self.to(device=p.device, dtype=p.dtype)

    # -- initialisation ------------------------------------------------------------------
    def init_from_backbone(self, model, mode: str = "copy", seed: int = 0) -> None:
        """``copy``: every head starts as a copy of the backbone's last layer (Meta's heads run
        parallel to it); ``random``: the config's normal init (seeded); ``identity``: copy with
        the output projections zeroed, so each head starts by passing its input through."""
        g = torch.Generator().manual_seed(seed)
        last = model.model.layers[-1].state_dict()
        for layer in self.layers:
            if mode in ("copy", "identity"):
                layer.load_state_dict(last)
                if mode == "identity":
                    with torch.no_grad():
                        for name, prm in layer.named_parameters():
                            if name.endswith(("o_proj.weight", "down_proj.weight")):
                                prm.zero_()
            elif mode == "random":
                std = float(getattr(self.config, "initializer_range", 0.02))
                with torch.no_grad():
                    for name, prm in layer.named_parameters():
                        if prm.dim() >= 2:
                            prm.copy_(torch.randn(prm.shape, generator=g) * std)
                        else:  # norms: keep the backbone's (1 for Llama, 0 = unit scale for Gemma)
                            prm.copy_(dict(model.model.layers[-1].named_parameters())[name])
            else:
                raise ValueError(f"unknown MTP head init {mode!r}: copy, identity or random")

    # -- forward -------------------------------------------------------------------------
    def make_cache(self) -> DynamicCache:
        return DynamicCache()

    def _mask(self, prefix: int, m: int, device) -> torch.Tensor | None:
        if m == 1:
            return None  # one query sees every cached key
        allowed = torch.ones(m, prefix + m, dtype=torch.bool, device=device)
        allowed[:, prefix:] = torch.ones(m, m, dtype=torch.bool, device=device).tril_()
        allowed = allowed[None, None]
        if self._eager:
            dtype = next(self.parameters()).dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
        return allowed

    def forward(self, h: torch.Tensor, positions: torch.Tensor, cache: DynamicCache | None = None,
                heads: int | None = None, only: int | None = None) -> list[torch.Tensor]:
        """Run the first ``heads`` heads (or only head index ``only``) on trunk states ``h``
        [B, m, H] at ``positions`` [m] (appended after the ``cache``'s prefix when a cache is
        given). Returns each head's pre-norm output [B, m, H]."""
        m = h.shape[1]
        prefix = cache.get_seq_length() if cache is not None else 0
        mask = self._mask(prefix, m, h.device)
        pos = positions.view(1, -1)
        rope = self.rotary(h, pos, **self._rope_kw)
        outs = []
        layers = [self.layers[only]] if only is not None else self.layers[: heads or self.n_extra]
        for layer in layers:
            outs.append(layer(h, attention_mask=mask, position_ids=pos, past_key_values=cache,
                              use_cache=cache is not None, position_embeddings=rope))
        return outs

    # -- (de)serialisation ---------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"n_heads": self.n_extra + 1, "branch_layer": self.branch_layer, "layer_class": self.layer_class,
                "hidden_size": int(self.config.hidden_size)}

    def save(self, directory: str | Path, draft_vocab: torch.Tensor | None = None, **info: Any) -> None:
        """Write the heads (and optionally the draft vocabulary: token ids drafts are drawn from)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()
                 if not k.startswith("rotary.")}
        if draft_vocab is not None:
            state[DRAFT_VOCAB_KEY] = draft_vocab.detach().to("cpu", torch.long).contiguous()
        save_file(state, str(d / HEADS_FILE))
        (d / META_FILE).write_text(json.dumps({**self.meta(), **info}, indent=2, default=str))

    @classmethod
    def load(cls, model, directory: str | Path) -> "MTPHeads":
        """Heads from an accbench artifact / converted folder, strictly: every tensor used, every
        shape checked against ``model``; a problem is one AccbenchError line naming the tensor."""
        from safetensors.torch import load_file

        d = Path(directory)
        try:
            meta = json.loads((d / META_FILE).read_text())
            n_extra, branch = int(meta["n_heads"]) - 1, int(meta["branch_layer"])
        except FileNotFoundError:
            raise AccbenchError(f"MTP heads in {d}: no {META_FILE}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise AccbenchError(f"MTP heads in {d}: {META_FILE} needs n_heads and branch_layer "
                                f"({type(e).__name__}: {e})") from None
        try:
            heads = cls(model, n_extra, branch)
        except ValueError as e:
            raise AccbenchError(f"MTP heads in {d}: {e}") from None
        if meta.get("layer_class") and meta["layer_class"] != heads.layer_class:
            raise AccbenchError(f"MTP heads in {d} are {meta['layer_class']} blocks; this model uses "
                                f"{heads.layer_class}")
        if int(meta.get("hidden_size", heads.config.hidden_size)) != int(heads.config.hidden_size):
            raise AccbenchError(f"MTP heads in {d} were trained for hidden size {meta['hidden_size']}, this model "
                                f"has {heads.config.hidden_size}")
        try:
            state = load_file(str(d / HEADS_FILE), device=str(next(model.parameters()).device))
        except Exception as e:  # noqa: BLE001 - one line for an unreadable file
            raise AccbenchError(f"{d / HEADS_FILE}: not a readable safetensors file "
                                f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
        heads.draft_vocab = state.pop(DRAFT_VOCAB_KEY, None)
        expected = {k: list(v.shape) for k, v in heads.state_dict().items() if not k.startswith("rotary.")}
        for k in sorted(expected):
            if k not in state:
                raise AccbenchError(f"{d / HEADS_FILE}: missing tensor {k} (expected shape {expected[k]}; "
                                    f"{n_extra} heads)")
            if list(state[k].shape) != expected[k]:
                raise AccbenchError(f"{d / HEADS_FILE}: tensor {k} has shape {list(state[k].shape)}, expected "
                                    f"{expected[k]}")
        extra = sorted(set(state) - set(expected))
        if extra:
            raise AccbenchError(f"{d / HEADS_FILE}: unexpected tensor {extra[0]} (shape {list(state[extra[0]].shape)})"
                                + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
        heads.load_state_dict(state, strict=False)
        heads.to(dtype=next(model.parameters()).dtype)
        return heads


class BranchCapture:
    """Forward hook that keeps the backbone's residual-stream state at the branch point (the
    output of layer ``branch - 1``, or of the embedding for branch 0) on every forward."""

    def __init__(self, model, branch: int):
        module = model.model.embed_tokens if branch == 0 else model.model.layers[branch - 1]
        self.h: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.h = output[0] if isinstance(output, tuple) else output

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "BranchCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def head_logits(model, outs: list[torch.Tensor]) -> torch.Tensor:
    """Shared final norm + unembedding over the heads' outputs (one matmul for all heads)."""
    x = torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
    return logits_from_hidden(model, model.model.norm(x))
