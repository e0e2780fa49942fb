"""Sampling: greedy by default; temperature / top-p with a seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def sample_from_logits(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick next tokens from ``logits[..., vocab]``: argmax when greedy, else temperature + top-p."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    probs = probs_from_logits(logits, cfg)
    flat = probs.reshape(-1, probs.shape[-1])
    out = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    return out.reshape(probs.shape[:-1])


def probs_from_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature-scaled, top-p-filtered probabilities (float32) over the last dimension: the
    one sampling transform. AR sampling draws from it (:func:`sample_from_logits`), and
    speculative sampling computes the target's ``p`` and a drafter's ``q`` with it, so the
    speculative output is distributed exactly as AR sampling's. Needs ``cfg`` not greedy."""
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(dim=-1)
        drop = (cum - sorted_p) > cfg.top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


#: the former name of :func:`probs_from_logits`
sampling_probs = probs_from_logits
