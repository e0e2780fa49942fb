"""Run untrusted generated Python (MBPP solutions plus their ``assert`` tests) safely.

``run_program(source)`` executes ``source`` in a fresh interpreter and reports whether it exited
with status 0 inside the limits; ``run_many`` does the same for a list of programs, a few at a
time. The code is treated as hostile. Protection comes in layers, so that losing one (say, no
namespaces in some container) still leaves the others:

1. **A separate process.** ``sys.executable -I -B`` (isolated mode: no ``PYTHON*`` variables, no
   user site, no cwd on ``sys.path``). The environment holds only PATH, LANG/LC_ALL and
   HOME=TMPDIR=<sandbox dir>, so no tokens or keys from the caller get through. stdin is
   /dev/null. The working directory is a new empty directory (``tempfile.mkdtemp``) that is deleted
   afterwards. The process gets its own session (``start_new_session``). stdout and stderr are
   read all the way to EOF, but only the first and last few KB of each are kept.
2. **Resource limits** (``setrlimit`` in the ``preexec_fn``): CPU seconds, address space,
   processes, file size, open files, and no core dumps. The parent enforces the wall clock.
3. **Another user.** When the parent is root (tests and CI run as root, and root ignores
   RLIMIT_NPROC and file permissions), the child switches to an unprivileged uid/gid before
   ``exec``: ``setgroups([])``, ``setresgid``, ``setresuid``, then ``PR_SET_NO_NEW_PRIVS``. Each
   concurrent run takes its own uid from a reserved pool (``SANDBOX_UID_BASE`` ...), leased with
   ``flock`` so that threads and separate processes never share one. So RLIMIT_NPROC applies to
   one run only, runs cannot signal each other, and leftovers can be found by uid and killed.
   Without root, the current user is kept.
4. **Namespaces** (Linux; created with ``unshare`` through ctypes before privileges are dropped).
   As root: a new network namespace (only a loopback interface, and it is down, so nothing can be
   reached, not even 127.0.0.1), a PID namespace, an IPC namespace and a mount namespace. Without
   root: ``CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC`` where the kernel allows
   unprivileged user namespaces. Each is best-effort: if the kernel refuses one, the other layers
   still apply.

   * The PID namespace does the cleanup. The process we start is a small *relay*; it forks an
     *init* (PID 1 of the new namespace, in its own session), and init forks the user program.
     Init reaps every orphan. When the program exits, init exits too, and the kernel then kills
     every process left in the namespace, even ones that called ``setsid()`` or double-forked.
     This matters because PID 1 of the host may not reap zombies, and zombies would keep using
     up the uid's RLIMIT_NPROC. The relay passes the program's exit status on, dying of the same
     signal if the program was killed. On timeout the parent sends SIGTERM to the relay, which
     SIGKILLs init. The relay dies with the parent (PR_SET_PDEATHSIG), and init with the relay.
   * In the mount namespace (root only; ``/`` is made recursively private first, so nothing
     propagates back to the host), fresh size-limited tmpfs filesystems are mounted over the
     world-writable directories (/tmp, /var/tmp, /dev/shm, /run/lock). The sandbox directory is
     bind-mounted back at its own path. So even native code running as the sandbox uid cannot
     leave files in the host's /tmp. Directories that the sandbox uid could not enter
     (e.g. ``/root`` when the interpreter lives in ``/root/.pyenv``) are covered with an empty
     tmpfs as well, and the interpreter's own directories are bind-mounted back read-only.
     That hides the rest of ``/root`` and still lets the dropped-privilege child run Python.
5. **An audit hook** (``sys.addaudithook``), installed by a small bootstrap before the user code,
   which is written to ``<sandbox>/solution.py`` and run by ``compile`` + ``exec`` so that
   tracebacks name it. The hook raises ``PermissionError`` on:

   * any ``socket.*`` event (creating, connecting, binding, sending, name lookups);
   * starting programs: ``subprocess.Popen``, ``os.system``, ``os.exec*``, ``os.posix_spawn``,
     ``os.spawn*``, ``os.forkpty``, ``pty.spawn``. Plain ``os.fork`` *is* allowed (so are
     ``multiprocessing`` pools that use fork). It is bounded by RLIMIT_NPROC (``max_procs``
     counts the relay and init too), and everything forked dies with the PID namespace;
   * opening for writing, creating, deleting, renaming, linking, chmod/chown/utime/truncate, or
     ``shutil.rmtree`` of any path that resolves (symlinks followed) outside the sandbox
     directory (``/dev/null`` and the standard streams are fine);
   * ``os.kill``/``os.killpg`` of anything outside its own process group, of its supervisor,
     and ``kill(-1)``.

   Each blocked attempt writes ``accbench-sandbox: blocked ...`` to stderr. A run that tried
   anything blocked counts as ``failed``, even if it caught the exception and exited 0.

Status: ``passed`` (exit status 0, nothing blocked), ``failed`` (nonzero exit, e.g. an
AssertionError, a signal, or a blocked attempt), ``timeout`` (wall clock, or the CPU limit's
SIGXCPU), ``memory`` (MemoryError or a similar allocation failure under RLIMIT_AS), ``error``
(the sandbox itself could not run the program). Note: ``sys.exit(0)`` before the asserts ran
counts as ``passed``. That is how MBPP-style graders behave (they only look at the exit status),
so a caller that cares must put its asserts before any possible exit.

What is *not* enforced (and why):

* The audit hook is not a security boundary (PEP 578 says so). ctypes, native extensions, or
  poking at the hook's closure can bypass it, and ``dir_fd=`` relative ``os.open`` is not seen.
  ctypes cannot simply be blocked, because ``import numpy`` needs it. The OS layers (uid,
  namespaces, rlimits) are what really holds, and the hook adds clearer errors and covers
  non-root runs.
* Reading files is not restricted beyond Unix permissions (plus the hidden directories above).
  The child can read world-readable files and print them into its own captured output.
* Without root, there is no privilege drop and no mount namespace. Writes are then limited only
  by the hook, the user's own permissions and RLIMIT_FSIZE. If the kernel also refuses
  unprivileged user namespaces, there is no network or PID namespace either: cleanup is then
  ``killpg`` of the session (a process that calls ``setsid()`` can escape it), and RLIMIT_NPROC
  is set to (the user's current process count + ``max_procs``).
* Running as root without namespaces (e.g. a seccomp profile that forbids ``unshare``): cleanup
  is ``killpg`` plus killing every process of the leased uid, and orphans may stay as zombies if
  the host's PID 1 does not reap them. If the interpreter is then also unreachable for the
  sandbox uid, every run reports ``error`` with an explanation.
* Memory is limited per process (RLIMIT_AS), so a process that forks ``max_procs`` times can use
  up to ``max_procs * memory_mb``. There is no cgroup limit.
* Non-Linux: no namespaces, no privilege drop, and rlimits only where ``resource`` supports them
  (macOS ignores RLIMIT_AS). Only the separate process, the wall clock, the scrubbed environment
  and the audit hook remain. On Windows there is no ``resource`` module and no process-group
  kill. Benchmarks that run generated code should be run on Linux.

The ``preexec_fn`` is documented as unsafe with threads. Ours only makes system calls through
objects created beforehand (no imports, no locks), which is how ``run_many``'s threads can use it.
"""

