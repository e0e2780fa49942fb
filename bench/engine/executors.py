"""Executors: how the cells of a sweep run.

A sweep is a list of *cells*, one per method x model x suite x prompt length (x device). Each
cell measures its samples with one decoder and sends back one row per sample; the driver (the
process running ``accbench run``) appends the rows to ``samples.jsonl`` as they arrive, fills
in the exact-match-vs-AR fields and records cells that fail in ``failed.jsonl``.

* ``inline``: everything in this process, samples interleaved across methods (AR first on
  every sample). The historical behaviour, implemented in :func:`accbench.engine.runner.run_sweep`;
  an exception stops the sweep (for tests and debugging).
* ``local``: every cell in a fresh worker process (``multiprocessing`` spawn), one at a time,
  rows streamed back over a pipe. A cell that raises, calls ``os._exit`` or is killed (OOM)
  is recorded as failed with its error and the sweep goes on; no cell inherits another's
  allocations, leaks or CUDA state.
* ``ray``: every cell a Ray task (a streaming generator) asking for ``num_gpus=1`` (CUDA
  cells) or ``--ray-cpus`` CPUs (CPU cells) plus optional custom resources (``--ray-resources
  '{"H100": 1}'``); ``max_calls=1``, so each cell gets a fresh worker process. A failed cell
  is retried once (``--retries``) on the remaining samples, then recorded as failed.

Pairing with AR: a method's row is compared with AR's row of the same (model, device, suite,
prompt length, sample). Cells are ordered so a group's AR cell runs first, and on Ray a
method's cell is submitted only once its group's AR cell has finished (or failed), so the
driver knows AR's tokens when the method's rows arrive. Speedups are paired later, from the
rows (``accbench.reports.summary``).

Worker processes import the modules defining the sweep's methods (so a method registered by
a plugin module is found) and every module named in ``$ACCBENCH_PLUGINS`` (comma-separated).
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from accbench.errors import AccbenchError
from accbench.engine.results import ResultsDir, row_key
from accbench.engine.runner import BASELINE, NullProgress, SweepConfig, ordered_methods, validate
from accbench.reports.stats import first_divergence

PLUGINS_ENV = "ACCBENCH_PLUGINS"
#: environment variables handed to worker processes (Ray workers start with the raylet's)
_PASS_ENV = ("ACCBENCH_DATA_DIR", "ACCBENCH_CACHE_DIR", PLUGINS_ENV, "HF_HOME", "HF_HUB_OFFLINE")
EXECUTORS = ("inline", "local", "ray")


@dataclass(frozen=True)
class Cell:
    model: str
    suite: str
    prompt_length: int | None
    method: str
    device: str  # the rows' device key (torch device or --device-label)

    @property
    def group(self) -> tuple:
        """Rows in one group pair with each other (AR vs methods)."""
        return (self.model, self.device, self.suite, self.prompt_length)

    @property
    def label(self) -> str:
        plen = f"/{self.prompt_length}tok" if self.prompt_length else ""
        return f"{self.model}/{self.suite}{plen}/{self.method}"

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "suite": self.suite, "prompt_length": self.prompt_length,
                "method": self.method, "device": self.device}


# ---------------------------------------------------------------------------------------
# the worker side: one cell
# ---------------------------------------------------------------------------------------


def _plugin_roots(modules: list[str]) -> list[str]:
    """The sys.path entries the driver imported ``modules`` from (given to workers, which on a
    single machine or a shared file system can then import them too)."""
    import sys

    roots = []
    for name in modules:
        f = getattr(sys.modules.get(name), "__file__", None)
        if f:
            root = Path(f).resolve().parent
            for _ in range(name.count(".")):
                root = root.parent
            roots.append(str(root))
    return list(dict.fromkeys(roots))


def _import_plugins(modules: list[str], roots: list[str] = ()) -> None:
    import sys

    for r in roots:
        if r not in sys.path and os.path.isdir(r):
            sys.path.append(r)
    names = list(modules) + [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    for name in dict.fromkeys(names):
        importlib.import_module(name)


def cell_messages(payload: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Run one cell; yields ``("start", where)``, ``("msg", text)`` and ``("row", row)``.

    ``payload``: ``cfg`` (SweepConfig fields), ``cell`` (Cell fields), ``sample_ids`` (what is
    still to do), ``env`` (variables to set when the worker lacks them), ``plugins``
    (modules to import), ``device`` (the torch device to use here)."""
    import torch

    for k, v in payload.get("env", {}).items():
        os.environ.setdefault(k, v)
    _import_plugins(payload.get("plugins", []), payload.get("plugin_roots", []))
    from accbench import suites as suite_registry
    from accbench.methods import StopChecker
    from accbench.models import load_model, resolve_device, resolve_dtype

    from accbench.engine.runner import build_decoder, encode_prompt, fit_to_length, sample_row, suite_format

    cfg = SweepConfig(**{**payload["cfg"], "out": Path(payload["cfg"]["out"])})
    cell = Cell(**payload["cell"])
    threads = payload.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    device = resolve_device(payload["device"])
    dtype = resolve_dtype(cfg.dtype, device)
    where = {"host": socket.gethostname(), "pid": os.getpid(), "device": str(device)}
    if device.type == "cuda":
        where["device_name"] = torch.cuda.get_device_name(device)
    yield "start", where
    torch.manual_seed(cfg.seed)

    suite = suite_registry.build(cell.suite, data_dir=cfg.data_dir, data_file=cfg.data_file)
    all_samples = list(suite.samples(limit=cfg.limit))
    want = set(payload["sample_ids"])
    samples = [s for s in all_samples if s.id in want]
    if not samples:
        return
    msgs: list[str] = []
    loaded = load_model(cell.model, dtype=cfg.dtype, device=str(device), progress=msgs.append,
                        device_map=cfg.device_map)
    for m in msgs:
        yield "msg", m
    dec = build_decoder(cell.method, loaded, cfg)
    budget = cfg.max_new_tokens or suite.max_new_tokens
    stopper = StopChecker(loaded.tokenizer, suite.stop, dec.eos_ids)
    filler: list[int] = []
    if cell.prompt_length is not None:
        for other in all_samples[:64]:
            filler += encode_prompt(loaded.tokenizer, other.prompt, "raw")
    warmed = False
    for sample in samples:
        ids = encode_prompt(loaded.tokenizer, sample.prompt, suite_format(cfg.prompt_format, suite))
        if cell.prompt_length is not None:
            ids = fit_to_length(ids, cell.prompt_length, filler, loaded.tokenizer.bos_token_id)
        if not warmed:
            for _ in range(cfg.warmup):  # not recorded
                dec.generate(ids, min(budget, 32), stopper)
            warmed = True
        row = sample_row(dec, ids, budget, stopper, cfg, loaded.device, suite, sample, model=cell.model,
                         device_key=cell.device, suite_name=cell.suite, plen=cell.prompt_length,
                         method=cell.method, dtype=dtype)
        yield "row", row


