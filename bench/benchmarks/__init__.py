"""Benchmark scripts (``python -m accbench.benchmarks.NAME --help``) and what they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class BenchPrompt:
    suite: str
    sample_id: str
    ids: list[int]
    stopper: Any  # accbench.methods.StopChecker


def bench_prompts(tokenizer, suites: str, n: int, eos_ids, *, prompt_format: str = "auto",
                  data_dir: str | None = None) -> list[BenchPrompt]:
    """The first ``n`` evaluation prompts of each suite, encoded exactly as ``accbench run``
    encodes them (``auto``: the suite's own format, raw few-shot for MBPP, chat for
    summarization), each with the suite's stop rule."""
    from accbench import suites as suite_registry
    from accbench.engine.prompts import encode_prompt, suite_format
    from accbench.methods import StopChecker

    out = []
    for name in [s.strip() for s in suites.split(",") if s.strip()]:
        suite = suite_registry.build(name, data_dir=data_dir)
        fmt = suite_format(prompt_format, suite)
        stopper = StopChecker(tokenizer, suite.stop, eos_ids)
        for sample in suite.samples(limit=n):
            out.append(BenchPrompt(name, str(sample.id), encode_prompt(tokenizer, sample.prompt, fmt), stopper))
    return out


def decode_ratio(ar, rec) -> float | None:
    """AR's decode-phase time over a method's for one prompt ((E2E - TTFT) each; the tokens/s
    ratio when their lengths differ); None when either made fewer than two tokens."""
    from accbench.reports.stats import paired_ratio

    if ar.n_new < 2 or rec.n_new < 2:
        return None
    return paired_ratio(ar.total_s - ar.ttft_s, ar.n_new - 1, rec.total_s - rec.ttft_s, rec.n_new - 1)


PROMPT_FORMAT_HELP = "auto: each suite's own format, as `accbench run` uses it (raw for MBPP, chat for CNN/DM)."