from __future__ import annotations

import functools
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

try:  # POSIX only
    import fcntl
    import resource
except ImportError:  # pragma: no cover - Windows: no rlimits, see the module docstring
    fcntl = None  # type: ignore[assignment]
    resource = None  # type: ignore[assignment]

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "run_program",
    "run_many",
    "SANDBOX_UID_BASE",
    "SANDBOX_UID_COUNT",
]

_LINUX = sys.platform.startswith("linux")

# uids used for sandboxed children when the parent is root. 65100..65131 sits in the range that
# Debian reserves (65000-65533) and that no distribution hands out; any uid in it that *does*
# have a passwd entry is skipped. Override with ACCBENCH_SANDBOX_UID_BASE / _COUNT.
SANDBOX_UID_BASE = int(os.environ.get("ACCBENCH_SANDBOX_UID_BASE", "65100"))
SANDBOX_UID_COUNT = int(os.environ.get("ACCBENCH_SANDBOX_UID_COUNT", "32"))

_HEAD_BYTES = 8 * 1024  # per stream: the first 8 KB ...
_TAIL_BYTES = 4 * 1024  # ... and the last 4 KB (tracebacks are at the end) are kept
_BLOCK_MARKER = b"accbench-sandbox: blocked "
_INTERNAL_MARKER = b"accbench-sandbox: internal error"
_INTERNAL_RC = 125
_MEMORY_NEEDLES = (b"MemoryError", b"std::bad_alloc", b"Cannot allocate memory")
_SOLUTION = "solution.py"
_KILL_GRACE_S = 1.0  # how long the relay gets to tear the namespace down after SIGTERM

