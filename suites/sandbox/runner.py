"""Running one program: start the child, feed it its source and nonce, read its output and its
verdict, classify, clean up. Also: the registry of live runs (for signal cleanup) and the sweep
of directories that dead harnesses left behind."""

from __future__ import annotations

import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from accbench.suites.sandbox import linux

_HEAD_BYTES = 8 * 1024  # per stream: the first 8 KB ...
_TAIL_BYTES = 4 * 1024  # ... and the last 4 KB (tracebacks are at the end) are kept
_BLOCK_MARKER = b"accbench-sandbox: blocked "
_INTERNAL_MARKER = b"accbench-sandbox: internal error"
_INTERNAL_RC = 125
_MEMORY_NEEDLES = (b"MemoryError", b"std::bad_alloc", b"Cannot allocate memory")
_SOLUTION = "solution.py"
_KILL_GRACE_S = 1.0  # how long the relay gets to tear the namespace down after SIGTERM
_DIR_PREFIX = "accbench-sbx-"
_CHILD = (Path(__file__).with_name("child.py")).read_text(encoding="utf-8")


@dataclass
class SandboxResult:
    passed: bool  # the harness's verdict arrived, exit status 0, nothing blocked
    status: str  # "passed" | "failed" | "timeout" | "memory" | "error"
    returncode: int | None  # negative: killed by that signal; None: never started
    stdout: str  # first and last few KB
    stderr: str  # first and last few KB
    duration_s: float
    layers: tuple[str, ...] = ()  # the OS layers that were in place (see linux.make_preexec)
    verdict: bool = False  # the nonce came back


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024  # address-space limit (RLIMIT_AS), per process
    max_procs: int = 16  # RLIMIT_NPROC (per leased uid when root; includes relay and init)
    max_file_mb: int = 16  # RLIMIT_FSIZE
    max_open_files: int = 64  # RLIMIT_NOFILE
    disk_mb: int = 64  # the program's own directory (a tmpfs): all it may write, in total


# --------------------------------------------------------------------------------------------
# live runs and leftovers
# --------------------------------------------------------------------------------------------
_live_lock = threading.Lock()
_live: dict[int, tuple[str, int | None]] = {}  # relay pid -> (its directory, leased uid)
_swept = False


def terminate_all() -> None:
    """Kill every sandboxed program this process is running and remove its directory (for a
    SIGTERM / SIGINT handler; safe to call while ``run_many`` threads are running)."""
    with _live_lock:
        live = list(_live.items())
    for pid, (base, uid) in live:
        _killpg(pid)
        if uid is not None:
            linux.sweep_uid(uid)
        _rmtree(base)


def cleanup_on_signals() -> None:
    """In a worker's main thread: SIGTERM (and SIGHUP) end the sandboxed children, remove their
    directories, then exit with 128 + the signal. SIGINT does the same through
    KeyboardInterrupt (``run_program``'s ``finally``)."""

    def handler(signum, frame):
        terminate_all()
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def sweep_stale(tmp: str | None = None) -> list[str]:
    """Remove ``accbench-sbx-<pid>-*`` directories whose owning process is gone."""
    tmp = tmp or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(tmp)
    except OSError:
        return removed
    for name in names:
        m = re.fullmatch(re.escape(_DIR_PREFIX) + r"(\d+)-\w+", name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # still alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        path = os.path.join(tmp, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid != os.geteuid() or not os.path.isdir(path) or os.path.islink(path):
            continue
        _rmtree(path)
        removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------
# output capture
# --------------------------------------------------------------------------------------------
class _Capture:
    """Keeps the head and tail of a stream and remembers whether some needles ever appeared."""

    def __init__(self, needles: tuple[bytes, ...] = (), keep: int = _HEAD_BYTES) -> None:
        self.head = bytearray()
        self.keep = keep
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.total = 0
        self.needles = needles
        self.seen: set[bytes] = set()
        self._carry = b""
        self._overlap = max((len(n) for n in needles), default=1) - 1

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if self.needles:
            window = self._carry + data
            for n in self.needles:
                if n not in self.seen and n in window:
                    self.seen.add(n)
            self._carry = window[-self._overlap :] if self._overlap else b""
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail.append(data)
            self.tail_len += len(data)
            while self.tail_len - len(self.tail[0]) >= _TAIL_BYTES:
                self.tail_len -= len(self.tail.popleft())

    def text(self) -> str:
        tail = b"".join(self.tail)[-_TAIL_BYTES:]
        dropped = self.total - len(self.head) - len(tail)
        out = bytes(self.head)
        if dropped > 0:
            out += f"\n... [{dropped} bytes truncated] ...\n".encode()
        out += tail
        return out.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# one program
# --------------------------------------------------------------------------------------------
def _rmtree(path: str) -> None:
    def onerror(func, p, exc_info):  # e.g. the program chmod-ed a directory to 000 (non-root)
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass

    if not os.path.lexists(path):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=onerror)
    else:
        shutil.rmtree(path, onerror=onerror)


