"""The verification-cost curve: how long one forward over k new tokens takes, after a prefix,
relative to a forward over 1 token. Speculative methods pay cost(k) per step and gain tau
tokens, so tau * cost(1) / cost(k) bounds their speedup over AR on this device.

Random weights are fine (cost depends on shapes, not values); real prompts are not needed.
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch
from accbench.methods.core.tree import block_forward, crop_cache, make_cache


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def forward_cost(model, ks: Sequence[int], *, prefix_len: int = 256, repeats: int = 7, warmup: int = 2,
                 vocab_high: int | None = None, seed: int = 0) -> dict[int, float]:
    """Median seconds of a causal block forward over k tokens after a cached prefix of
    ``prefix_len`` tokens, for each k (the cache is cropped back after every measurement).

    Every k is warmed up first; then the repeats go round-robin over the ks, so a slow
    stretch of a shared machine lands on all of them alike instead of on whichever k was
    being measured at the time."""
    device = next(model.parameters()).device
    vocab = vocab_high or model.config.get_text_config().vocab_size
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, vocab, (1, prefix_len), generator=g).to(device)
    cache = make_cache(model)
    model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
    ks = [int(k) for k in dict.fromkeys(ks)]
    blocks = {k: torch.randint(3, vocab, (1, k), generator=g).to(device) for k in ks}
    vis = {k: torch.ones(k, k, dtype=torch.bool, device=device).tril_() for k in ks}
    depths = {k: torch.arange(k, device=device) for k in ks}
    times: dict[int, list[float]] = {k: [] for k in ks}
    for i in range(warmup + repeats):
        for k in ks:
            _sync(device)
            t0 = time.perf_counter()
            block_forward(model, cache, blocks[k], depths[k], vis[k])
            _sync(device)
            dt = time.perf_counter() - t0
            crop_cache(cache, prefix_len)
            if i >= warmup:
                times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def relative(costs: dict[int, float]) -> dict[int, float]:
    """cost(k) / cost(1)."""
    base = costs[1] if 1 in costs else min(costs.values())
    return {k: v / base for k, v in costs.items()}


def speedup_bound(tau: float, cost_1: float, cost_k: float) -> float:
    """The speedup a method with mean accepted length ``tau`` and a k-token verification
    forward could reach if drafting were free: tau * cost(1) / cost(k)."""
    return tau * cost_1 / cost_k