def _error_text(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the driver dies (no polling thread next to the timed loop)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _local_worker(conn, payload: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    """Entry point of a local worker process: stream a cell's messages over ``conn``."""
    _die_with_parent()
    try:
        for msg in cell_messages(payload):
            conn.send(msg)
        conn.send(("done", None))
    except BaseException as e:  # noqa: BLE001 - everything is reported to the driver
        try:
            conn.send(("error", {"error": _error_text(e), "traceback": traceback.format_exc(),
                                 "user_error": isinstance(e, AccbenchError)}))
        except Exception:
            pass
    finally:
        conn.close()


def _ray_cell(payload: dict[str, Any]):  # pragma: no cover - runs in a ray worker
    """The Ray task: a streaming generator of a cell's messages."""
    try:
        yield from cell_messages(payload)
    except AccbenchError as e:  # a user error is not worth a retry: report it as a message
        yield "error", {"error": _error_text(e), "traceback": traceback.format_exc(), "user_error": True}


# ---------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------


@dataclass
class _Attempt:
    cell: Cell
    ids: list[str]
    attempt: int = 1
    where: str = ""
    rows: int = 0
    error: dict[str, Any] | None = None
    finished: bool = False


class _Driver:
    """Owns the results folder: appends rows, pairs them with AR, records failures."""

    def __init__(self, cfg: SweepConfig, progress: NullProgress, results: ResultsDir, rows: list[dict]):
        self.cfg, self.progress, self.results = cfg, progress, results
        self.done = {row_key(r) for r in rows}
        self.ar_tokens = {row_key({**r, "method": BASELINE}): r["new_token_ids"]
                          for r in rows if r["method"] == BASELINE}
        self.failed: list[dict[str, Any]] = []
        self.n_done_cells = 0
        self.running: dict[str, str] = {}

    def handle(self, att: _Attempt, kind: str, data: Any) -> None:
        if kind == "start":
            where = f"{data.get('host')}:{data.get('device')}"
            if data.get("device_name"):
                where += f" ({data['device_name']})"
            att.where = where
            self.running[att.cell.label] = where
        elif kind == "msg":
            self.progress.message(f"{att.cell.label}: {data}")
        elif kind == "row":
            self.add_row(att, data)
        elif kind == "error":
            att.error = data
        elif kind == "done":
            att.finished = True

    def add_row(self, att: _Attempt, row: dict[str, Any]) -> None:
        from accbench.engine.runner import _ordered

        k = row_key(row)
        if k in self.done:  # a retried cell re-measuring a sample a lost attempt already sent
            return
        pair = row_key({**row, "method": BASELINE})
        if row["method"] == BASELINE:
            self.ar_tokens[pair] = row["new_token_ids"]
            row["exact_match_ar"], row["first_divergence"] = None, None
        elif pair in self.ar_tokens:
            div = first_divergence(self.ar_tokens[pair], row["new_token_ids"])
            row["exact_match_ar"], row["first_divergence"] = div is None, div
        else:
            row["exact_match_ar"], row["first_divergence"] = None, None
        row["executor"] = self.cfg.executor
        self.results.append(_ordered(row))
        self.done.add(k)
        att.rows += 1
        self.progress.row_done(row)

    def remaining(self, att: _Attempt) -> list[str]:
        c = att.cell
        return [sid for sid in att.ids if (c.model, c.device, c.suite, c.prompt_length, sid, c.method)
                not in self.done]

    def fail(self, att: _Attempt, error: str, tb: str | None = None) -> None:
        rec = {**att.cell.as_dict(), "error": error, "attempts": att.attempt, "where": att.where,
               "rows_written": att.rows, "executor": self.cfg.executor,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if tb:
            rec["traceback"] = tb[-4000:]
        self.failed.append(rec)
        with open(self.results.path / "failed.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        self.progress.message(f"cell {att.cell.label} failed ({att.where or 'not started'}): {error}")

    def status(self, queued: int) -> None:
        self.progress.cells(queued, dict(self.running), self.n_done_cells, len(self.failed))


def _device_key(cfg: SweepConfig) -> tuple[str, str]:
    """(the torch device a worker uses, the rows' device key)."""
    if cfg.executor == "ray":
        # The driver may have no GPU; a ray CUDA cell sees its one assigned GPU as cuda:0.
        dev = (cfg.device or "cpu").strip().lower()
        if dev.startswith("cuda"):
            dev = "cuda:0"
        elif dev != "cpu":
            raise AccbenchError(f"--device {cfg.device!r} with --executor ray: use cpu or cuda "
                                "(ray assigns each CUDA cell its own GPU)")
        key = dev
        labels = sorted(k for k in cfg.ray_resources if k not in ("CPU", "GPU"))
        if labels:
            key += "[" + ",".join(labels) + "]"
        return dev, cfg.device_label or key
    from accbench.models import resolve_device

    dev = str(resolve_device(cfg.device))
    return dev, cfg.device_label or dev


def plan_cells(cfg: SweepConfig, suite_samples: dict[str, list], device_key: str, done: set) -> list[_Attempt]:
    """Every cell with samples left, a group's AR cell first."""
    lengths: list[int | None] = list(cfg.prompt_lengths) if cfg.prompt_lengths else [None]
    out = []
    for model in cfg.models:
        for suite in cfg.suites:
            for plen in lengths:
                for method in ordered_methods(cfg.methods):
                    cell = Cell(model, suite, plen, method, device_key)
                    ids = [s.id for s in suite_samples[suite]
                           if (model, device_key, suite, plen, s.id, method) not in done]
                    if ids:
                        out.append(_Attempt(cell, ids))
    return out


def run_cells(cfg: SweepConfig, progress: NullProgress, overwrite: bool = False) -> ResultsDir:
    """:func:`accbench.engine.runner.run_sweep` for the ``local`` and ``ray`` executors."""
    from accbench import methods as method_registry
    from accbench import suites as suite_registry

    from accbench.engine import measure

    if cfg.executor not in EXECUTORS:
        raise AccbenchError(f"unknown executor {cfg.executor!r}; valid: {', '.join(EXECUTORS)}")
    validate(cfg)
    if cfg.retries is not None and cfg.retries < 0:
        raise AccbenchError(f"--retries cannot be negative, got {cfg.retries}")
    worker_device, device_key = _device_key(cfg)
    suite_samples = {s: list(suite_registry.build(s, data_dir=cfg.data_dir, data_file=cfg.data_file)
                             .samples(limit=cfg.limit)) for s in cfg.suites}
    import torch
    from accbench.models import resolve_dtype

    dtype = str(resolve_dtype(cfg.dtype, torch.device(worker_device.split(":")[0]))).replace("torch.", "")
    results = ResultsDir(cfg.out)
    config = {
        "command": "run",
        "methods": ordered_methods(cfg.methods), "models": cfg.models, "suites": cfg.suites,
        "limit": cfg.limit, "warmup": cfg.warmup, "data_dir": cfg.data_dir,
        "device": device_key, "dtype": dtype,
        "executor": cfg.executor,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": measure.environment(torch.device("cpu") if cfg.executor == "ray" else
                                           torch.device(worker_device)),
    }
    if cfg.executor == "ray":
        config.update(ray_address=cfg.address, ray_resources=cfg.ray_resources, ray_cpus=cfg.ray_cpus)
    results.prepare(config, cfg.settings(), overwrite=overwrite)
    rows = results.load_rows()
    driver = _Driver(cfg, progress, results, rows)
    cells = plan_cells(cfg, suite_samples, device_key, driver.done)
    lengths = len(cfg.prompt_lengths) if cfg.prompt_lengths else 1
    total = sum(len(v) for v in suite_samples.values()) * len(set(cfg.methods)) * len(cfg.models) * lengths
    progress.start(total, total - sum(len(a.ids) for a in cells))

    registry = method_registry.available()
    plugins = sorted({registry[m].__module__ for m in cfg.methods} - {"__main__"})
    env = {k: os.environ[k] for k in _PASS_ENV if os.environ.get(k)}
    base_payload = {"cfg": _cfg_dict(cfg), "env": env, "plugins": plugins, "plugin_roots": _plugin_roots(plugins),
                    "device": worker_device}
    try:
        if cfg.executor == "local":
            _run_local(cells, driver, base_payload, retries=cfg.retries or 0)
        else:
            _run_ray(cells, driver, base_payload, cfg)
        failed = [f"{f['model']}/{f['suite']}/{f['method']}" for f in driver.failed]
        results.set_status("complete" if not failed else "incomplete",
                           finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), failed_cells=failed)
    finally:
        results.close()
        progress.stop()
    return results


def _cfg_dict(cfg: SweepConfig) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(cfg)
    d["out"] = str(cfg.out)
    return d


# -- local ------------------------------------------------------------------------------


def _run_local(cells: list[_Attempt], driver: _Driver, base: dict[str, Any], retries: int) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = list(cells)
    while queue:
        att = queue.pop(0)
        driver.status(len(queue))
        driver.progress.cell(att.cell.model, f"{att.cell.suite} / {att.cell.method}"
                             + (f" / {att.cell.prompt_length} tok" if att.cell.prompt_length else ""),
                             len(att.ids))
        recv, send = ctx.Pipe(duplex=False)
        payload = {**base, "cell": att.cell.as_dict(), "sample_ids": att.ids}
        proc = ctx.Process(target=_local_worker, args=(send, payload), daemon=True,
                           name=f"accbench-cell-{att.cell.label}")
        proc.start()
        send.close()  # the child holds the only writer: EOF when it exits
        try:
            while True:
                try:
                    kind, data = recv.recv()
                except EOFError:
                    break
                driver.handle(att, kind, data)
                if kind == "start":
                    driver.status(len(queue))
            proc.join()
        except BaseException:  # Ctrl-C: stop the worker, keep what it sent
            proc.terminate()
            proc.join(10)
            raise
        finally:
            recv.close()
            driver.running.pop(att.cell.label, None)
        if att.finished and att.error is None:
            driver.n_done_cells += 1
        else:
            if att.error is not None:
                err, tb, user = att.error["error"], att.error.get("traceback"), att.error.get("user_error")
            else:
                err, tb, user = _exit_text(proc.exitcode), None, False
            left = driver.remaining(att)
            if att.attempt <= retries and not user and left:
                driver.progress.message(f"cell {att.cell.label} failed ({err}); retrying")
                queue.insert(0, _Attempt(att.cell, left, att.attempt + 1))
            else:
                driver.fail(att, err, tb)
        driver.status(len(queue))


def _exit_text(code: int | None) -> str:
    import signal

    if code is None:
        return "worker process did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: out of memory?)" if -code == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {code} before finishing the cell"


# -- ray --------------------------------------------------------------------------------


def _ray_connect(address: str | None):
    try:
        import ray
    except ImportError:
        raise AccbenchError("--executor ray needs ray: pip install 'accbench[ray]' (or pip install 'ray[default]')") \
            from None
    if ray.is_initialized():
        return ray
    try:
        # None: $RAY_ADDRESS, else a cluster started on this machine, else a new local instance;
        # "local": always a new local instance; "auto" / HOST:PORT: that cluster
        ray.init(address=address or None, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise AccbenchError(f"cannot connect to ray at {address!r}: {_error_text(e)}") from None
    return ray


def _run_ray(cells: list[_Attempt], driver: _Driver, base: dict[str, Any], cfg: SweepConfig) -> None:
    ray = _ray_connect(cfg.address)
    retries = 1 if cfg.retries is None else cfg.retries
    cuda = base["device"].startswith("cuda")
    resources = dict(cfg.ray_resources)
    # "GPU" / "CPU" in --ray-resources set num_gpus / num_cpus (e.g. 2 GPUs for --device-map auto)
    gpus = resources.pop("GPU", 1 if cuda else 0)
    cpus = resources.pop("CPU", cfg.ray_cpus if cfg.ray_cpus is not None else 1)
    if gpus and not cuda:
        raise AccbenchError("--ray-resources asks for GPUs but --device is cpu; pass --device cuda")
    opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 0}
    if resources:
        opts["resources"] = resources
    # max_calls=1: a fresh worker process per cell (the retry is ours, on the remaining samples)
    task = ray.remote(max_calls=1)(_ray_cell).options(**opts)
    threads = None if cuda else max(1, int(cpus))

    # a group's AR cell must finish before its other cells start (exact match vs AR)
    ar_pending = {a.cell.group for a in cells if a.cell.method == BASELINE}
    queue = list(cells)
    running: dict[Any, _Attempt] = {}

    def submit_ready() -> None:
        for att in list(queue):
            if att.cell.method != BASELINE and att.cell.group in ar_pending:
                continue
            queue.remove(att)
            payload = {**base, "cell": att.cell.as_dict(), "sample_ids": att.ids, "threads": threads}
            running[task.remote(payload)] = att
            driver.running[att.cell.label] = "queued on ray"
        driver.status(len(queue))

    def finish(att: _Attempt, error: dict[str, Any] | None) -> None:
        driver.running.pop(att.cell.label, None)
        if error is None:
            driver.n_done_cells += 1
        else:
            left = driver.remaining(att)
            if att.attempt <= retries and not error.get("user_error") and left:
                driver.progress.message(f"cell {att.cell.label} failed ({error['error']}); retrying")
                queue.insert(0, _Attempt(att.cell, left, att.attempt + 1))
                return
            driver.fail(att, error["error"], error.get("traceback"))
        if att.cell.method == BASELINE:
            ar_pending.discard(att.cell.group)

    try:
        submit_ready()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for gen in ready:
                att = running[gen]
                try:
                    ref = next(gen)
                    kind, data = ray.get(ref)
                except StopIteration:
                    del running[gen]
                    finish(att, att.error)
                    submit_ready()
                    continue
                except Exception as e:  # the task raised, or its worker or node died
                    del running[gen]
                    cause = getattr(e, "cause", None)
                    err = _error_text(cause if isinstance(cause, BaseException) else e)
                    finish(att, {"error": err, "traceback": str(e)})
                    submit_ready()
                    continue
                driver.handle(att, kind, data)
                if kind == "start":
                    driver.status(len(queue))
    except BaseException:
        for gen in running:
            try:
                ray.cancel(gen, force=True)
            except Exception:
                pass
        raise
