"""``accbench compare A B``: per model x suite x method, how B differs from A.

Changes are paired by sample: for each sample present in both runs,

* speed: B's speedup vs AR / A's speedup vs AR (both measured against AR in their own run;
  for AR itself, B's tokens/s / A's tokens/s), as the median with a 95% bootstrap interval;
* tau: B's tokens per decode step - A's (mean difference);
* TTFT: B's / A's (median ratio; lower is better);
* quality: B's score - A's on the suite's main metric (mean difference, percentage points).

A metric's verdict is *better* or *worse* only when its BCa interval (accbench.reports.stats)
excludes no change and the change is at least ``min_change`` (relative, for speed and TTFT);
otherwise *within noise*. With fewer than ``stats.MIN_N`` shared samples there is no interval:
the metric and the row say *too few samples*. ``*_text`` fields hold each change as printed
(``stats.Interval.fmt``: "+3.1% [+0.4%, +5.9%]" or "+3.1%, n too small (n=2)").
The row's verdict: worse if any metric is worse and none better, better if the reverse,
mixed if both, within noise otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from accbench.errors import AccbenchError
from accbench.reports.runsets import (
    BASELINE,
    RunSet,
    ar_index,
    ar_of,
    finite,
    primary_quality,
    quality_scale,
    sample_speedup,
    sample_tau,
)
from accbench.reports.stats import MIN_N, TOO_FEW, Interval, bootstrap

SAME = "within noise"


def _by_key(rs: RunSet) -> dict[tuple, dict[str, dict[str, Any]]]:
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    devices: dict[tuple, set] = {}
    for r in rs.rows:
        k = (r["model"], r["suite"], r.get("prompt_length"), r["method"])
        devices.setdefault(k, set()).add(r["device"])
        out.setdefault(k, {})[str(r["sample_id"])] = r
    multi = [k for k, d in devices.items() if len(d) > 1]
    if multi:
        raise AccbenchError(f"{rs.runs[0].path} holds {multi[0][3]} on {multi[0][1]} from several devices; "
                            "compare runs of one device each")
    return out


def _mean(values) -> float:
    v = [x for x in values if finite(x)]
    return float(np.mean(v)) if v else float("nan")


def _verdict(iv: Interval, threshold: float, higher_better: bool) -> str:
    """better/worse when the interval excludes zero and the change reaches ``threshold``."""
    if iv.n == 0 or not finite(iv.value):
        return SAME
    if iv.n < MIN_N:
        return TOO_FEW
    if iv.above_zero and iv.value >= threshold:
        return "better" if higher_better else "worse"
    if iv.below_zero and iv.value <= -threshold:
        return "worse" if higher_better else "better"
    return SAME


def compare(a: RunSet, b: RunSet, *, min_change: float = 0.05, level: float = 0.95) -> list[dict[str, Any]]:
    ka, kb = _by_key(a), _by_key(b)
    ia, ib = ar_index(a.rows), ar_index(b.rows)
    common = sorted(set(ka) & set(kb), key=lambda k: tuple(map(str, k)))
    if not common:
        raise AccbenchError("the two runs share no model x suite x method to compare")
    out = []
    for key in common:
        model, suite, plen, method = key
        ids = sorted(set(ka[key]) & set(kb[key]))
        if not ids:
            continue
        ra, rb = [ka[key][s] for s in ids], [kb[key][s] for s in ids]

        def speed(r, idx, method=method):
            if method == BASELINE:
                return r["n_new"] / r["total_s"] if r["total_s"] > 0 else float("nan")
            return sample_speedup(r, ar_of(r, idx))

        sa = [speed(r, ia) for r in ra]
        sb = [speed(r, ib) for r in rb]
        logs = [math.log(y / x) for x, y in zip(sa, sb) if finite(x) and finite(y) and x > 0 and y > 0]
        sp = bootstrap(logs, np.median, level=level)
        speed_v = _verdict(sp, math.log1p(min_change), True)
        tau = bootstrap([sample_tau(y) - sample_tau(x) for x, y in zip(ra, rb)], np.mean, level=level)
        tau_v = _verdict(tau, 1e-9, True) if method != BASELINE else SAME
        tt = [math.log(y["ttft_s"] / x["ttft_s"]) for x, y in zip(ra, rb) if x["ttft_s"] > 0 and y["ttft_s"] > 0]
        ttft = bootstrap(tt, np.median, level=level)
        ttft_v = _verdict(ttft, math.log1p(min_change), False)
        metric = primary_quality(ra + rb)
        qual = Interval(float("nan"), float("nan"), float("nan"), 0)
        q_v = SAME
        qa_mean = qb_mean = float("nan")
        if metric:
            scale = quality_scale(metric)
            pairs = [((x.get("quality") or {}).get(metric), (y.get("quality") or {}).get(metric)) for x, y in zip(ra, rb)]
            pairs = [(x, y) for x, y in pairs if finite(x) and finite(y)]
            if pairs:
                qual = bootstrap([(y - x) * scale for x, y in pairs], np.mean, level=level)
                qa_mean = float(np.mean([x for x, _ in pairs])) * scale
                qb_mean = float(np.mean([y for _, y in pairs])) * scale
                q_v = _verdict(qual, 1e-9, True)
        # speed and TTFT as relative changes (exp of the median log ratio, minus 1)
        sp_rel, ttft_rel = sp.map(math.expm1), ttft.map(math.expm1)
        verdicts = {"speed": speed_v, "tau": tau_v, "ttft": ttft_v, "quality": q_v}
        worse = [k for k, v in verdicts.items() if v == "worse"]
        better = [k for k, v in verdicts.items() if v == "better"]
        if len(ids) < MIN_N:
            verdict = f"{TOO_FEW} (n={len(ids)} < {MIN_N})"
        elif worse and better:
            verdict = f"mixed (worse: {', '.join(worse)}; better: {', '.join(better)})"
        elif worse:
            verdict = f"worse ({', '.join(worse)})"
        elif better:
            verdict = f"better ({', '.join(better)})"
        else:
            verdict = SAME
        out.append({
            "model": model, "suite": suite, "prompt_length": plen, "method": method, "n": len(ids),
            "speed_metric": "tokens/s" if method == BASELINE else "speedup vs AR",
            "speed_a": float(np.median([v for v in sa if finite(v)])) if any(finite(v) for v in sa) else float("nan"),
            "speed_b": float(np.median([v for v in sb if finite(v)])) if any(finite(v) for v in sb) else float("nan"),
            "speed_change": sp_rel.value, "speed_lo": sp_rel.lo, "speed_hi": sp_rel.hi,
            "speed_text": sp_rel.fmt(suffix="", spec="+.1%"),
            "tau_a": _mean([sample_tau(r) for r in ra]) if method != BASELINE else 1.0,
            "tau_b": _mean([sample_tau(r) for r in rb]) if method != BASELINE else 1.0,
            "tau_change": tau.value, "tau_lo": tau.lo, "tau_hi": tau.hi,
            "tau_text": tau.fmt(3, "", signed=True),
            "ttft_change": ttft_rel.value, "ttft_lo": ttft_rel.lo, "ttft_hi": ttft_rel.hi,
            "ttft_text": ttft_rel.fmt(suffix="", spec="+.1%"),
            "quality_metric": metric, "quality_a": qa_mean, "quality_b": qb_mean,
            "quality_change": qual.value, "quality_lo": qual.lo, "quality_hi": qual.hi,
            "quality_text": qual.fmt(2, " pp", signed=True),
            "verdicts": verdicts, "verdict": verdict,
        })
    return out
