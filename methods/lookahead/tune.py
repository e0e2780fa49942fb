"""`accbench tune lookahead --model NAME`: Lookahead's W, N, G for this model and device.

Lookahead spends extra FLOPs on every step, so the best (W, N, G) depends on the hardware
(on a weak device AR can win). Every point of a small grid decodes the job's held-out prompts
next to AR (the order rotates per prompt); the fastest point whose output equals AR on every
prompt is saved, with the whole table, in ``artifacts.folder("lookahead")/tuned.json`` under
this device's key, where :class:`LookaheadDecoder` looks for its defaults.

Job options: ``max_new_tokens`` (default 64) and ``grid`` (``"W,N,G;W,N,G"``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accbench.methods.ar import ARDecoder
from accbench.methods.core import AccbenchError, OptionError, TuneJob, option, parse_options
from accbench.methods.lookahead.drafter import TUNED_FILE, LookaheadDecoder, device_key
from accbench.methods.lookahead.layout import layout_block_size

#: measured unless ``grid`` is given
DEFAULT_GRID = [(3, 3, 3), (5, 3, 5), (3, 4, 3), (5, 4, 5), (7, 4, 7), (5, 5, 5), (7, 5, 7)]


@dataclass
class TuneOptions:
    max_new_tokens: int = option(64, "tokens generated per prompt", ge=1)
    grid: str = option("", 'the (W, N, G) points measured, "W,N,G;W,N,G" (empty: DEFAULT_GRID)')


def parse_grid(text: str) -> list[tuple[int, int, int]]:
    if not text:
        return list(DEFAULT_GRID)
    try:
        grid = [tuple(int(x) for x in part.split(",")) for part in text.split(";") if part.strip()]
    except ValueError:
        grid = []
    if not grid or any(len(t) != 3 for t in grid):
        raise OptionError(f'lookahead.grid={text!r}: expected W,N,G triples such as "3,3,3;5,4,5"')
    return grid


def tune(job: TuneJob) -> Path:
    """Measure the grid on ``job.prompts``, save the fastest AR-identical point; its path."""
    opts = parse_options("lookahead", TuneOptions, job.options)
    grid = parse_grid(opts.grid)
    if not job.prompts:
        raise AccbenchError("tuning lookahead needs at least one prompt")
    ar = ARDecoder(job.model, job.tokenizer, model_name=job.model_name)
    decs = [LookaheadDecoder(job.model, job.tokenizer, model_name=job.model_name, W=w, N=n, G=g) for w, n, g in grid]
    key = device_key(ar.device, job.model.dtype)
    results = measure(ar, decs, job.prompts, job.stop, opts.max_new_tokens, job.log)
    best = max((r for r in results if r["identical"]), key=lambda r: r["speedup"], default=None)
    if best is None:
        raise AccbenchError("lookahead output differed from AR for every grid point; nothing saved")
    show(job, results, best, f"lookahead grid · {job.model_name} · {key} · "
                             f"{len(job.prompts)} held-out prompts x {opts.max_new_tokens} tokens")
    params = {k: best[k] for k in ("W", "N", "G")}
    path = save_tuned(job.artifacts.folder("lookahead"), key, {
        **params, "speedup": best["speedup"], "tau": best["tau"], "grid": results, "prompts": len(job.prompts),
        "max_new_tokens": opts.max_new_tokens, "tuned_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    msg = f"saved W={params['W']} N={params['N']} G={params['G']} ({best['speedup']:.2f}x AR) -> {path}"
    job.log(msg + ("  (no grid point beat AR on this device)" if best["speedup"] < 1.0 else ""))
    return path


def measure(ar, decs: list[LookaheadDecoder], prompts: list[list[int]], stop, budget: int, log) -> list[dict[str, Any]]:
    """tokens/s of every decoder next to AR's on the same prompts, tau, and whether the
    output equalled AR's on every prompt."""
    ar.generate(prompts[0], 8, stop)  # warm every path once, not recorded
    for d in decs:
        d.generate(prompts[0], 8, stop)
    t_ar, n_ar = 0.0, 0
    t, n = [0.0] * len(decs), [0] * len(decs)
    taus: list[list[float]] = [[] for _ in decs]
    same = [True] * len(decs)
    for i, ids in enumerate(prompts):
        ra = ar.generate(ids, budget, stop)
        t_ar, n_ar = t_ar + ra.total_s, n_ar + ra.n_new
        order = list(range(len(decs)))
        for j in order[i % len(order):] + order[: i % len(order)]:  # rotate who goes first
            r = decs[j].generate(ids, budget, stop)
            t[j], n[j] = t[j] + r.total_s, n[j] + r.n_new
            taus[j].append(r.tau)
            same[j] &= r.tokens == ra.tokens
        log(f"tuning lookahead: prompt {i + 1}/{len(prompts)}")
    ar_tps = n_ar / t_ar
    return [{"W": d.W, "N": d.N, "G": d.G, "tau": sum(taus[j]) / len(taus[j]), "tokens_per_s": n[j] / t[j],
             "ar_tokens_per_s": ar_tps, "speedup": n[j] / t[j] / ar_tps, "identical": same[j]}
            for j, d in enumerate(decs)]


def show(job: TuneJob, results: list[dict[str, Any]], best: dict[str, Any], title: str) -> None:
    """The grid as a table (rich, when the job has a console; else log lines)."""
    cols = ("W", "N", "G", "block", "tau", "tok/s", "AR tok/s", "speedup", "= AR")
    rows = [[str(r["W"]), str(r["N"]), str(r["G"]), str(layout_block_size(r["W"], r["N"], r["G"])), f"{r['tau']:.2f}",
             f"{r['tokens_per_s']:.1f}", f"{r['ar_tokens_per_s']:.1f}", f"{r['speedup']:.2f}x",
             "yes" if r["identical"] else "NO"] for r in results]
    if job.console is None:
        job.log(title)
        for line in [cols] + rows:
            job.log("  ".join(f"{c:>8}" for c in line))
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for c in cols:
        table.add_column(c, justify="right")
    for r, row in zip(results, rows):
        table.add_row(*row, style="bold green" if r is best else None)
    job.console.print(table)


def save_tuned(folder: Path, key: str, entry: dict[str, Any]) -> Path:
    """Write ``entry`` under ``key`` in ``folder/tuned.json`` (other devices' entries kept),
    atomically: a crash never leaves a half-written file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TUNED_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = entry
    tmp = path.with_name(f".{TUNED_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path
