"""`accbench tune medusa1|medusa2 --model NAME`: the Medusa tree that maximizes expected
tokens per second on this device.

1. Head accuracies: the trained heads run over the held-out text cached at training time
   (documents never trained on), giving for every position the rank of the backbone's
   next tokens under each head; the joint frequency of each rank tuple (r1, ..., rd) is
   the probability that the tree path (r1, ..., rd) is accepted (no independence
   assumption; smoothed towards the product of the per-head marginals for unseen paths).
2. Costs: the time of one verification forward over k tokens after a prefix (k = 1..64,
   interpolated between measured k), plus the measured time of drafting (heads on one
   hidden state).
3. For each size n, the best n-node tree is the n highest-weight paths (prefix-closed);
   expected tokens/s(n) = (1 + sum of its weights) / (cost(n + 1) + draft). The best n wins
   and is saved as the default tree of this model, method and device (the job's artifact
   writer, key ``<method>-tree-<device>``). A small tree on a CPU, a large one on a GPU.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accbench.methods.core.errors import AccbenchError
from accbench.methods.core.jobs import TuneJob
from accbench.methods.core.options import option, parse_options
from accbench.methods.medusa.trees import (
    TREE_FILE,
    best_tree,
    device_tag,
    expected_accepted,
    path_weights,
    tree_default_key,
)

COST_KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64)


@dataclass
class TuneOptions:
    max_nodes: int = option(63, "largest tree considered (nodes besides the root)", ge=1, le=255)
    prefix_len: int = option(512, "cached prefix length the verification cost is measured after", ge=1)
    repeats: int = option(5, "timed repeats of every cost measurement", ge=1)
    heads: str | None = option(None, "heads artifact folder (default: the model's trained default)")


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
    """cost(k) = min over j >= k of the measured cost(j): a bigger block never costs less, and
    on a shared machine noise only ever adds time, so upward spikes are dropped."""
    out, run = {}, float("inf")
    for k in sorted(costs, reverse=True):
        run = min(run, costs[k])
        out[k] = run
    return dict(sorted(out.items()))


def choose_tree(weights: dict, costs: dict[int, float], draft_s: float, max_nodes: int = 63) -> tuple[list, list[dict]]:
    """Best tree by expected tokens/s, and the table of every size considered."""
    rows = []
    best, best_paths = None, []
    c1 = interpolate(costs, 1)
    for n in range(0, max_nodes + 1):
        paths = best_tree(weights, n)
        if len(paths) < n:
            break
        e = expected_accepted(weights, paths)
        t = interpolate(costs, n + 1) + (draft_s if n else 0.0)
        rate = e / t
        rows.append({"nodes": n, "expected_tau": e, "cost_rel": interpolate(costs, n + 1) / c1,
                     "step_s": t, "expected_speedup": rate * c1})
        if n and (best is None or rate > best):
            best, best_paths = rate, paths
    return best_paths, rows


def held_out_stats(dec, job: TuneJob) -> dict | None:
    """Recompute the heads' rank statistics on the held-out text cached at training time."""
    from accbench.methods.medusa.train import FeatureCache, _sub_lookup, eval_targets, evaluate_heads
    from safetensors.torch import load_file

    cfg = dec.artifact_cfg
    data = cfg.get("train", {}).get("data")
    root = job.artifacts.folder("medusa-data") / str(data)
    parts = sorted(root.glob("held-*.safetensors")) if data else []
    if not parts:
        return None
    loaded = [load_file(str(p)) for p in parts]
    fc = FeatureCache(torch.cat([p["hidden"] for p in loaded]), torch.cat([p["tokens"] for p in loaded]),
                      torch.cat([p["argmax"] for p in loaded]), [int(x) for p in loaded for x in p["lengths"]])
    hidden = fc.hidden
    if dec.backbone is not dec.model:  # medusa2: its own backbone's states
        with torch.inference_mode():
            hidden = torch.cat([dec.backbone.model(input_ids=fc.tokens[s: s + n].long()[None].to(dec.device))
                                .last_hidden_state[0].to(torch.float16).cpu()
                                for s, n in zip(fc.starts.tolist(), fc.lengths)])
    heads = dec.heads
    lut = _sub_lookup(heads.vocab_ids.cpu(), heads.vocab_size)
    kind = cfg.get("train", {}).get("targets", "self")
    stats = evaluate_heads(heads, hidden.to(dec.device), eval_targets(fc, heads.num_heads, kind, lut).to(dec.device),
                           dec.lm_w, dec.lm_b)
    job.log(f"head accuracies measured on {stats['positions']} held-out positions ({root})")
    return stats


