"""Rich tables of a summary frame (one per model x device x suite x prompt length).

Every interval is printed by :meth:`accbench.reports.stats.Interval.fmt`: "v [lo, hi]" or, below
``stats.MIN_N`` paired samples, "v, n too small (n=K)". With categories (Spec-Bench tasks, a
``prompts`` file's ``category`` field) a table has a category column, the overall ("all") lines first.
"""

from __future__ import annotations

import math

import pandas as pd
from accbench.reports.stats import MIN_N, PassTable, fmt_p, interval_of
from rich.table import Table

TAU = "mean accepted tokens (tau)"
BASELINE = "ar"
#: headers broken where a narrow column may break them (the others wrap on their own)
HEADERS = {TAU: "mean\naccepted\ntokens\n(tau)", "match AR": "match\nAR", "tok/s": "tok/s",
           "TTFT ms p50/p90": "TTFT ms\np50/p90", "TPOT ms p50/p90": "TPOT ms\np50/p90",
           "speedup vs AR [95% CI]": "speedup\nvs AR\n[95% CI]", "TTFT speedup [95% CI]": "TTFT\nspeedup\n[95% CI]",
           "method (draft)": "method\n(draft)"}
#: columns that wrap (with their narrowest width); every other column keeps its cells on their lines
WRAPS = {"accept/pos (2nd line: given prev)": 14, "quality (change vs AR [95% CI])": 17, "quality vs AR": 13}


def _missing(x) -> bool:
    if x is None:
        return True
    try:
        return isinstance(x, (float, int)) and math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def _f(x, fmt="{:.2f}", missing="-"):
    return missing if _missing(x) else fmt.format(x)


def _interval(v, lo, hi, suffix="x", n=None, digits=2, signed=False, bound_spec=None, sep=None) -> str:
    """A summary value with its interval, through :meth:`Interval.fmt` ("n too small" below MIN_N)."""
    return interval_of(v, lo, hi, n).fmt(digits, suffix, signed=signed, bound_spec=bound_spec, sep=sep)


def _ms(r, name) -> str:
    """"p50/p90" of a latency in ms."""
    p50, p90 = r.get(f"{name}_p50"), r.get(f"{name}_p90")
    if _missing(p50):
        return "-"
    digits = "{:.0f}" if p50 >= 0.01 else "{:.1f}"
    return f"{digits.format(p50 * 1000)}/{digits.format(p90 * 1000)}" if not _missing(p90) else \
        digits.format(p50 * 1000)


def _shape(r) -> str:
    """"chain 5", "tree 63n d4" (draft tokens per verification, depth), "dynamic 20n d6"; "-" without
    a draft shape (the number of heads is in summary.csv)."""
    kind = r.get("draft_kind")
    if not isinstance(kind, str) or not kind:
        return "-"
    nodes, depth = r.get("draft_nodes"), r.get("draft_depth")
    if kind == "chain":
        return f"chain {int(depth)}" if not _missing(depth) else "chain"
    return kind + "".join([f" {int(nodes)}n" if not _missing(nodes) else "",
                           f" d{int(depth)}" if not _missing(depth) else ""])


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


def _scale(metric: str) -> float:
    return 100.0 if metric.startswith("pass@") else 1.0


def _quality_lines(r, metrics: list[str]) -> str:
    """The headline metric (first) as "rougeL 18.2" over "-0.9 [-2.1, +0.4]" (the paired change vs
    AR with its interval); pass@1 in points with its paired table: "+5.0 pp [-3, +13]" over
    "3/1/2/14, McNemar p=0.62". Other metrics on one line each, with the change only
    ("rouge1 35.1 (-0.4)"; their intervals are in summary.csv)."""
    lines = []
    n = r.get("quality_n")
    if _missing(n):
        n = r.get("n_pairs")
    for i, m in enumerate(metrics):
        q = r.get(f"q_{m}")
        if _missing(q):
            continue
        binary = m.startswith("pass@")
        head = f"{m} {q * _scale(m):.1f}"
        d = r.get(f"d_{m}")
        if r["method"] == BASELINE or _missing(d):
            lines.append(head)
        elif i == 0:
            lines += [head, _interval(d, r.get(f"d_{m}_lo"), r.get(f"d_{m}_hi"), suffix=" pp" if binary else "", n=n,
                                      digits=1, signed=True, bound_spec="+.0f" if binary else None)]
            if binary and not _missing(r.get("pass_both")):
                t = PassTable(*(int(r[k]) for k in ("pass_both", "pass_only_ar", "pass_only_method", "pass_neither")),
                              p_value=float(r["mcnemar_p"]), delta=interval_of(d, None, None, n))
                lines.append(f"{t.counts()}, McNemar p={fmt_p(t.p_value)}")
        else:
            lines.append(f"{head} ({d:+.1f}{' pp' if binary else ''})")
    return "\n".join(lines) or "-"


def _metrics(grp) -> list[str]:
    """Quality metrics shown, the headline one (``quality_metric``) first."""
    qs = [c[2:] for c in grp.columns if c.startswith("q_") and grp[c].notna().any()]
    head = [m for m in grp.get("quality_metric", pd.Series(dtype=object)).dropna().unique() if m in qs]
    return head + sorted(m for m in qs if m not in head)


