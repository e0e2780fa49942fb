"""Per (model, device, suite, prompt length, category, method) aggregates of samples.jsonl rows.

Every figure here is computed from the rows, so every number in a table can be traced
back to samples.jsonl. Intervals, tests and verdicts come from :mod:`accbench.reports.stats`
and use paired per-sample data only (a method's sample against AR's same sample).

``category`` is ``"all"`` for a suite's overall line; when a suite's rows carry a category
(Spec-Bench's tasks, a ``prompts`` file's ``category`` field) there is one line per category too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd
from accbench.reports.stats import (
    MIN_N,
    bootstrap_median,
    paired_difference,
    paired_ratio,
    pass_table,
    percentiles,
    quality_verdict,
)

GROUP = ("model", "device", "suite", "prompt_length")
KEYS = GROUP + ("category",)
ALL = "all"
#: quality metrics scored 0/1 per sample (paired as a 2x2 table with McNemar's test)
BINARY = ("pass@1",)


class _Baseline:
    """A row's baseline (AR) row on the same sample, by :mod:`accbench.reports.runsets`' pairing
    rule (rows merged from several results folders pair only with AR rows of identical settings)."""

    def __init__(self, rows: list[dict[str, Any]], baseline: str):
        from accbench.reports import runsets

        if baseline == runsets.BASELINE:
            self._index = runsets.ar_index(rows)
            self._of = runsets.ar_of
        else:
            self._index = {runsets.pair_key(r): r for r in rows if r.get("method") == baseline}
            self._of = lambda r, idx: idx.get(runsets.pair_key(r))

    def get(self, row: dict[str, Any]) -> dict[str, Any] | None:
        return self._of(row, self._index)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and np.isfinite(v)


def _itl(row: dict[str, Any]) -> list[float]:
    t = row.get("step_times_s") or []
    return [b - a for a, b in zip(t, t[1:])]


def _acceptance(rs: list[dict[str, Any]]) -> tuple[str, str]:
    """Per draft position: unconditional (accepted_k / drafted_k, as vLLM reports it) and
    conditional (accepted_k / reached_k: given that drafts 1..k-1 were accepted)."""
    drafted: dict[int, int] = defaultdict(int)
    accepted: dict[int, int] = defaultdict(int)
    reached: dict[int, int] = defaultdict(int)
    for r in rs:
        d, a = r.get("drafted") or [], r.get("accepted") or []
        reach = r.get("reached")
        if reach is None:  # rows before the counter existed: the fixed-depth approximation
            reach = [d[0]] + list(a[:-1]) if d else []
        for k, v in enumerate(d):
            drafted[k] += v
        for k, v in enumerate(a):
            accepted[k] += v
        for k, v in enumerate(reach):
            reached[k] += v
    uncond = ";".join(f"{accepted[k] / drafted[k]:.3f}" if drafted[k] else "nan" for k in sorted(drafted))
    cond = ";".join(f"{accepted[k] / reached[k]:.3f}" if reached[k] else "nan" for k in sorted(drafted))
    return uncond, cond


def _speed(rs, ar_by_key) -> dict[str, Any]:
    ratios, ttft_ratios, ar_tot, m_tot = [], [], 0.0, 0.0
    for r in rs:
        a = ar_by_key.get(r)
        if a is None:
            continue
        ratios.append(paired_ratio(a["total_s"], a["n_new"], r["total_s"], r["n_new"]))
        ttft_ratios.append(a["ttft_s"] / r["ttft_s"] if r["ttft_s"] > 0 else float("nan"))
        ar_tot += a["total_s"] * (r["n_new"] / a["n_new"] if a["n_new"] else 0.0)
        m_tot += r["total_s"]
    sp, ttft_sp = bootstrap_median(ratios), bootstrap_median(ttft_ratios)
    return {
        "n_pairs": len(ratios),
        "speedup": sp.value, "speedup_lo": sp.lo, "speedup_hi": sp.hi,
        "speedup_total": (ar_tot / m_tot) if m_tot > 0 and ratios else float("nan"),
        "ttft_speedup": ttft_sp.value, "ttft_speedup_lo": ttft_sp.lo, "ttft_speedup_hi": ttft_sp.hi,
    }


def _latency(rs) -> dict[str, Any]:
    ttft = [r["ttft_s"] for r in rs]
    tpot = [r["tpot_s"] for r in rs if r.get("tpot_s") is not None]
    itl = [g for r in rs for g in _itl(r)]
    out: dict[str, Any] = {
        "ttft_s": float(np.median(ttft)),
        "tpot_s": float(np.median(tpot)) if tpot else float("nan"),
    }
    for name, vals in (("ttft", ttft), ("tpot", tpot), ("itl", itl)):
        for q, v in zip((50, 90, 99), percentiles(vals)):
            out[f"{name}_p{q}"] = v
    return out


def _draft_shape(rs) -> dict[str, Any]:
    shapes = [r["draft_shape"] for r in rs if r.get("draft_shape")]
    if not shapes:
        return {}
    s = shapes[0]
    return {"draft_kind": s.get("kind"), "draft_nodes": s.get("nodes"), "draft_depth": s.get("depth"),
            "draft_heads": s.get("heads")}


def _extras(rs) -> dict[str, Any]:
    """Drafting vs verifying time, and token pruning (LazyLLM) figures."""
    out: dict[str, Any] = {}
    timed = [r["extra"] for r in rs if "draft_s" in (r.get("extra") or {})]
    if timed:
        out["draft_s"] = float(sum(e["draft_s"] for e in timed))
        out["verify_s"] = float(sum(e.get("verify_s", 0.0) for e in timed))
        spent = out["draft_s"] + out["verify_s"]
        out["draft_share"] = out["draft_s"] / spent if spent > 0 else float("nan")
    fracs = [r["extra"]["computed_frac"] for r in rs if "computed_frac" in (r.get("extra") or {})]
    if fracs:
        out["computed_frac"] = float(np.mean(fracs))
        out["revivals"] = float(np.mean([(r.get("extra") or {}).get("revivals", 0) for r in rs]))
        per_layer = [r["extra"]["computed_per_layer"] for r in rs if "computed_per_layer" in (r.get("extra") or {})]
        if per_layer and len({len(p) for p in per_layer}) == 1:
            out["computed_per_layer"] = ";".join(f"{v:.3f}" for v in np.mean(per_layer, axis=0))
    return out


def _quality(rs, ar_by_key, is_baseline: bool) -> dict[str, Any]:
    """Means (q_<metric>) and, against AR on the same samples, paired deltas with BCa
    intervals (d_<metric>, _lo, _hi; pass@1 in points with its 2x2 table and McNemar p) and
    the verdict on the suite's headline metric."""
    metrics: dict[str, list[float]] = defaultdict(list)
    for r in rs:
        for m, v in (r.get("quality") or {}).items():
            if _finite(v):
                metrics[m].append(float(v))
    out: dict[str, Any] = {f"q_{m}": float(np.mean(vs)) for m, vs in metrics.items()}
    if not metrics:
        return out
    headline = _headline(metrics)
    out["quality_metric"] = headline
    if is_baseline:
        return out
    for m in metrics:
        pairs = []
        for r in rs:
            a = ar_by_key.get(r)
            x, y = ((a or {}).get("quality") or {}).get(m), (r.get("quality") or {}).get(m)
            if a is not None and _finite(x) and _finite(y):
                pairs.append((float(x), float(y)))
        if m in BINARY:
            t = pass_table(pairs)
            iv, p = t.delta, t.p_value
            out.update({"pass_both": t.both, "pass_only_ar": t.only_ar, "pass_only_method": t.only_method,
                        "pass_neither": t.neither, "mcnemar_p": p})
        else:
            iv, p = paired_difference(pairs), None
        out.update({f"d_{m}": iv.value, f"d_{m}_lo": iv.lo, f"d_{m}_hi": iv.hi})
        if m == headline:
            out["quality_n"] = iv.n
            out["quality_verdict"] = quality_verdict(iv, p)
    return out


