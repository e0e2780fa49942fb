"""Report figures (matplotlib, Agg): every one computed from the rows of samples.jsonl and
captioned with model, device, dtype, suite, sample count and date.

Each ``plot_*`` function writes one PNG and returns its path, or returns None when the runs
hold nothing to draw (e.g. no speculative method: no acceptance curve).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401
import numpy as np  # noqa: E402
from accbench.reports.runsets import (  # noqa: E402
    BASELINE,
    RunSet,
    caption,
    finite,
)

DPI = 110
_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _method_order(methods) -> list[str]:
    ms = sorted(set(methods))
    return ([BASELINE] if BASELINE in ms else []) + [m for m in ms if m != BASELINE]


def _colors(keys) -> dict[str, str]:
    return {k: _COLORS[i % len(_COLORS)] for i, k in enumerate(keys)}


#: AR, the reference, is drawn in dark grey in every figure
AR_COLOR = "#4d4d4d"
_METHOD_PALETTE = [c for c in plt.get_cmap("tab10").colors if c != (0.4980392156862745,) * 3] + \
    list(plt.get_cmap("Dark2").colors)


def method_color(method: str) -> str:
    """One colour per method in every figure of every report: AR grey, the built-in methods by
    their place in the registry, plugin methods after them by name."""
    if method == BASELINE:
        return AR_COLOR
    from accbench import methods as registry

    names = [m for m in sorted(registry.available()) if m != BASELINE]
    idx = names.index(method) if method in names else len(names) + sum(map(ord, method))
    return matplotlib.colors.to_hex(_METHOD_PALETTE[idx % len(_METHOD_PALETTE)])


def method_colors(methods) -> dict[str, str]:
    return {m: method_color(m) for m in methods}


def _legend(ax, **kw) -> None:
    """A legend beside the axes, never over the data."""
    kw.setdefault("fontsize", 7.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, **kw)


def _overall(frame):
    """The summary's overall lines (per-category lines are for tables)."""
    return frame[frame["category"] == "all"] if "category" in frame.columns else frame


def _finish(fig, path: Path, title: str, rows: list[dict[str, Any]], note: str | None = None) -> Path:
    fig.suptitle(title, fontsize=12, fontweight="bold", x=0.01, y=0.985, ha="left")
    width = int(fig.get_size_inches()[0] * 17)  # characters of 7.5 pt text per line
    foot = "\n".join(textwrap.wrap(caption(rows), width, break_on_hyphens=False))
    if note:
        foot += "\n" + "\n".join(textwrap.wrap(note, width, break_on_hyphens=False))
    fig.text(0.01, 0.005, foot, fontsize=7.5, color="#444444", ha="left", va="bottom")
    n_lines = foot.count("\n") + 1
    fig.tight_layout(rect=(0, 0.03 + 0.022 * n_lines, 1, 0.96))
    fig.savefig(path, dpi=DPI, metadata={"Title": title, "Description": foot, "Software": "accbench"})
    plt.close(fig)
    return path


def _panels(n: int, width: float = 5.2, height: float = 3.8, max_cols: int = 3):
    cols = min(n, max_cols)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(max(width * cols, 7.5), height * nrows + 0.7), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _short(s: str, n: int = 34) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# ---------------------------------------------------------------------------------------


def _bars(ax, sub, methods, colors, col: str, label_suffix: str = "×") -> float:
    """Grouped bars of ``col`` (with ``col_lo`` / ``col_hi`` whiskers) per suite (x) and method;
    returns the highest value drawn (interval included)."""
    suites = list(dict.fromkeys(sub["suite"]))
    width = 0.8 / max(len(methods), 1)
    top = 1.0
    for j, m in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for i, s in enumerate(suites):
            line = sub[(sub["suite"] == s) & (sub["method"] == m)]
            if line.empty or col not in line.columns or not finite(line[col].iloc[0]):
                continue
            v = float(line[col].iloc[0])
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(v)
            b_lo = float(line[f"{col}_lo"].iloc[0]) if f"{col}_lo" in line.columns else float("nan")
            b_hi = float(line[f"{col}_hi"].iloc[0]) if f"{col}_hi" in line.columns else float("nan")
            lo.append(v - b_lo if finite(b_lo) else 0.0)  # no interval below stats.MIN_N
            hi.append(b_hi - v if finite(b_hi) else 0.0)
        if not xs:
            continue
        ax.bar(xs, ys, width * 0.92, color=colors[m], label=m, yerr=[lo, hi], capsize=4,
               error_kw={"elinewidth": 1.2, "ecolor": "#222222"})
        for x, y, h in zip(xs, ys, hi):
            ax.text(x, y + h, f"{y:.2f}{label_suffix}", ha="center", va="bottom", fontsize=8)
            top = max(top, y + h)
    ns = {s: int(sub[sub["suite"] == s]["n"].max()) for s in suites}
    ax.set_xticks(range(len(suites)), [f"{s}\n(n={ns[s]})" for s in suites])
    ax.axhline(1.0, color="#555555", ls="--", lw=1, label="AR = 1")
    ax.set_ylim(0, max(1.2, top * 1.15))
    ax.grid(axis="y", alpha=0.3)
    return top


