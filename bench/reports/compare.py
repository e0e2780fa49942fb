"""``accbench compare A B``: per model x suite x method, how B differs from A.

Changes are paired by sample: for each sample present in both runs,

* speed: B's speedup vs AR / A's speedup vs AR (both measured against AR in their own run;
  for AR itself, B's tokens/s / A's tokens/s), as the median with a 95% bootstrap interval;
* tau: B's tokens per decode step - A's (mean difference);
* TTFT: B's / A's (median ratio; lower is better);
* quality: B's score - A's on the suite's main metric (mean difference, percentage points).

A metric's verdict is *better* or *worse* only when its BCa interval (accbench.reports.stats)
excludes no change and the change is at least ``min_change`` (relative, for speed and TTFT);
otherwise *within noise*. With fewer than ``stats.MIN_N`` shared samples there is no interval
and the row says *too few samples*.
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
from accbench.reports.stats import MIN_N, bootstrap_stat

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


def _verdict(lo: float, hi: float, value: float, threshold: float, higher_better: bool) -> str:
    if not (finite(lo) and finite(hi) and finite(value)):
        return SAME
    if lo > 0 and value >= threshold:
        return "better" if higher_better else "worse"
    if hi < 0 and value <= -threshold:
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
        m, lo, hi = bootstrap_stat(logs, np.median, level=level)
        speed_v = _verdict(lo, hi, m, math.log1p(min_change), True)
        tau_d = [sample_tau(y) - sample_tau(x) for x, y in zip(ra, rb)]
        t, tlo, thi = bootstrap_stat(tau_d, np.mean, level=level)
        tau_v = _verdict(tlo, thi, t, 1e-9, True) if method != BASELINE else SAME
        tt = [math.log(y["ttft_s"] / x["ttft_s"]) for x, y in zip(ra, rb) if x["ttft_s"] > 0 and y["ttft_s"] > 0]
        tm, tmlo, tmhi = bootstrap_stat(tt, np.median, level=level)
        ttft_v = _verdict(tmlo, tmhi, tm, math.log1p(min_change), False)
        metric = primary_quality(ra + rb)
        q = qlo = qhi = float("nan")
        q_v = SAME
        qa_mean = qb_mean = float("nan")
        if metric:
            scale = quality_scale(metric)
            pairs = [((x.get("quality") or {}).get(metric), (y.get("quality") or {}).get(metric)) for x, y in zip(ra, rb)]
            pairs = [(x, y) for x, y in pairs if finite(x) and finite(y)]
            if pairs:
                q, qlo, qhi = bootstrap_stat([(y - x) * scale for x, y in pairs], np.mean, level=level)
                qa_mean = float(np.mean([x for x, _ in pairs])) * scale
                qb_mean = float(np.mean([y for _, y in pairs])) * scale
                q_v = _verdict(qlo, qhi, q, 1e-9, True)
        verdicts = {"speed": speed_v, "tau": tau_v, "ttft": ttft_v, "quality": q_v}
        worse = [k for k, v in verdicts.items() if v == "worse"]
        better = [k for k, v in verdicts.items() if v == "better"]
        if len(ids) < MIN_N:
            verdict = f"too few samples (n={len(ids)} < {MIN_N})"
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
            "speed_change": math.expm1(m) if finite(m) else float("nan"),
            "speed_lo": math.expm1(lo) if finite(lo) else float("nan"),
            "speed_hi": math.expm1(hi) if finite(hi) else float("nan"),
            "tau_a": _mean([sample_tau(r) for r in ra]) if method != BASELINE else 1.0,
            "tau_b": _mean([sample_tau(r) for r in rb]) if method != BASELINE else 1.0,
            "tau_change": t, "tau_lo": tlo, "tau_hi": thi,
            "ttft_change": math.expm1(tm) if finite(tm) else float("nan"),
            "ttft_lo": math.expm1(tmlo) if finite(tmlo) else float("nan"),
            "ttft_hi": math.expm1(tmhi) if finite(tmhi) else float("nan"),
            "quality_metric": metric, "quality_a": qa_mean, "quality_b": qb_mean,
            "quality_change": q, "quality_lo": qlo, "quality_hi": qhi,
            "verdicts": verdicts, "verdict": verdict,
        })
    return out
