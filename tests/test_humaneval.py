"""HumanEval: the package's 164 problems, lm-eval's prompt and stops, pass@1 in our sandbox."""

import time

import pytest
from accbench import suites
from accbench.cli import main
from accbench.engine.results import ResultsDir
from click.testing import CliRunner


@pytest.fixture(scope="module")
def suite():
    return suites.build("humaneval")


def test_problems_and_prompt(suite):
    samples = list(suite.samples())
    assert len(samples) == 164 and samples[0].id == "0" and samples[0].meta["task_id"] == "HumanEval/0"
    assert samples[0].prompt.startswith("from typing import List") and suite.stop[:2] == ["\nclass", "\ndef"]
    assert suite.prompt_format == "raw"


def test_every_canonical_solution_passes_and_wrong_ones_fail(suite):
    samples = list(suite.samples())
    t = time.perf_counter()
    got = suite.score_many([(s, s.reference) for s in samples])
    took = time.perf_counter() - t
    failed = [s.id for s, g in zip(samples, got) if g["pass@1"] != 1.0]
    assert not failed, f"canonical solutions failing: {failed}"
    wrong = suite.score_many([(s, "    return None\n") for s in samples[:10]])
    assert all(g["pass@1"] == 0.0 for g in wrong)
    print(f"164 canonical solutions scored in {took:.1f} s")


def test_run_scores_humaneval(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--methods", "ar", "--model", "tiny-random-llama", "--suite", "humaneval",
                                    "--limit", "2", "--max-new-tokens", "8", "--out", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = ResultsDir(out).load_rows()
    assert [r["sample_id"] for r in rows] == ["0", "1"] and all(r["quality"] == {"pass@1": 0.0} for r in rows)