@torch.inference_mode()
def draft_cost(dec, repeats: int = 30) -> float:
    """Median seconds of drafting the candidates from one hidden state."""
    h = torch.randn(dec.heads.hidden_size, device=dec.device, dtype=next(dec.heads.parameters()).dtype)
    sync = torch.cuda.synchronize if dec.device.type == "cuda" else (lambda: None)
    for _ in range(3):
        dec.candidates(h, [])
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        dec.candidates(h, [])
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _print_sizes(job: TuneJob, rows: list[dict], chosen: int, title: str) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in ("nodes", "expected tau", "cost(n+1)/cost(1)", "expected speedup"):
        t.add_column(c, justify="right")
    show = {0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 63, chosen}
    for r in rows:
        if r["nodes"] in show:
            t.add_row(str(r["nodes"]), f"{r['expected_tau']:.2f}", f"{r['cost_rel']:.2f}",
                      f"{r['expected_speedup']:.2f}x", style="bold" if r["nodes"] == chosen else None)
    job.console.print(t)


def tune(job: TuneJob) -> Path:
    """Measure, choose and save the tree; returns the tree artifact's folder."""
    from accbench import methods as registry
    from accbench.methods.core.costs import forward_cost
    from accbench.methods.medusa.train import accuracy_table

    opts = parse_options(f"tune {job.method}", TuneOptions, job.options)
    dec = registry.get(job.method)(job.model, job.tokenizer, model_name=job.model_name, artifacts=job.artifacts,
                                   heads=opts.heads, tree="chain")
    stats = held_out_stats(dec, job) or dec.artifact_cfg.get("stats")
    if not stats:
        raise AccbenchError(f"tune {job.method}: no held-out statistics for the heads in {dec.artifact_path}")
    if job.console is not None:
        job.console.print(accuracy_table(f"{job.method} heads on {job.model_name}: held-out accuracy", stats))

    device = device_tag(dec.device)
    ks = [k for k in COST_KS if k <= opts.max_nodes + 1]
    job.log(f"measuring verification cost for k = {ks[0]}..{ks[-1]} tokens after a {opts.prefix_len}-token "
            f"prefix on {device}")
    costs = monotone(forward_cost(dec.backbone, ks, prefix_len=opts.prefix_len, repeats=opts.repeats, warmup=1))
    d_s = draft_cost(dec)
    paths, rows = choose_tree(path_weights(stats, dec.heads.num_heads), costs, d_s, opts.max_nodes)
    best = next(r for r in rows if r["nodes"] == len(paths))
    if job.console is not None:
        _print_sizes(job, rows, len(paths), f"expected tokens/s by tree size ({device}; draft {d_s * 1e3:.1f} ms, "
                                            f"cost(1) {costs[1] * 1e3:.1f} ms)")
    info = {"method": job.method, "model": job.model_name, "device": device, "paths": [list(p) for p in paths],
            "expected_tau": best["expected_tau"], "expected_speedup": best["expected_speedup"],
            "costs_s": {str(k): v for k, v in costs.items()}, "draft_s": d_s, "prefix_len": opts.prefix_len,
            "heads": str(dec.artifact_path), "stats_top1": stats["top1"], "table": rows,
            "tuned": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    final = job.artifacts.dir_for(f"{job.method}-tree", {"device": device, "heads": info["heads"],
                                                          "paths": info["paths"]})
    tmp = final.with_name(final.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / TREE_FILE).write_text(json.dumps(info, indent=1))
    job.artifacts.commit(tmp, final)
    job.artifacts.set_default(tree_default_key(job.method, dec.device), final, nodes=len(paths),
                              expected_tau=best["expected_tau"])
    job.log(f"tree: {len(paths)} nodes, expected tau {best['expected_tau']:.2f}, expected speedup "
            f"{best['expected_speedup']:.2f}x; saved as the default for {job.model_name} on {device} ({final})")
    return final