def _exited_unreaped(pid: int) -> bool:
    """Has the child exited? Leaves it a zombie so its pid/pgid cannot be reused yet."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
    except AttributeError:  # pragma: no cover - no waitid (non-Linux)
        return False


def _grow_pipe(fd: int) -> None:
    """Ask for 1 MB pipe buffers (Linux F_SETPIPE_SZ): fewer wake-ups for chatty programs."""
    if linux.LINUX and linux.fcntl is not None:
        try:
            linux.fcntl.fcntl(fd, getattr(linux.fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _error(msg: str, start: float, layers: tuple[str, ...] = ()) -> SandboxResult:
    return SandboxResult(False, "error", None, "", msg[-_HEAD_BYTES:], time.monotonic() - start, layers)


#: False once building the private root failed in this process: later runs go without it
_private_root_ok = True


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``source`` in a fresh, locked-down interpreter; see the package docstring."""
    global _swept, _private_root_ok
    start = time.monotonic()
    if os.name != "posix":  # selectors cannot poll pipes on Windows, and there is no setrlimit
        return _error("the sandbox needs a POSIX system (Linux for full isolation)", start)
    if not _swept:
        _swept = True
        sweep_stale()
    from accbench.suites import sandbox as pkg  # the uid range may be overridden there

    as_root = linux.LINUX and os.geteuid() == 0
    lease: linux.UidLease | None = None
    base = None
    try:
        if as_root:
            lease = linux.lease_uid(pkg.SANDBOX_UID_BASE, pkg.SANDBOX_UID_COUNT)
            linux.sweep_uid(lease.uid)  # leftovers of a crashed earlier harness, if any
        base = tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-")
        base = os.path.realpath(base)
        src_path = os.path.join(base, "source")
        with open(src_path, "w", encoding="utf-8") as f:
            f.write(source)
        why = "refused earlier in this process"
        for attempt in (0, 1):
            root = os.path.join(base, f"root{attempt}") if _private_root_ok and linux.LINUX else None
            if root is not None:
                os.mkdir(root, 0o755)
            work = os.path.join(base, f"work{attempt}")  # the program's directory without a private root
            os.mkdir(work, 0o700)
            if lease is not None:
                os.chmod(base, 0o711)  # the sandbox uid may pass through, not list or write
                os.chown(work, lease.uid, lease.uid)
            if root is None and lease is not None and not linux.reachable_by_others(linux.base_interpreter()):
                return _error(f"the sandbox could not set up its private root ({why}), and without it the "
                              f"sandbox uid cannot reach the interpreter {linux.base_interpreter()} (a parent "
                              "directory is not o+x): use an interpreter outside a private home directory",
                              start)
            res = _run_in(work, root, src_path, base, limits, lease, start)
            if res.status == "error" and root is not None and "mount" in res.stderr and res.returncode is None:
                _private_root_ok = False  # this OS refuses the private root: go on without it
                why = res.stderr.strip()[-300:]
                continue
            return res
        return res
    except Exception as e:  # the sandbox itself failed
        return _error(f"sandbox error: {e!r}", start)
    finally:
        if lease is not None:
            lease.release()
        if base is not None:
            try:
                _rmtree(base)
            except OSError:
                pass


def _run_in(work: str, root: str | None, src_path: str, base: str, limits: SandboxLimits,
            lease: linux.UidLease | None, start: float) -> SandboxResult:
    inner = linux.INNER_WORK if root is not None else work
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "HOME": inner, "TMPDIR": inner}
    uid = lease.uid if lease is not None else None
    nonce = secrets.token_hex(16).encode()
    nonce_r, nonce_w = os.pipe()
    os.write(nonce_w, nonce)
    os.close(nonce_w)
    src_fd = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
    verdict_r, verdict_w = os.pipe()
    report_r, report_w = os.pipe()  # preexec reports its layers (or why it failed) through this
    argv = [linux.base_interpreter(), "-I", "-B", "-c", _CHILD,
            _SOLUTION, str(nonce_r), str(src_fd), str(verdict_w)]
    nproc_base = 0 if uid is not None else linux.count_own_processes()
    preexec = linux.make_preexec(limits, uid, root, report_w, nproc_base)
    layers: tuple[str, ...] = ()
    try:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work,
                env=env, close_fds=True, pass_fds=(nonce_r, src_fd, verdict_w), start_new_session=True,
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as e:
            os.close(report_w)
            report_w = -1
            detail = _read_report(report_r)
            return _error(f"could not start the sandbox: {e!r} {detail}".strip(), start)
        os.close(report_w)
        report_w = -1
        report = _read_report(report_r)
        if report.startswith("layers:"):
            layers = tuple(x for x in report[len("layers:"):].split(",") if x)
    finally:
        for fd in (nonce_r, src_fd, verdict_w, report_r) + ((report_w,) if report_w >= 0 else ()):
            os.close(fd)
    with _live_lock:
        _live[proc.pid] = (base, uid)
    try:
        return _supervise(proc, verdict_r, nonce, limits, lease, start, layers + ("audit-hook", "verdict-nonce"))
    finally:
        with _live_lock:
            _live.pop(proc.pid, None)


