"""`accbench tune eagle --model NAME [-o source=DIR]`: the draft tree's depth and node budget
(``total_tokens``) that maximise expected tokens per second on this device.

1. Acceptance: the draft decodes the job's held-out prompts with the largest tree considered
   (depth ``max_depth``, every drafted node verified), so each step shows which drafted nodes
   the target accepted. A tree of depth d <= max_depth is the first d levels of that tree, and
   its budget-n tree the n most confident of those nodes (prefix-closed), so the accepted
   length of every (d, n) follows from the ranks of the accepted nodes
   (:func:`~accbench.methods.eagle.drafter.accepted_ranks`): E[accepted | d, n] is the mean
   count of accepted nodes of depth <= d and rank < n. (Greedy: the output, and so the
   sequence of states, is the same whatever the tree.)
2. Costs: the verification forward over k tokens after a prefix
   (:func:`~accbench.methods.core.costs.forward_cost`, made monotone), and the drafter's own
   time: ``propose`` at each depth, timed on a live generation (it crops its cache back, so it
   can be repeated), plus one ``observe`` (the draft over the committed tokens).
3. tokens/s(d, n) = (1 + E[accepted | d, n]) / (cost(n + 1) + propose(d) + observe); the best
   (d, n) is saved, with the table, in ``artifacts.folder("eagle")/tuned.json`` under this
   device, dtype and draft (:func:`~accbench.methods.eagle.tuned_key`), where
   :class:`~accbench.methods.eagle.EagleDecoder` takes its defaults from.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accbench.methods.core import AccbenchError, TuneJob, option, parse_options
from accbench.methods.core.tree import crop_cache

COST_KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 128)


@dataclass
class TuneOptions:
    max_depth: int | None = option(None, "deepest tree considered (none: 6 on CUDA, 5 on CPU)", ge=1, le=16)
    top_k: int | None = option(None, "children per expanded node (none: 8 on CUDA, 4 on CPU)", ge=1, le=32)
    max_nodes: int | None = option(None, "largest node budget considered (none: 64 on CUDA, 32 on CPU)", ge=1, le=512)
    max_new_tokens: int = option(64, "tokens generated per held-out prompt to measure acceptance", ge=2)
    prefix_len: int = option(256, "cached prefix length the verification cost is measured after", ge=1)
    repeats: int = option(5, "timed repeats of every cost measurement", ge=1)
    source: str | None = option(None, "draft weights (as eagle.source; default: the model's trained artifact)")


def interpolate(costs: dict[int, float], k: int) -> float:
    ks = sorted(costs)
    if k in costs:
        return costs[k]
    if k <= ks[0]:
        return costs[ks[0]]
    if k >= ks[-1]:
        return costs[ks[-1]] * k / ks[-1]
    for a, b in zip(ks, ks[1:]):
        if a < k < b:
            return costs[a] + (costs[b] - costs[a]) * (k - a) / (b - a)
    raise AssertionError


def monotone(costs: dict[int, float]) -> dict[int, float]:
    """cost(k) = min over j >= k of the measured cost(j) (noise only ever adds time)."""
    out, run = {}, float("inf")
    for k in sorted(costs, reverse=True):
        run = min(run, costs[k])
        out[k] = run
    return dict(sorted(out.items()))


def expected_accepted(records: list[dict[int, list[int]]], depth: int, nodes: int) -> float:
    if not records:
        return 0.0
    return sum(sum(1 for r in rec[depth] if r < nodes) for rec in records) / len(records)


def drafted_nodes(depth: int, top_k: int) -> int:
    """Nodes of a full dynamic tree: top_k at depth 1, top_k * top_k at every further depth."""
    return top_k + (depth - 1) * top_k * top_k


def choose(records, costs: dict[int, float], propose_s: dict[int, float], observe_s: float, max_depth: int,
           top_k: int, max_nodes: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The best (depth, nodes) by expected tokens/s, and every candidate's row."""
    c1 = interpolate(costs, 1)
    rows, best = [], None
    for d in range(1, max_depth + 1):
        for n in range(1, min(max_nodes, drafted_nodes(d, top_k)) + 1):
            e = 1.0 + expected_accepted(records, d, n)
            step = interpolate(costs, n + 1) + propose_s[d] + observe_s
            row = {"depth": d, "nodes": n, "expected_tau": e, "cost_rel": interpolate(costs, n + 1) / c1,
                   "step_s": step, "expected_speedup": e / step * c1}
            rows.append(row)
            if best is None or row["expected_speedup"] > best["expected_speedup"] + 1e-12:
                best = row
    return best, rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def drafter_costs(dec, prompt: list[int], max_depth: int, repeats: int, steps: int = 3) -> tuple[dict[int, float], float]:
    """Median seconds of ``propose`` at every depth 1..max_depth and of one ``observe``-sized
    draft forward (2 rows), on a live generation of ``prompt`` (after ``steps`` steps)."""
    gen = dec.decode(prompt, steps + 8)
    try:
        try:
            for _ in range(steps + 1):
                next(gen)
        except StopIteration:
            raise AccbenchError("tuning eagle: the timing generation ended after its first steps") from None
        dr = dec.last_drafter
        tokens, device = dr.tokens, dec.device
        saved = dr.depth
        out = {}
        for d in range(1, max_depth + 1):
            dr.depth = d
            out[d] = _median_time(lambda: dr.propose(tokens, 1 << 20), device, repeats)
        dr.depth = saved
        base = dr.length
        feat = dr.last.new_zeros((1, 2, dr.last.shape[-1]))
        if hasattr(dec.draft, "layers_used"):  # EAGLE-3: the target's fused layers
            feat = dr.last.new_zeros((1, 2, dec.draft.fc.in_features))
        emb = dr._emb(tokens[-2:])
        pos = torch.arange(base, base + 2, device=device)

        def observe():
            dr._draft(emb, feat, pos, fuse=True)
            crop_cache(dr.cache, base)
        obs = _median_time(observe, device, repeats)
    finally:
        gen.close()
    return out, obs


