"""Model quirks in one place: where the text config lives, the hidden size, sliding-window
attention, and logits from hidden states (with Gemma's final logit soft-capping)."""

from __future__ import annotations

import torch


def text_config(model):
    """The decoder's own config (multimodal configs nest it; text models are their own)."""
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def hidden_size(model) -> int:
    return int(text_config(model).hidden_size)


def sliding_window(model) -> int | None:
    """The window of the model's sliding-attention layers, or None if every layer is global."""
    cfg = text_config(model)
    types = getattr(cfg, "layer_types", None)
    if types and "sliding_attention" in types and getattr(cfg, "sliding_window", None):
        return int(cfg.sliding_window)
    return None


def final_softcap(model) -> float | None:
    """Gemma-style ``final_logit_softcapping`` (None when the model has none)."""
    return getattr(model.config, "final_logit_softcapping", None) or getattr(
        text_config(model), "final_logit_softcapping", None) or None


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return torch.tanh(logits / cap) * cap if cap else logits


def logits_from_hidden(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head over final (normed) hidden states, soft-capped where the model is."""
    return softcap(model.get_output_embeddings()(hidden), final_softcap(model))