# Linux constants (linux/sched.h, linux/mount.h, linux/prctl.h)
_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38


@dataclass
class SandboxResult:
    passed: bool  # exit status 0 within limits (and nothing blocked)
    status: str  # "passed" | "failed" | "timeout" | "memory" | "error"
    returncode: int | None  # negative: killed by that signal; None: never started
    stdout: str  # first and last few KB
    stderr: str  # first and last few KB
    duration_s: float


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024  # address-space limit (RLIMIT_AS), per process
    max_procs: int = 16  # RLIMIT_NPROC (per leased uid when root; includes relay and init)
    max_file_mb: int = 16  # RLIMIT_FSIZE, also the size of the scratch tmpfs mounts
    max_open_files: int = 64  # RLIMIT_NOFILE


# --------------------------------------------------------------------------------------------
# The bootstrap, run by the child interpreter as `python -I -B -c BOOTSTRAP <dir> <file>`.
# Roles: relay (the process we start) -> init (PID 1 of the new PID namespace) -> user program.
# Without a new PID namespace the relay forks the user program directly.
# --------------------------------------------------------------------------------------------
_BOOTSTRAP = r'''
import os, sys, signal

_MARK = "accbench-sandbox: blocked "


def _die_internal(what):
    try:
        os.write(2, ("accbench-sandbox: internal error: %s\n" % (what,)).encode("utf-8", "replace"))
    finally:
        os._exit(125)


def _exit_like(code):
    """Exit the way the user program did: same code, or the same fatal signal."""
    if code >= 0:
        os._exit(code & 0xFF)
    sig = -code
    try:
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    except (OSError, ValueError):
        pass
    os._exit(128 + sig)


def _relay():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if os.getpid() == 1:  # we are the first process of a new PID namespace
            os.write(w, b"I")
            return "init", w
        os.close(w)
        return "user", None
    os.close(w)

    def _kill_child(signum, frame):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, _kill_child)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    report = b""
    while True:
        chunk = os.read(r, 64)
        if not chunk:
            break
        report += chunk
    if report.startswith(b"I"):  # init's report of the program's status
        # no status: init was killed (timeout), and the program with it
        code = int(report[2:]) if report.startswith(b"IE") else -signal.SIGKILL
    _exit_like(code)


def _init(w):
    os.setsid()  # out of the relay's process group: the program cannot signal the relay
    try:  # die with the relay; the kernel then kills everything in the namespace
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except Exception:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        os.close(w)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return
    status = None
    while True:  # reap every orphan until the program itself exits
        try:
            pid, st = os.wait()
        except ChildProcessError:
            break
        if pid == child:
            status = st
            break
    code = os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
    os.write(w, b"E%d" % code)
    os._exit(0)  # the kernel now kills whatever is left in the namespace


def _install_guard(root):
    import posixpath, _thread

    realpath, dirname, basename, join = posixpath.realpath, posixpath.dirname, posixpath.basename, posixpath.join
    fspath, fsdecode, readlink, write = os.fspath, os.fsdecode, os.readlink, os.write
    getpid, getpgid, getppid, getcwd = os.getpid, os.getpgid, os.getppid, os.getcwd
    get_ident = _thread.get_ident
    _isinstance, _int, _str = isinstance, int, str
    wflags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    prefix = root + "/"
    dev_ok = frozenset(("/dev/null", "/dev/zero", "/dev/stdout", "/dev/stderr", "/dev/fd/1",
                        "/dev/fd/2", "/proc/self/fd/1", "/proc/self/fd/2"))
    protected = frozenset((getppid(), 1))  # init / relay
    busy = set()
    state = {"violated": False}

    class SandboxViolation(PermissionError):
        pass

    SandboxViolation.__qualname__ = "SandboxViolation"

    def deny(what):
        state["violated"] = True
        try:
            write(2, (_MARK + what + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
        raise SandboxViolation(13, "accbench sandbox: %s is not allowed" % what)

    def fd_target(fd):
        try:
            return readlink("/proc/self/fd/%d" % fd)
        except (OSError, ValueError):
            return None

    def resolve(p, dir_fd=None, follow=True):
        """Absolute real path, or None when p is not a filesystem path we care about."""
        if p is None:
            return None
        if _isinstance(p, _int):
            t = fd_target(p)
            return t if t and t.startswith("/") else None
        p = fsdecode(fspath(p))
        if p in dev_ok:
            return None
        if not p.startswith("/"):
            if _isinstance(dir_fd, _int) and dir_fd >= 0:  # the audit events pass -1 for "none"
                base = fd_target(dir_fd)
                if not base or not base.startswith("/"):
                    return "\0unknown"
                p = join(base, p)
            else:
                p = join(getcwd(), p)
        name = basename(p.rstrip("/"))
        if follow or name in ("", ".", ".."):
            return realpath(p)
        return join(realpath(dirname(p.rstrip("/"))), name)

    def check(what, p, dir_fd=None, follow=True):
        try:
            rp = resolve(p, dir_fd, follow)
        except Exception:
            rp = "\0unresolvable"
        if rp is None or rp == root or rp.startswith(prefix):
            return
        deny("%s(%r)" % (what, p))

    def kill_ok(pid):
        if pid == 0 or pid == getpid():
            return True
        if pid == -1 or pid in protected:
            return False
        try:
            mine = getpgid(0)
        except OSError:
            return False
        if pid < 0:
            return -pid == mine
        try:
            return getpgid(pid) == mine
        except OSError:
            return True  # no such process: kill() fails by itself

    def ev_open(a):
        path, mode, flags = a
        if (_isinstance(flags, _int) and flags & wflags) or (
            _isinstance(mode, _str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)
        ):
            check("open for writing", path)

    def nofollow(idx, dfd=None):
        def h(a, name):
            check(name, a[idx], a[dfd] if dfd is not None and len(a) > dfd else None, follow=False)
        return h

    def follow(idx, dfd=None):
        def h(a, name):
            check(name, a[idx], a[dfd] if dfd is not None and len(a) > dfd else None, follow=True)
        return h

    def two(a, name):  # os.rename / os.replace / os.link (src, dst, src_dir_fd, dst_dir_fd)
        check(name, a[0], a[2] if len(a) > 2 else None, follow=(name == "os.link"))
        check(name, a[1], a[3] if len(a) > 3 else None, follow=False)

    def blocked(a, name):
        deny(name)

    def ev_kill(a, name):
        if not kill_ok(a[0]):
            deny("%s(%r)" % (name, a[0]))

    def ev_killpg(a, name):
        try:
            ok = a[0] == getpgid(0)
        except OSError:
            ok = False
        if not ok:
            deny("%s(%r)" % (name, a[0]))

    table = {
        "os.remove": nofollow(0, 1),
        "os.rmdir": nofollow(0, 1),
        "os.mkdir": nofollow(0, 2),
        "os.rename": two,
        "os.link": two,
        "os.symlink": nofollow(1, 2),
        "os.chmod": follow(0, 2),
        "os.chown": follow(0, 3),
        "os.utime": follow(0, 3),
        "os.truncate": follow(0),
        "os.setxattr": follow(0),
        "os.removexattr": follow(0),
        "os.chflags": follow(0),
        "os.lchflags": follow(0),
        "shutil.rmtree": follow(0, 1),
        "shutil.chown": follow(0),
        "subprocess.Popen": blocked,
        "os.system": blocked,
        "os.exec": blocked,
        "os.posix_spawn": blocked,
        "os.spawn": blocked,
        "os.forkpty": blocked,
        "os.startfile": blocked,
        "pty.spawn": blocked,
        "os.kill": ev_kill,
        "os.killpg": ev_killpg,
    }
    tget = table.get

    def hook(event, args):
        tid = get_ident()
        if tid in busy:
            return
        if event == "open":
            busy.add(tid)
            try:
                ev_open(args)
            finally:
                busy.discard(tid)
            return
        h = tget(event)
        if h is None:
            if event.startswith("socket."):
                deny(event)
            return
        busy.add(tid)
        try:
            h(args, event)
        finally:
            busy.discard(tid)

    sys.addaudithook(hook)
    return lambda: state["violated"]


def _user(root, fname):
    import builtins, types

    path = os.path.join(root, fname)
    with open(path, "rb") as f:
        src = f.read()
    violated = _install_guard(root)
    mod = types.ModuleType("__main__")
    mod.__file__ = path
    mod.__builtins__ = builtins
    sys.modules["__main__"] = mod
    sys.argv = [path]
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except Exception:
        pass
    return path, src, mod, violated


try:
    _root, _fname = sys.argv[1], sys.argv[2]
    _role, _w = _relay()
    if _role == "init":
        _init(_w)
    _path, _src, _mod, _violated = _user(_root, _fname)
except SystemExit:
    raise
except BaseException as _e:
    _die_internal(repr(_e))
del _root, _fname, _role, _w, _relay, _init, _user, _die_internal, _exit_like

try:
    exec(compile(_src, _path, "exec"), _mod.__dict__)
except SystemExit as _e:
    if _violated() and _e.code in (None, 0):
        raise SystemExit(1)
    raise
except BaseException as _e:
    import traceback
    try:  # hide the bootstrap's and the audit hook's own frames
        _te = traceback.TracebackException(type(_e), _e, _e.__traceback__)
        _te.stack = traceback.StackSummary.from_list([_f for _f in _te.stack if _f.filename != "<string>"])
        sys.stderr.write("".join(_te.format()))
    except Exception:
        traceback.print_exception(type(_e), _e, _e.__traceback__)
    raise SystemExit(1)
if _violated():
    raise SystemExit(1)
'''


