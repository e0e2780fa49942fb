"""Executors: `local` isolates crashing cells in worker processes; `ray` writes the same rows.

One local sweep (4 cells on the tiny model, 2 MBPP problems) is shared by the tests: AR, a
method that raises, one whose worker process vanishes (os._exit), and PLD after them.
"""

import json

import _exec_methods  # noqa: F401  (registers test-raise / test-exit here; workers import it by name)
import pytest
from accbench.cli import main
from accbench.engine.results import ResultsDir
from accbench.engine.runner import SweepConfig, run_sweep
from click.testing import CliRunner

COMMON = ["--model", "tiny-random-llama", "--suite", "mbpp", "--limit", "2", "--max-new-tokens", "8",
          "--warmup", "0"]
#: what must agree between executors (timings are measured, they differ)
SAME = ("new_token_ids", "n_new", "finish_reason", "tau", "tokens_per_step", "forward_passes", "drafted",
        "accepted", "quality", "exact_match_ar", "first_divergence", "output_text", "prompt_tokens")


def _start_local_ray(ray, attempts: int = 3):
    """ray.init(num_cpus=2); Ray gives its raylet a fixed 30 s to register, which an overloaded
    machine can miss: try again, then skip saying so (a start-up failure is not ours)."""
    for _ in range(attempts):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            return
        except Exception as e:  # noqa: BLE001
            ray.shutdown()
            if "timed out during startup" not in str(e):
                raise
    pytest.skip(f"a local Ray instance did not start ({attempts} tries): Ray's raylet start-up timed out "
                "(machine overloaded?)")


def _by_key(rows):
    return {(r["method"], r["sample_id"]): r for r in rows}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    res = CliRunner().invoke(main, ["run", *COMMON, "--methods", "ar,test-raise,test-exit,pld", "--out", str(out),
                                    "--executor", "local"], catch_exceptions=False)
    return out, res


def test_local_executor_isolates_crashing_cells(local_run):
    out, res = local_run
    assert res.exit_code == 1, res.output  # the sweep finished, with failed cells
    assert "2 cell(s) failed" in res.output
    rows = ResultsDir(out).load_rows()
    assert sorted(_by_key(rows)) == [("ar", "11"), ("ar", "12"), ("pld", "11"), ("pld", "12")]
    assert all(r["executor"] == "local" and r["quality"] == {"pass@1": 0.0} for r in rows)
    assert all(r["exact_match_ar"] is True for r in rows if r["method"] == "pld")
    failed = {f["method"]: f for f in map(json.loads, (out / "failed.jsonl").read_text().splitlines())}
    assert set(failed) == {"test-raise", "test-exit"}
    assert "RuntimeError: boom from test-raise" in failed["test-raise"]["error"]
    assert "traceback" in failed["test-raise"]
    assert "exited with code 7" in failed["test-exit"]["error"]
    assert failed["test-exit"]["rows_written"] == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["status"] == "incomplete" and len(cfg["failed_cells"]) == 2


def test_local_rows_equal_inline_rows_and_rerun_skips(local_run, tmp_path):
    out, _ = local_run
    local = _by_key(ResultsDir(out).load_rows())
    inline = tmp_path / "inline"
    res = CliRunner().invoke(main, ["run", *COMMON, "--methods", "ar,pld", "--out", str(inline),
                                    "--executor", "inline"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for key, row in _by_key(ResultsDir(inline).load_rows()).items():
        assert {k: row[k] for k in SAME} == {k: local[key][k] for k in SAME}, key
    # rerunning the finished cells into the local folder starts no worker and adds nothing
    res = CliRunner().invoke(main, ["run", *COMMON, "--methods", "ar,pld", "--out", str(out),
                                    "--executor", "local"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len(ResultsDir(out).load_rows()) == 4
    assert json.loads((out / "config.json").read_text())["status"] == "complete"


def test_ray_executor_writes_the_same_rows(local_run, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'accbench[ray]')")
    out, _ = local_run
    local = _by_key(ResultsDir(out).load_rows())
    _start_local_ray(ray)
    try:
        cfg = SweepConfig(methods=["ar", "pld", "test-exit"], models=["tiny-random-llama"], suites=["mbpp"],
                          out=tmp_path / "ray", limit=2, max_new_tokens=8, warmup=0, executor="ray")
        results = run_sweep(cfg)
    finally:
        ray.shutdown()
    rows = results.load_rows()
    assert sorted(_by_key(rows)) == sorted(local)
    for r in rows:
        assert r["executor"] == "ray" and r["device"] == "cpu"
        assert {k: r[k] for k in SAME} == {k: local[(r["method"], r["sample_id"])][k] for k in SAME}
    # a worker lost mid-cell is retried once, then the cell is recorded as failed
    failed = [json.loads(x) for x in (tmp_path / "ray" / "failed.jsonl").read_text().splitlines()]
    assert [(f["method"], f["attempts"]) for f in failed] == [("test-exit", 2)]
    assert json.loads((tmp_path / "ray" / "config.json").read_text())["status"] == "incomplete"