def _read_report(fd: int) -> str:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096).decode("utf-8", "replace")
    except OSError:
        return ""


def _supervise(proc, verdict_r: int, nonce: bytes, limits: SandboxLimits, lease, start: float,
               layers: tuple[str, ...]) -> SandboxResult:
    verdict_pipe = os.fdopen(verdict_r, "rb", buffering=0)
    for f in (proc.stdout, proc.stderr):
        _grow_pipe(f.fileno())
    out, err = _Capture(), _Capture((_BLOCK_MARKER, _INTERNAL_MARKER) + _MEMORY_NEEDLES)
    said = _Capture(keep=256)
    timed_out = False
    deadline = start + limits.wall_s
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    sel.register(verdict_pipe, selectors.EVENT_READ, said)
    exited_at: float | None = None
    next_check = 0.0
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = not _exited_unreaped(proc.pid)
                break
            if now >= next_check:
                next_check = now + 0.05
                if exited_at is None and _exited_unreaped(proc.pid):
                    exited_at = now
                if exited_at is not None and now - exited_at > 0.5:
                    break  # something outside the PID namespace still holds the pipes
            events = sel.select(timeout=min(deadline - now, 0.05))
            got = 0
            for key, _ in events:
                try:
                    chunk = os.read(key.fd, 1 << 20)
                except OSError:
                    chunk = b""
                if chunk:
                    key.data.feed(chunk)
                    got += len(chunk)
                else:
                    sel.unregister(key.fileobj)
                    got = 1 << 20
            if events and got < 4096:
                time.sleep(0.002)  # output trickles in: let the pipe fill rather than wake per line
        if timed_out:
            try:
                os.kill(proc.pid, signal.SIGTERM)  # the relay SIGKILLs init: the namespace dies
            except OSError:
                pass
            grace = time.monotonic() + _KILL_GRACE_S
            while not _exited_unreaped(proc.pid) and time.monotonic() < grace:
                time.sleep(0.01)
        _killpg(proc.pid)  # the relay's group; still a zombie at worst, so the id is not reused
        if lease is not None:
            linux.sweep_uid(lease.uid)
        returncode = proc.wait()
        drain_until = time.monotonic() + 0.5  # what is still buffered (every writer is gone now)
        while sel.get_map() and time.monotonic() < drain_until:
            events = sel.select(timeout=0.05)
            if not events:
                break
            for key, _ in events:
                try:
                    chunk = os.read(key.fd, 65536)
                except OSError:
                    chunk = b""
                if chunk:
                    key.data.feed(chunk)
                else:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
        for f in (proc.stdout, proc.stderr, verdict_pipe):
            try:
                f.close()
            except OSError:
                pass
        if proc.poll() is None:  # only if something above raised
            _killpg(proc.pid)
            proc.wait()
    verdict = said.total == len(nonce) and bytes(said.head) == nonce
    status = _classify(returncode, timed_out, err, verdict)
    return SandboxResult(passed=status == "passed", status=status, returncode=returncode, stdout=out.text(),
                         stderr=err.text(), duration_s=time.monotonic() - start, layers=layers, verdict=verdict)


def _classify(returncode: int, timed_out: bool, err: _Capture, verdict: bool) -> str:
    if timed_out:
        return "timeout"
    if returncode == -getattr(signal, "SIGXCPU", 24):
        return "timeout"  # RLIMIT_CPU
    if returncode == _INTERNAL_RC and _INTERNAL_MARKER in err.seen:
        return "error"
    if returncode != 0 and any(n in err.seen for n in _MEMORY_NEEDLES):
        return "memory"
    if returncode == 0 and verdict and _BLOCK_MARKER not in err.seen:
        return "passed"
    return "failed"


def run_many(sources: list[str], limits: SandboxLimits = SandboxLimits(), workers: int = 2) -> list[SandboxResult]:
    """Run every program, at most ``workers`` at a time; results are in the order of ``sources``."""
    if not sources:
        return []
    workers = max(1, min(int(workers), len(sources)))
    if workers == 1:
        return [run_program(s, limits) for s in sources]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="accbench-sandbox")
    futures = [pool.submit(run_program, s, limits) for s in sources]
    try:
        return [f.result() for f in futures]
    except BaseException:  # Ctrl-C (or a signal handler's exit) while the threads run programs
        for f in futures:
            f.cancel()
        while not all(f.done() for f in futures):  # end the running ones (and any that just started)
            terminate_all()
            wait(futures, timeout=0.2)
        raise
    finally:
        pool.shutdown(wait=True)