# --------------------------------------------------------------------------------------------
# Output capture
# --------------------------------------------------------------------------------------------
class _Capture:
    """Keeps the head and tail of a stream and remembers whether some needles ever appeared."""

    def __init__(self, needles: tuple[bytes, ...] = ()) -> None:
        self.head = bytearray()
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
        room = _HEAD_BYTES - len(self.head)
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
# Linux plumbing: libc, uid leases, mount plan
# --------------------------------------------------------------------------------------------
class _Libc:
    """ctypes handles to unshare/mount/prctl, created in the parent (never inside preexec)."""

    def __init__(self) -> None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        self.get_errno = ctypes.get_errno
        self.unshare = lib.unshare
        self.unshare.argtypes = [ctypes.c_int]
        self.unshare.restype = ctypes.c_int
        self.mount = lib.mount
        self.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        self.mount.restype = ctypes.c_int
        self.prctl = lib.prctl
        self.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        self.prctl.restype = ctypes.c_int


_libc_lock = threading.Lock()
_libc_obj: _Libc | None = None
_libc_failed = False


def _libc() -> _Libc | None:
    global _libc_obj, _libc_failed
    if not _LINUX:
        return None
    with _libc_lock:
        if _libc_obj is None and not _libc_failed:
            try:
                _libc_obj = _Libc()
            except (OSError, AttributeError, ImportError):
                _libc_failed = True
        return _libc_obj