def _headline(metrics) -> str:
    from accbench.reports.runsets import PRIMARY_QUALITY

    return next((m for m in PRIMARY_QUALITY if m in metrics), sorted(metrics)[0])


def _line(key, rs, ar_by_key, baseline: str) -> dict[str, Any]:
    model, device, suite, plen, category, method = key
    n_new = np.array([r["n_new"] for r in rs], dtype=float)
    total = np.array([r["total_s"] for r in rs], dtype=float)
    decode_tokens = sum(sum(r["tokens_per_step"][1:]) for r in rs)
    decode_steps = sum(max(len(r["tokens_per_step"]) - 1, 0) for r in rs)
    line: dict[str, Any] = {
        "model": model, "device": device, "suite": suite, "prompt_length": plen, "category": category,
        "method": method, "dtype": rs[0].get("dtype"), "n": len(rs),
        "new_tokens": int(n_new.sum()),
        "tokens_per_s": float(n_new.sum() / total.sum()) if total.sum() > 0 else float("nan"),
    }
    line.update(_speed(rs, ar_by_key))
    line.update(_latency(rs))
    line.update({
        "tau": decode_tokens / decode_steps if decode_steps else float("nan"),
        "tokens_per_forward": float(n_new.sum() / sum(r["forward_passes"] for r in rs)),
        "peak_mem_mb": float(max((r.get("peak_mem_mb") or 0.0) for r in rs)),
    })
    line["acceptance"], line["acceptance_cond"] = _acceptance(rs)
    line.update(_draft_shape(rs))
    line.update(_extras(rs))
    line.update(_quality(rs, ar_by_key, method == baseline))
    matches = [r["exact_match_ar"] for r in rs if r.get("exact_match_ar") is not None]
    line["exact_match_ar"] = (sum(matches) / len(matches)) if matches else float("nan")
    return line


def summarize(rows: list[dict[str, Any]], baseline: str = "ar") -> pd.DataFrame:
    """One line per (model, device, suite, prompt_length, category, method). Rows of one
    results folder (``run``) with the same row key count once (a warning line says how many
    were dropped)."""
    from accbench.engine.results import dedupe_rows

    rows = dedupe_rows(rows, "the rows summarized", extra=("run",))
    ar_by_key = _Baseline(rows, baseline)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        base = tuple(r.get(k) for k in GROUP)
        groups[base + (ALL, r.get("method"))].append(r)
        if r.get("category") is not None:
            groups[base + (str(r["category"]), r.get("method"))].append(r)

    def order(kv):
        k = kv[0]
        return tuple(str(x) for x in k[:4]) + (k[4] != ALL, str(k[4]), str(k[5]))

    out = [_line(key, rs, ar_by_key, baseline) for key, rs in sorted(groups.items(), key=order)]
    return pd.DataFrame(out)


__all__ = ["ALL", "GROUP", "KEYS", "MIN_N", "summarize"]
