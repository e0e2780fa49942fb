"""`accbench tune-tree --method medusa1|medusa2 --model NAME`: the Medusa tree that maximizes
expected tokens per second on this device.

1. Head accuracies: the trained heads run over the held-out text cached at training time
   (documents never trained on), giving for every position the rank of the backbone's
   next tokens under each head; the joint frequency of each rank tuple (r1, ..., rd) is
   the probability that the tree path (r1, ..., rd) is accepted (no independence
   assumption; smoothed towards the product of the per-head marginals for unseen paths).
2. Costs: the time of one verification forward over k tokens after a prefix (k = 1..64,
   bench/costs.py forward_cost, interpolated between measured k), plus the measured time of
   drafting (heads on one hidden state).
3. For each size n, the best n-node tree is the n highest-weight paths (prefix-closed);
   expected tokens/s(n) = (1 + sum of its weights) / (cost(n + 1) + draft). The best n wins
   and is saved as the default tree of this model, method and device (artifacts.set_default
   under ``<method>-tree-<device>``). A small tree on a CPU, a large one on a GPU.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from accbench.training.artifacts import artifact_dir, commit_dir, set_default
from accbench.errors import AccbenchError

COST_KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64)


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
    from accbench.methods.medusa import best_tree, expected_accepted

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


def held_out_stats(dec, console: Console) -> dict | None:
    """Recompute the heads' rank statistics on the held-out text cached at training time."""
    from accbench.training.artifacts import method_dir
    from accbench.methods.medusa.train import FeatureCache, _sub_lookup, eval_targets, evaluate_heads
    from safetensors.torch import load_file

    cfg = dec.artifact_cfg
    data = cfg.get("train", {}).get("data")
    root = method_dir(dec.model_name, "medusa-data") / str(data)
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
                           dec._lm_w, dec._lm_b)
    console.print(f"head accuracies measured on {stats['positions']} held-out positions ({root})")
    return stats


@torch.inference_mode()
def draft_cost(dec, repeats: int = 30) -> float:
    h = torch.randn(dec.heads.hidden_size, device=dec.device, dtype=next(dec.heads.parameters()).dtype)
    for _ in range(3):
        dec._draft(h, [])
    times = []
    for _ in range(repeats):
        if dec.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dec._draft(h, [])
        if dec.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tune_tree(method: str, options: dict[str, Any], console: Console):
    from accbench import methods as registry
    from accbench.reports.costs import forward_cost
    from accbench.methods.medusa.train import accuracy_table
    from accbench.methods.medusa import device_tag, path_weights, tree_default_key
    from accbench.models import load_model

    opts = dict(options)
    model_name = opts.pop("model")
    dtype, device, _data_dir = opts.pop("dtype", None), opts.pop("device", None), opts.pop("data_dir", None)
    max_nodes = int(opts.pop("max_nodes", 63))
    prefix_len = int(opts.pop("prefix_len", 512))
    repeats = int(opts.pop("repeats", 5))
    heads_path = opts.pop("heads", None)
    if opts:
        raise AccbenchError(f"tune-tree: unknown option(s) {sorted(opts)}; valid: max_nodes, prefix_len, repeats, heads")
    if not 1 <= max_nodes <= 255:
        raise AccbenchError("tune-tree: max_nodes must be in 1..255")
    lm = load_model(model_name, dtype=dtype, device=device)
    cls = registry.get(method)
    dec = cls(lm.model, lm.tokenizer, model_name=lm.name, heads=heads_path, tree="chain")
    stats = held_out_stats(dec, console) or dec.artifact_cfg.get("stats")
    if not stats:
        raise AccbenchError(f"tune-tree: no held-out statistics for the heads in {dec.artifact_path}")
    console.print(accuracy_table(f"{method} heads on {model_name}: held-out accuracy", stats))

    ks = [k for k in COST_KS if k <= max_nodes + 1]
    console.print(f"measuring verification cost for k = {ks[0]}..{ks[-1]} tokens after a {prefix_len}-token prefix "
                  f"on {device_tag(lm.device)}")
    costs = monotone(forward_cost(dec.backbone, ks, prefix_len=prefix_len, repeats=repeats, warmup=1))
    d_s = draft_cost(dec)
    weights = path_weights(stats, dec.heads.num_heads)
    paths, rows = choose_tree(weights, costs, d_s, max_nodes)
    best = next(r for r in rows if r["nodes"] == len(paths))
    t = Table(title=f"expected tokens/s by tree size ({device_tag(lm.device)}; draft {d_s * 1e3:.1f} ms, "
                    f"cost(1) {costs[1] * 1e3:.1f} ms)", title_justify="left")
    for c in ("nodes", "expected tau", "cost(n+1)/cost(1)", "expected speedup"):
        t.add_column(c, justify="right")
    show = {0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 63, len(paths)}
    for r in rows:
        if r["nodes"] in show:
            style = "bold" if r["nodes"] == len(paths) else None
            t.add_row(str(r["nodes"]), f"{r['expected_tau']:.2f}", f"{r['cost_rel']:.2f}",
                      f"{r['expected_speedup']:.2f}x", style=style)
    console.print(t)
    info = {"method": method, "model": model_name, "device": device_tag(lm.device), "paths": [list(p) for p in paths],
            "expected_tau": best["expected_tau"], "expected_speedup": best["expected_speedup"],
            "costs_s": {str(k): v for k, v in costs.items()}, "draft_s": d_s, "prefix_len": prefix_len,
            "heads": str(dec.artifact_path), "stats_top1": stats["top1"], "table": rows,
            "tuned": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    key = {"device": info["device"], "heads": info["heads"], "paths": info["paths"]}
    final = artifact_dir(model_name, f"{method}-tree", key)
    tmp = final.with_name(final.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "tree.json").write_text(json.dumps(info, indent=1))
    commit_dir(tmp, final)
    set_default(model_name, tree_default_key(method, lm.device), final, nodes=len(paths),
                expected_tau=best["expected_tau"])
    console.print(f"tree: {len(paths)} nodes, expected tau {best['expected_tau']:.2f}, expected speedup "
                  f"{best['expected_speedup']:.2f}x; saved as the default for {model_name} on {info['device']} "
                  f"({final})")
    return final