class _UidLease:
    """An exclusive claim on one sandbox uid: flock on a per-uid file in a root-only directory."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self.fd = fd

    def release(self) -> None:
        try:
            os.close(self.fd)  # closing drops the flock
        except OSError:
            pass


def _lock_dir() -> str:
    d = os.path.join(tempfile.gettempdir(), "accbench-sandbox-uids")
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise RuntimeError(f"sandbox lock directory {d} is not a private directory owned by us")
    return d


def _uid_is_free(uid: int) -> bool:
    try:
        import pwd

        pwd.getpwuid(uid)
        return False  # a real account: never borrow (or kill) it
    except (KeyError, ImportError):
        return True


def _lease_uid(timeout_s: float = 120.0) -> _UidLease:
    base, count = SANDBOX_UID_BASE, SANDBOX_UID_COUNT
    d = _lock_dir()
    deadline = time.monotonic() + timeout_s
    start = int.from_bytes(os.urandom(2), "little") % max(count, 1)
    while True:
        for i in range(count):
            uid = base + (start + i) % count
            if not _uid_is_free(uid):
                continue
            fd = os.open(
                os.path.join(d, str(uid)), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            return _UidLease(uid, fd)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free sandbox uid in {base}..{base + count - 1}")
        time.sleep(0.05)


def _procs_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real, effective, saved or fs uid is ``uid``."""
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                text = f.read()
        except OSError:
            continue
        state = uids = None
        for line in text.split(b"\n"):
            if line.startswith(b"State:"):
                state = line.split()[1:2]
            elif line.startswith(b"Uid:"):
                uids = line.split()[1:]
                break
        if uids and str(uid).encode() in uids and state != [b"Z"]:
            found.append(int(name))
    return found


