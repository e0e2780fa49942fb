"""Measured speedup of speculative methods next to the bound their tau and verification cost imply.

    python -m accbench.benchmarks.speculative_bound --model smollm2-135m --methods pld,lookahead --n 5

A method that commits tau tokens per forward and verifies a block of k tokens per step can
at best be ``tau * cost(1) / cost(k)`` times faster than AR (drafting for free). For each
method (any registered Decoder: lossless speculative methods report ``tokens_per_step`` and
``drafted``), on the same prompts in one run (AR and the methods rotate order per prompt):

* measured speedup = AR time / method time, ratio of totals (and per-prompt median + CI);
* tau = tokens committed per decode-phase forward (total over prompts);
* k = the method's mean verification block: ``extra["mean_block"]`` when the method reports
  it (lookahead, pld), else ``1 + mean drafted tokens per step`` (a chain of drafts);
* cost(1), cost(k) from :func:`accbench.costs.forward_cost` (a causal k-token block after a
  prefix of the prompts' mean length + half the budget, fractional k interpolated);
* bound = tau * cost(1) / cost(k) and measured / bound (goal >= 0.9).

Caveat printed with the table: forward_cost computes logits for all k rows; a method that
computes fewer (lookahead only needs the last level and the candidates) pays less than
cost(k), so its measured/bound can exceed 1.
"""

from __future__ import annotations

import math

import click
from accbench import suites as suite_registry
from accbench.costs import forward_cost
from accbench.methods import StopChecker, get
from accbench.models import load_model
from accbench.runner import encode_prompt
from accbench.stats import bootstrap_median, first_divergence, paired_ratio
from rich.console import Console
from rich.table import Table


def _block_size(rec) -> float:
    ex = rec.extra or {}
    if ex.get("mean_block"):
        return float(ex["mean_block"])
    if ex.get("block_size"):
        return float(ex["block_size"])
    steps = max(1, len(rec.tokens_per_step) - 1)
    return 1.0 + sum(rec.drafted) / steps


def _interp(costs: dict[int, float], k: float) -> float:
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return costs[lo]
    return costs[lo] + (costs[hi] - costs[lo]) * (k - lo)


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--methods", default="pld,lookahead", show_default=True, help="Registered speculative methods.")
@click.option("--suites", default="mbpp,cnndm", show_default=True)
@click.option("--n", type=int, default=5, show_default=True, help="Prompts per suite.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--option", "-o", "options", multiple=True, metavar="METHOD.KEY=VALUE", help="Method option.")
@click.option("--cost-repeats", type=int, default=7, show_default=True)
@click.option("--dtype", default=None)
@click.option("--device", default=None)
@click.option("--data-dir", default=None)
def main(model, methods, suites, n, max_new_tokens, options, cost_repeats, dtype, device, data_dir):
    import json

    console = Console(width=200)
    loaded = load_model(model, dtype=dtype, device=device, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    names = [m for m in methods.split(",") if m and m != "ar"]
    opts: dict[str, dict] = {m: {} for m in names}
    for p in options:
        lhs, v = p.split("=", 1)
        meth, key = lhs.split(".", 1)
        try:
            opts.setdefault(meth, {})[key] = json.loads(v)
        except json.JSONDecodeError:
            opts.setdefault(meth, {})[key] = v
    ar = get("ar")(loaded.model, loaded.tokenizer, model_name=model)
    decs = {m: get(m)(loaded.model, loaded.tokenizer, model_name=model, **opts.get(m, {})) for m in names}
    eos = ar.eos_ids
    prompts = []
    for s in suites.split(","):
        suite = suite_registry.build(s, data_dir=data_dir)
        for sample in suite.samples(limit=n):
            prompts.append((s, sample.id, encode_prompt(loaded.tokenizer, sample.prompt, "raw"),
                            StopChecker(loaded.tokenizer, suite.stop, eos)))
    w, st = prompts[0][2], prompts[0][3]
    ar.generate(w, 16, st)
    for d in decs.values():
        d.generate(w, 16, st)

    t_ar, n_ar = 0.0, 0
    agg = {m: {"t": 0.0, "n": 0, "dec_tokens": 0, "dec_steps": 0, "blocks": [], "ratios": [], "same": 0}
           for m in names}
    for i, (s, sid, ids, stopper) in enumerate(prompts):
        order = ["ar"] + names
        order = order[i % len(order):] + order[: i % len(order)]
        recs = {}
        for who in order:
            dec = ar if who == "ar" else decs[who]
            recs[who] = dec.generate(ids, max_new_tokens, stopper)
        ra = recs["ar"]
        t_ar += ra.total_s
        n_ar += ra.n_new
        for m in names:
            r, a = recs[m], agg[m]
            a["t"] += r.total_s
            a["n"] += r.n_new
            a["dec_tokens"] += sum(r.tokens_per_step[1:])
            a["dec_steps"] += len(r.tokens_per_step) - 1
            a["blocks"].append((_block_size(r), len(r.tokens_per_step) - 1))
            a["ratios"].append(paired_ratio(ra.total_s, ra.n_new, r.total_s, r.n_new))
            div = first_divergence(ra.tokens, r.tokens)
            a["same"] += div is None
            if div is not None and r.lossless:
                console.print(f"[red]{m} {s}/{sid}: differs from AR at token {div}[/red]")
        console.print(f"[dim]{i + 1}/{len(prompts)} {s}/{sid} done[/dim]")

    mean_blocks = {}
    for m in names:
        bl = agg[m]["blocks"]
        wsum = sum(st for _, st in bl)
        mean_blocks[m] = sum(b * st for b, st in bl) / wsum if wsum else 1.0
    ks = sorted({1} | {k for b in mean_blocks.values() for k in (math.floor(b), math.ceil(b))})
    prefix = int(sum(len(p[2]) for p in prompts) / len(prompts) + max_new_tokens // 2)
    console.print(f"[dim]measuring forward cost for k in {ks} after a {prefix}-token prefix[/dim]")
    costs = forward_cost(loaded.model, ks, prefix_len=prefix, repeats=cost_repeats)

    table = Table(title=f"speculative bound · {model} · {loaded.device} · {str(loaded.dtype).replace('torch.', '')} · "
                        f"{len(prompts)} prompts x {max_new_tokens} tokens", title_justify="left")
    for c in ("method", "= AR", "tau", "block k", "cost(k)/cost(1)", "bound", "speedup (totals)",
              "speedup median [95% CI]", "measured/bound"):
        table.add_column(c, justify="right")
    for m in names:
        a = agg[m]
        tau = a["dec_tokens"] / max(1, a["dec_steps"])
        k = mean_blocks[m]
        rel = _interp(costs, k) / costs[1]
        bound = tau / rel
        speed = (a["n"] / a["t"]) / (n_ar / t_ar)
        table.add_row(m, f"{a['same']}/{len(prompts)}", f"{tau:.2f}", f"{k:.1f}", f"{rel:.2f}", f"{bound:.2f}x",
                      f"{speed:.2f}x", bootstrap_median(a["ratios"]).fmt(2), f"{speed / bound:.2f}")
    console.print(table)
    console.print("[dim]cost(k): causal k-token block with logits for every row (accbench.costs.forward_cost); "
                  "lookahead computes logits only for its last level + candidates, so its true cost is lower.[/dim]")


if __name__ == "__main__":
    main()