def _pruning(frame) -> list[str]:
    """Methods that prune the prompt (they report computed_frac): their headline is TTFT."""
    if "computed_frac" not in frame.columns:
        return []
    return sorted(set(frame[frame["computed_frac"].notna()]["method"]))


def plot_speedup(rs: RunSet, out: Path) -> Path | None:
    """Median per-prompt speedup vs AR with its 95% bootstrap interval, per method and suite,
    one panel per model x device; beside it the TTFT speedup of prompt-pruning methods
    (LazyLLM), whose headline it is."""
    f = _overall(rs.frame)
    f = f[f["method"] != BASELINE]
    if f.empty or not f["speedup"].notna().any():
        return None
    pruning = _pruning(f)
    panels = []
    for model, device in dict.fromkeys(zip(f["model"], f["device"])):
        sub = f[(f["model"] == model) & (f["device"] == device)]
        panels.append((model, device, "speedup", sub))
        ps = sub[sub["method"].isin(pruning)]
        if not ps.empty and "ttft_speedup" in ps.columns and ps["ttft_speedup"].notna().any():
            panels.append((model, device, "ttft_speedup", ps))
    methods = _method_order(f["method"])
    colors = method_colors(methods)
    fig, axes = _panels(len(panels), max_cols=2 if len(panels) % 2 == 0 else 3)
    for ax, (model, device, col, sub) in zip(axes, panels):
        ms = [m for m in methods if m in set(sub["method"])]
        _bars(ax, sub, ms, colors, col)
        dtype = ", ".join(sorted({str(d) for d in sub["dtype"]})) if "dtype" in sub.columns else ""
        if col == "speedup":
            ax.set_ylabel("speedup vs AR (×, median, 95% CI)")
            ax.set_title(f"end to end · {model} · {_short(device)} · {dtype}", fontsize=9.5)
        else:
            ax.set_ylabel("TTFT speedup vs AR (×, median, 95% CI)")
            ax.set_title(f"TTFT, prompt pruning · {model} · {_short(device, 20)}", fontsize=9.5)
        _legend(ax)
    note = ("bars: median over prompts of AR time / method time (paired by prompt with AR of the same settings and "
            "device); whiskers: 95% BCa bootstrap interval (none below n=5)")
    if any(p[2] == "ttft_speedup" for p in panels):
        note += "; TTFT panel: AR time to first token / the method's, for methods that prune the prompt"
    cross = [n for n in rs.pairing_notes().values()] if hasattr(rs, "pairing_notes") else []
    if cross:
        note += ". " + " ".join(cross)
    return _finish(fig, out / "speedup.png", "Speedup over autoregressive decoding", rs.rows, note)


