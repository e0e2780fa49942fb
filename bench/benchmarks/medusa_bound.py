"""Medusa: measured speedup next to the bound implied by tau and the verification cost.

    python -m accbench.benchmarks.medusa_bound --model smollm2-135m --trees default,greedy63 --n 8

For each prompt, AR and Medusa with each tree generate back to back (the order rotates per
prompt), greedy, same budget and stop rule. Per tree it prints:

- tau (tokens per decode-phase forward) and exact match with AR;
- the measured speedup over AR: end to end (what `accbench run` reports) and decode phase
  only ((E2E - TTFT) of AR / of Medusa, per prompt; median with a bootstrap interval);
- the bound tau x cost(1) / cost(tree): the decode-phase speedup if drafting and
  bookkeeping were free, with cost(k) the measured time of a k-token verification forward
  after a prefix as long as the median prompt (bench/costs.py), measured in the same run;
- the ratio of the measured decode-phase speedup to that bound, and the share of decode
  time spent drafting.
"""

from __future__ import annotations

import statistics

import click
import torch
from accbench.benchmarks import PROMPT_FORMAT_HELP, bench_prompts, decode_ratio
from accbench.methods import get
from accbench.methods.core.costs import forward_cost, speedup_bound
from accbench.models import load_model
from accbench.reports.stats import bootstrap_median, first_divergence, paired_ratio
from rich.console import Console
from rich.table import Table


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--method", default="medusa1", show_default=True)
@click.option("--suites", default="mbpp", show_default=True)
@click.option("--n", type=int, default=8, show_default=True, help="Prompts per suite.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--trees", default="default,greedy63", show_default=True,
              help="Comma-separated trees: default (the tuned one), greedyN, chain, or a JSON list (alone).")
@click.option("--prompt-format", type=click.Choice(["auto", "raw", "chat"]), default="auto", show_default=True,
              help=PROMPT_FORMAT_HELP)
@click.option("--cost-repeats", type=int, default=7, show_default=True)
@click.option("--dtype", default=None, help="Default: float32 on CPU, bfloat16 on CUDA.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cpu).")
@click.option("--data-dir", default=None)
def main(model, method, suites, n, max_new_tokens, trees, prompt_format, cost_repeats, dtype, device,
         data_dir) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    lm = load_model(model, dtype, device)
    tree_specs = [trees] if trees.strip().startswith("[") else [t.strip() for t in trees.split(",") if t.strip()]
    ar = get("ar")(lm.model, lm.tokenizer, model_name=lm.name)
    decs = {}
    for spec in tree_specs:
        dec = get(method)(lm.model, lm.tokenizer, model_name=lm.name, tree=spec)
        decs[f"{spec} ({dec.tree_label}, {dec.tree.size} tok)"] = dec
    prompts = [(p.suite, p.ids, p.stopper) for p in
               bench_prompts(lm.tokenizer, suites, n, ar.eos_ids, prompt_format=prompt_format, data_dir=data_dir)]
    # warmup (not recorded)
    ar.generate(prompts[0][1], 16, prompts[0][2])
    for d in decs.values():
        d.generate(prompts[0][1], 16, prompts[0][2])
    base = next(iter(decs.values())).backbone  # medusa2: its own backbone is AR's reference for speed
    if base is not lm.model:
        ar = get("ar")(base, lm.tokenizer, model_name=lm.name)

    runs: dict[str, list] = {k: [] for k in decs}
    ar_runs = []
    names = list(decs)
    for i, (_suite, ids, stopper) in enumerate(prompts):
        order = ["ar"] + names
        order = order[i % len(order):] + order[: i % len(order)]
        recs = {}
        for name in order:
            dec = ar if name == "ar" else decs[name]
            recs[name] = dec.generate(ids, max_new_tokens, stopper)
        ar_runs.append(recs["ar"])
        for name in names:
            runs[name].append(recs[name])
        console.print(f"[dim]prompt {i + 1}/{len(prompts)} ({len(ids)} tokens): AR {recs['ar'].n_new} tokens "
                      f"{recs['ar'].total_s:.2f}s; " + "; ".join(f"{nm.split(' ')[0]} tau {recs[nm].tau:.2f} "
                                                              f"{recs[nm].total_s:.2f}s" for nm in names) + "[/dim]")

    prefix = int(statistics.median(len(p[1]) for p in prompts)) + max_new_tokens // 2
    sizes = sorted({1} | {d.tree.size for d in decs.values()})
    console.print(f"[dim]measuring cost(k) for k in {sizes} after a {prefix}-token prefix[/dim]")
    costs = forward_cost(base, sizes, prefix_len=prefix, repeats=cost_repeats, warmup=2)

    t = Table(title=f"{method} on {model} ({lm.device}, {len(prompts)} prompts, {max_new_tokens} new tokens max)",
              title_justify="left")
    for c in ("tree", "tau", "exact match", "speedup E2E", "speedup decode", "cost(tree)/cost(1)",
              "bound tau*c1/c(tree)", "measured/bound", "draft share"):
        t.add_column(c, justify="right")
    for name, dec in decs.items():
        rs = runs[name]
        steps = sum(len(r.tokens_per_step) - 1 for r in rs)
        tau = sum(sum(r.tokens_per_step[1:]) for r in rs) / max(1, steps)
        exact = sum(first_divergence(a.tokens, r.tokens) is None for a, r in zip(ar_runs, rs))
        e2e = bootstrap_median([paired_ratio(a.total_s, a.n_new, r.total_s, r.n_new) for a, r in zip(ar_runs, rs)])
        dec_sp = bootstrap_median([x for a, r in zip(ar_runs, rs) if (x := decode_ratio(a, r)) is not None])
        c_rel = costs[dec.tree.size] / costs[1]
        bound = speedup_bound(tau, costs[1], costs[dec.tree.size])
        draft = sum(r.extra["draft_s"] for r in rs) / max(1e-9, sum(r.total_s - r.ttft_s for r in rs))
        t.add_row(name, f"{tau:.2f}", f"{exact}/{len(rs)}", e2e.fmt(), dec_sp.fmt(), f"{c_rel:.2f}", f"{bound:.2f}x",
                  f"{dec_sp.value / bound:.2f}", f"{draft:.1%}")
    console.print(t)
    console.print("cost(k) s: " + ", ".join(f"{k}: {v * 1e3:.1f} ms" for k, v in costs.items()))
    console.print("[dim]speedup decode = AR (E2E - TTFT) / method (E2E - TTFT) per prompt (tokens/s ratio when "
                  "lengths differ); the bound ignores drafting and bookkeeping, so measured/bound < 1 shows "
                  "their cost.[/dim]")


if __name__ == "__main__":  # pragma: no cover
    torch.set_grad_enabled(False)
    main()
