"""MTP: measured speedup over AR next to the bound its tau and verification cost allow.

    python -m accbench.benchmarks.mtp_bound --model smollm2-135m --n 5

The same measurement as ``speculative_bound --methods mtp`` (AR and MTP alternate on the
same real prompts; bound = tau x cost(1) / cost(k + 1) with k drafts per step; measured
decode speedup / bound, goal >= 0.9; acceptance per draft position, drafting's share of
decode time, exact match with AR), with shortcuts for the MTP heads to use.
"""

from __future__ import annotations

import click
from accbench.benchmarks import speculative_bound


def _run(heads, num_draft, options=(), **kw):
    opts = tuple(options) + ((f"mtp.heads={heads}",) if heads else ()) + \
        ((f"mtp.num_draft={num_draft}",) if num_draft is not None else ())
    click.get_current_context().invoke(speculative_bound.main, methods="mtp", options=opts, **kw)


#: speculative_bound's options, less --methods, plus two shortcuts for the heads
main = click.Command(
    "mtp_bound", callback=_run, help=__doc__.split("\n")[0],
    params=[p for p in speculative_bound.main.params if p.name != "methods"] + [
        click.Option(["--heads"], default=None, help="MTP heads directory (default: the model's trained default)."),
        click.Option(["--num-draft"], type=int, default=None, help="Drafts per step (default: all trained heads)."),
    ])


if __name__ == "__main__":
    main()