def plot_speed_quality(rs: RunSet, out: Path) -> Path | None:
    """Speedup (x) against the paired quality change vs AR (y, with its 95% interval), one
    panel per model x device x quality metric; colour = method, marker = suite."""
    f = _overall(rs.frame)
    if f.empty:
        return None
    metrics = sorted({c[2:] for c in f.columns if c.startswith("d_") and not c.endswith(("_lo", "_hi"))})
    points = []
    for _, line in f[f["method"] != BASELINE].iterrows():
        for metric in metrics:
            d = line.get(f"d_{metric}")
            if not (finite(d) and finite(line["speedup"])):
                continue
            sc = 1.0  # the summary's deltas are in points already
            lo, hi = line.get(f"d_{metric}_lo"), line.get(f"d_{metric}_hi")
            points.append({"panel": (line["model"], line["device"], metric), "suite": line["suite"],
                           "method": line["method"], "x": float(line["speedup"]),
                           "x_lo": float(line["speedup_lo"]) if finite(line["speedup_lo"]) else None,
                           "x_hi": float(line["speedup_hi"]) if finite(line["speedup_hi"]) else None,
                           "y": float(d) * sc, "y_lo": float(lo) * sc if finite(lo) else None,
                           "y_hi": float(hi) * sc if finite(hi) else None})
    if not points:
        return None
    panels = list(dict.fromkeys(p["panel"] for p in points))
    methods = _method_order(p["method"] for p in points)
    suites = list(dict.fromkeys(p["suite"] for p in points))
    colors, markers = method_colors(methods), {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(suites)}
    fig, axes = _panels(len(panels), width=6.4, height=4.0, max_cols=2)
    for ax, (model, device, metric) in zip(axes, panels):
        pts = [p for p in points if p["panel"] == (model, device, metric)]
        ax.axvline(1.0, color="#888888", lw=0.8, ls="--")
        ax.axhline(0.0, color="#888888", lw=0.8, ls="--")
        ax.plot([1.0], [0.0], marker="*", ms=12, color=AR_COLOR, ls="none")
        for p in pts:
            xerr = [[p["x"] - p["x_lo"]], [p["x_hi"] - p["x"]]] if p["x_lo"] is not None else None
            yerr = [[p["y"] - p["y_lo"]], [p["y_hi"] - p["y"]]] if p["y_lo"] is not None else None
            ax.errorbar([p["x"]], [p["y"]], xerr=xerr, yerr=yerr, fmt=markers[p["suite"]], ms=7,
                        color=colors[p["method"]], capsize=3, elinewidth=1)
        xs = [1.0] + [v for p in pts for v in (p["x"], p["x_lo"], p["x_hi"]) if v is not None]
        ys = [0.0] + [v for p in pts for v in (p["y"], p["y_lo"], p["y_hi"]) if v is not None]
        xpad, ypad = max(0.05, (max(xs) - min(xs)) * 0.12), max(0.5, (max(ys) - min(ys)) * 0.12)
        ax.set_xlim(min(xs) - xpad, max(xs) + xpad)
        ax.set_ylim(min(ys) - ypad, max(ys) + ypad)
        ax.set_xlabel("speedup vs AR (×, median, 95% CI)")
        unit = "points of pass@1" if metric.startswith("pass@") else "ROUGE points" if "rouge" in metric else "points"
        ax.set_ylabel(f"{metric} change vs AR ({unit})")
        ax.set_title(f"{metric} · {model} · {_short(device, 26)}", fontsize=9.5)
        ax.grid(alpha=0.3)
        here_m = [m for m in methods if any(p["method"] == m for p in pts)]
        here_s = [s for s in suites if any(p["suite"] == s for p in pts)]
        handles = [plt.Line2D([], [], color=colors[m], marker="o", ls="none", label=m) for m in here_m]
        handles += [plt.Line2D([], [], color="#555555", marker=markers[s], ls="none", label=f"suite: {s}")
                    for s in here_s]
        handles.append(plt.Line2D([], [], color=AR_COLOR, marker="*", ms=9, ls="none", label="AR (reference)"))
        _legend(ax, handles=handles)
    return _finish(fig, out / "speed_quality.png", "Speed vs quality (each method against AR)", rs.rows,
                   "y: mean per-sample change against AR on the same samples, with its 95% BCa interval "
                   "(none below n=5); right = faster, up = better quality")