def _sweep_uid(uid: int) -> None:
    """SIGKILL every process of the leased uid (only needed when the PID namespace is missing)."""
    for _ in range(50):
        pids = _procs_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _can_traverse(st: os.stat_result, uid: int, gid: int) -> bool:
    """Would ``uid``/``gid`` (no supplementary groups) have search permission on this directory?"""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


_plan_cache: dict[tuple[int, int], list[tuple[str, list[str]]]] = {}


def _blocking_ancestor(path: str, uid: int, gid: int) -> str | None:
    """The topmost proper ancestor of ``path`` that ``uid`` cannot enter, if any."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        anc = "/" + "/".join(parts[:i])
        try:
            st = os.stat(anc)
        except OSError:
            return None
        if not _can_traverse(st, uid, gid):
            return anc
    return None


@functools.lru_cache(maxsize=1)
def _interpreter_dirs() -> tuple[str, ...]:
    """The interpreter's own directories (executable, prefixes, stdlib, site-packages),
    resolved, outermost only."""
    import sysconfig

    cands = {os.path.dirname(os.path.realpath(sys.executable))}
    for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        cands.add(p)
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            cands.add(sysconfig.get_paths()[name])
        except KeyError:
            pass
    real = sorted({os.path.realpath(p) for p in cands if p and os.path.isdir(p)})
    return tuple(p for p in real if not any(q != p and _is_under(p, q) for q in real))


def _interpreter_hides(uid: int, gid: int) -> list[tuple[str, list[str]]]:
    """[(dir the uid cannot enter, [interpreter dirs below it to bind back read-only])]."""
    key = (uid, gid)
    if key in _plan_cache:
        return _plan_cache[key]
    hides: dict[str, list[str]] = {}
    for p in _interpreter_dirs():
        anc = _blocking_ancestor(p, uid, gid)
        if anc is not None:
            hides.setdefault(anc, []).append(p)
    plan = sorted(hides.items())
    _plan_cache[key] = plan
    return plan


def _scratch_dirs() -> list[str]:
    out = []
    for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock", tempfile.gettempdir()):
        try:
            rd = os.path.realpath(d)
            st = os.stat(rd)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o002 and rd not in out:
            out.append(rd)
    return out


def _mount_plan(
    uid: int, gid: int, work: str, limits: SandboxLimits
) -> list[tuple[bytes, bytes, list[tuple[str, bool]]]]:
    """[(mountpoint, tmpfs options, [(path to bind back, read_only)])], shallow mounts first."""
    hidden: dict[str, list[tuple[str, bool]]] = {
        anc: [(p, True) for p in paths] for anc, paths in _interpreter_hides(uid, gid)
    }
    anc = _blocking_ancestor(work, uid, gid)  # e.g. TMPDIR somewhere below /root
    if anc is not None:
        hidden.setdefault(anc, []).append((work, False))
    hides = sorted(hidden.items())
    plan: list[tuple[str, bytes, list[tuple[str, bool]]]] = []
    for anc, exposes in hides:
        plan.append((anc, b"mode=0755,size=64k,nr_inodes=256", exposes))
    for d in _scratch_dirs():
        if any(_is_under(d, anc) for anc, _ in hides):
            continue
        opts = f"mode=1777,size={max(1, limits.max_file_mb)}m,nr_inodes=1024".encode()
        exposes = [(work, False)] if _is_under(work, d) else []
        # an interpreter (a virtualenv, say) living under /tmp stays reachable, read-only
        exposes += [(p, True) for p in _interpreter_dirs() if _is_under(p, d)]
        plan.append((d, opts, exposes))
    plan.sort(key=lambda t: t[0].count("/"))
    return [(mp.encode(), opts, exp) for mp, opts, exp in plan]


def _count_own_processes() -> int:
    try:
        return sum(1 for _ in _procs_of_uid(os.getuid()))
    except Exception:
        return 0


# --------------------------------------------------------------------------------------------
# preexec_fn: runs in the child between fork and exec
# --------------------------------------------------------------------------------------------
def _make_preexec(limits: SandboxLimits, uid: int | None, work: str, plan, report_fd: int, nproc_base: int):
    libc = _libc()
    as_bytes = max(64, limits.memory_mb) * 1024 * 1024
    fsize = max(1, limits.max_file_mb) * 1024 * 1024
    cpu = max(1, int(limits.cpu_s))
    nproc = max(3, limits.max_procs)  # relay + init + the program itself
    nofile = max(16, limits.max_open_files)
    as_root = uid is not None
    work_b = work.encode()
    proc_fd_fmt = "/proc/self/fd/%d"

    def fail(msg: str) -> None:
        raise OSError(msg)

    def unshare_any(combos) -> int:
        got = 0
        for flags in combos:
            if flags & ~got == 0:
                continue
            if libc.unshare(flags & ~got) == 0:
                got |= flags
        return got

    def mounts() -> None:
        if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            fail(f"mount --make-rprivate / failed: errno {libc.get_errno()}")
        fds = {}
        for _mp, _opts, exposes in plan:
            for path, _ro in exposes:
                fds[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
        for mp, opts, exposes in plan:
            if libc.mount(b"tmpfs", mp, b"tmpfs", _MS_NOSUID | _MS_NODEV, opts) != 0:
                fail(f"tmpfs on {mp!r} failed: errno {libc.get_errno()}")
            for path, ro in exposes:
                os.makedirs(path, 0o755, exist_ok=True)
                src = (proc_fd_fmt % fds[path]).encode()
                if libc.mount(src, path.encode(), None, _MS_BIND | _MS_REC, None) != 0:
                    fail(f"bind mount of {path} failed: errno {libc.get_errno()}")
                if ro:  # best effort: the permissions already forbid writing
                    libc.mount(
                        None,
                        path.encode(),
                        None,
                        _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV,
                        None,
                    )
        for fd in fds.values():
            os.close(fd)
        os.chdir(work_b)

    def preexec() -> None:
        try:
            newns = 0
            if libc is not None:
                if as_root:
                    newns = unshare_any(
                        (
                            _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC,
                            _CLONE_NEWNS,
                            _CLONE_NEWNET,
                            _CLONE_NEWPID,
                            _CLONE_NEWIPC,
                        )
                    )
                    if newns & _CLONE_NEWNS:
                        mounts()
                    elif any(ro for _mp, _o, ex in plan for _p, ro in ex):
                        fail(
                            "the interpreter is not reachable by the sandbox uid and no mount namespace is available"
                        )
                else:
                    newns = unshare_any(
                        (
                            _CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC,
                            _CLONE_NEWUSER | _CLONE_NEWNET,
                        )
                    )
            if resource is not None:
                for res, val in (
                    ("RLIMIT_CORE", (0, 0)),
                    ("RLIMIT_CPU", (cpu, cpu + 1)),
                    ("RLIMIT_AS", (as_bytes, as_bytes)),
                    ("RLIMIT_FSIZE", (fsize, fsize)),
                    ("RLIMIT_NOFILE", (nofile, nofile)),
                    (
                        "RLIMIT_NPROC",
                        (nproc, nproc) if as_root or newns & _CLONE_NEWUSER else (nproc + nproc_base,) * 2,
                    ),
                ):
                    r = getattr(resource, res, None)
                    if r is None:
                        continue
                    try:
                        resource.setrlimit(r, val)
                    except (ValueError, OSError):
                        if res in ("RLIMIT_AS", "RLIMIT_NPROC") and _LINUX:
                            raise
            if as_root:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                if os.getuid() != uid or os.geteuid() != uid:
                    fail("privilege drop did not take effect")
            if libc is not None:
                libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
                libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # after setuid, which clears it
        except BaseException as e:  # report, then let subprocess raise
            try:
                os.write(report_fd, f"sandbox setup failed: {e!r}".encode("utf-8", "replace"))
            except OSError:
                pass
            raise

    return preexec


# --------------------------------------------------------------------------------------------
# Running one program
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
    if _LINUX and fcntl is not None:
        try:
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _error(msg: str, start: float) -> SandboxResult:
    return SandboxResult(False, "error", None, "", msg[-_HEAD_BYTES:], time.monotonic() - start)


def run_program(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``source`` in a fresh, locked-down interpreter; see the module docstring."""
    start = time.monotonic()
    if os.name != "posix":  # selectors cannot poll pipes on Windows, and there is no setrlimit
        return _error("the sandbox needs a POSIX system (Linux for full isolation)", start)
    as_root = _LINUX and os.geteuid() == 0
    lease: _UidLease | None = None
    base = None
    try:
        if as_root:
            lease = _lease_uid()
            _sweep_uid(lease.uid)  # leftovers of a crashed earlier harness, if any
        base = tempfile.mkdtemp(prefix="accbench-sbx-")
        work = os.path.join(os.path.realpath(base), "work")
        os.mkdir(work, 0o700)
        with open(os.path.join(work, _SOLUTION), "w", encoding="utf-8") as f:
            f.write(source)
        if lease is not None:
            os.chmod(base, 0o711)  # the sandbox uid may pass through, not list or write
            os.chown(work, lease.uid, lease.uid)
            os.chown(os.path.join(work, _SOLUTION), lease.uid, lease.uid)
        return _run_in(work, limits, lease, start)
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


