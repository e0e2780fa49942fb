"""``accbench report``, ``compare``, ``check``, ``project`` and ``cost-curve``.

Loaded by :mod:`accbench.cli` through ``COMMAND_MODULES`` (the ``commands`` list below).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from accbench.errors import AccbenchError
from accbench.reports.runsets import BASELINE, RunSet, finite, load_runs
from rich.console import Console
from rich.table import Table


def _console() -> Console:
    c = Console()
    if not c.is_terminal:  # CI logs: wide enough that tables do not wrap
        c = Console(width=170)
    return c


def _fraction(value: str, flag: str) -> float:
    v = str(value).strip()
    try:
        if v.endswith("%"):
            return float(v[:-1]) / 100.0
        x = float(v)
    except ValueError:
        raise AccbenchError(f"{flag} takes a percentage such as 5% (or a fraction such as 0.05), got {value!r}") from None
    if not 0 <= x < 1:
        raise AccbenchError(f"{flag} takes a percentage such as 5% (or a fraction such as 0.05), got {value!r}")
    return x


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(x) if finite(x) else "-"


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------


TAU = "mean accepted tokens (tau)"
#: draft positions shown in the acceptance columns
SHOW_K = 5
_KEYS = ("model", "device", "dtype", "suite", "prompt_length")


def _iv(v, lo, hi, n, suffix="x", digits=2, signed=False) -> str:
    """One line: "v [lo, hi]", or "v (n too small (n=K))" below stats.MIN_N pairs."""
    c = _iv_cell(v, lo, hi, n, suffix, digits, signed)
    return f"{c.text} {c.sub}" if c.sub else c.text


def _iv_cell(v, lo, hi, n, suffix="x", digits=2, signed=False, missing="-"):
    """A value with its 95% interval on a second line (or why there is none)."""
    from accbench.reports.html import Cell
    from accbench.reports.stats import MIN_N

    if not finite(v):
        return Cell(missing, None)
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if finite(lo) and finite(hi):
        sub = f"[{f.format(lo)}, {f.format(hi)}]"
    elif finite(n) and n < MIN_N:
        sub = f"n too small (n={int(n)})"
    else:
        sub = ""
    return Cell(f.format(v) + suffix, float(v), sub)


def _has(grp, col) -> bool:
    """Whether the summary has column ``col`` with a value in any line (old runs may lack it)."""
    if col not in grp.columns:
        return False
    v = grp[col].dropna()
    return bool((v.astype(str) != "").any())


def _get(r, col):
    v = r.get(col) if hasattr(r, "get") else None
    return None if v is None or (isinstance(v, float) and v != v) else v


def _shape_cell(r):
    from accbench.reports.html import Cell

    kind = _get(r, "draft_kind")
    if not isinstance(kind, str) or not kind:
        return Cell("-", None)
    nodes, depth, heads = _get(r, "draft_nodes"), _get(r, "draft_depth"), _get(r, "draft_heads")
    chain = kind == "chain" and finite(nodes) and finite(depth) and nodes == depth
    sub = [f"{int(nodes)} nodes" if finite(nodes) and not chain else "", f"depth {int(depth)}" if finite(depth) else "",
           f"{int(heads)} heads" if finite(heads) else ""]
    return Cell(kind, kind, " · ".join(x for x in sub if x))


def _acc(r, key) -> list[float]:
    v = _get(r, key)
    if not isinstance(v, str) or not v:
        return []
    out = []
    for x in v.split(";"):
        try:
            out.append(float(x))
        except ValueError:
            out.append(float("nan"))
    return out


def _lead(r, by_cat):
    from accbench.reports.html import cell

    return ([cell(str(r["category"]))] if by_cat else []) + [cell(str(r["method"]))]


def _ordered(grp):
    """Overall lines first, then categories; AR first within each, then the methods by name."""
    cat = grp["category"].astype(str) if "category" in grp.columns else None
    key = grp.assign(_c=(cat != "all") if cat is not None else False, _cn=cat if cat is not None else "",
                     _m=grp["method"] != BASELINE, _mn=grp["method"].astype(str))
    return key.sort_values(["_c", "_cn", "_m", "_mn"], kind="stable").drop(columns=["_c", "_cn", "_m", "_mn"])


def _pct_cell(v, digits=0):
    from accbench.reports.html import cell

    return cell(v * 100 if finite(v) else None, f"{{:.{digits}f}}%")


def _speed_table(title, grp, by_cat, pairing_note):
    from accbench.reports.html import Cell, TableSpec, cell

    pruning = _has(grp, "computed_frac")
    draft_time = _has(grp, "draft_share")
    cols = (["category"] if by_cat else []) + ["method", "n", "tok/s", "speedup vs AR (median, 95% CI)"]
    cols += ["TTFT speedup vs AR (median, 95% CI)", "prompt computed"] if pruning else []
    cols += (["draft time (% of decode)"] if draft_time else []) + ["match AR (outputs identical)"]
    rows = []
    for _, r in _ordered(grp).iterrows():
        n_pairs = _get(r, "n_pairs") if _get(r, "n_pairs") is not None else r["n"]
        base = r["method"] == BASELINE
        nocell = Cell("no AR", None, "see the note below")
        line = _lead(r, by_cat) + [Cell(str(int(r["n"])), int(r["n"]),
                                        f"{int(n_pairs)} paired" if not base and finite(n_pairs)
                                        and n_pairs < r["n"] else ""),
                                   cell(r["tokens_per_s"], "{:.3g}")]
        line.append(Cell("1 (baseline)", 1.0) if base else
                    (_iv_cell(r["speedup"], r.get("speedup_lo"), r.get("speedup_hi"), n_pairs)
                     if finite(r.get("speedup")) else nocell))
        if pruning:
            if base:
                line.append(Cell("1 (baseline)", 1.0))
            elif finite(r.get("ttft_speedup")):
                line.append(_iv_cell(r["ttft_speedup"], r.get("ttft_speedup_lo"), r.get("ttft_speedup_hi"), n_pairs))
            else:
                line.append(nocell if not finite(r.get("speedup")) else cell(None))
            line.append(_pct_cell(r.get("computed_frac")))
        if draft_time:
            share = r.get("draft_share")
            line.append(cell(share * 100 if finite(share) else None, "{:.1f}"))
        line.append(cell(None) if base else _pct_cell(r.get("exact_match_ar")))
        rows.append(line)
    note = ("speedup: per sample AR time / method time for the same tokens, median over samples; intervals: 95% "
            "BCa bootstrap over the samples paired with AR, none below 5 pairs.")
    if pruning:
        note += (" TTFT speedup: AR time to first token / the method's (the headline of prompt-pruning methods such "
                 "as LazyLLM); prompt computed: share of prompt token-layers the pruned prefill computed.")
    return TableSpec(title + " · speed", cols, rows, note + pairing_note)


def _decoding_table(title, grp, by_cat):
    from accbench.reports.html import TableSpec, cell

    kmax = max((len(_acc(r, "acceptance")) for _, r in grp.iterrows()), default=0)
    if not kmax and not _has(grp, "draft_kind"):
        return None
    k = min(kmax, SHOW_K)
    kc = k if _has(grp, "acceptance_cond") else 0  # conditional acceptance: runs summarized since it exists
    lead = (["category"] if by_cat else []) + ["method"]
    cols = lead + [TAU, "tokens / forward", "draft shape"]
    cols += [f"k={i + 1}" for i in range(k)] + [f"k={i + 1}" for i in range(1, kc)]
    groups = [("", len(lead) + 3)] + ([("acceptance, unconditional: accepted_k / drafted_k", k, "uncond.")] if k
                                      else [])
    groups += [("acceptance, conditional: accepted_k / reached_k", kc - 1, "cond.")] if kc > 1 else []
    rows = []
    for _, r in _ordered(grp).iterrows():
        line = _lead(r, by_cat) + [cell(r.get("tau"), "{:.3f}"), cell(r.get("tokens_per_forward"), "{:.3f}"),
                                   _shape_cell(r)]
        for key, ks in (("acceptance", range(k)), ("acceptance_cond", range(1, kc))):
            acc = _acc(r, key)
            line += [cell(acc[i] if i < len(acc) else None, "{:.2f}") for i in ks]
        rows.append(line)
    more = f" (first {SHOW_K} of {kmax} positions; all in summary.csv)" if kmax > SHOW_K else ""
    note = (f"{TAU}: tokens committed per decode step of the target after the prefill (AR = 1); tokens / forward: "
            "new tokens per target forward pass. Acceptance at draft position k" + more + ": unconditional = "
            "accepted_k / drafted_k, the share of all drafts at k that were accepted (what vLLM reports); "
            "conditional = accepted_k / reached_k, given drafts 1..k-1 were accepted (equal at k=1). "
            "draft shape: chain / tree / dynamic, draft tokens per verification (max), depth, heads.")
    return TableSpec(title + " · decoding steps", cols, rows, note, groups=groups)


def _latency_table(title, grp, by_cat):
    from accbench.reports.html import TableSpec, cell

    if not any(_has(grp, f"{m}_p50") for m in ("ttft", "tpot", "itl")):
        return None
    lead = (["category"] if by_cat else []) + ["method"]
    cols = lead + [f"p{q}" for _ in range(3) for q in (50, 90, 99)]
    groups = [("", len(lead)), ("TTFT (ms)", 3, "TTFT ms"), ("TPOT (ms)", 3, "TPOT ms"), ("ITL (ms)", 3, "ITL ms")]
    rows = []
    for _, r in _ordered(grp).iterrows():
        line = _lead(r, by_cat)
        for m in ("ttft", "tpot", "itl"):
            for q in (50, 90, 99):
                v = r.get(f"{m}_p{q}")
                ms = v * 1000 if finite(v) else None
                line.append(cell(ms, "{:.0f}" if m == "ttft" else "{:.1f}"))
        rows.append(line)
    return TableSpec(title + " · latency", cols, rows,
                     "Percentiles over samples of TTFT (prefill + first token) and TPOT (decode time / (new tokens - "
                     "1)); ITL: pooled gaps between consecutive committed chunks, vLLM's inter-token latency. Under "
                     "speculation one chunk bundles every token a step accepted, so an ITL gap covers several tokens "
                     "and ITL can exceed TPOT.", groups=groups)


def _metric_label(m: str) -> str:
    return f"{m} (%)" if m.startswith("pass@") else m


def _quality_table(title, grp, by_cat, qs):
    from accbench.reports.html import Cell, TableSpec, cell

    pairs = _has(grp, "pass_both")
    cols = (["category"] if by_cat else []) + ["method", "n"]
    cols += [_metric_label(c[2:]) for c in qs]
    cols += (["pass@1 pairs: both / only AR / only method / neither", "McNemar p"] if pairs else [])
    cols += ["quality vs AR (verdict)"]
    rows = []
    for _, r in _ordered(grp).iterrows():
        base = r["method"] == BASELINE
        line = _lead(r, by_cat) + [cell(int(r["n"]), "{}")]
        for c in qs:
            m, v = c[2:], r[c]
            scale = 100.0 if m.startswith("pass@") else 1.0
            d = r.get(f"d_{m}")
            sub = ""
            if not base and finite(d):
                dc = _iv_cell(d, r.get(f"d_{m}_lo"), r.get(f"d_{m}_hi"), r.get("quality_n"), "", 1, True)
                sub = f"Δ {dc.text} {dc.sub}".rstrip()
            elif not base:
                sub = "Δ: no AR pair"
            line.append(Cell(f"{v * scale:.1f}" if finite(v) else "-", float(v) if finite(v) else None, sub))
        if pairs:
            if finite(r.get("pass_both")):
                line += [cell(" / ".join(str(int(r[k])) for k in ("pass_both", "pass_only_ar", "pass_only_method",
                                                                   "pass_neither")), sort=float(r["pass_only_ar"])),
                         cell(r.get("mcnemar_p"), "{:.3f}")]
            else:
                line += [cell(None), cell(None)]
        v, qm = _get(r, "quality_verdict"), _get(r, "quality_metric")
        if isinstance(v, str) and v:
            line.append(Cell(v, v, f"on {qm}" if isinstance(qm, str) and qm else ""))
        else:
            line.append(cell("reference" if base else None))
        rows.append(line)
    return TableSpec(title + " · quality", cols, rows,
                     "Mean per sample; Δ: mean per-sample difference method - AR on the same samples (pass@1 in "
                     "points), 95% BCa interval; pass@1 also as the paired 2x2 table with the exact McNemar test. "
                     "Verdict on the suite's main metric: loss / gain when the interval excludes 0 (and McNemar "
                     "p < 0.05 for pass@1), no measurable loss otherwise, too few samples below 5 pairs.")


def _headline_table(rs: RunSet):
    """One line per suite and method: the number the method is for (speedup; TTFT speedup for
    prompt pruning), and the quality verdict."""
    from accbench.reports.html import Cell, TableSpec, cell

    f = rs.frame
    if "category" in f.columns:
        f = f[f["category"].astype(str) == "all"]
    f = f[f["method"] != BASELINE]
    if f.empty:
        return None
    several = f["device"].nunique() > 1 or f["model"].nunique() > 1
    info = rs.pairing() if hasattr(rs, "pairing") else {}
    rows = []
    for _, r in f.iterrows():
        n_pairs = _get(r, "n_pairs") if _get(r, "n_pairs") is not None else r["n"]
        where = str(r["suite"]) + (f" @{int(r['prompt_length'])}" if finite(r.get("prompt_length")) else "")
        line = ([cell(f"{r['model']} · {r['device']}")] if several else []) + [cell(where), cell(str(r["method"]))]
        pruning = finite(r.get("computed_frac"))
        key, label = ("ttft_speedup", "TTFT speedup") if pruning else ("speedup", "speedup")
        if finite(r.get(key)):
            c = _iv_cell(r[key], r.get(f"{key}_lo"), r.get(f"{key}_hi"), n_pairs)
            extra = f", {r['computed_frac'] * 100:.0f}% of prompt computed" if pruning else ""
            line += [cell(label), Cell(c.text, c.sort, (c.sub + extra).strip(", "))]
        else:
            line += [cell(label), Cell("no AR", None, "no AR row of the same settings and device")]
        line.append(_iv_cell(r["speedup"], r.get("speedup_lo"), r.get("speedup_hi"), n_pairs) if pruning
                    else cell(None))
        v, qm = _get(r, "quality_verdict"), _get(r, "quality_metric")
        line.append(Cell(v, v, f"on {qm}" if isinstance(qm, str) else "") if isinstance(v, str) and v else cell(None))
        p = info.get(_pairing_key(r["model"], r["device"], r["suite"], r.get("prompt_length")), {}).get(r["method"])
        if p and p["other"]:
            line.append(Cell(", ".join(sorted(map(str, p["other"]))), "other", "another results folder"))
        elif p and not p["same"]:
            line.append(Cell("none", "none", "no compatible AR"))
        else:
            line.append(cell("its own run"))
        rows.append(line)
    cols = (["model · device"] if several else []) + ["suite", "method", "headline", "value (95% CI)",
                                                      "E2E speedup (pruning)", "quality vs AR", "AR pair from"]
    return TableSpec("Headline per method", cols, rows,
                     "The number each method is for, against AR on the same samples: end-to-end speedup for "
                     "speculative decoding, TTFT speedup for prompt pruning (LazyLLM); details in the tables below.")


def _pairing_key(model, device, suite, plen):
    return (model, device, suite, plen if finite(plen) else None)


def _summary_sections(rs: RunSet):
    f = rs.frame
    for col, default in (("category", "all"), ("dtype", "")):
        if col not in f.columns:
            f = f.assign(**{col: default})
    tables = []
    qcols = [c for c in f.columns if c.startswith("q_")]
    notes = rs.pairing_notes() if hasattr(rs, "pairing_notes") else {}
    head = _headline_table(rs)
    if head is not None:
        tables.append(head)
    for key, grp in f.groupby(list(_KEYS), dropna=False, sort=False):
        model, device, dtype, suite, plen = key
        title = f"{suite} · {model} · {device} · {dtype}"
        if finite(plen):
            title += f" · prompt {int(plen)} tokens"
        by_cat = grp["category"].nunique() > 1
        note = notes.get(_pairing_key(model, device, suite, plen), "")
        tables.append(_speed_table(title, grp, by_cat, (" Pairing: " + note) if note else ""))
        for t in (_decoding_table(title, grp, by_cat),):
            if t is not None:
                tables.append(t)
        qs = [c for c in qcols if grp[c].notna().any()]
        if qs:
            tables.append(_quality_table(title, grp, by_cat, qs))
        t = _latency_table(title, grp, by_cat)
        if t is not None:
            tables.append(t)
    return tables


def _runs_table(rs: RunSet):
    from accbench.reports.html import Cell, TableSpec, cell

    rows = []
    for run in rs.runs:
        env = run.config.get("environment") or {}
        s = run.config.get("settings") or {}
        sett = [f"max new tokens {s.get('max_new_tokens') or 'suite' + chr(39) + 's'}",
                f"T={s.get('temperature', 0.0)}", f"top_p={s.get('top_p', 1.0)}", f"seed {s.get('seed', '?')}",
                f"format {s.get('prompt_format') or 'auto'}"]
        status = str(run.config.get("status", "?"))
        methods = ", ".join(run.config.get("methods") or []) or "?"
        suites = ", ".join(run.config.get("suites") or []) or "?"
        rows.append([cell(str(run.path)), cell(f"{run.config.get('device', '?')} · {run.hardware}"),
                     cell(str(run.config.get("dtype", "?"))), Cell(" · ".join(sett[:2]), " ".join(sett),
                                                                  " · ".join(sett[2:])),
                     Cell(methods, methods, suites), cell(str(env.get("git_sha") or "?")[:10]),
                     cell(str(run.config.get("started", "?"))[:16].replace("T", " ")),
                     Cell(status, status, "" if status == "complete" else "INCOMPLETE"), cell(run.n_rows, "{}")])
    return TableSpec("", ["results folder", "device", "dtype", "settings", "methods / suites", "git sha", "started",
                          "status", "rows"], rows,
                     "Rows of different folders pair with each other's AR rows only when model, device, suite, "
                     "sample and these settings (max new tokens, temperature, top_p, seed, prompt format, dtype, "
                     "data file) are identical, and a folder with its own AR rows always uses them.")


def _projection_table(pred: list[dict[str, Any]]):
    from accbench.reports.html import TableSpec, cell

    rows = []
    for p in pred:
        meas = (f"{p['measured']:.2f}x [{p['measured_lo']:.2f}, {p['measured_hi']:.2f}]" if finite(p["measured"])
                else "not measured")
        rows.append([cell(p["method"]), cell(p["suite"]), cell(p["model"]), cell(p["source_device"]),
                     cell(p["target_device"]), cell(p["tau"], "{:.3f}"), cell(p["mean_block"], "{:.2f}"),
                     cell(p["predicted"], "{:.2f}x"), cell(meas, sort=p["measured"] if finite(p["measured"]) else None),
                     cell(p["error_pct"], "{:+.1f}%")])
    return TableSpec("Predicted decode speedup (tau and block sizes from the source device, cost curve of the target)",
                     ["method", "suite", "model", "tau from", "predicted for", "tau", "mean block", "predicted",
                      "measured [95% CI]", "error"], rows,
                     "predicted = decode tokens / sum over steps of cost(k_step)/cost(1); measured = median over "
                     "prompts of AR TPOT / method TPOT; error = predicted / measured - 1. Drafting cost is not "
                     "modelled, so the prediction is an upper bound for drafters that are not free.")


def build_report(rs: RunSet, out: Path, curves: list[dict[str, Any]] | None = None,
                 title: str = "accbench report") -> dict[str, Path]:
    from accbench.reports import plots
    from accbench.reports.html import Figure, Section, render_html, render_md
    from accbench.reports.projection import project

    out.mkdir(parents=True, exist_ok=True)
    curves = curves or []
    figs = plots.all_plots(rs, out)
    texts = {
        "speedup": ("Speedup vs AR per method and suite", "Median over prompts of the per-prompt speedup (AR and "
                    "the method on the same prompt, same settings and device), with its 95% bootstrap interval; "
                    "for prompt-pruning methods also the TTFT speedup, their headline."),
        "speed_quality": ("Speed vs quality", "One panel per quality metric: speedup on x, the paired change of the "
                          "metric vs AR on the same samples on y, both with 95% intervals. AR sits at (1, 0)."),
        "ttft": ("TTFT vs prompt length", "Time to first token per prompt, log-scaled prompt length."),
        "tau": ("Tokens per step", "Distribution of tokens committed per decode step of the drafting methods; the "
                "mean is the mean accepted tokens (tau)."),
        "acceptance": ("Acceptance per draft position", "Solid: unconditional, accepted_k / drafted_k (as vLLM); "
                       "dashed: conditional, accepted_k / reached_k (given drafts 1..k-1 were accepted)."),
        "throughput": ("Tokens/s across models and devices", "Absolute throughput per method, model and machine."),
    }
    figures = [Figure(name, path, *texts[name]) for name, path in figs.items()]
    sections = [
        Section("Results", ["Every number below is computed from the rows of the runs' `samples.jsonl` by "
                            "`accbench.reports.summary.summarize`; the same table is in `summary.csv` next to this report."],
                tables=_summary_sections(rs)),
        Section("Figures", figures=figures),
    ]
    pred: list[dict[str, Any]] = []
    if curves:
        pred = project(rs, curves)
        cfigs = []
        p = plots.plot_cost_curves(curves, out)
        if p:
            cfigs.append(Figure("cost_curve", p, "Verification cost curves",
                                "cost(k)/cost(1) of one forward over k new tokens, per device."))
        p = plots.plot_projection(pred, out)
        if p:
            figs["projection"] = p
            cfigs.append(Figure("projection", p, "Predicted vs measured decode speedup",
                                "Where a device was both measured and projected to."))
        if "cost_curve" not in figs and cfigs and cfigs[0].name == "cost_curve":
            figs["cost_curve"] = cfigs[0].path
        sections.append(Section("Projection to other devices",
                                [f"Cost curves: {', '.join(c['_path'] + ' (' + c['device_label'] + ')' for c in curves)}."],
                                tables=[_projection_table(pred)], figures=cfigs))
    sections.append(Section("Runs", tables=[_runs_table(rs)]))
    warnings = [f"{run.path} is an incomplete run (status {run.config.get('status')!r}): its tables and figures "
                f"cover only the {run.n_rows} rows it has; rerun its `accbench run` command to complete it."
                for run in rs.runs if run.config.get("status") not in (None, "complete")]
    intro = [f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(rs.runs)} results folder(s), "
              f"{len(rs.rows)} rows. {rs.caption()}.",
              "Speedup: per prompt AR time / method time (same number of tokens) else the ratio of tokens/s, "
              "paired with AR on the same sample (same run settings and device; AR rows of another results folder "
              "only when a folder has none, and the tables say so); mean accepted tokens (tau): "
              "tokens per decode step; tokens/forward: new tokens per target forward pass; quality deltas are "
              "method minus AR on the same prompts."]
    rs.frame.to_csv(out / "summary.csv", index=False)
    (out / "report.md").write_text(render_md(title, intro, sections, out, warnings))
    (out / "report.html").write_text(render_html(title, intro, sections, warnings))
    if pred:
        (out / "projection.json").write_text(json.dumps(pred, indent=1, default=str) + "\n")
    return {"report.md": out / "report.md", "report.html": out / "report.html", **figs}


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-O", "out", required=True, type=click.Path(file_okay=False), help="Folder for the report.")
@click.option("--cost-curve", "curves", multiple=True, type=click.Path(),
              help="Cost-curve JSON (`accbench cost-curve`) of a device to project speedups to; repeatable.")
@click.option("--title", default="accbench report", show_default=True)
def report(runs, out, curves, title) -> None:
    """Write report.md, a self-contained report.html and PNG plots for one or more results
    folders (runs from several machines merge with the machine as an axis)."""
    from accbench.reports.projection import load_curve

    rs = load_runs(runs)
    cs = [load_curve(c) for c in curves]
    try:
        paths = build_report(rs, Path(out), cs, title)
    except OSError as e:
        raise AccbenchError(f"cannot write the report to {out}: {e.strerror or e}") from None
    con = _console()
    for name, p in paths.items():
        con.print(f"  {name:<14} {p}")
    con.print(f"[green]report written to {out}[/green]")


# ---------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------


def _pct(v, lo, hi) -> str:
    if not finite(v):
        return "-"
    return f"{v:+.1%} [{lo:+.1%}, {hi:+.1%}]"


@click.command(name="compare")
@click.argument("run_a", type=click.Path())
@click.argument("run_b", type=click.Path())
@click.option("--min-change", default="5%", show_default=True,
              help="Smallest relative speed/TTFT change called better or worse (also needs the CI to exclude 0).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the rows as JSON.")
def compare_cmd(run_a, run_b, min_change, json_out) -> None:
    """Per model x suite x method: how RUN_B differs from RUN_A in speedup, tau, TTFT and
    quality, paired by sample with 95% bootstrap intervals, and a verdict per row."""
    from accbench.reports.compare import compare

    rows = compare(load_runs([run_a]), load_runs([run_b]), min_change=_fraction(min_change, "--min-change"))
    t = Table(title=f"{run_b} vs {run_a} (B vs A, paired by sample, 95% CI)", title_justify="left")
    for c in ("model", "suite", "method", "n", "speed A -> B", "speed change", "tau A -> B", "tau change",
              "TTFT change", "quality A -> B", "quality change", "verdict"):
        t.add_column(c, justify="left" if c in ("model", "suite", "method", "verdict") else "right")
    for r in rows:
        unit = "" if r["method"] == BASELINE else "x"
        color = "red" if r["verdict"].startswith("worse") else "green" if r["verdict"].startswith("better") else \
            "yellow" if r["verdict"].startswith("mixed") else "white"
        q_name = r["quality_metric"] or ""
        t.add_row(r["model"], r["suite"] + (f" @{r['prompt_length']}" if r["prompt_length"] else ""), r["method"],
                  str(r["n"]),
                  f"{_f(r['speed_a'])}{unit} -> {_f(r['speed_b'])}{unit}" + (" tok/s" if not unit else ""),
                  _pct(r["speed_change"], r["speed_lo"], r["speed_hi"]),
                  f"{_f(r['tau_a'], '{:.3f}')} -> {_f(r['tau_b'], '{:.3f}')}",
                  f"{r['tau_change']:+.3f} [{r['tau_lo']:+.3f}, {r['tau_hi']:+.3f}]" if finite(r["tau_change"]) else "-",
                  _pct(r["ttft_change"], r["ttft_lo"], r["ttft_hi"]),
                  f"{q_name} {_f(r['quality_a'])} -> {_f(r['quality_b'])}" if q_name else "-",
                  f"{r['quality_change']:+.2f} pp [{r['quality_lo']:+.2f}, {r['quality_hi']:+.2f}]"
                  if finite(r["quality_change"]) else "-",
                  f"[{color}]{r['verdict']}[/{color}]")
    con = _console()
    con.print(t)
    con.print("[dim]speed: speedup vs AR in each run (tokens/s for AR itself); better/worse needs the 95% interval "
              f"to exclude no change and a change of at least {min_change} (speed, TTFT) or any change (tau, quality)."
              "[/dim]")
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=1, default=str) + "\n")


# ---------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------


@click.command(name="check")
@click.argument("run", type=click.Path())
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False), default=None,
              help="Baseline JSON (default: results/baselines/<model>.json).")
@click.option("--max-slowdown", default="5%", show_default=True,
              help="Flag a speedup drop larger than this whose paired 95% bootstrap interval excludes no change.")
@click.option("--quality-tolerance", type=float, default=0.5, show_default=True,
              help="Allowed quality drop in percentage points (pass@1 as 0-100, ROUGE 0-100).")
@click.option("--tau-tolerance", type=float, default=0.0, show_default=True,
              help="Allowed drop of tau (tokens per step); 0: any drop fails (greedy decoding is deterministic).")
@click.option("--write-baseline", is_flag=True, help="Write RUN as the new baseline instead of checking.")
@click.option("--github-json", type=click.Path(dir_okay=False), default=None,
              help="Also write github-action-benchmark JSON (tool: customBiggerIsBetter) for RUN.")
def check_cmd(run, baseline_path, max_slowdown, quality_tolerance, tau_tolerance, write_baseline, github_json) -> None:
    """The CI gate: exit 0 when nothing regressed against the baseline, 1 with a table of
    regressions, 2 for bad input.

    \b
    Exact (hardware-independent) rules: lossless methods equal AR token for token; tau per
    method and suite does not drop; forward passes per token do not rise; quality is not
    below the baseline by more than --quality-tolerance.
    Timing rule: the speedup vs AR (measured in the same run) is flagged only when it drops
    by more than --max-slowdown and the paired bootstrap interval excludes no change."""
    from accbench.reports import gate

    con = _console()
    rs = load_runs([run])
    slow = _fraction(max_slowdown, "--max-slowdown")
    if quality_tolerance < 0 or tau_tolerance < 0:
        raise AccbenchError("--quality-tolerance and --tau-tolerance cannot be negative")
    models = sorted({r["model"] for r in rs.rows})
    if baseline_path is None:
        if len(models) != 1:
            raise AccbenchError("the run holds several models: give --baseline FILE")
        baseline_path = str(Path("results") / "baselines" / f"{models[0].replace('/', '_')}.json")
    if github_json:
        Path(github_json).write_text(json.dumps(gate.github_benchmark(rs), indent=1) + "\n")
        con.print(f"[dim]github-action-benchmark JSON: {github_json}[/dim]")
    if write_baseline:
        base, warnings = gate.make_baseline(rs)
        gate.write_baseline(base, Path(baseline_path))
        for w in warnings:
            con.print(f"[yellow]warning:[/yellow] {w}: `accbench check` will fail on it until it is fixed")
        con.print(f"baseline written to {baseline_path} ({len(base['groups'])} method x suite groups)")
        return
    base = gate.load_baseline(baseline_path)
    res = gate.check(rs, base, max_slowdown=slow, quality_tolerance=quality_tolerance, tau_tolerance=tau_tolerance)
    t = Table(title=f"accbench check {run} against {baseline_path}", title_justify="left")
    for c in ("", "rule", "suite", "method", "baseline", "now", "limit", "detail"):
        t.add_column(c, justify="right" if c in ("baseline", "now") else "left", overflow="fold")
    for f in res.findings:
        mark = "[green]ok[/green]" if f.ok else "[bold red]FAIL[/bold red]"
        t.add_row(mark, f.rule, f.suite, f.method, f.baseline, f.now, f.limit, f.detail)
    con.print(t)
    for n in res.notes:
        con.print(f"[dim]note: {n}[/dim]")
    fails = res.failures
    if fails:
        r = Table(title=f"{len(fails)} regression(s)", title_justify="left", title_style="bold red")
        for c in ("rule", "model", "suite", "method", "baseline", "now", "detail"):
            r.add_column(c, overflow="fold")
        for f in fails:
            r.add_row(f.rule, f.model, f.suite, f.method, f.baseline, f.now, f.detail)
        con.print(r)
        sys.exit(1)
    con.print(f"[green]no regression[/green] ({len(res.findings)} checks against {baseline_path})")


# ---------------------------------------------------------------------------------------
# project and cost-curve
# ---------------------------------------------------------------------------------------


@click.command(name="project")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--cost-curve", "curves", multiple=True, required=True, type=click.Path(),
              help="Cost-curve JSON of the target device (`accbench cost-curve` there); repeatable.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the lines as JSON.")
def project_cmd(runs, curves, json_out) -> None:
    """Predict each method's decode speedup on other devices from its tau and block sizes
    (hardware-independent, measured in RUNS) and each device's verification-cost curve;
    shows the measured speedup and the prediction error where RUNS hold that device."""
    from accbench.reports.projection import load_curve, project

    rs = load_runs(runs)
    pred = project(rs, [load_curve(c) for c in curves])
    t = Table(title="predicted decode speedup", title_justify="left")
    for c in ("model", "suite", "method", "tau", "mean block", "tau from", "predicted for", "predicted", "measured",
              "error"):
        t.add_column(c, justify="left" if c in ("model", "suite", "method", "tau from", "predicted for") else "right",
                     overflow="fold")
    for p in pred:
        t.add_row(p["model"], p["suite"], p["method"], _f(p["tau"], "{:.3f}"), _f(p["mean_block"]), p["source_device"],
                  p["target_device"], _f(p["predicted"], "{:.2f}x"),
                  f"{p['measured']:.2f}x [{p['measured_lo']:.2f}, {p['measured_hi']:.2f}]" if finite(p["measured"])
                  else "not measured", _f(p["error_pct"], "{:+.1f}%"))
    con = _console()
    con.print(t)
    con.print("[dim]predicted = decode tokens / sum of cost(k)/cost(1) over decode steps (drafting not modelled); "
              "measured = median of AR TPOT / method TPOT.[/dim]")
    if json_out:
        Path(json_out).write_text(json.dumps(pred, indent=1, default=str) + "\n")


@click.command(name="cost-curve")
@click.option("--model", required=True, help="Registry name, model folder, or a config.json (random weights).")
@click.option("--device", default=None, help="cpu | cuda | cuda:N (default: cpu).")
@click.option("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU, bfloat16 on CUDA).")
@click.option("--ks", default=",".join(map(str, (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64))), show_default=True,
              help="Block sizes to time.")
@click.option("--prefix-len", type=int, default=256, show_default=True, help="Cached context before each block.")
@click.option("--repeats", type=int, default=7, show_default=True, help="Timed forwards per k (median kept).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the curve JSON.")
def cost_curve_cmd(model, device, dtype, ks, prefix_len, repeats, out) -> None:
    """Measure this device's verification-cost curve: the time of one forward over k new
    tokens relative to one token. Random weights are fine; the JSON can be shared and given
    to `accbench project` / `accbench report --cost-curve`."""
    from accbench.reports.projection import measure_cost_curve

    try:
        k_list = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        raise AccbenchError(f"--ks takes comma-separated integers, got {ks!r}") from None
    con = _console()
    curve = measure_cost_curve(model, dtype=dtype, device=device, ks=k_list, prefix_len=prefix_len, repeats=repeats,
                               progress=lambda m: con.print(f"[dim]{m}[/dim]"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(curve, indent=1) + "\n")
    t = Table(title=f"cost curve · {curve['model']} · {curve['device_label']} · {curve['dtype']}", title_justify="left")
    t.add_column("k", justify="right")
    t.add_column("ms", justify="right")
    t.add_column("cost(k)/cost(1)", justify="right")
    for k, s in curve["seconds"].items():
        t.add_row(k, f"{s * 1000:.2f}", f"{curve['relative'][k]:.2f}")
    con.print(t)
    for w in curve.get("warnings") or []:
        con.print(f"[yellow]warning:[/yellow] {w}")
    con.print(f"written to {out}")


commands = [report, compare_cmd, check_cmd, project_cmd, cost_curve_cmd]

__all__ = ["commands", "build_report"]
