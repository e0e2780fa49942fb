"""What every trained method (Medusa, MTP) shares: text cut into windows, the learning-rate
schedule, optimizer state as safetensors, resumable checkpoints and the step loop.

The loop (:func:`train_steps`) sets the learning rate, calls the method's step, steps the
optimizer, checkpoints every ``ckpt_every`` steps, at the end and on Ctrl-C (then re-raises:
the CLI exits 130), and reports progress as plain lines through ``log`` every 5% of the steps
(so a log file or a redirected stdout shows it), with a rich bar on top on a terminal.
A checkpoint is one safetensors file (weights, optimizer state; step and history in its
metadata), written to a temporary name and renamed, so a crash never leaves half a one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

Tensors = dict[str, torch.Tensor]
Log = Callable[[str], None]


class TrainingStopped(KeyboardInterrupt):
    """Raised after ``stop_after`` steps of one run, once the checkpoint is written, as Ctrl-C
    would be (a testing aid)."""


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able config (what keys artifacts and cached data)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def documents_hash(docs: Sequence[str]) -> str:
    """What training text was used, for keying artifacts and caches built from it."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode("utf-8", "replace") + b"\0")
    return h.hexdigest()[:16]


def token_chunks(tokenizer, docs: Sequence[str], seq_len: int, *, min_len: int = 16) -> list[list[int]]:
    """Tokenize documents and cut them into windows of at most ``seq_len`` tokens."""
    chunks: list[list[int]] = []
    for d in docs:
        ids = tokenizer(d).input_ids
        for s in range(0, len(ids), seq_len):
            if len(ids[s : s + seq_len]) >= min_len:
                chunks.append(ids[s : s + seq_len])
    return chunks


def split_held_out(chunks: list, frac: float = 0.05, seed: int = 0) -> tuple[list, list]:
    """Shuffle deterministically and keep ``frac`` (at least one item) for held-out accuracy."""
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(len(chunks) * frac))
    return [chunks[i] for i in order[n_held:]], [chunks[i] for i in order[:n_held]]


