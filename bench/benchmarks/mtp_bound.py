"""MTP: measured speedup over AR next to the bound its tau and verification cost allow.

    python -m accbench.benchmarks.mtp_bound --model smollm2-135m --n 5

The same measurement as ``speculative_bound --methods mtp`` (AR and MTP alternate on the
same real prompts; bound = tau x cost(1) / cost(k + 1) with k drafts per step; measured
decode speedup / bound, goal >= 0.9; acceptance per draft position, drafting's share of
decode time, exact match with AR), with shortcuts for the MTP heads to use.
"""

from __future__ import annotations

import click
from accbench.benchmarks import PROMPT_FORMAT_HELP, speculative_bound


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--suites", default="mbpp,cnndm", show_default=True)
@click.option("--n", type=int, default=5, show_default=True, help="Prompts per suite.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--heads", default=None, help="MTP heads directory (default: the model's trained default).")
@click.option("--num-draft", type=int, default=None, help="Drafts per step (default: all trained heads).")
@click.option("--prompt-format", type=click.Choice(["auto", "raw", "chat"]), default="auto", show_default=True,
              help=PROMPT_FORMAT_HELP)
@click.option("--cost-repeats", type=int, default=7, show_default=True)
@click.option("--dtype", default=None)
@click.option("--device", default=None)
@click.option("--data-dir", default=None)
@click.pass_context
def main(ctx, model, suites, n, max_new_tokens, heads, num_draft, prompt_format, cost_repeats, dtype, device, data_dir):
    options = ([f"mtp.heads={heads}"] if heads else []) + ([f"mtp.num_draft={num_draft}"] if num_draft else [])
    ctx.invoke(speculative_bound.main, model=model, methods="mtp", suites=suites, n=n, max_new_tokens=max_new_tokens,
               options=tuple(options), prompt_format=prompt_format, cost_repeats=cost_repeats, dtype=dtype,
               device=device, data_dir=data_dir)


if __name__ == "__main__":
    main()
