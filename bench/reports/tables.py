"""Rich tables of a summary frame (one per suite x prompt length)."""

from __future__ import annotations

import math

import pandas as pd
from accbench.reports.stats import MIN_N
from rich.table import Table


def _f(x, fmt="{:.2f}", missing="-"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return missing
    return fmt.format(x)


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _interval(v, lo, hi, suffix="x", n=None, digits=2, signed=False):
    """"v [lo, hi]"; without an interval (n below stats.MIN_N) "v (n too small: n)"."""
    if _missing(v):
        return "-"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if _missing(lo) or _missing(hi):
        small = n is not None and not _missing(n) and int(n) < MIN_N
        return f"{f.format(v)}{suffix}" + (f" (n too small: {int(n)})" if small else "")
    return f"{f.format(v)}{suffix} [{f.format(lo)}, {f.format(hi)}]"


def _ms(r, name) -> str:
    """"p50 / p90" of a latency in ms."""
    p50, p90 = r.get(f"{name}_p50"), r.get(f"{name}_p90")
    if _missing(p50):
        return "-"
    return f"{p50 * 1000:.0f} / {p90 * 1000:.0f}" if not _missing(p90) else f"{p50 * 1000:.0f}"


def _shape(r) -> str:
    kind = r.get("draft_kind")
    if not isinstance(kind, str):
        return "-"
    nodes, depth = r.get("draft_nodes"), r.get("draft_depth")
    if kind == "chain":
        return f"chain {int(depth)}" if not _missing(depth) else "chain"
    return f"{kind} {int(nodes)}n d{int(depth)}" if not (_missing(nodes) or _missing(depth)) else kind


def _pairs(r) -> str:
    """pass@1 against AR: both / only AR / only method / neither, McNemar's exact p."""
    if _missing(r.get("pass_both")):
        return "-"
    cells = "/".join(str(int(r[k])) for k in ("pass_both", "pass_only_ar", "pass_only_method", "pass_neither"))
    return f"{cells} p={r['mcnemar_p']:.2f}"


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


TAU = "mean accepted tokens (tau)"


def summary_tables(frame: pd.DataFrame) -> list[Table]:
    """One table per model x device x suite x prompt length; with categories a category column
    (the overall line first)."""
    tables = []
    if frame.empty:
        return tables
    if "category" not in frame.columns:
        frame = frame.assign(category="all")
    qcols = [c for c in frame.columns if c.startswith("q_")]
    keys = ["model", "device", "suite", "prompt_length"]
    for key, grp in frame.groupby(keys, dropna=False, sort=False):
        model, device, suite, plen = key
        title = f"{suite} · {model} · {device} · {grp['dtype'].iloc[0]}"
        if not _missing(plen):
            title += f" · prompt {int(plen)} tokens"
        t = Table(title=title, title_justify="left", caption=_caption(grp), caption_justify="left")
        by_cat = grp["category"].nunique() > 1
        pruning = "computed_frac" in grp.columns and grp["computed_frac"].notna().any()
        show_ttft_sp = pruning or not _missing(plen)
        drafts = "acceptance" in grp.columns and bool(grp["acceptance"].map(_has_acceptance).any())
        draft_time = "draft_share" in grp.columns and grp["draft_share"].notna().any()
        qs = [c for c in qcols if grp[c].notna().any()]
        verdicts = "quality_verdict" in grp.columns and grp["quality_verdict"].notna().any()
        pairs = "pass_both" in grp.columns and grp["pass_both"].notna().any()
        cols = (["category"] if by_cat else []) + ["method", "n", "tok/s", "speedup vs AR [95% CI]"]
        cols += ["TTFT speedup [95% CI]"] if show_ttft_sp else []
        cols += ["TTFT ms p50/p90", "TPOT ms p50/p90", TAU]
        cols += (["draft", "accept/pos", "accept/pos given prev"] if drafts else [])
        cols += (["draft time"] if draft_time else []) + (["computed", "revivals"] if pruning else [])
        cols += [f"{c[2:]} (vs AR [95% CI])" for c in qs]
        cols += (["pass@1 both/AR/method/neither"] if pairs else []) + (["quality vs AR"] if verdicts else [])
        cols += ["match AR"]
        for col in cols:
            t.add_column(col, justify="left" if col in ("method", "category") else "right", overflow="fold")
        for _, r in grp.iterrows():
            t.add_row(*_cells(r, by_cat, show_ttft_sp, drafts, draft_time, pruning, qs, pairs, verdicts))
        tables.append(t)
    return tables


def _cells(r, by_cat, show_ttft_sp, drafts, draft_time, pruning, qs, pairs, verdicts) -> list[str]:
    n_pairs = r.get("n_pairs", r["n"])
    cells = ([str(r["category"])] if by_cat else []) + [
        str(r["method"]), str(int(r["n"])), _f(r["tokens_per_s"], "{:.1f}"),
        "1 (baseline)" if r["method"] == "ar" else _interval(r["speedup"], r["speedup_lo"], r["speedup_hi"], n=n_pairs)]
    if show_ttft_sp:
        cells.append("1 (baseline)" if r["method"] == "ar" else
                     _interval(r["ttft_speedup"], r["ttft_speedup_lo"], r["ttft_speedup_hi"], n=n_pairs))
    cells += [_ms(r, "ttft"), _ms(r, "tpot"), _f(r["tau"])]
    if drafts:
        cells += [_shape(r), _acceptance(r.get("acceptance")), _acceptance(r.get("acceptance_cond"))]
    if draft_time:
        cells.append(_f(r.get("draft_share"), "{:.1%}"))
    if pruning:
        cells += [_f(r.get("computed_frac"), "{:.0%}"), _f(r.get("revivals"), "{:.1f}")]
    for c in qs:
        m = c[2:]
        scale = 100.0 if m.startswith("pass@") else 1.0
        value = _f(r[c] * scale if not _missing(r[c]) else None, "{:.1f}")
        d = r.get(f"d_{m}")
        if r["method"] != "ar" and not _missing(d):
            value += " (" + _interval(d, r.get(f"d_{m}_lo"), r.get(f"d_{m}_hi"), suffix="", n=r.get("quality_n"),
                                      digits=1, signed=True) + ")"
        cells.append(value)
    if pairs:
        cells.append(_pairs(r))
    if verdicts:
        v = r.get("quality_verdict")
        cells.append(v if isinstance(v, str) else "-")
    em = r["exact_match_ar"]
    cells.append(_f(em * 100 if not _missing(em) else None, "{:.0f}%"))
    return cells


def _caption(grp) -> str:
    """What the columns mean, where it is not obvious."""
    notes = [f"{TAU}: tokens committed per decode forward (AR = 1)",
             f"intervals: BCa bootstrap 95% over paired samples, none below n={MIN_N}"]
    if "acceptance" in grp.columns and grp["acceptance"].map(_has_acceptance).any():
        notes.append("accept/pos: accepted_k / drafted_k; given prev: accepted_k / steps with drafts 1..k-1 accepted")
    if "pass_both" in grp.columns and grp["pass_both"].notna().any():
        notes.append("pass@1 pairs: both pass / only AR / only method / neither, exact McNemar p")
    return " · ".join(notes)