def plot_ttft(rs: RunSet, out: Path) -> Path | None:
    """Time to first token against prompt length (log x), per method."""
    rows = [r for r in rs.rows if finite(r.get("ttft_s")) and r.get("prompt_tokens")]
    if not rows:
        return None
    panels = list(dict.fromkeys((r["model"], r["device"]) for r in rows))
    methods = _method_order(r["method"] for r in rows)
    colors = method_colors(methods)
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    markers = {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(suites)}
    fig, axes = _panels(len(panels))
    for ax, (model, device) in zip(axes, panels):
        sub = [r for r in rows if r["model"] == model and r["device"] == device]
        secs = float(np.median([r["ttft_s"] for r in sub])) > 2.0
        unit, mult = ("s", 1.0) if secs else ("ms", 1000.0)
        for m in methods:
            pts = sorted((r["prompt_tokens"], r["ttft_s"] * mult, r["suite"]) for r in sub if r["method"] == m)
            for s in suites:
                sp = [p for p in pts if p[2] == s]
                if sp:
                    ax.scatter([p[0] for p in sp], [p[1] for p in sp], color=colors[m], marker=markers[s], s=36,
                               alpha=0.85, edgecolor="white", linewidths=0.5)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        lens = [r["prompt_tokens"] for r in sub]
        few = max(lens) / max(min(lens), 1) < 20  # less than ~a decade: label every minor tick
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _, few=few: f"{v:g}" if few or str(int(v))[0] in "25" else ""))
        ax.tick_params(axis="x", which="minor", labelsize=7.5)
        ax.set_xlabel("prompt length (tokens, log scale)")
        ax.set_ylabel(f"TTFT ({unit})")
        dtype = ", ".join(sorted({str(r.get("dtype")) for r in sub}))
        ax.set_title(f"{model} · {_short(device)} · {dtype}", fontsize=9.5)
        ax.grid(alpha=0.3, which="both")
        ax.set_ylim(bottom=0)
        handles = [plt.Line2D([], [], color=colors[m], marker="o", ls="none", label=f"method: {m}")
                   for m in methods]
        handles += [plt.Line2D([], [], color="#555555", marker=markers[s], ls="none", label=f"suite: {s}")
                    for s in suites]
        _legend(ax, handles=handles)
    return _finish(fig, out / "ttft.png", "Time to first token vs prompt length", rows,
                   "one point per prompt and method (prefill + first token; tokenization excluded)")


def plot_tau(rs: RunSet, out: Path) -> Path | None:
    """Distribution of tokens committed per decode step (tau), per method, one series per suite."""
    rows = [r for r in rs.rows if r["method"] != BASELINE and len(r.get("tokens_per_step") or []) > 1]
    drafting = {r["method"] for r in rows if any(r.get("drafted") or []) or max(r["tokens_per_step"][1:]) > 1}
    rows = [r for r in rows if r["method"] in drafting]  # LazyLLM & co. commit one token per step, like AR
    if not rows:
        return None
    panels = list(dict.fromkeys((r["model"], r["method"]) for r in rows))
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    hatches = {s: ["", "//", "..", "xx", "\\\\", "++"][i % 6] for i, s in enumerate(suites)}
    fig, axes = _panels(len(panels))
    for ax, (model, method) in zip(axes, panels):
        sub = [r for r in rows if r["model"] == model and r["method"] == method]
        kmax = max(max(r["tokens_per_step"][1:]) for r in sub)
        bins = np.arange(1, kmax + 1)
        here = [s for s in suites if any(r["suite"] == s for r in sub)]
        width = 0.8 / len(here)
        for j, s in enumerate(here):
            steps = [t for r in sub if r["suite"] == s for t in r["tokens_per_step"][1:]]
            if not steps:
                continue
            counts = np.array([steps.count(int(b)) for b in bins], dtype=float) / len(steps)
            tau = float(np.mean(steps))
            ax.bar(bins - 0.4 + width * (j + 0.5), counts, width * 0.92, color=method_color(method),
                   hatch=hatches[s], edgecolor="white", label=f"{s}: tau={tau:.2f} ({len(steps)} steps)")
        ax.set_xticks(bins)
        ax.set_xlabel("tokens committed in one decode step")
        ax.set_ylabel("fraction of steps")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{method} · {model}", fontsize=9.5)
        _legend(ax)
        ax.grid(axis="y", alpha=0.3)
    return _finish(fig, out / "tau.png", "Tokens per step: mean accepted tokens (tau) and its distribution", rows,
                   "decode steps only (the prefill step is excluded); AR commits exactly 1 token per step")