def summary_tables(frame: pd.DataFrame) -> list[Table]:
    """One table per model x device x suite x prompt length; with categories a category column
    (the overall line first, a rule between categories). Cells that carry two figures put the
    second on its own line, so a table fits a 160-column terminal."""
    tables = []
    if frame.empty:
        return tables
    if "category" not in frame.columns:
        frame = frame.assign(category="all")
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
        shapes = "draft_kind" in grp.columns and bool(grp["draft_kind"].map(lambda k: isinstance(k, str) and k).any())
        draft_time = "draft_share" in grp.columns and grp["draft_share"].notna().any()
        metrics = _metrics(grp)
        verdicts = "quality_verdict" in grp.columns and bool(grp["quality_verdict"].map(
            lambda v: isinstance(v, str) and v != "").any())
        cols = (["category"] if by_cat else []) + ["method (draft)" if shapes else "method", "n", "tok/s",
                                                   "speedup vs AR [95% CI]"]
        cols += ["TTFT speedup [95% CI]"] if show_ttft_sp else []
        cols += ["TTFT ms p50/p90", "TPOT ms p50/p90", TAU]
        cols += ["accept/pos (2nd line: given prev)"] if drafts else []
        cols += (["draft time"] if draft_time else []) + (["computed", "revivals"] if pruning else [])
        cols += ["quality (change vs AR [95% CI])"] if metrics else []
        cols += (["quality vs AR"] if verdicts else []) + ["match AR"]
        for col in cols:
            left = col.startswith(("method", "category", "quality", "accept"))
            wraps = col in WRAPS
            t.add_column(HEADERS.get(col, col), justify="left" if left else "right", overflow="fold",
                         no_wrap=not wraps, min_width=WRAPS.get(col))
        rows = list(grp.iterrows())
        for i, (_, r) in enumerate(rows):
            last_of_cat = by_cat and i + 1 < len(rows) and rows[i + 1][1]["category"] != r["category"]
            t.add_row(*_cells(r, by_cat, show_ttft_sp, shapes, drafts, draft_time, pruning, metrics, verdicts),
                      end_section=bool(last_of_cat))
        tables.append(t)
    return tables


def _cells(r, by_cat, show_ttft_sp, shapes, drafts, draft_time, pruning, metrics, verdicts) -> list[str]:
    n_pairs = r.get("n_pairs")
    is_ar = r["method"] == BASELINE
    shape = _shape(r) if shapes else "-"
    cells = ([str(r["category"])] if by_cat else []) + [
        str(r["method"]) + (f"\n{shape}" if shape != "-" else ""), str(int(r["n"])), _f(r["tokens_per_s"], "{:.1f}"),
        "1 (baseline)" if is_ar else _interval(r["speedup"], r.get("speedup_lo"), r.get("speedup_hi"), n=n_pairs,
                                               sep="\n")]
    if show_ttft_sp:
        cells.append("1 (baseline)" if is_ar else _interval(r.get("ttft_speedup"), r.get("ttft_speedup_lo"),
                                                            r.get("ttft_speedup_hi"), n=n_pairs, sep="\n"))
    cells += [_ms(r, "ttft"), _ms(r, "tpot"), _f(r["tau"])]
    if drafts:
        acc, cond = _acceptance(r.get("acceptance")), _acceptance(r.get("acceptance_cond"))
        cells.append(acc + (f"\n{cond}" if acc != "-" and cond != "-" else ""))
    if draft_time:
        cells.append(_f(r.get("draft_share"), "{:.1%}"))
    if pruning:
        cells += [_f(r.get("computed_frac"), "{:.0%}"), _f(r.get("revivals"), "{:.1f}")]
    if metrics:
        cells.append(_quality_lines(r, metrics))
    if verdicts:
        v = r.get("quality_verdict")
        cells.append(v if isinstance(v, str) and v else "-")
    em = r["exact_match_ar"]
    cells.append(_f(em * 100 if not _missing(em) else None, "{:.0f}%"))
    return cells


def _caption(grp) -> str:
    """What the columns mean, where it is not obvious."""
    notes = [f"{TAU}: tokens committed per decode forward (AR = 1)",
             f"intervals: BCa bootstrap 95% over paired per-sample values, none below n={MIN_N} (\"n too small\")",
             "TTFT/TPOT: percentiles over samples"]
    if "acceptance" in grp.columns and grp["acceptance"].map(_has_acceptance).any():
        notes.append("accept/pos: accepted_k / drafted_k per draft position; 2nd line: accepted_k / steps whose "
                     "drafts 1..k-1 were accepted")
    if "quality_verdict" in grp.columns:
        notes.append("quality: mean, below it the change vs AR on the same samples [95% CI] (other metrics: the "
                     "change only, intervals in summary.csv); verdict: loss/gain when the CI excludes 0 (pass@1: and "
                     f"McNemar p < 0.05), too few samples below {MIN_N} pairs")
    if "pass_both" in grp.columns and grp["pass_both"].notna().any():
        notes.append("pass@1 pairs: both pass / only AR / only method / neither, exact McNemar p")
    return " · ".join(notes)
