"""Local worker processes: one per group (``multiprocessing`` spawn), rows streamed back over
a pipe, and the supervisor that restarts a worker that died.

Before every step of a method the worker stores the method's position in its *beacon*, three
ints in shared memory (phase, sample position, method position; see
:mod:`accbench.engine.group`). When the worker dies (``os._exit``, SIGKILL, a segfault, the
OOM killer) the supervisor reads the beacon, records the (method, sample) that was in flight
as failed and starts a new worker on the unfinished work without it. The supervisor runs in
the driver (``--executor local``) or inside a group's Ray task (``--executor ray``).

Worker processes import the modules defining the sweep's methods (so a method registered by a
plugin module is found) and every module named in ``$ACCBENCH_PLUGINS`` (comma-separated).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from accbench.engine.group import Message, Work, failure, group_messages
from accbench.engine.pairing import LOAD, METHOD, PHASE, SAMPLE, error_text
from accbench.errors import AccbenchError

PLUGINS_ENV = "ACCBENCH_PLUGINS"
#: environment variables handed to worker processes (Ray workers start with the raylet's)
PASS_ENV = ("ACCBENCH_DATA_DIR", "ACCBENCH_CACHE_DIR", PLUGINS_ENV, "HF_HOME", "HF_HUB_OFFLINE")
#: a method that took its worker down this many times in a group is given up for the group
MAX_CRASHES = 3


def plugin_roots(modules: list[str]) -> list[str]:
    """The sys.path entries the driver imported ``modules`` from (given to workers, which on a
    single machine or a shared file system can then import them too)."""
    roots = []
    for name in modules:
        f = getattr(sys.modules.get(name), "__file__", None)
        if f:
            root = Path(f).resolve().parent
            for _ in range(name.count(".")):
                root = root.parent
            roots.append(str(root))
    return list(dict.fromkeys(roots))


def prepare_process(payload: dict[str, Any]) -> None:
    """In a worker process: the driver's environment variables, plugins and thread count."""
    for k, v in payload.get("env", {}).items():
        os.environ.setdefault(k, v)
    for r in payload.get("plugin_roots", []):
        if r not in sys.path and os.path.isdir(r):
            sys.path.append(r)
    names = list(payload.get("plugins", [])) + [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",")
                                                if m.strip()]
    for name in dict.fromkeys(names):
        importlib.import_module(name)
    if payload.get("threads"):
        import torch

        torch.set_num_threads(int(payload["threads"]))


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies (no polling thread next to the timed loop)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(conn, beacon, payload: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    """A worker process: stream one group's messages over ``conn``. An exception that escapes
    the group (the model does not load...) is sent as ``("crash", ...)``."""
    _die_with_parent()
    from accbench.suites.sandbox import cleanup_on_signals

    cleanup_on_signals()  # SIGTERM while scoring: no sandboxed child or directory is left behind
    try:
        prepare_process(payload)
        for msg in group_messages(payload, beacon):
            conn.send(msg)
        conn.send(("done", None))
    except BaseException as e:  # noqa: BLE001 - everything is reported to the supervisor
        try:
            conn.send(("crash", {"error": error_text(e), "traceback": traceback.format_exc(),
                                 "user_error": isinstance(e, AccbenchError)}))
        except Exception:
            pass
    finally:
        conn.close()


def exit_text(code: int | None) -> str:
    if code is None:
        return "worker process did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: out of memory?)" if -code == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with code {code}"


def supervise(payload: dict[str, Any], retries: int = 0) -> Iterator[Message]:
    """Run a group in worker processes; yields the group's messages, plus a ``("failed", ...)``
    for what each dead worker had in flight, restarting a worker on the rest. What a dead
    worker had in flight is run again ``retries`` times before it is recorded."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    work = Work(payload["methods"], payload["todo"])
    attempts: Counter = Counter()
    crashes: Counter = Counter()
    while work:
        sent = work.as_payload()
        beacon = ctx.RawArray("i", [LOAD, -1, -1])
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker_main, args=(send, beacon, {**payload, "todo": sent}), daemon=True,
                           name="accbench-group")
        proc.start()
        send.close()  # the child holds the only writer: EOF when it exits
        ended, where = None, ""
        try:
            while True:
                try:
                    kind, data = recv.recv()
                except EOFError:
                    break
                if kind in ("done", "crash"):
                    ended = (kind, data)
                    continue
                if kind == "start":
                    where = _where_text(data)
                elif kind in ("row", "failed"):
                    work.drop(data["sample_id"], data["method"])
                yield kind, data
            proc.join()
        except BaseException:  # Ctrl-C: stop the worker, keep what it sent
            proc.terminate()
            proc.join(10)
            raise
        finally:
            recv.close()
        if ended is not None and ended[0] == "done":
            return
        crash = ended[1] if ended is not None else {}
        error = crash.get("error") or exit_text(proc.exitcode)
        phase, s_pos, m_pos = beacon[PHASE], beacon[SAMPLE], beacon[METHOD]
        sample_id = sent[s_pos][0] if s_pos >= 0 else None
        method = work.methods[m_pos] if m_pos >= 0 else None
        unit = (phase, sample_id, method)
        attempts[unit] += 1
        if attempts[unit] <= retries and not crash.get("user_error"):
            yield "msg", f"worker died ({error}); retrying"
            continue
        extra = {"exit_code": proc.exitcode, "where": where, "attempts": attempts[unit]}
        blamed = _blame(work, phase, sample_id, method, error, crash.get("traceback"))
        if not blamed and attempts[unit] >= MAX_CRASHES:  # it keeps dying between pairs: give up
            phase, blamed = LOAD, _blame(work, LOAD, None, None, error, crash.get("traceback"))
        for rec in blamed:
            crashes[rec["method"]] += 1
            yield "failed", {**rec, **extra}
            work.drop(rec["sample_id"], rec["method"])
            if crashes[rec["method"]] >= MAX_CRASHES and work.samples_of(rec["method"]):
                yield "failed", {**failure(rec["method"], None, phase, f"skipped: {rec['method']} took its worker "
                                           f"down {MAX_CRASHES} times", sample_ids=work.samples_of(rec["method"])),
                                 "where": where}
                work.drop(None, rec["method"])
        if phase == LOAD:
            return


def _blame(work: Work, phase: int, sample_id: str | None, method: str | None, error: str,
           tb: str | None) -> list[dict[str, Any]]:
    """failed.jsonl records for what a dead worker had in flight: one (method, sample); a
    method's every sample (it died building or warming up that method); a sample's every
    method (between methods); or everything left (it died loading the model)."""
    if sample_id is not None and method is not None:
        return [failure(method, sample_id, phase, error, tb)] if method in work.methods_of(sample_id) else []
    if sample_id is not None:
        return [failure(m, sample_id, phase, error, tb) for m in work.methods_of(sample_id)]
    methods = [method] if method is not None else work.pending_methods()
    return [failure(m, None, phase, error, tb, sample_ids=work.samples_of(m)) for m in methods]


def _where_text(data: dict[str, Any]) -> str:
    where = f"{data.get('host')}:{data.get('device')}"
    if data.get("device_name"):
        where += f" ({data['device_name']})"
    return where
