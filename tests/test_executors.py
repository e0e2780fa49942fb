"""The engine: one group (model x device x suite x prompt length) per worker, AR and every
method decoding each sample in lockstep; a crash fails exactly the (method, sample) in flight.

One local sweep is shared by the tests: tiny-random-llama on three prompts with AR, PLD and
three methods that crash on the second prompt (raise, os._exit, SIGKILL: tests/_exec_methods.py).
"""

import json
import shutil
import time

import _exec_methods  # noqa: F401  (registers the crashing methods here; workers import it by name)
import pytest
import torch
from accbench.cli import main
from accbench.engine.config import SweepConfig
from accbench.engine.driver import run_sweep
from accbench.engine.pairing import LOAD, CudaMemory, ProcessMemory, Side, lockstep
from accbench.engine.results import ResultsDir
from accbench.methods.ar import ARDecoder
from accbench.methods.core import Clock, GenerationRecord
from click.testing import CliRunner

METHODS = "ar,test-raise,test-exit,test-kill,pld"
CRASHERS = ("test-raise", "test-exit", "test-kill")
CHOSEN = "2"  # the sample whose prompt holds the crash marker
#: what must agree between executors (timings are measured, they differ)
SAME = ("new_token_ids", "n_new", "finish_reason", "tau", "tokens_per_step", "forward_passes", "drafted",
        "accepted", "quality", "exact_match_ar", "first_divergence", "output_text", "prompt_tokens")


def _prompts(path):
    texts = ["Question 0: what is 0 plus 0?", "Question 1: what is 1 plus 1?", "Question 2: what is 2 plus 2?"]
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def _args(data, out, methods):
    return ["run", "--model", "tiny-random-llama", "--suite", "prompts", "--data", str(data), "--max-new-tokens", "8",
            "--warmup", "0", "--methods", methods, "--out", str(out)]


def _by_key(rows):
    return {(r["method"], r["sample_id"]): r for r in rows}


