"""Our ``pld`` decoder vs transformers' built-in prompt lookup, same prompts, one run.

    python -m accbench.benchmarks.pld_vs_transformers --model smollm2-135m --n 10

For each prompt, AR, our ``pld`` and ``model.generate(..., prompt_lookup_num_tokens=K,
max_matching_ngram_size=M, do_sample=False)`` run back to back (the order rotates per prompt),
greedy, same budget and stop rule, prompts encoded as ``accbench run`` encodes them. Prints
per suite whether both PLD outputs equal AR's tokens, each side's tokens/s, and the ratio
ours / transformers (per-prompt median with a bootstrap interval, and the ratio of totals).
Goal: >= 1.0.
"""

from __future__ import annotations

import time

import click
import torch
from accbench.benchmarks import PROMPT_FORMAT_HELP, bench_prompts
from accbench.methods import StopChecker, get
from accbench.models import load_model
from accbench.reports.stats import bootstrap_median, first_divergence
from rich.console import Console
from rich.table import Table


def hf_prompt_lookup(model, ids: torch.Tensor, budget: int, eos: list[int], stopper: StopChecker, k: int, m: int):
    """transformers' prompt lookup (assisted generation with PromptLookupCandidateGenerator)."""
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=budget, do_sample=False, eos_token_id=eos, pad_token_id=eos[0],
                         prompt_lookup_num_tokens=k, max_matching_ngram_size=m,
                         stop_strings=stopper.stop or None, tokenizer=stopper.tokenizer if stopper.stop else None)
    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    toks = out[0, ids.shape[1]:].tolist()
    hit = stopper.first_stop(toks)
    return (toks[: hit[0] + 1] if hit else toks), dt


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--suites", default="mbpp,cnndm", show_default=True)
@click.option("--n", type=int, default=10, show_default=True, help="Prompts per suite.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--k", "k", type=int, default=10, show_default=True, help="Draft tokens (prompt_lookup_num_tokens).")
@click.option("--max-ngram", type=int, default=3, show_default=True, help="Largest n-gram matched (both sides).")
@click.option("--prompt-format", type=click.Choice(["auto", "raw", "chat"]), default="auto", show_default=True,
              help=PROMPT_FORMAT_HELP)
@click.option("--dtype", default=None)
@click.option("--device", default=None)
@click.option("--data-dir", default=None)
def main(model, suites, n, max_new_tokens, k, max_ngram, prompt_format, dtype, device, data_dir):
    console = Console(width=200)
    loaded = load_model(model, dtype=dtype, device=device, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    ar = get("ar")(loaded.model, loaded.tokenizer)
    pld = get("pld")(loaded.model, loaded.tokenizer, num_draft=k, max_ngram=max_ngram, min_ngram=1)
    eos = ar.eos_ids
    table = Table(title=f"PLD: ours vs transformers prompt_lookup_num_tokens={k}, max ngram {max_ngram} · {model} · "
                        f"{loaded.device} · {str(loaded.dtype).replace('torch.', '')}", title_justify="left")
    for c in ("suite", "prompts", "ours = AR", "HF = AR", "AR tok/s", "ours tok/s", "HF tok/s", "ours tau",
              "ours/HF (median [95% CI])", "ours/HF totals", "ours/AR totals"):
        table.add_column(c, justify="right")
    for suite_name in suites.split(","):
        samples = bench_prompts(loaded.tokenizer, suite_name, n, eos, prompt_format=prompt_format, data_dir=data_dir)
        stopper = samples[0].stopper
        w = samples[0].ids
        ar.generate(w, 16, stopper)  # warm every path once
        pld.generate(w, 16, stopper)
        hf_prompt_lookup(loaded.model, torch.tensor([w], device=loaded.device), 16, eos, stopper, k, max_ngram)
        ok_ours = ok_hf = 0
        ratios, taus = [], []
        t = {"ar": 0.0, "ours": 0.0, "hf": 0.0}
        cnt = {"ar": 0, "ours": 0, "hf": 0}
        for i, s in enumerate(samples):
            ids = s.ids
            tid = torch.tensor([ids], device=loaded.device)
            runs = {}
            order = ["ar", "ours", "hf"]
            order = order[i % 3:] + order[: i % 3]
            for who in order:
                if who == "ar":
                    r = ar.generate(ids, max_new_tokens, stopper)
                    runs[who] = (r.tokens, r.total_s)
                elif who == "ours":
                    r = pld.generate(ids, max_new_tokens, stopper)
                    runs[who] = (r.tokens, r.total_s)
                    taus.append(r.tau)
                else:
                    runs[who] = hf_prompt_lookup(loaded.model, tid, max_new_tokens, eos, stopper, k, max_ngram)
            for who, (toks, dt) in runs.items():
                t[who] += dt
                cnt[who] += len(toks)
            for who in ("ours", "hf"):
                div = first_divergence(runs["ar"][0], runs[who][0])
                if div is None:
                    ok_ours += who == "ours"
                    ok_hf += who == "hf"
                else:
                    console.print(f"[red]{suite_name}/{s.sample_id}: {who} differs from AR at token {div}[/red]")
            (to, do), (th, dh) = runs["ours"], runs["hf"]
            ratios.append((len(to) / do) / (len(th) / dh))
        tps = {w_: cnt[w_] / t[w_] for w_ in t}
        iv = bootstrap_median(ratios)
        table.add_row(suite_name, str(len(samples)), f"{ok_ours}/{len(samples)}", f"{ok_hf}/{len(samples)}",
                      f"{tps['ar']:.1f}", f"{tps['ours']:.1f}", f"{tps['hf']:.1f}", f"{sum(taus) / len(taus):.2f}",
                      iv.fmt(3), f"{tps['ours'] / tps['hf']:.3f}", f"{tps['ours'] / tps['ar']:.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
