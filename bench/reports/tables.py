"""Rich tables of a summary frame (one per suite x prompt length)."""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table


def _f(x, fmt="{:.2f}", missing="-"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return missing
    return fmt.format(x)


def _interval(v, lo, hi, suffix="x"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}{suffix} [{lo:.2f}, {hi:.2f}]"


def _has_acceptance(v) -> bool:
    """The summary writes acceptance per draft position as "0.62;0.41;..." and "" (or, read
    back from CSV, NaN) for a method that drafts nothing."""
    return isinstance(v, str) and v != ""


def _acceptance(v, shown: int = 5) -> str:
    """"0.62;0.41;..." as "0.62 0.41 ..." (the first ``shown`` positions)."""
    if not _has_acceptance(v):
        return "-"
    parts = v.split(";")
    return " ".join(f"{float(x):.2f}" for x in parts[:shown]) + (" …" if len(parts) > shown else "")


def summary_tables(frame: pd.DataFrame) -> list[Table]:
    tables = []
    if frame.empty:
        return tables
    qcols = [c for c in frame.columns if c.startswith("q_")]
    keys = ["model", "device", "suite", "prompt_length"]
    for key, grp in frame.groupby(keys, dropna=False, sort=False):
        model, device, suite, plen = key
        title = f"{suite} · {model} · {device} · {grp['dtype'].iloc[0]}"
        if plen is not None and not (isinstance(plen, float) and math.isnan(plen)):
            title += f" · prompt {int(plen)} tokens"
        t = Table(title=title, title_justify="left")
        # prompt-length sweeps and token-pruning methods are about TTFT: show its speedup too
        pruning = "computed_frac" in grp.columns and grp["computed_frac"].notna().any()
        show_ttft_sp = pruning or (plen is not None and not (isinstance(plen, float) and math.isnan(plen)))
        cols = ["method", "n", "tok/s", "speedup vs AR [95% CI]", "TTFT s"]
        cols += ["TTFT speedup [95% CI]"] if show_ttft_sp else []
        drafts = "acceptance" in grp.columns and bool(grp["acceptance"].map(_has_acceptance).any())
        draft_time = "draft_share" in grp.columns and grp["draft_share"].notna().any()
        cols += ["TPOT ms", "tau"] + (["accept/pos"] if drafts else []) + (["draft time"] if draft_time else [])
        cols += ["computed", "revivals"] if pruning else []
        for col in cols:
            t.add_column(col, justify="left" if col == "method" else "right")
        qs = [c for c in qcols if grp[c].notna().any()]
        for c in qs:
            t.add_column(c[2:], justify="right")
        t.add_column("match AR", justify="right")
        for _, r in grp.iterrows():
            cells = [
                str(r["method"]), str(int(r["n"])), _f(r["tokens_per_s"], "{:.1f}"),
                _interval(r["speedup"], r["speedup_lo"], r["speedup_hi"]),
                _f(r["ttft_s"], "{:.3f}"),
            ]
            if show_ttft_sp:
                cells.append(_interval(r["ttft_speedup"], r["ttft_speedup_lo"], r["ttft_speedup_hi"]))
            cells += [_f(r["tpot_s"] * 1000 if r["tpot_s"] == r["tpot_s"] else None, "{:.1f}"), _f(r["tau"])]
            if drafts:
                cells.append(_acceptance(r.get("acceptance")))
            if draft_time:
                cells.append(_f(r.get("draft_share"), "{:.1%}"))
            if pruning:
                cells += [_f(r.get("computed_frac"), "{:.0%}"), _f(r.get("revivals"), "{:.1f}")]
            for c in qs:
                d = r.get(f"d_{c[2:]}")
                delta = f" ({d:+.2f})" if r["method"] != "ar" and d is not None and d == d else ""
                cells.append(_f(r[c], "{:.3f}" if "pass" in c else "{:.2f}") + delta)
            cells.append(_f(r["exact_match_ar"] * 100 if r["exact_match_ar"] == r["exact_match_ar"] else None, "{:.0f}%"))
            t.add_row(*cells)
        tables.append(t)
    return tables
