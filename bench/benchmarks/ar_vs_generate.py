"""AR baseline vs ``model.generate``: same prompts, same model, measured side by side.

    python -m accbench.benchmarks.ar_vs_generate --model smollm2-135m --n 20

For each prompt the two run back to back (alternating which goes first), greedy, with the
same budget and stop rule. Prints whether the tokens are identical and the ratio
AR tokens/s / generate tokens/s (per-prompt median with a bootstrap interval, and the ratio
of totals). A ratio below 1.0 would mean every speedup accbench prints is inflated.
"""

from __future__ import annotations

import time

import click
import torch
from accbench import suites as suite_registry
from accbench.engine.prompts import encode_prompt, suite_format
from accbench.methods import StopChecker, get
from accbench.models import load_model
from accbench.reports.stats import bootstrap_median, first_divergence
from rich.console import Console
from rich.table import Table


def _timed_generate(model, ids: torch.Tensor, budget: int, eos: list[int], stopper: StopChecker):
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=budget, do_sample=False, eos_token_id=eos,
                         pad_token_id=eos[0], stop_strings=stopper.stop or None,
                         tokenizer=stopper.tokenizer if stopper.stop else None)
    dt = time.perf_counter() - t0
    toks = out[0, ids.shape[1]:].tolist()
    hit = stopper.first_stop(toks)
    return (toks[: hit[0] + 1] if hit else toks), dt


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--suites", default="mbpp,cnndm", show_default=True)
@click.option("--n", type=int, default=20, show_default=True, help="Prompts per suite.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--dtype", default=None)
@click.option("--device", default=None)
@click.option("--data-dir", default=None)
def main(model, suites, n, max_new_tokens, dtype, device, data_dir):
    console = Console()
    loaded = load_model(model, dtype=dtype, device=device, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    ar = get("ar")(loaded.model, loaded.tokenizer)
    eos = ar.eos_ids
    table = Table(title=f"AR vs generate · {model} · {loaded.device} · {str(loaded.dtype).replace('torch.', '')}",
                  title_justify="left")
    for c in ("suite", "prompts", "identical", "AR tok/s", "generate tok/s", "ratio (median [95% CI])", "ratio of totals"):
        table.add_column(c, justify="right")
    for suite_name in suites.split(","):
        suite = suite_registry.build(suite_name, data_dir=data_dir)
        stopper = StopChecker(loaded.tokenizer, suite.stop, eos)
        samples = list(suite.samples(limit=n))
        # warm both paths once
        fmt = suite_format("auto", suite)
        w = encode_prompt(loaded.tokenizer, samples[0].prompt, fmt)
        ar.generate(w, 16, stopper)
        _timed_generate(loaded.model, torch.tensor([w], device=loaded.device), 16, eos, stopper)
        same, ratios, t_ar, t_gen, n_ar, n_gen = 0, [], 0.0, 0.0, 0, 0
        for i, s in enumerate(samples):
            ids = encode_prompt(loaded.tokenizer, s.prompt, fmt)
            tid = torch.tensor([ids], device=loaded.device)
            if i % 2 == 0:
                rec = ar.generate(ids, max_new_tokens, stopper)
                gtoks, gdt = _timed_generate(loaded.model, tid, max_new_tokens, eos, stopper)
            else:
                gtoks, gdt = _timed_generate(loaded.model, tid, max_new_tokens, eos, stopper)
                rec = ar.generate(ids, max_new_tokens, stopper)
            div = first_divergence(rec.tokens, gtoks)
            same += div is None
            if div is not None:
                console.print(f"[red]{suite_name}/{s.id}: differs at token {div}[/red]")
            ratios.append((rec.n_new / rec.total_s) / (len(gtoks) / gdt))
            t_ar += rec.total_s
            t_gen += gdt
            n_ar += rec.n_new
            n_gen += len(gtoks)
        iv = bootstrap_median(ratios)
        table.add_row(suite_name, str(len(samples)), f"{same}/{len(samples)}", f"{n_ar / t_ar:.1f}",
                      f"{n_gen / t_gen:.1f}", iv.fmt(3), f"{(n_ar / t_ar) / (n_gen / t_gen):.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