def plot_acceptance(rs: RunSet, out: Path) -> Path | None:
    """Acceptance rate at each draft position (accepted_k / drafted_k), per method."""
    rows = [r for r in rs.rows if r["method"] != BASELINE and any(r.get("drafted") or [])]
    if not rows:
        return None
    panels = list(dict.fromkeys((r["model"], r["method"]) for r in rows))
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    markers = {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(suites)}
    fig, axes = _panels(len(panels))
    for ax, (model, method) in zip(axes, panels):
        kmax = 0
        for s in suites:
            sub = [r for r in rows if r["model"] == model and r["method"] == method and r["suite"] == s]
            if not sub:
                continue
            k = max(len(r["drafted"]) for r in sub)
            drafted, accepted, reached = np.zeros(k), np.zeros(k), np.zeros(k)
            for r in sub:
                d, a = r["drafted"], r.get("accepted") or []
                reach = r.get("reached") or ([d[0]] + list(a[:-1]) if d else [])
                drafted[: len(d)] += d
                accepted[: len(a)] += a
                reached[: len(reach)] += reach
            ok, okc = drafted > 0, reached > 0
            pos = np.arange(1, k + 1)
            color = method_color(method)
            ax.plot(pos[ok], accepted[ok] / drafted[ok], marker=markers[s], color=color,
                    label=f"suite: {s} ({int(drafted[0])} drafts at k=1)")
            ax.plot(pos[okc], accepted[okc] / reached[okc], marker=markers[s], color=color, ls="--", alpha=0.7,
                    mfc="white")
            kmax = max(kmax, k)
        ax.set_xlabel("draft position k")
        ax.set_ylabel("acceptance rate")
        ax.set_ylim(0, 1.05)
        if kmax:
            ax.set_xticks(range(1, kmax + 1))
        ax.set_title(f"{method} · {model}", fontsize=9.5)
        handles, _ = ax.get_legend_handles_labels()
        handles += [plt.Line2D([], [], color="#555555", ls="-", label="unconditional:\naccepted_k / drafted_k"),
                    plt.Line2D([], [], color="#555555", ls="--", label="conditional:\naccepted_k / reached_k")]
        _legend(ax, handles=handles)
        ax.grid(alpha=0.3)
    return _finish(fig, out / "acceptance.png", "Acceptance per draft position", rows,
                   "a draft token at position k is accepted when it and every earlier draft token match the target; "
                   "solid: unconditional (vLLM's accepted_k / drafted_k), dashed: conditional on reaching k")


def plot_throughput(rs: RunSet, out: Path) -> Path | None:
    """Tokens/s per method across models and devices (x), one panel per suite."""
    f = _overall(rs.frame)
    if f.empty:
        return None
    suites = list(dict.fromkeys(f["suite"]))
    methods = _method_order(f["method"])
    colors = method_colors(methods)
    fig, axes = _panels(len(suites), width=max(4.5, 1.6 * len(set(zip(f["model"], f["device"])))))
    for ax, s in zip(axes, suites):
        sub = f[f["suite"] == s]
        cells = list(dict.fromkeys(zip(sub["model"], sub["device"])))
        width = 0.8 / len(methods)
        ymax = 0.0
        for j, m in enumerate(methods):
            xs, ys = [], []
            for i, (model, device) in enumerate(cells):
                line = sub[(sub["model"] == model) & (sub["device"] == device) & (sub["method"] == m)]
                if line.empty:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(float(line["tokens_per_s"].iloc[0]))
            if xs:
                ax.bar(xs, ys, width * 0.92, color=colors[m], label=m)
                for x, y in zip(xs, ys):
                    ax.text(x, y, f"{y:.3g}", ha="center", va="bottom", fontsize=7.5)
                ymax = max(ymax, max(ys))
        labels = []
        for model, device in cells:
            n = int(sub[(sub["model"] == model) & (sub["device"] == device)]["n"].max())
            labels.append("\n".join([model] + textwrap.wrap(device, 22) + [f"n={n}"]))
        ax.set_xticks(range(len(cells)), labels, fontsize=7.5)
        ax.set_ylabel("tokens/s (new tokens / E2E time)")
        ax.set_ylim(0, ymax * 1.2 if ymax > 0 else 1)
        ax.set_title(f"suite: {s}", fontsize=9.5)
        _legend(ax)
        ax.grid(axis="y", alpha=0.3)
    return _finish(fig, out / "throughput.png", "Throughput across models and devices", rs.rows,
                   "absolute tokens/s depends on the machine's load; compare methods within one bar group")