def _run_in(work: str, limits: SandboxLimits, lease: _UidLease | None, start: float) -> SandboxResult:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": work,
        "TMPDIR": work,
    }
    argv = [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, work, _SOLUTION]
    uid = lease.uid if lease is not None else None
    rfd, wfd = os.pipe()  # preexec reports setup failures through this
    plan = _mount_plan(uid, uid, work, limits) if uid is not None else []
    nproc_base = 0 if uid is not None else _count_own_processes()
    preexec = _make_preexec(limits, uid, work, plan, wfd, nproc_base)
    try:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=work,
                env=env,
                close_fds=True,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as e:
            os.close(wfd)
            wfd = -1
            os.set_blocking(rfd, False)
            try:
                detail = os.read(rfd, 4096)
            except OSError:
                detail = b""
            return _error(
                f"could not start the sandbox: {e!r} {detail.decode('utf-8', 'replace')}".strip(), start
            )
    finally:
        if wfd >= 0:
            os.close(wfd)
        os.close(rfd)

    for f in (proc.stdout, proc.stderr):
        _grow_pipe(f.fileno())
    out, err = _Capture(), _Capture((_BLOCK_MARKER, _INTERNAL_MARKER) + _MEMORY_NEEDLES)
    timed_out = False
    deadline = start + limits.wall_s
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
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
            _sweep_uid(lease.uid)
        returncode = proc.wait()
        # collect what is still buffered in the pipes (everything that wrote them is gone now)
        drain_until = time.monotonic() + 0.5
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
        for f in (proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        if proc.poll() is None:  # only if something above raised
            _killpg(proc.pid)
            proc.wait()
    duration = time.monotonic() - start
    status = _classify(returncode, timed_out, err)
    return SandboxResult(
        passed=status == "passed",
        status=status,
        returncode=returncode,
        stdout=out.text(),
        stderr=err.text(),
        duration_s=duration,
    )


def _classify(returncode: int, timed_out: bool, err: _Capture) -> str:
    if timed_out:
        return "timeout"
    if returncode == -getattr(signal, "SIGXCPU", 24):
        return "timeout"  # RLIMIT_CPU
    if returncode == _INTERNAL_RC and _INTERNAL_MARKER in err.seen:
        return "error"
    if returncode != 0 and any(n in err.seen for n in _MEMORY_NEEDLES):
        return "memory"
    if returncode == 0 and _BLOCK_MARKER not in err.seen:
        return "passed"
    return "failed"


def run_many(
    sources: list[str], limits: SandboxLimits = SandboxLimits(), workers: int = 2
) -> list[SandboxResult]:
    """Run every program, at most ``workers`` at a time; results are in the order of ``sources``."""
    if not sources:
        return []
    workers = max(1, min(int(workers), len(sources)))
    if workers == 1:
        return [run_program(s, limits) for s in sources]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="accbench-sandbox") as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))
