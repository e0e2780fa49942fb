"""The benchmark scripts run end to end and encode prompts as `accbench run` does."""

from __future__ import annotations

import pytest
from click.testing import CliRunner


def test_bench_prompts_use_each_suites_run_format(smollm2):
    from accbench import suites as suite_registry
    from accbench.benchmarks import bench_prompts
    from accbench.engine.prompts import encode_prompt

    tok = smollm2.tokenizer
    got = bench_prompts(tok, "mbpp,cnndm", 2, [tok.eos_token_id])
    assert [(p.suite, p.sample_id) for p in got] == [("mbpp", "11"), ("mbpp", "12"), ("cnndm", "0"), ("cnndm", "1")]
    mbpp = list(suite_registry.build("mbpp").samples(limit=1))[0]
    cnndm = list(suite_registry.build("cnndm").samples(limit=1))[0]
    assert got[0].ids == encode_prompt(tok, mbpp.prompt, "raw")  # MBPP: raw few-shot
    assert got[2].ids == encode_prompt(tok, cnndm.prompt, "chat")  # summarization: chat template
    assert got[2].ids != encode_prompt(tok, cnndm.prompt, "raw")
    assert got[2].stopper.stop == list(suite_registry.build("cnndm").stop or [])
    forced = bench_prompts(tok, "cnndm", 1, [tok.eos_token_id], prompt_format="raw")
    assert forced[0].ids == encode_prompt(tok, cnndm.prompt, "raw")


def test_speculative_bound_runs_and_reports_lossless_methods(tiny_llama):
    from accbench.benchmarks import speculative_bound

    res = CliRunner().invoke(speculative_bound.main, [
        "--model", "tiny-random-llama", "--methods", "pld,lookahead", "--suites", "mbpp,cnndm", "--n", "2",
        "--max-new-tokens", "12", "--cost-repeats", "1"])
    assert res.exit_code == 0, res.output
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in res.output.splitlines() if ln.count("│") > 5]
    got = {(r[0], r[1]): r for r in rows}
    assert set(got) == {(m, s) for m in ("pld", "lookahead") for s in ("mbpp", "cnndm")}
    for r in got.values():
        assert r[2] == "2/2", r  # lossless on every prompt
        assert float(r[8].rstrip("x")) > 0 and float(r[12]) > 0  # a bound and a measured/bound ratio
    assert "cost(k): 1:" in res.output


def test_block_counts_match_the_steps_and_drafts(tiny_llama):
    """pld and mtp record their verification block per step: one count per decode step, and
    (block - 1) summed over steps is the number of drafted tokens."""
    from accbench.benchmarks.speculative_bound import _block_counts
    from accbench.methods import StopChecker, get

    tok = tiny_llama.tokenizer
    ids = tok("def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return").input_ids
    dec = get("pld")(tiny_llama.model, tok)
    rec = dec.generate(ids, 24, StopChecker(tok, [], dec.eos_ids))
    blocks = rec.extra["blocks"]
    assert sum(blocks.values()) == len(rec.tokens_per_step) - 1
    assert sum((k - 1) * c for k, c in blocks.items()) == sum(rec.drafted)
    assert rec.extra["mean_block"] == pytest.approx(sum(k * c for k, c in blocks.items()) / sum(blocks.values()))
    assert _block_counts([rec, rec]) == {k: 2 * c for k, c in blocks.items()}


def test_mtp_bound_passes_its_head_options_through(tiny_llama):
    from accbench.benchmarks import mtp_bound

    res = CliRunner().invoke(mtp_bound.main, [
        "--model", "tiny-random-llama", "--heads", "random", "--num-draft", "2", "--suites", "mbpp", "--n", "1",
        "--max-new-tokens", "10", "--cost-repeats", "1"])
    assert res.exit_code == 0, res.output
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in res.output.splitlines() if ln.count("│") > 5]
    assert [r[:3] for r in rows] == [["mtp", "mbpp", "1/1"]]
    assert len(rows[0][4].split()) == 2  # acceptance for 2 draft positions: --num-draft reached the decoder
    assert 2.0 < float(rows[0][6]) <= 3.0  # blocks: the current token + at most 2 drafts (fewer near the budget)


@pytest.mark.parametrize("script", ["mtp_bound", "speculative_bound", "pld_vs_transformers", "medusa_bound",
                                    "sps_vs_transformers"])
def test_benchmark_help(script):
    import importlib

    mod = importlib.import_module(f"accbench.benchmarks.{script}")
    res = CliRunner().invoke(mod.main, ["--help"])
    assert res.exit_code == 0 and "--model" in res.output


def test_forward_cost_measures_each_k_once(tiny_llama):
    from accbench.methods.core.costs import forward_cost

    costs = forward_cost(tiny_llama.model, [1, 4, 4, 2], prefix_len=16, repeats=2, warmup=1)
    assert list(costs) == [1, 4, 2]
    assert all(v > 0 for v in costs.values())
