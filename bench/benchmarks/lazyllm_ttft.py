"""LazyLLM TTFT speedup against AR at one prompt length, for several pruning schedules.

    python -m accbench.benchmarks.lazyllm_ttft --model smollm2-135m --length 4096 --n 5

Every prompt (LongBench multi_news, cut to ``--length`` tokens in the middle, LongBench-style)
is run by AR and by lazyllm under each schedule back to back (the order rotates from prompt
to prompt), greedy, ``--max-new-tokens`` each. For every schedule it prints:

* the fraction of prompt token-layers the prefill computed (measured) and the TTFT bound it
  implies if prefill cost were proportional to token-layers (1 / fraction; attention grows
  faster than linearly with the tokens kept, so the measured speedup can exceed it);
* the TTFT speedup vs AR: per-prompt ratio, median with a 95% bootstrap interval;
* ROUGE-L against the reference for AR and the schedule, and the mean per-prompt delta;
* Aux Cache revivals per generation.

Schedules: ``rate:R`` (prune_rate R with the default 3 stages), ``rate:R@S`` (S stages) or
``layers:4,10,16/keep:0.6,0.4,0.25``. ``rate:0`` is the control: the same layer-by-layer
forward with nothing pruned. Results are appended to ``--out`` (JSONL) as they come; a
rerun with the same file skips what is done.

Goal from the issue: TTFT speedup >= 1.5x at 4096 tokens with ROUGE-L within 1 point of AR.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from accbench import suites as suite_registry
from accbench.engine.prompts import encode_prompt, fit_to_length
from accbench.methods import StopChecker, get
from accbench.methods.lazyllm import resolve_schedule
from accbench.models import load_model
from accbench.reports.stats import bootstrap_median
from rich.console import Console
from rich.table import Table

DEFAULT_SCHEDULES = "rate:0,rate:0.2,rate:0.3,rate:0.4,rate:0.5"


def parse_schedule(spec: str) -> dict:
    spec = spec.strip()
    if spec.startswith("rate:"):
        body = spec[5:]
        rate, _, stages = body.partition("@")
        opts = {"prune_rate": float(rate)}
        if stages:
            opts["stages"] = int(stages)
        return opts
    if spec.startswith("layers:"):
        layers, _, keep = spec[7:].partition("/keep:")
        return {"prune_layers": layers, "keep": keep}
    raise click.BadParameter(f"schedule {spec!r}: use rate:R, rate:R@S or layers:L1,L2/keep:K1,K2")


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--length", type=int, default=4096, show_default=True, help="Prompt length in tokens.")
@click.option("--n", type=int, default=5, show_default=True, help="Prompts (LongBench multi_news 0..n-1).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--schedules", default=DEFAULT_SCHEDULES, show_default=True,
              help="Comma-free list separated by ';' or ',' between specs (see module doc).")
@click.option("--dtype", default=None, help="Default: float32 on CPU, bfloat16 on CUDA.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cpu).")
@click.option("--data-dir", default=None)
@click.option("--out", default=None, help="JSONL file for the raw measurements (resumable).")
def main(model, length, n, max_new_tokens, schedules, dtype, device, data_dir, out):
    console = Console()
    specs = _split_specs(schedules)
    loaded = load_model(model, dtype, device, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    L = len(loaded.model.model.layers)
    ar = get("ar")(loaded.model, loaded.tokenizer)
    lazy_cls = get("lazyllm")
    decs = {s: lazy_cls(loaded.model, loaded.tokenizer, **parse_schedule(s)) for s in specs}
    suite = suite_registry.build("longbench-multinews", data_dir=data_dir)
    samples = list(suite.samples(limit=n + 1))
    stopper = StopChecker(loaded.tokenizer, suite.stop, ar.eos_ids)
    done: dict[tuple[str, str], dict] = {}
    out_path = Path(out) if out else None
    if out_path and out_path.exists():
        for line in out_path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("model") == model and r.get("length") == length and r.get("max_new_tokens") == max_new_tokens:
                done[(r["sample_id"], r["schedule"])] = r

    # warm every path once on a short prompt (not recorded)
    w = encode_prompt(loaded.tokenizer, samples[0].prompt, "raw")[:256]
    ar.generate(w, 4, stopper)
    for d in decs.values():
        d.generate(w, 4, stopper)

    names = ["ar"] + specs
    for i, smp in enumerate(samples[:n]):
        filler = encode_prompt(loaded.tokenizer, samples[(i + 1) % len(samples)].prompt, "raw")
        ids = fit_to_length(encode_prompt(loaded.tokenizer, smp.prompt, "raw"), length, filler,
                            loaded.tokenizer.bos_token_id)
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            if (smp.id, name) in done:
                continue
            dec = ar if name == "ar" else decs[name]
            rec = dec.generate(ids, max_new_tokens, stopper)
            text = stopper.text(rec.tokens)
            row = {"model": model, "length": length, "max_new_tokens": max_new_tokens, "sample_id": smp.id,
                   "schedule": name, "ttft_s": rec.ttft_s, "total_s": rec.total_s, "tokens": rec.tokens,
                   "rougeL": suite.score(smp, text)["rougeL"], "extra": rec.extra}
            done[(smp.id, name)] = row
            console.print(f"[dim]prompt {smp.id} {name}: TTFT {rec.ttft_s:.2f}s "
                          f"frac {rec.extra.get('computed_frac', 1.0):.3f} ROUGE-L {row['rougeL']:.2f}[/dim]")
            if out_path:
                with out_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")

    table = Table(title=f"LazyLLM TTFT · {model} · prompt {length} tokens · {n} prompts · "
                        f"{max_new_tokens} new tokens", title_justify="left")
    for c in ("schedule", "layers / keep", "computed (token-layers)", "bound 1/computed",
              "TTFT speedup [95% CI]", "ROUGE-L", "Δ ROUGE-L vs AR", "same tokens as AR", "revivals"):
        table.add_column(c, justify="right")
    ids_done = [s.id for s in samples[:n]]
    ar_rows = {sid: done[(sid, "ar")] for sid in ids_done if (sid, "ar") in done}
    table.add_row("ar", "-", "100%", "1.00x", "1.00x", f"{np.mean([r['rougeL'] for r in ar_rows.values()]):.2f}",
                  "-", "-", "-")
    for s in specs:
        rows = [(ar_rows[sid], done[(sid, s)]) for sid in ids_done if sid in ar_rows and (sid, s) in done]
        if not rows:
            continue
        frac = float(np.mean([m["extra"]["computed_frac"] for _, m in rows]))
        sp = bootstrap_median([a["ttft_s"] / m["ttft_s"] for a, m in rows])
        dq = [m["rougeL"] - a["rougeL"] for a, m in rows]
        same = sum(a["tokens"] == m["tokens"] for a, m in rows)
        sched = resolve_schedule(L, **{k: v for k, v in parse_schedule(s).items()})
        table.add_row(s, " ".join(f"{layer}:{k:.2f}" for layer, k in sched) or "none", f"{frac:.1%}",
                      f"{1 / frac:.2f}x", f"{sp.value:.2f}x [{sp.lo:.2f}, {sp.hi:.2f}]",
                      f"{np.mean([m['rougeL'] for _, m in rows]):.2f}", f"{np.mean(dq):+.2f}",
                      f"{same}/{len(rows)}", f"{np.mean([m['extra']['revivals'] for _, m in rows]):.1f}")
    console.print(table)


def _split_specs(text: str) -> list[str]:
    """``rate:0,rate:0.3;layers:4,10/keep:0.5,0.3``: ';' always separates; ',' separates
    only before a new ``rate:``/``layers:`` spec."""
    out: list[str] = []
    for part in text.replace(";", ",;").split(","):
        part = part.lstrip(";").strip()
        if not part:
            continue
        if part.startswith(("rate:", "layers:")) or not out:
            out.append(part)
        else:
            out[-1] += "," + part
    return out


if __name__ == "__main__":
    main()