def plot_cost_curves(curves: list[dict[str, Any]], out: Path) -> Path | None:
    """Relative cost of a k-token verification forward, per device."""
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    kmax = 1
    for i, c in enumerate(curves):
        ks = sorted(int(k) for k in c["relative"])
        ys = [c["relative"][str(k)] if str(k) in c["relative"] else c["relative"][k] for k in ks]
        ax.plot(ks, ys, marker="o", ms=4, color=_COLORS[i % len(_COLORS)],
                label=f"{c['model']} · {_short(c['device_label'], 40)} · {c['dtype']} ({c.get('date', '')[:10]})")
        kmax = max(kmax, max(ks))
    ax.plot([1, kmax], [1, kmax], color="#999999", ls=":", lw=1, label="cost ∝ k (no parallelism)")
    ax.axhline(1.0, color="#555555", ls="--", lw=0.8)
    ax.set_xlabel("tokens verified in one forward (k)")
    ax.set_ylabel("cost(k) / cost(1)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    _legend(ax)
    ax.grid(alpha=0.3, which="both")
    rows = [{"model": c["model"], "device": c["device_label"], "dtype": c["dtype"], "suite": "cost-curve",
             "sample_id": str(k), "time": c.get("date", "")} for c in curves for k in c["relative"]]
    return _finish(fig, out / "cost_curve.png", "Verification cost curves", rows,
                   f"one causal block forward of k tokens after a {curves[0].get('prefix_len', '?')}-token cached prefix, "
                   "median of repeats (n = number of k values); weights may be random: cost depends on shapes")


def plot_projection(pred: list[dict[str, Any]], out: Path) -> Path | None:
    """Predicted against measured decode speedup, where both exist."""
    pts = [p for p in pred if finite(p.get("measured"))]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 5.0))
    devices = list(dict.fromkeys(p["target_device"] for p in pts))
    colors = _colors(devices)
    lim_hi = max(max(p["predicted"] for p in pts), max(p["measured_hi"] for p in pts)) * 1.15
    lim_lo = min(min(p["predicted"] for p in pts), min(p["measured_lo"] for p in pts), 1.0) * 0.85
    ax.plot([lim_lo, lim_hi], [lim_lo, lim_hi], color="#888888", ls="--", lw=1, label="prediction = measurement")
    for p in pts:
        ax.errorbar([p["predicted"]], [p["measured"]],
                    yerr=[[p["measured"] - p["measured_lo"]], [p["measured_hi"] - p["measured"]]],
                    fmt="o", color=colors[p["target_device"]], capsize=3)
        ax.annotate(f"{p['method']} · {p['suite']} ({p['error_pct']:+.0f}%)", (p["predicted"], p["measured"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=7.5)
    for d in devices:
        ax.plot([], [], "o", color=colors[d], label=_short(d, 50))
    ax.set_xlim(lim_lo, lim_hi)
    ax.set_ylim(lim_lo, lim_hi)
    ax.set_xlabel("predicted decode speedup (tau + cost curve)")
    ax.set_ylabel("measured decode speedup (AR TPOT / method TPOT)")
    _legend(ax)
    ax.grid(alpha=0.3)
    rows = [{"model": p["model"], "device": p["target_device"], "dtype": p.get("dtype"), "suite": p["suite"],
             "sample_id": str(i), "time": p.get("date", "")} for p in pts for i in range(int(p["n"]))]
    return _finish(fig, out / "projection.png", "Predicted vs measured speedup", rows,
                   "error = predicted / measured - 1; whiskers: 95% bootstrap interval of the measurement")


PLOTS = [
    ("speedup", plot_speedup),
    ("speed_quality", plot_speed_quality),
    ("ttft", plot_ttft),
    ("tau", plot_tau),
    ("acceptance", plot_acceptance),
    ("throughput", plot_throughput),
]


def all_plots(rs: RunSet, out: Path) -> dict[str, Path]:
    paths = {}
    for name, fn in PLOTS:
        p = fn(rs, out)
        if p is not None:
            paths[name] = p
    return paths
