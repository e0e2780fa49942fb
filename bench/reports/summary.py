"""Per (model, device, suite, prompt length, method) aggregates of samples.jsonl rows.

Every figure here is computed from the rows, so every number in a table can be traced
back to samples.jsonl.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd
from accbench.reports.stats import bootstrap_median, paired_ratio

GROUP = ("model", "device", "suite", "prompt_length")


def _pair_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in GROUP) + (row.get("sample_id"),)


def summarize(rows: list[dict[str, Any]], baseline: str = "ar") -> pd.DataFrame:
    """One line per (model, device, suite, prompt_length, method)."""
    ar_by_key = {_pair_key(r): r for r in rows if r.get("method") == baseline}
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in GROUP) + (r.get("method"),)].append(r)

    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        model, device, suite, plen, method = key
        n_new = np.array([r["n_new"] for r in rs], dtype=float)
        total = np.array([r["total_s"] for r in rs], dtype=float)
        ttft = np.array([r["ttft_s"] for r in rs], dtype=float)
        tpot = np.array([r["tpot_s"] for r in rs if r.get("tpot_s") is not None], dtype=float)
        decode_tokens = sum(sum(r["tokens_per_step"][1:]) for r in rs)
        decode_steps = sum(max(len(r["tokens_per_step"]) - 1, 0) for r in rs)
        ratios, ar_tot, m_tot, ttft_ratios = [], 0.0, 0.0, []
        for r in rs:
            a = ar_by_key.get(_pair_key(r))
            if a is None:
                continue
            ratios.append(paired_ratio(a["total_s"], a["n_new"], r["total_s"], r["n_new"]))
            ttft_ratios.append(a["ttft_s"] / r["ttft_s"] if r["ttft_s"] > 0 else float("nan"))
            ar_tot += a["total_s"] * (r["n_new"] / a["n_new"] if a["n_new"] else 0.0)
            m_tot += r["total_s"]
        sp = bootstrap_median(ratios)
        ttft_sp = bootstrap_median(ttft_ratios)
        line: dict[str, Any] = {
            "model": model, "device": device, "suite": suite, "prompt_length": plen, "method": method,
            "dtype": rs[0].get("dtype"),
            "n": len(rs),
            "new_tokens": int(n_new.sum()),
            "tokens_per_s": float(n_new.sum() / total.sum()) if total.sum() > 0 else float("nan"),
            "speedup": sp.value, "speedup_lo": sp.lo, "speedup_hi": sp.hi,
            "speedup_total": (ar_tot / m_tot) if m_tot > 0 and ratios else float("nan"),
            "ttft_s": float(np.median(ttft)),
            "ttft_speedup": ttft_sp.value, "ttft_speedup_lo": ttft_sp.lo, "ttft_speedup_hi": ttft_sp.hi,
            "tpot_s": float(np.median(tpot)) if tpot.size else float("nan"),
            "tau": decode_tokens / decode_steps if decode_steps else float("nan"),
            "tokens_per_forward": float(n_new.sum() / sum(r["forward_passes"] for r in rs)),
            "peak_mem_mb": float(max((r.get("peak_mem_mb") or 0.0) for r in rs)),
        }
        # acceptance per draft position (vLLM: accepted_k / drafted_k)
        drafted: dict[int, int] = defaultdict(int)
        accepted: dict[int, int] = defaultdict(int)
        for r in rs:
            for k, d in enumerate(r.get("drafted") or []):
                drafted[k] += d
            for k, a in enumerate(r.get("accepted") or []):
                accepted[k] += a
        line["acceptance"] = ";".join(
            f"{accepted[k] / drafted[k]:.3f}" if drafted[k] else "nan" for k in sorted(drafted))
        # drafting vs verifying: decode-phase seconds the method reports (speculative methods)
        timed = [r["extra"] for r in rs if "draft_s" in (r.get("extra") or {})]
        if timed:
            line["draft_s"] = float(sum(e["draft_s"] for e in timed))
            line["verify_s"] = float(sum(e.get("verify_s", 0.0) for e in timed))
            spent = line["draft_s"] + line["verify_s"]
            line["draft_share"] = line["draft_s"] / spent if spent > 0 else float("nan")
        # quality: mean of each metric over samples that have it
        metrics: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            for m, v in (r.get("quality") or {}).items():
                metrics[m].append(float(v))
        for m, vs in metrics.items():
            line[f"q_{m}"] = float(np.mean(vs))
        # token-pruning methods (lazyllm): mean fraction of prompt token-layers computed, revivals
        fracs = [r["extra"]["computed_frac"] for r in rs if "computed_frac" in (r.get("extra") or {})]
        if fracs:
            line["computed_frac"] = float(np.mean(fracs))
            line["revivals"] = float(np.mean([(r.get("extra") or {}).get("revivals", 0) for r in rs]))
            per_layer = [r["extra"]["computed_per_layer"] for r in rs if "computed_per_layer" in (r.get("extra") or {})]
            if per_layer and len({len(p) for p in per_layer}) == 1:
                line["computed_per_layer"] = ";".join(f"{v:.3f}" for v in np.mean(per_layer, axis=0))
        matches = [r["exact_match_ar"] for r in rs if r.get("exact_match_ar") is not None]
        line["exact_match_ar"] = (sum(matches) / len(matches)) if matches else float("nan")
        out.append(line)
    frame = pd.DataFrame(out)
    # quality delta vs the baseline on the same group
    if out:
        base = {tuple(line[g] for g in GROUP): line for line in out if line["method"] == baseline}
        qcols = sorted({c for line in out for c in line if c.startswith("q_")})
        for c in qcols:
            frame[f"d_{c[2:]}"] = [
                (line.get(c, float("nan")) - base[k].get(c, float("nan"))) if (k := tuple(line[g] for g in GROUP)) in base
                else float("nan")
                for line in out
            ]
    return frame
