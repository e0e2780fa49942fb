"""The shared training loop (methods/training.py): plain progress lines when not on a terminal,
checkpoints that resume exactly after Ctrl-C, the schedule; and `accbench train` / `accbench
tune` through click's CliRunner on tiny-random-llama."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
from accbench.cli import main
from accbench.methods.training import (
    Checkpoint,
    TrainingStopped,
    load_optimizer,
    lr_factor,
    optimizer_tensors,
    train_steps,
    work_dir,
)
from click.testing import CliRunner
from rich.console import Console


def _problem(seed=0):
    """A linear regression: weights, a step function (backward included) and the checkpoint hooks."""
    g = torch.Generator().manual_seed(seed)
    x, w_true = torch.randn(64, 4, generator=g), torch.randn(4, 1, generator=g)
    y = x @ w_true
    lin = torch.nn.Linear(4, 1)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()

    def step(i):
        idx = torch.arange(i % 4 * 16, i % 4 * 16 + 16)
        loss = torch.nn.functional.mse_loss(lin(x[idx]), y[idx])
        loss.backward()
        return {"loss": float(loss.detach()), "parts": [float(loss.detach()) / 2, None]}

    def weights():
        return {k: v.detach().clone() for k, v in lin.state_dict().items()}

    return lin, step, weights, lin.load_state_dict


def _run(tmp_path, total, log, wrap=None, **kw):
    """``wrap(step)``: the step function to run instead of the problem's own ``step``."""
    lin, step, weights, restore = _problem()
    opt = torch.optim.AdamW(lin.parameters(), lr=0.05, weight_decay=0.0)
    ckpt = Checkpoint(tmp_path / "artifact", "fit", weights, restore)
    return lin, train_steps("fit", total, opt, wrap(step) if wrap else step, ckpt, warmup=0.1, log=log, **kw)


def test_plain_progress_lines_when_not_on_a_terminal(tmp_path):
    lines: list[str] = []
    console = Console(file=io.StringIO())  # not a terminal: no bar, lines only
    _, run = _run(tmp_path, 100, lines.append, console=console)
    progress = [ln for ln in lines if re.match(r"fit: \d+/100 \(\d+%\)", ln)]
    assert len(progress) >= 20  # every 5%, the first step and the last
    assert progress[0].startswith("fit: 1/100 (1%)") and progress[-1].startswith("fit: 100/100 (100%)")
    for ln in progress:
        assert "loss " in ln and "lr " in ln and "elapsed " in ln and "eta " in ln
        assert "parts " in ln and " -" in ln  # a list metric; a missing value shows as '-'
    assert console.file.getvalue() == ""
    losses = [h["loss"] for h in run.history]
    assert run.steps_run == 100 and losses[-1] < losses[0]


def test_interrupt_saves_finished_steps_and_resume_is_exact(tmp_path):
    full, _ = _run(tmp_path / "a", 12, lambda s: None)

    calls = []

    def interrupted(step):
        def fn(i):
            calls.append(i)
            if len(calls) == 6:  # inside the 6th step: 5 are finished
                raise KeyboardInterrupt
            return step(i)
        return fn

    log: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", 12, log.append, wrap=interrupted, ckpt_every=100)
    path = work_dir(tmp_path / "b" / "artifact") / "fit.safetensors"
    assert Checkpoint.read_state(path)["step"] == 5
    assert any("interrupted at step 5/12" in ln for ln in log)

    resumed, run = _run(tmp_path / "b", 12, log.append, ckpt_every=100)
    assert run.start == 5 and run.steps_run == 7 and len(run.history) == 12
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_stop_after_and_deadline(tmp_path):
    with pytest.raises(TrainingStopped):
        _run(tmp_path / "a", 10, lambda s: None, stop_after=3)
    assert Checkpoint.read_state(work_dir(tmp_path / "a" / "artifact") / "fit.safetensors")["step"] == 3
    _, run = _run(tmp_path / "b", 10, lambda s: None, deadline=1e-9)  # long past: stops after one step
    assert run.stopped_early and run.steps_run == 1


def test_schedule_and_optimizer_round_trip():
    assert lr_factor(0, 100, 0.1) == pytest.approx(0.1) and lr_factor(9, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(99, 100, 0.1) < 0.01 and lr_factor(55, 100, 0.1) == pytest.approx(0.5, abs=0.02)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    fresh = torch.optim.AdamW(lin.parameters(), lr=0.1)
    load_optimizer(fresh, optimizer_tensors(opt))
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        for k in a:
            torch.testing.assert_close(torch.as_tensor(a[k]), torch.as_tensor(b[k]))


# --------------------------------------------------------------------------------------
# the commands
# --------------------------------------------------------------------------------------


TRAIN_ARGS = ["train", "mtp", "--model", "tiny-random-llama", "--data-source", "mbpp", "--steps", "3",
              "--batch-size", "2", "--seq-len", "48", "-o", "n=2", "-o", "windows=6", "-o", "eval_chunks=2"]


def test_train_command_trains_logs_and_sets_the_default(tmp_path, monkeypatch):
    from accbench.training.artifacts import get_default, method_dir

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    res = CliRunner().invoke(main, TRAIN_ARGS, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "MTP heads: 3/3 (100%)" in res.output  # plain progress lines: CliRunner's stdout is no terminal
    log = (method_dir("tiny-random-llama", "mtp") / "train.log").read_text()
    assert "accbench train mtp --model tiny-random-llama" in log and "MTP heads: 3/3 (100%)" in log
    art = get_default("tiny-random-llama", "mtp")
    assert art is not None and json.loads((art / "mtp.json").read_text())["steps_done"] == 3


def test_train_command_ctrl_c_exits_130_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from accbench.methods.mtp import train as mtp_train

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    real, calls = mtp_train.F.cross_entropy, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mtp_train.F, "cross_entropy", interrupted)
    res = CliRunner().invoke(main, TRAIN_ARGS, catch_exceptions=False)
    assert res.exit_code == 130 and "rerun the same command to resume" in res.output
    works = list(tmp_path.rglob("*.work"))
    assert len(works) == 1 and Checkpoint.read_state(works[0] / "heads.safetensors")["step"] == 2


def test_train_command_rejects_a_method_without_training():
    res = CliRunner().invoke(main, ["train", "pld", "--model", "tiny-random-llama"])
    assert res.exit_code == 2 and "has nothing to train" in res.output


def test_tune_lookahead_gets_held_out_prompts_of_both_suites(tmp_path, monkeypatch):
    from accbench.methods.lookahead import tune as la_tune

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    seen = {}
    real = la_tune.measure

    def spy(ar, decs, prompts, stop, budget, log):
        seen.update(prompts=prompts, stop=stop.stop)
        return real(ar, decs, prompts, stop, budget, log)

    monkeypatch.setattr(la_tune, "measure", spy)
    res = CliRunner().invoke(main, ["tune-lookahead", "--model", "tiny-random-llama", "--prompts", "1",
                                    "-o", "max_new_tokens=6", "-o", "grid=3,3,3"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len(seen["prompts"]) == 2 and all(isinstance(t, int) for p in seen["prompts"] for t in p)
    assert "[DONE]" in seen["stop"]
