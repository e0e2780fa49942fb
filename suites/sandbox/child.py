"""The sandboxed interpreter's own code: ``python -I -B -c <this file's text> ARGS``.

Never imported by the harness; runner.py reads this file and passes its text on the command
line. The working directory is the program's own; ARGS: the file name to give the program, and
three inherited file descriptors: the nonce (a pipe holding the run's secret), the source (a pipe holding the
program) and the verdict (a pipe the harness reads).

Roles: the process started is the *relay*; it forks *init* (PID 1 of the new PID namespace),
and init forks the *program*. Without a PID namespace the relay forks the program directly.
Only the program process reads the nonce. It keeps the nonce in the audit hook's closure,
nowhere else, and the hook writes it to the verdict pipe on one event only: "accbench.verdict",
raised from the very frame that ran the program, after the program returned normally and
nothing was blocked. An exception, an early exit (``os._exit``, atexit, a thread, a signal
handler) or a blocked attempt therefore leaves the verdict pipe empty, and the harness
counts the run as failed.
"""

import os
import signal
import sys

_MARK = "accbench-sandbox: blocked "


def _die_internal(what):
    try:
        os.write(2, ("accbench-sandbox: internal error: %s\n" % (what,)).encode("utf-8", "replace"))
    finally:
        os._exit(125)


def _exit_like(code):
    """Exit the way the program did: same code, or the same fatal signal."""
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


def _not_dumpable():
    """No ptrace, no /proc/PID/mem of this process by the program (same uid)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    except Exception:
        pass


def _close(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _relay(secret_fds):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if os.getpid() == 1:  # the first process of a new PID namespace
            os.write(w, b"I")
            return "init", w
        os.close(w)
        return "program", None
    os.close(w)
    _close(*secret_fds)
    _not_dumpable()

    def _kill_child(signum, frame):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, _kill_child)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    report = _read_all(r)
    if report.startswith(b"I"):  # init's report of the program's status
        code = int(report[2:]) if report.startswith(b"IE") else -signal.SIGKILL
    _exit_like(code)


def _init(w, secret_fds):
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
    _close(*secret_fds)
    _not_dumpable()
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


def _read_all(fd):
    out = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    os.close(fd)
    return out


def _install_guard(root, nonce, verdict_fd, frame):
    """The audit hook: blocks writes outside ``root``, starting programs, sockets, signals to
    others, tracing and heap walks; and on "accbench.verdict" from ``frame`` writes the nonce."""
    import _thread
    import posixpath

    realpath, dirname, basename, join = posixpath.realpath, posixpath.dirname, posixpath.basename, posixpath.join
    fspath, fsdecode, readlink, write = os.fspath, os.fsdecode, os.readlink, os.write
    getpid, getpgid, getppid, getcwd = os.getpid, os.getpgid, os.getppid, os.getcwd
    getframe = sys._getframe
    get_ident = _thread.get_ident
    _isinstance, _int, _str = isinstance, int, str
    wflags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    prefix = root + "/"
    dev_ok = frozenset(("/dev/null", "/dev/zero", "/dev/stdout", "/dev/stderr", "/dev/fd/1",
                        "/dev/fd/2", "/proc/self/fd/1", "/proc/self/fd/2"))
    protected = frozenset((getppid(), 1))  # init / relay
    busy = set()
    state = {"violated": False, "sent": False}
    me = getpid()  # a forked child reaching the end of the program does not report

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

    def verdict(a, name):
        # only the frame that ran the program may report, once, and only if nothing was blocked
        if getpid() != me:
            return
        if getframe(2) is not frame or state["sent"]:
            deny(name)
        state["sent"] = True
        if not state["violated"]:
            write(verdict_fd, nonce)

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
        # tracing can skip lines (an assert among them); heap walks could find the nonce
        "sys.settrace": blocked,
        "sys.setprofile": blocked,
        "sys._current_frames": blocked,
        "sys.monitoring.register_callback": blocked,
        "gc.get_objects": blocked,
        "gc.get_referrers": blocked,
        "gc.get_referents": blocked,
        "accbench.verdict": verdict,
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


def _program(root, fname, nonce_fd, source_fd, verdict_fd, frame):
    import builtins
    import types

    os.umask(0o077)
    nonce = _read_all(nonce_fd)
    src = _read_all(source_fd)
    path = os.path.join(root, fname)
    try:  # a copy for tracebacks (linecache); the program runs from ``src``
        with open(path, "wb") as f:
            f.write(src)
    except OSError:
        pass
    _install_guard(root, nonce, verdict_fd, frame)
    del nonce
    mod = types.ModuleType("__main__")
    mod.__file__ = path
    mod.__builtins__ = builtins
    sys.modules["__main__"] = mod
    sys.argv = [path]
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except Exception:
        pass
    return src, path, mod.__dict__


def _report_failure(e):
    import traceback

    if isinstance(e, SystemExit):
        sys.stderr.write("SystemExit(%r) raised before the program finished: a failure\n" % (e.code,))
        return
    try:  # hide the bootstrap's and the audit hook's own frames
        te = traceback.TracebackException(type(e), e, e.__traceback__)
        te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != "<string>"])
        sys.stderr.write("".join(te.format()))
    except BaseException:
        pass


try:
    _args = sys.argv[1:]
    _root, _fname = os.getcwd(), _args[0]
    _nonce_fd, _source_fd, _verdict_fd = (int(x) for x in _args[1:4])
    _role, _w = _relay((_nonce_fd, _source_fd, _verdict_fd))
    if _role == "init":
        _init(_w, (_nonce_fd, _source_fd, _verdict_fd))
    _src, _path, _ns = _program(_root, _fname, _nonce_fd, _source_fd, _verdict_fd, sys._getframe(0))
except SystemExit:
    raise
except BaseException as _e:
    _die_internal(repr(_e))
_audit, _flush, _exit = sys.audit, sys.stdout.flush, os._exit
del _args, _root, _fname, _role, _w, _relay, _init, _program, _die_internal

try:
    exec(compile(_src, _path, "exec"), _ns)
except BaseException as _e:
    _report_failure(_e)
    _exit(1)
try:
    _flush()
    sys.stderr.flush()
except BaseException:
    _exit(1)
_audit("accbench.verdict")
_exit(0)
