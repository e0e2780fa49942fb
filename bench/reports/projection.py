"""Verification-cost curves and speedup projection to another device.

A cost curve (``accbench cost-curve``) is plain JSON: for k = 1, 2, 4, ... the median time of
one forward over k new tokens after a cached prefix, and cost(k) / cost(1). Weights may be
random: the cost depends on shapes, not values.

Projection: a speculative method commits ``a_s`` tokens in decode step ``s`` by verifying a
block of ``k_s`` tokens (1 + the draft length). tau and the block sizes are
hardware-independent (greedy decoding), so on a device with relative cost ``c(k)``::

    predicted decode speedup = sum_s a_s / sum_s c(k_s)

(AR pays c(1) = 1 per token). Drafting and per-step host overhead are not modelled, so the
prediction is an upper bound for drafters that are not free; the report puts it next to the
measured decode speedup (AR TPOT / method TPOT) wherever that device was measured, with the
error predicted / measured - 1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from accbench.errors import AccbenchError
from accbench.reports.runsets import (
    BASELINE,
    RunSet,
    ar_index,
    ar_of,
    device_label,
    finite,
    sample_decode_speedup,
)
from accbench.reports.stats import bootstrap_stat

DEFAULT_KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64)
FORMAT = "accbench-cost-curve/1"


# ---------------------------------------------------------------------------------------
# measuring a curve
# ---------------------------------------------------------------------------------------


def _model_for_cost(name: str, dtype: str | None, device: str | None):
    """(model, description). A path to a config.json (or a folder holding only a config)
    builds random weights from it; anything else is loaded by name."""
    import torch
    from accbench.models import load_model, resolve_device, resolve_dtype

    p = Path(name)
    cfg_path = p if p.is_file() and p.name.endswith(".json") else (p / "config.json" if p.is_dir() else None)
    has_weights = p.is_dir() and any(p.glob("*.safetensors"))
    if cfg_path is not None and cfg_path.exists() and not has_weights:
        from transformers import AutoConfig, AutoModelForCausalLM

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        try:
            config = AutoConfig.from_pretrained(str(cfg_path.parent if cfg_path.name == "config.json" else cfg_path))
        except (OSError, ValueError) as e:
            raise AccbenchError(f"cannot read model config {cfg_path}: {str(e).splitlines()[0]}") from None
        with torch.device(dev):
            model = AutoModelForCausalLM.from_config(config, dtype=dt, attn_implementation="sdpa")
        model.eval()
        return model, dev, dt, f"random weights from {cfg_path}"
    loaded = load_model(name, dtype=dtype, device=device)
    return loaded.model, loaded.device, loaded.dtype, f"{loaded.spec.source} weights ({loaded.source_path})"


def measure_cost_curve(model_name: str, *, dtype: str | None = None, device: str | None = None,
                       ks: Sequence[int] = DEFAULT_KS, prefix_len: int = 256, repeats: int = 7,
                       warmup: int = 2, progress=None) -> dict[str, Any]:
    from accbench.engine import measure
    from accbench.methods.core.costs import forward_cost, relative

    ks = sorted({int(k) for k in ks} | {1})
    if ks[0] < 1:
        raise AccbenchError("--ks must be positive integers")
    if prefix_len < 1 or repeats < 1:
        raise AccbenchError("--prefix-len and --repeats must be positive")
    model, dev, dt, source = _model_for_cost(model_name, dtype, device)
    if progress:
        progress(f"measuring {len(ks)} block sizes on {dev} ({source})")
    secs = forward_cost(model, ks, prefix_len=prefix_len, repeats=repeats, warmup=warmup)
    warnings = []
    for _ in range(REMEASURE):  # a forward over k tokens cannot really be cheaper than over one (or fewer)
        bad = suspicious(relative(secs))
        if not bad:
            break
        if progress:
            progress(f"cost(k) < {MIN_REL} cost(1) or < {MIN_REL} cost(previous k) at k={', '.join(map(str, bad))}: "
                     "measuring those again")
        redo = sorted(set(bad) | {_previous(ks, k) for k in bad} | {1})
        secs.update(forward_cost(model, redo, prefix_len=prefix_len, repeats=repeats, warmup=warmup))
    bad = implausible(relative(secs))
    if bad:
        warnings.append(f"cost(k) stayed below {MIN_REL} cost(1) at k={', '.join(map(str, bad))} after "
                        f"{REMEASURE} re-measurements: the machine was busy or the timer is too coarse; "
                        "`accbench project` refuses this curve")
    dips = [k for k in non_monotone(relative(secs)) if k not in bad]
    if dips:
        warnings.append(f"cost(k) stayed below {MIN_REL} cost(previous k) at k={', '.join(map(str, dips))} after "
                        f"{REMEASURE} re-measurements: a busy machine, or a kernel that really is faster at that "
                        "size; projections interpolate through the dip")
    for w in warnings:
        if progress:
            progress("warning: " + w)
    rel = relative(secs)
    env = measure.environment(dev)
    hw = (env.get("gpus") or [env.get("cpu")])[dev.index or 0] if dev.type == "cuda" else env.get("cpu")
    cfg = model.config.get_text_config()
    return {
        "format": FORMAT,
        "model": model_name,
        "weights": source,
        "architecture": {k: getattr(cfg, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                              "num_attention_heads", "num_key_value_heads",
                                                              "intermediate_size", "vocab_size")},
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "device": str(dev),
        "hardware": hw,
        "device_label": device_label(str(dev), str(hw or "")),
        "dtype": str(dt).replace("torch.", ""),
        "prefix_len": prefix_len,
        "repeats": repeats,
        "seconds": {str(k): v for k, v in secs.items()},
        "relative": {str(k): v for k, v in rel.items()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "warnings": warnings,
        "environment": {k: env.get(k) for k in ("cpu", "cpu_count", "torch_threads", "gpus", "cuda", "git_sha")},
    }


#: cost(k)/cost(1) below this is not a real measurement (a k-token forward does at least one token's work)
MIN_REL = 0.9
REMEASURE = 3


def implausible(rel: dict[int, float]) -> list[int]:
    """Block sizes whose relative cost is below MIN_REL."""
    return sorted(k for k, v in rel.items() if k > 1 and v < MIN_REL)


def _previous(ks: Sequence[int], k: int) -> int:
    below = [x for x in ks if x < k]
    return max(below) if below else k


def non_monotone(rel: dict[int, float]) -> list[int]:
    """Block sizes whose cost is below MIN_REL times the cost of the next smaller measured k: a
    dip beyond timing noise (10%) that a re-measurement should confirm or remove."""
    ks = sorted(rel)
    return [k for p, k in zip(ks, ks[1:]) if rel[k] < MIN_REL * rel[p]]


def suspicious(rel: dict[int, float]) -> list[int]:
    """Block sizes worth measuring again: :func:`implausible` or :func:`non_monotone`."""
    return sorted(set(implausible(rel)) | set(non_monotone(rel)))


def load_curve(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        c = json.loads(p.read_text())
    except FileNotFoundError:
        raise AccbenchError(f"cost curve {p} does not exist (make one with `accbench cost-curve`)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise AccbenchError(f"cost curve {p} is not valid JSON: {e}") from None
    if not isinstance(c, dict) or c.get("format") != FORMAT or not c.get("relative"):
        raise AccbenchError(f"{p} is not an accbench cost curve (expected format {FORMAT})")
    rel = {int(k): float(v) for k, v in c["relative"].items()}
    if 1 not in rel or any(v <= 0 for v in rel.values()):
        raise AccbenchError(f"{p}: the curve needs k=1 and positive costs")
    bad = implausible(rel)
    if bad:
        raise AccbenchError(f"{p}: cost({bad[0]})/cost(1) = {rel[bad[0]]:.2f} < {MIN_REL}: a forward over "
                            f"{bad[0]} tokens cannot cost less than one; re-measure it on an idle machine")
    c["_rel"] = rel
    c["_path"] = str(p)
    c.setdefault("device_label", device_label(c.get("device", "?"), c.get("hardware", "")))
    return c


def rel_cost(curve: dict[str, Any], k: float) -> float:
    """cost(k)/cost(1), linear interpolation between measured k, linear extrapolation past the end."""
    rel = curve["_rel"]
    ks = np.array(sorted(rel), dtype=float)
    vs = np.array([rel[int(k_)] for k_ in ks])
    if k <= ks[-1]:
        return float(np.interp(k, ks, vs))
    if len(ks) == 1:
        return float(vs[-1] * k / ks[-1])
    slope = (vs[-1] - vs[-2]) / (ks[-1] - ks[-2])
    return float(vs[-1] + slope * (k - ks[-1]))


# ---------------------------------------------------------------------------------------
# projection
# ---------------------------------------------------------------------------------------


def block_sizes(row: dict[str, Any]) -> list[int]:
    """Tokens verified in each decode step of a row.

    ``extra["verify_tokens"]`` (a list per decode step) wins when a method records it (tree
    methods should); otherwise the draft is a chain and the per-position draft counts give
    the distribution of draft lengths: drafted[j] steps drafted at least j + 1 tokens."""
    steps = len(row.get("tokens_per_step") or []) - 1
    if steps <= 0:
        return []
    vt = (row.get("extra") or {}).get("verify_tokens")
    if isinstance(vt, list) and len(vt) == steps:
        return [int(v) for v in vt]
    drafted = [int(d) for d in (row.get("drafted") or [])]
    if not drafted:
        return [1] * steps
    chain = all(a >= b for a, b in zip(drafted, drafted[1:])) and drafted[0] <= steps
    if not chain:  # unknown structure: spread the drafted tokens evenly
        mean = 1 + sum(drafted) / steps
        return [mean] * steps  # type: ignore[list-item]
    sizes = [1] * (steps - drafted[0])
    for j in range(len(drafted)):
        nxt = drafted[j + 1] if j + 1 < len(drafted) else 0
        sizes += [j + 2] * (drafted[j] - nxt)
    return sizes


def predict_rows(rows: list[dict[str, Any]], curve: dict[str, Any]) -> dict[str, float]:
    tokens = sum(sum(r["tokens_per_step"][1:]) for r in rows)
    sizes = [k for r in rows for k in block_sizes(r)]
    if not sizes:
        return {"predicted": float("nan"), "tau": float("nan"), "mean_block": float("nan")}
    cost = sum(rel_cost(curve, k) for k in sizes)
    return {"predicted": tokens / cost, "tau": tokens / len(sizes), "mean_block": float(np.mean(sizes))}


def project(rs: RunSet, curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (model, suite, method, curve): predicted decode speedup on the curve's
    device; measured and error where the runs hold that device."""
    out = []
    # speculative methods only: a method that never drafts (LazyLLM) has no verification blocks to cost
    groups = sorted({(r["model"], r["suite"], r.get("prompt_length") or 0, r["method"]) for r in rs.rows
                     if r["method"] != BASELINE and (r.get("drafted") or (r.get("extra") or {}).get("blocks"))},
                    key=lambda t: tuple(str(x) for x in t))
    idx = ar_index(rs.rows)
    for curve in curves:
        target = curve["device_label"]
        for model, suite, plen, method in groups:
            sel = [r for r in rs.rows if r["model"] == model and r["suite"] == suite
                   and (r.get("prompt_length") or 0) == plen and r["method"] == method]
            devices = list(dict.fromkeys(r["device"] for r in sel))
            # tau from another machine when there is one: a true out-of-sample prediction
            source = next((d for d in devices if d != target), devices[0])
            src_rows = [r for r in sel if r["device"] == source]
            pred = predict_rows(src_rows, curve)
            if not finite(pred["predicted"]):  # no decode steps (every output ended at once)
                continue
            line = {"model": model, "suite": suite, "prompt_length": plen or None, "method": method,
                    "source_device": source, "target_device": target, "curve": curve["_path"],
                    "curve_model": curve["model"], "dtype": curve.get("dtype"), "date": curve.get("date", ""),
                    "n": len({r["sample_id"] for r in src_rows}), **pred,
                    "measured": float("nan"), "measured_lo": float("nan"), "measured_hi": float("nan"),
                    "error_pct": float("nan")}
            tgt_rows = [r for r in sel if r["device"] == target]
            if tgt_rows:
                vals = [sample_decode_speedup(r, ar_of(r, idx)) for r in tgt_rows]
                m, lo, hi = bootstrap_stat(vals, np.median)
                if finite(m):
                    line.update(measured=m, measured_lo=lo, measured_hi=hi,
                                error_pct=(pred["predicted"] / m - 1.0) * 100.0)
            out.append(line)
    return out