def lr_factor(step: int, total: int, warmup_frac: float) -> float:
    """Linear warmup over the first ``warmup_frac`` of the steps (at least one), then cosine
    decay to zero at ``total``."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def optimizer_tensors(opt: torch.optim.Optimizer) -> Tensors:
    """The optimizer's per-parameter state (AdamW moments and step) as named tensors."""
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{i}.{k}"] = (v if isinstance(v, torch.Tensor) else torch.tensor(v)).detach().cpu().contiguous()
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: Tensors) -> None:
    """Restore what :func:`optimizer_tensors` saved; the parameter groups stay as built."""
    sd = opt.state_dict()
    state: dict[int, Tensors] = {}
    for name, v in tensors.items():
        i, k = name.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def save_atomic(tensors: Tensors, path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def work_dir(final: Path) -> Path:
    """Where the checkpoints of the artifact ``final`` live while it is being trained."""
    return final.with_name(final.name + ".work")


class Checkpoint:
    """One stage's resumable state: ``weights()`` gives the tensors to keep, ``restore(t)``
    puts them back; the optimizer state, step and history travel with them."""

    def __init__(self, final: Path, stage: str, weights: Callable[[], Tensors], restore: Callable[[Tensors], None]):
        self.path = work_dir(final) / f"{stage}.safetensors"
        self.weights, self.restore = weights, restore

    @staticmethod
    def read_state(path: Path) -> dict[str, Any]:
        """The step, total and history saved in the checkpoint file ``path``."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()["state"])

    def load(self, opt: torch.optim.Optimizer) -> tuple[int, list[dict]]:
        """Restore weights and optimizer state; (step, history), (0, []) without a checkpoint."""
        from safetensors.torch import load_file

        if not self.path.exists():
            return 0, []
        tensors = load_file(str(self.path))
        self.restore({k[2:]: v for k, v in tensors.items() if k.startswith("w.")})
        load_optimizer(opt, {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")})
        state = self.read_state(self.path)
        return int(state["step"]), list(state["history"])

    def save(self, opt: torch.optim.Optimizer, step: int, total: int, history: list[dict]) -> None:
        tensors = {f"w.{k}": v for k, v in self.weights().items()}
        tensors.update({f"opt.{k}": v for k, v in optimizer_tensors(opt).items()})
        state = json.dumps({"step": step, "total": total, "history": history})
        save_atomic(tensors, self.path, {"state": state})


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLog:
    """A plain line through ``log`` at the first update, each time another ``every`` of
    ``total`` is done and at the end (label, count, %, ``detail``, elapsed, ETA), and a rich
    bar too when ``console`` is a terminal."""

    def __init__(self, label: str, total: int, log: Log, console=None, done: int = 0, every: float = 0.05):
        self.label, self.total, self.log, self.start = label, total, log, done
        self.every = max(1, int(total * every))
        self.next_line = done + 1  # the first update prints
        self.bar = None
        if console is not None and getattr(console, "is_terminal", False):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                                auto_refresh=False, transient=True)
            self.task = self.bar.add_task(label, total=total, completed=done, info="")
        self.t0 = time.perf_counter()

    def __enter__(self) -> "ProgressLog":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, done: int, detail: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, info=detail)
            self.bar.refresh()
        if done >= self.next_line or done == self.total:
            self.next_line = (done // self.every + 1) * self.every
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / max(1, done - self.start) * (self.total - done)
            self.log(f"{self.label}: {done}/{self.total} ({100 * done / max(1, self.total):.0f}%)  {detail}  "
                     f"elapsed {_clock(elapsed)}  eta {_clock(eta)}")


def _smooth(prev: Any, new: Any) -> Any:
    """An exponential moving average over a number or a list of numbers (None: no value)."""
    if isinstance(new, (list, tuple)):
        prev = prev if isinstance(prev, list) else [None] * len(new)
        return [_smooth(p, n) for p, n in zip(prev, new)]
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return prev
    return new if prev is None else 0.9 * prev + 0.1 * new


def _describe(metrics: dict[str, Any]) -> str:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    return "  ".join(f"{k} " + (" ".join(fmt(x, ".2f") for x in v) if isinstance(v, list) else fmt(v, ".3f"))
                     for k, v in metrics.items())


@dataclass
class Trained:
    """What one run of :func:`train_steps` did."""

    start: int  # the step it resumed from
    steps_run: int
    history: list[dict] = field(default_factory=list)  # {"step", **metrics} of every step so far
    stopped_early: bool = False  # ``deadline`` passed; the checkpoint is kept
    seconds: float = 0.0


def train_steps(stage: str, total: int, opt: torch.optim.Optimizer, step: Callable[[int], dict[str, Any]],
                ckpt: Checkpoint, *, warmup: float, log: Log, console=None, ckpt_every: int = 50,
                stop_after: int = 0, deadline: float = 0.0) -> Trained:
    """Run steps ``start..total-1`` of ``stage``, resuming from ``ckpt``. ``step(i)`` computes
    the gradients of step ``i`` (backward included) and returns its metrics (``loss`` first,
    numbers or lists of numbers); the optimizer's groups keep their lr as the schedule's peak.
    ``stop_after``: raise :class:`TrainingStopped` after that many steps of this run;
    ``deadline`` (a ``time.perf_counter()`` value): stop there, keeping the checkpoint."""
    peaks = [g["lr"] for g in opt.param_groups]
    start, history = ckpt.load(opt)
    if start:
        log(f"{stage}: resuming from step {start}/{total} ({ckpt.path})")
    run = Trained(start, 0, history)
    t0, smooth = time.perf_counter(), {}
    with ProgressLog(stage, total, log, console, done=start) as progress:
        try:
            for i in range(start, total):
                f = lr_factor(i, total, warmup)
                for g, peak in zip(opt.param_groups, peaks):
                    g["lr"] = peak * f
                opt.zero_grad(set_to_none=True)
                metrics = step(i)
                opt.step()
                run.steps_run += 1
                history.append({"step": i + 1, **metrics})
                smooth = {k: _smooth(smooth.get(k), v) for k, v in metrics.items()}
                progress.update(i + 1, f"{_describe(smooth)}  lr {peaks[0] * f:.2e}")
                done = i + 1
                if done % ckpt_every == 0 or done == total:
                    ckpt.save(opt, done, total, history)
                if done < total and stop_after and run.steps_run >= stop_after:
                    raise TrainingStopped()
                if done < total and deadline and time.perf_counter() > deadline:
                    ckpt.save(opt, done, total, history)
                    log(f"{stage}: out of time at step {done}/{total}; checkpoint kept ({ckpt.path}): "
                        "rerun the same command to continue")
                    run.stopped_early = True
                    break
        except KeyboardInterrupt:
            if run.steps_run:
                ckpt.save(opt, start + run.steps_run, total, history)
            log(f"{stage}: interrupted at step {start + run.steps_run}/{total}; checkpoint kept ({ckpt.path}): "
                "rerun the same command to resume")
            raise
    run.seconds = time.perf_counter() - t0
    return run