def _failed(out):
    return [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("local")
    data, out = _prompts(d / "p.jsonl"), d / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setenv(_exec_methods.CRASH_ENV, "Question 1:")
        res = CliRunner().invoke(main, _args(data, out, METHODS), catch_exceptions=False)  # the default engine
    return data, out, res


def test_a_crash_fails_exactly_the_method_and_sample_in_flight(local_run):
    _, out, res = local_run
    assert res.exit_code == 1, res.output
    assert "3 sample(s) failed" in res.output
    rows = ResultsDir(out).load_rows()
    expected = {(m, s) for m in METHODS.split(",") for s in ("1", "2", "3")} - {(m, CHOSEN) for m in CRASHERS}
    assert sorted(_by_key(rows)) == sorted(expected) and len(rows) == len(expected)
    assert all(r["executor"] == "local" and r["pairing"] == "lockstep" and r["peak_mem_scope"] == "group"
               for r in rows)
    assert all(r["exact_match_ar"] is True for r in rows if r["method"] != "ar")
    failed = {f["method"]: f for f in _failed(out)}
    assert sorted(failed) == sorted(CRASHERS)
    assert all(f["sample_id"] == CHOSEN and f["phase"] == "decode" and f["suite"] == "prompts" for f in failed.values())
    assert "RuntimeError: boom from test-raise" in failed["test-raise"]["error"]
    assert "traceback" in failed["test-raise"]
    assert failed["test-exit"]["exit_code"] == 7 and "exited with code 7" in failed["test-exit"]["error"]
    assert failed["test-kill"]["exit_code"] == -9 and "SIGKILL" in failed["test-kill"]["error"]
    assert failed["test-kill"]["where"].startswith(failed["test-exit"]["where"].split(":")[0])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["status"] == "incomplete" and len(cfg["failed_samples"]) == 3
    assert cfg["pairing"]["design"] == "lockstep" and cfg["pairing"]["description"]
    assert cfg["options"]["pld"] == {"num_draft": 10, "max_ngram": 3, "min_ngram": 1}


def test_rerun_retries_only_the_failed_pairs(local_run, tmp_path):
    data, first, _ = local_run
    out = tmp_path / "run"
    shutil.copytree(first, out)
    before = _by_key(ResultsDir(out).load_rows())
    res = CliRunner().invoke(main, _args(data, out, METHODS), catch_exceptions=False)  # nothing crashes now
    assert res.exit_code == 0, res.output
    rows = ResultsDir(out).load_rows()
    after = _by_key(rows)
    assert len(rows) == 15 and set(after) - set(before) == {(m, CHOSEN) for m in CRASHERS}
    assert all(after[k]["time"] == row["time"] and after[k]["total_s"] == row["total_s"] for k, row in before.items())
    assert all(after[(m, CHOSEN)]["exact_match_ar"] is True for m in CRASHERS)
    assert all(after[(m, CHOSEN)]["pairing"] == "lockstep" for m in CRASHERS)  # the three decode together
    assert json.loads((out / "config.json").read_text())["status"] == "complete"


def test_local_rows_equal_inline_rows(local_run, tmp_path):
    data, out, _ = local_run
    local = _by_key(ResultsDir(out).load_rows())
    inline = tmp_path / "inline"
    res = CliRunner().invoke(main, _args(data, inline, "ar,pld") + ["--executor", "inline"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = _by_key(ResultsDir(inline).load_rows())
    assert len(rows) == 6 and sum(sum(r["drafted"]) for r in rows.values() if r["method"] == "pld") > 0
    for key, row in rows.items():
        assert row["executor"] == "inline"
        assert {k: row[k] for k in SAME} == {k: local[key][k] for k in SAME}, key


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


def test_ray_executor_writes_the_same_rows(local_run, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'accbench[ray]')")
    data, out, _ = local_run
    local = _by_key(ResultsDir(out).load_rows())
    monkeypatch.setenv(_exec_methods.CRASH_ENV, "Question 1:")  # before ray starts: its workers inherit it
    _start_local_ray(ray)
    try:
        cfg = SweepConfig(methods=["ar", "pld", "test-exit"], models=["tiny-random-llama"], suites=["prompts"],
                          data_file=str(data), out=tmp_path / "ray", max_new_tokens=8, warmup=0, executor="ray")
        results = run_sweep(cfg)
    finally:
        ray.shutdown()
    rows = results.load_rows()
    assert sorted(_by_key(rows)) == sorted(k for k in local if k[0] in ("ar", "pld", "test-exit"))
    for r in rows:
        assert r["executor"] == "ray" and r["device"] == "cpu"
        assert {k: r[k] for k in SAME} == {k: local[(r["method"], r["sample_id"])][k] for k in SAME}
    assert [(f["method"], f["sample_id"], f["exit_code"]) for f in _failed(tmp_path / "ray")] == [("test-exit", CHOSEN, 7)]
    assert json.loads((tmp_path / "ray" / "config.json").read_text())["status"] == "incomplete"


# ---------------------------------------------------------------------------------------
# the lockstep itself, on decoders without a model


class _Stepper:
    """A fake decoder: ``per_step`` tokens per step, each step ``sleep_s`` long, timed with
    the decoders' Clock; logs (name, tokens before the step) into ``log``."""

    def __init__(self, name, per_step, sleep_s, log):
        self.name, self.per_step, self.sleep_s, self.log = name, per_step, sleep_s, log
        self.paired = False

    def decode(self, ids, budget, stop=None):
        clock = Clock("cpu", paired=self.paired)
        clock.start()
        n = 0
        while True:
            self.log.append((self.name, n))
            time.sleep(self.sleep_s)
            n = min(budget, n + self.per_step)
            if n == budget:
                break
            clock.pause()
            yield n
            clock.resume()
        total = clock.elapsed()
        return GenerationRecord(tokens=[0] * n, ttft_s=0.0, total_s=total, forward_passes=len(self.log),
                                tokens_per_step=[])


def _lockstep(decoders, budget=8):
    return lockstep([Side(i, d.name, d) for i, d in enumerate(decoders)], [1, 2, 3], budget, None,
                    beacon=[LOAD, 0, -1], memory=ProcessMemory(torch.device("cpu"), len(decoders)))


def test_lockstep_resumes_the_side_with_fewest_tokens_and_times_each_alone():
    log = []
    ar, fast = _Stepper("ar", 1, 0.02, log), _Stepper("fast", 4, 0.1, log)
    t0 = time.perf_counter()
    rec_ar, rec_fast = _lockstep([ar, fast])
    wall = time.perf_counter() - t0
    # ties go to the first side (AR); otherwise the side with fewer committed tokens
    assert log == [("ar", 0), ("fast", 0), ("ar", 1), ("ar", 2), ("ar", 3), ("ar", 4), ("fast", 4),
                   ("ar", 5), ("ar", 6), ("ar", 7)]
    assert ar.paired and fast.paired
    assert rec_ar.n_new == rec_fast.n_new == 8
    # each clock counts its own steps only: 8 x 20 ms and 2 x 100 ms, of a wall time of both
    assert 0.16 <= rec_ar.total_s < 0.16 + 0.08 < wall
    assert 0.2 <= rec_fast.total_s < 0.2 + 0.08 < wall


def test_lockstep_a_raising_side_fails_alone_and_a_generate_only_plugin_is_one_step():
    log = []

    class Raising(_Stepper):
        def decode(self, ids, budget, stop=None):
            yield 1
            raise ValueError("bad step")

    class GenerateOnly:  # a third-party decoder with no `decode`
        name = "plugin"

        def generate(self, ids, budget, stop=None):
            log.append(("plugin", 0))
            return GenerationRecord(tokens=[5] * budget, ttft_s=0.0, total_s=0.01, forward_passes=budget,
                                    tokens_per_step=[1] * budget)

    ar = _Stepper("ar", 1, 0.0, log)
    rec_ar, failed, plugin = _lockstep([ar, Raising("bad", 1, 0.0, []), GenerateOnly()], budget=3)
    assert rec_ar.n_new == 3 and plugin.n_new == 3
    assert "ValueError: bad step" == failed.error and "Traceback" in failed.traceback
    assert log.count(("plugin", 0)) == 1


def test_cuda_peak_memory_is_attributed_to_each_side(monkeypatch):
    """On CUDA each side's peak is the memory at the sample's start (weights), plus what the
    side itself holds, plus its own step's transient peak; never the other side's cache.
    (The allocator is simulated: this machine may have no GPU.)"""
    mem = {"alloc": 1000, "peak": 1000}
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: mem["alloc"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: mem["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: mem.update(peak=mem["alloc"]))

    class Allocating:
        """Each step keeps ``held`` more bytes (its cache) and briefly needs ``transient`` more;
        the last step frees what the side held."""

        def __init__(self, name, steps):
            self.name, self.steps, self.paired = name, steps, False

        def decode(self, ids, budget, stop=None):
            kept = 0
            for i, (held, transient) in enumerate(self.steps, 1):
                mem["peak"] = max(mem["peak"], mem["alloc"] + held + transient)
                mem["alloc"] += held
                kept += held
                if i == len(self.steps):
                    break
                yield i
            mem["alloc"] -= kept
            return GenerationRecord(tokens=[0] * len(self.steps), ttft_s=0.0, total_s=0.0, forward_passes=1,
                                    tokens_per_step=[])

    a, b = Allocating("ar", [(100, 150), (10, 20)]), Allocating("m", [(300, 50), (0, 20)])
    sides = [Side(0, "ar", a), Side(1, "m", b)]
    memory = CudaMemory(torch.device("cuda"), 2)
    lockstep(sides, [1], 2, None, beacon=[LOAD, 0, -1], memory=memory)
    assert memory.peaks_mb() == [1250 / 2**20, 1350 / 2**20]  # the process peak was 1450 (b's cache + a's step)
    assert mem["alloc"] == 1000


def test_train_missing_calls_the_training_command(tmp_path, monkeypatch):
    """--train-missing: a decoder that raises NeedsTraining is trained by
    accbench.training.commands.train_method (with the loaded model), then built again."""
    from accbench import methods
    from accbench.errors import NeedsTraining
    from accbench.training import commands

    trained = []

    class NeedsHeads(ARDecoder):
        name = "test-needs-training"

        def __init__(self, model, tokenizer, **kw):
            if not trained:
                raise NeedsTraining(self.name, kw.get("model_name"))
            super().__init__(model, tokenizer, **kw)

    def fake_train(method, model_name, loaded, *, dtype, device, data_dir, console):
        trained.append((method, model_name, loaded.name, device))
        return tmp_path

    methods.available()
    monkeypatch.setitem(methods._REGISTRY, NeedsHeads.name, NeedsHeads)
    monkeypatch.setattr(commands, "train_method", fake_train)
    data = _prompts(tmp_path / "p.jsonl")
    args = _args(data, tmp_path / "run", f"ar,{NeedsHeads.name}") + ["--executor", "inline", "--limit", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "--train-missing" in res.output  # not asked to train: stops, says how
    res = CliRunner().invoke(main, args + ["--train-missing"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert trained == [(NeedsHeads.name, "tiny-random-llama", "tiny-random-llama", "cpu")]
    assert len(ResultsDir(tmp_path / "run").load_rows()) == 2