def measure_acceptance(dec, prompts, stop, budget: int, log) -> list[dict[int, list[int]]]:
    records: list[dict[int, list[int]]] = []
    for i, ids in enumerate(prompts):
        gen = dec.decode(ids, budget, stop)
        try:
            next(gen)  # the prefill (the drafter exists from here on)
            dec.last_drafter.record = records
            while True:
                next(gen)
        except StopIteration:
            pass
        log(f"tuning eagle: acceptance on prompt {i + 1}/{len(prompts)} ({len(records)} steps so far)")
    return records


def tune(job: TuneJob) -> Path:
    """Measure, choose and save depth / total_tokens; the tuned file's path."""
    from accbench import methods as registry
    from accbench.methods.core.costs import forward_cost
    from accbench.methods.eagle import TUNED_FILE, tuned_key
    from accbench.methods.lookahead.tune import save_tuned

    opts = parse_options(f"tune {job.method}", TuneOptions, job.options)
    if not job.prompts:
        raise AccbenchError("tuning eagle needs at least one prompt")
    cuda = torch.device(job.device).type == "cuda"
    max_depth = opts.max_depth or (6 if cuda else 5)
    top_k = opts.top_k or (8 if cuda else 4)
    full = drafted_nodes(max_depth, top_k)
    max_nodes = min(opts.max_nodes or (64 if cuda else 32), full)
    cls = registry.get(job.method)
    common = dict(model_name=job.model_name, artifacts=job.artifacts, source=opts.source, top_k=top_k)
    dec = cls(job.model, job.tokenizer, depth=max_depth, total_tokens=full, **common)
    job.log(f"tuning {job.method} on {job.model_name}: draft {dec.draft_path} (EAGLE-{getattr(dec.draft, 'version', 2)}), "
            f"trees up to depth {max_depth}, top_k {top_k}, {max_nodes} nodes; acceptance measured with all {full} "
            f"drafted nodes verified on {len(job.prompts)} held-out prompts x {opts.max_new_tokens} tokens")
    records = measure_acceptance(dec, job.prompts, job.stop, opts.max_new_tokens, job.log)
    if not records:
        raise AccbenchError(f"tune {job.method}: no full-depth draft step in {len(job.prompts)} prompts; "
                            "raise max_new_tokens or lower max_depth")
    ks = sorted({k for k in COST_KS if k <= max_nodes + 1} | {max_nodes + 1})
    job.log(f"measuring verification cost for k = {ks[0]}..{ks[-1]} tokens after a {opts.prefix_len}-token prefix")
    costs = monotone(forward_cost(dec.target, ks, prefix_len=opts.prefix_len, repeats=opts.repeats, warmup=1))
    timer = cls(job.model, job.tokenizer, depth=max_depth, total_tokens=max_nodes, **common)
    for i, prompt in enumerate(job.prompts):  # a prompt whose generation lasts a few steps
        try:
            propose_s, observe_s = drafter_costs(timer, prompt, max_depth, opts.repeats)
            break
        except AccbenchError:
            if i == len(job.prompts) - 1:
                raise
    best, rows = choose(records, costs, propose_s, observe_s, max_depth, top_k, max_nodes)
    key = tuned_key(dec.device, job.model.dtype, dec.draft_path)
    show(job, rows, best, f"expected tokens/s by tree (depth x nodes), {key}; cost(1) {costs[1] * 1e3:.2f} ms")
    entry = {"depth": best["depth"], "top_k": top_k, "total_tokens": best["nodes"],
             "expected_tau": best["expected_tau"], "expected_speedup": best["expected_speedup"],
             "steps_measured": len(records), "prompts": len(job.prompts), "max_new_tokens": opts.max_new_tokens,
             "costs_s": {str(k): v for k, v in costs.items()}, "propose_s": {str(d): v for d, v in propose_s.items()},
             "observe_s": observe_s, "prefix_len": opts.prefix_len, "draft": str(dec.draft_path),
             "draft_version": getattr(dec.draft, "version", 2), "table": rows,
             "tuned_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = save_tuned(job.artifacts.folder(job.method), key, entry)
    assert path.name == TUNED_FILE
    job.log(f"saved depth={best['depth']} top_k={top_k} total_tokens={best['nodes']} (expected tau "
            f"{best['expected_tau']:.2f}, expected {best['expected_speedup']:.2f}x AR) -> {path}")
    return path


def show(job: TuneJob, rows: list[dict[str, Any]], best: dict[str, Any], title: str) -> None:
    """The best budget of every depth, and a few budgets of the chosen depth."""
    by_depth = {}
    for r in rows:
        if r["depth"] not in by_depth or r["expected_speedup"] > by_depth[r["depth"]]["expected_speedup"]:
            by_depth[r["depth"]] = r
    sizes = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, best["nodes"]}
    shown = list(by_depth.values()) + [r for r in rows if r["depth"] == best["depth"] and r["nodes"] in sizes
                                       and r is not by_depth[best["depth"]]]
    shown.sort(key=lambda r: (r["depth"], r["nodes"]))
    cols = ("depth", "nodes", "expected tau", "cost(n+1)/cost(1)", "step ms", "expected speedup")
    lines = [[str(r["depth"]), str(r["nodes"]), f"{r['expected_tau']:.2f}", f"{r['cost_rel']:.2f}",
              f"{r['step_s'] * 1e3:.2f}", f"{r['expected_speedup']:.2f}x"] for r in shown]
    if job.console is None:
        job.log(title)
        for line in [cols] + lines:
            job.log("  ".join(f"{c:>8}" for c in line))
        return
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c, justify="right")
    for r, line in zip(shown, lines):
        t.add_row(*line, style="bold green" if r is best else None)
    job.console.print(t)
