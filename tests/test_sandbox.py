"""The sandbox for generated code: every escape a test can think of must fail, and the harness
(this very test process) must come out unharmed.

Most checks go through plain Python (which the audit hook sees) *and*, when we are root (as in
CI), through ctypes calls into libc that bypass the hook. Those show that the OS layers (another
uid, network/PID/mount namespaces, rlimits) hold by themselves. The ctypes variants only run as
root: without root and namespaces they would really hit this process."""

from __future__ import annotations

import ast
import os
import select
import socket
import sys
import tempfile
import textwrap
import time
import uuid

import pytest
from accbench.suites import sandbox
from accbench.suites.sandbox import SandboxLimits, SandboxResult, run_many, run_program

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-focused")

ROOT = os.geteuid() == 0
WALL = 3.0
LIMITS = SandboxLimits(wall_s=WALL, cpu_s=3)
SLACK = 1.5
# a world-writable (1777) directory that is not /tmp, as an HPC /scratch: as root one at /, so
# that only the sandbox's private root stands between the program and it
SCRATCH = f"/accbench-scratch-{os.getpid()}" if os.geteuid() == 0 else tempfile.mkdtemp()  # seconds allowed beyond wall_s for start-up and teardown on a busy 2-core machine

# A uid range of our own (per test process, inside the reserved 65000-65533 band), so that
# sandboxes run by other processes on this machine at the same time cannot confuse the
# "nothing left behind" checks.
TEST_UID_COUNT = 4
TEST_UID_BASE = 65200 + TEST_UID_COUNT * (os.getpid() % 75)


@pytest.fixture(scope="module", autouse=True)
def _scratch():
    os.makedirs(SCRATCH, exist_ok=True)
    os.chmod(SCRATCH, 0o1777)
    yield
    import shutil

    shutil.rmtree(SCRATCH, ignore_errors=True)


@pytest.fixture(autouse=True)
def _private_uid_range(monkeypatch):
    monkeypatch.setattr(sandbox, "SANDBOX_UID_BASE", TEST_UID_BASE)
    monkeypatch.setattr(sandbox, "SANDBOX_UID_COUNT", TEST_UID_COUNT)


def run(src: str, limits: SandboxLimits = LIMITS) -> SandboxResult:
    return run_program(textwrap.dedent(src), limits)


def _proc_status(pid: str) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def leftover_processes() -> list[str]:
    """Processes (zombies included) of the test uid range, and zombie children of this process."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            st = _proc_status(pid)
        except OSError:
            continue
        uid = int(st["Uid"].split()[0])
        if TEST_UID_BASE <= uid < TEST_UID_BASE + TEST_UID_COUNT:
            found.append(f"{pid} uid={uid} {st['State']} {st['Name']}")
        elif st.get("PPid") == str(os.getpid()) and st["State"].startswith("Z"):
            found.append(f"{pid} zombie child {st['Name']}")
    return found


def wait_no_leftovers(timeout: float = 2.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = leftover_processes()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# ordinary programs
# ---------------------------------------------------------------------------------------------
def test_passing_program():
    r = run(
        """
        def add(a, b):
            return a + b
        assert add(2, 3) == 5
        print("ok")
        """
    )
    assert (r.passed, r.status, r.returncode) == (True, "passed", 0)
    assert r.stdout == "ok\n"
    assert r.duration_s < WALL


def test_failing_assert_names_the_solution_file():
    r = run(
        """
        def add(a, b):
            return a - b
        assert add(2, 3) == 5
        """
    )
    assert (r.passed, r.status, r.returncode) == (False, "failed", 1)
    assert "AssertionError" in r.stderr
    assert "solution.py" in r.stderr and "line 4" in r.stderr
    assert "<string>" not in r.stderr  # the bootstrap's frames are hidden


def test_sandbox_that_cannot_start_reports_error(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    monkeypatch.setattr(sandbox.linux, "base_interpreter", lambda: "/nonexistent/python3")
    r = run("print(1)")
    assert (r.passed, r.status, r.returncode) == (False, "error", None)
    assert "could not start the sandbox" in r.stderr


def test_syntax_error_fails():
    r = run("def f(:\n    pass\n")
    assert r.status == "failed" and not r.passed
    assert "SyntaxError" in r.stderr


def test_sys_exit_zero_before_asserts_fails():
    # a pass needs the harness's verdict, sent only after the program returned normally
    r = run("import sys\nsys.exit(0)\nassert False\n")
    assert r.status == "failed" and not r.verdict
    r = run("import sys\nsys.exit(3)\n")
    assert (r.status, r.returncode) == ("failed", 1) and "SystemExit(3)" in r.stderr


def test_scrubbed_environment_and_throwaway_directory(monkeypatch):
    monkeypatch.setenv("ACCBENCH_TEST_SECRET_TOKEN", "hunter2")
    r = run(
        """
        import os, sys, tempfile
        print(sorted(os.environ))
        print(os.environ["HOME"] == os.getcwd() == os.environ["TMPDIR"])
        print(os.listdir("."))
        print(sys.stdin.read() == "")
        print(os.getcwd())
        # writing inside the sandbox directory is allowed, tempfile included
        with open("data.txt", "w") as f:
            f.write("hello")
        os.mkdir("sub")
        os.rename("data.txt", "sub/data.txt")
        with tempfile.NamedTemporaryFile("w", delete=False) as t:
            t.write("x")
        os.remove(t.name)
        assert open("sub/data.txt").read() == "hello"
        """
    )
    assert r.status == "passed", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR']"
    assert "hunter2" not in r.stdout
    assert lines[1:4] == ["True", "['solution.py']", "True"]
    assert lines[4] == ("/tmp" if "private-root" in r.layers else lines[4])
    assert not [d for d in os.listdir(tempfile.gettempdir()) if d.startswith(f"accbench-sbx-{os.getpid()}-")]


@pytest.mark.skipif(not ROOT, reason="privilege drop and namespaces are the root path")
def test_isolation_layers_active_as_root(data_dir):
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = run(
        f"""
        import os, resource, sys
        print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())
        print(os.getpid(), resource.getrlimit(resource.RLIMIT_NPROC), resource.getrlimit(resource.RLIMIT_AS))
        print(sorted(os.listdir("/")), os.listdir("/proc"))
        print([os.path.exists(p) for p in ({str(data_dir)!r}, {checkout!r}, "/run", "/root/.ssh", sys.prefix + "/lib/python3.11/site-packages/torch")])
        st = os.statvfs("/")
        print(bool(st.f_flag & os.ST_RDONLY), os.statvfs("/tmp").f_blocks * os.statvfs("/tmp").f_frsize // 2**20)
        """
    )
    assert r.status == "passed", r.stderr
    ids, limits, fs, visible, disk = r.stdout.splitlines()
    uid, euid, gid, groups = ids.split(" ", 3)
    assert TEST_UID_BASE <= int(uid) < TEST_UID_BASE + TEST_UID_COUNT
    assert uid == euid == gid and groups == "[]"
    assert limits.startswith("2 (16, 16) (1073741824, 1073741824)")  # relay, init, program
    top, proc = fs.rsplit(" ", 1)
    assert proc == "[]"  # no process of the host (or of the sandbox) is visible
    assert set(ast.literal_eval(top)) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root",
                                          "sbin", "tmp", "usr"}
    assert visible == "[False, False, False, False, False]"
    assert disk == "True 64"  # read-only root; the program's own 64 MB tmpfs
    for layer in ("own-uid", "network-namespace", "pid-namespace", "private-root", "disk-cap", "verdict-nonce"):
        assert layer in r.layers


# ---------------------------------------------------------------------------------------------
# escapes
# ---------------------------------------------------------------------------------------------
def test_infinite_loop_times_out():
    r = run("while True:\n    pass\n")
    assert (r.status, r.passed) == ("timeout", False)
    assert WALL <= r.duration_s < WALL + SLACK
    assert wait_no_leftovers() == []


def test_sleeping_forever_times_out():
    r = run("import time\nprint('started', flush=True)\ntime.sleep(3600)\n")
    assert r.status == "timeout"
    assert r.stdout == "started\n"
    assert r.duration_s < WALL + SLACK


def test_cpu_limit_stops_busy_loop_before_wall_clock():
    r = run("while True:\n    pass\n", SandboxLimits(wall_s=8, cpu_s=1))
    assert r.status == "timeout"
    assert r.duration_s < 4  # RLIMIT_CPU (SIGXCPU at 1 s of CPU), not the 8 s wall clock


def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    r = run(
        """
        import os, time
        # one child escapes into its own session and sleeps: it must die too
        if os.fork() == 0:
            os.setsid()
            time.sleep(3600)
        while True:
            os.fork()
        """
    )
    assert not r.passed and r.status in ("failed", "timeout"), r
    assert r.duration_s < WALL + SLACK
    assert wait_no_leftovers() == []
    # the machine (and the uid pool) is fine afterwards
    assert run("import os\nassert os.fork() is not None\nprint('fine')\n").status == "passed"


def test_allocating_50_gb_fails_fast_with_memory():
    r = run("x = bytearray(50 * 1024 ** 3)\nprint('allocated')\n")
    assert r.status == "memory" and not r.passed
    assert "MemoryError" in r.stderr and "allocated" not in r.stdout
    assert r.duration_s < WALL
    # filling memory gradually hits the (smaller, here) address-space limit just the same
    r = run(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))\n",
        SandboxLimits(wall_s=WALL, memory_mb=256),
    )
    assert r.status == "memory"
    assert r.duration_s < WALL + SLACK


def test_socket_connect_to_a_local_listener_never_arrives():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        r = run(
            f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1)
                print("CONNECTED")
            except OSError as e:
                print("python connect refused:", type(e).__name__)
            """
        )
        assert r.status == "failed" and "CONNECTED" not in r.stdout
        assert "python connect refused: SandboxViolation" in r.stdout
        assert "accbench-sandbox: blocked socket." in r.stderr
        if ROOT:  # bypass the audit hook: the network namespace alone must stop it
            r = run(
                f"""
                import ctypes, struct
                libc = ctypes.CDLL(None, use_errno=True)
                fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM
                addr = struct.pack("=H", 2) + struct.pack("!H", {port}) + bytes([127, 0, 0, 1]) + bytes(8)
                rc = libc.connect(fd, addr, len(addr))
                print("ctypes connect", rc, ctypes.get_errno())
                assert rc != 0
                """
            )
            assert r.status == "passed", r.stderr  # the program itself saw connect() fail
            assert r.stdout.startswith("ctypes connect -1 ")
        readable, _, _ = select.select([listener], [], [], 0.2)
        assert readable == [], "the listener received a connection from the sandbox"
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_files_outside_the_sandbox_stay_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    # a world-writable file in the shared /tmp: even the sandbox uid could write it at the OS
    # level, so only the hook and the private /tmp mount stand in the way
    shared = f"{SCRATCH}/accbench-test-victim-{uuid.uuid4().hex}"
    with open(shared, "w") as f:
        f.write("shared")
    os.chmod(shared, 0o666)
    escape = f"{SCRATCH}/accbench-test-escape-{uuid.uuid4().hex}"
    try:
        r = run(
            f"""
            import os, shutil
            victims = [{str(victim)!r}, {shared!r}]
            attempts = {{
                "overwrite": lambda p: open(p, "w").write("pwned"),
                "append": lambda p: open(p, "a").write("pwned"),
                "os.open": lambda p: os.open(p, os.O_WRONLY | os.O_TRUNC),
                "remove": os.remove,
                "rename": lambda p: os.rename(p, p + ".moved"),
                "chmod": lambda p: os.chmod(p, 0o777),
                "truncate": lambda p: os.truncate(p, 0),
                "rmtree": lambda p: shutil.rmtree(os.path.dirname(p)),
                "symlink+write": lambda p: (os.symlink(p, "link"), open("link", "w").write("pwned")),
            }}
            for v in victims:
                for name, fn in attempts.items():
                    try:
                        fn(v)
                        print("ESCAPED", name, v)
                    except OSError:
                        pass
                    if os.path.lexists("link"):
                        os.remove("link")
            for target in [{escape!r}, os.path.join(os.path.dirname(os.getcwd()), "escape.txt"), "../escape2.txt"]:
                try:
                    open(target, "w").write("x")
                    print("ESCAPED write", target)
                except OSError:
                    pass
            """
        )
        assert "ESCAPED" not in r.stdout, r.stdout
        assert r.status == "failed"
        assert r.stderr.count("accbench-sandbox: blocked") >= 10
        if ROOT:  # bypass the hook with libc calls
            r = run(
                f"""
                import ctypes, os
                libc = ctypes.CDLL(None, use_errno=True)
                for p in [{str(victim)!r}, {shared!r}, {escape!r}, os.path.dirname(os.getcwd()) + "/escape.txt"]:
                    fd = libc.open(p.encode(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                    if fd >= 0:
                        libc.write(fd, b"pwned", 5)
                    print(p, fd, libc.unlink(p.encode()))
                """
            )
            assert r.status == "passed", r.stderr
        assert victim.read_text() == "precious"
        with open(shared) as f:
            assert f.read() == "shared"
        assert not os.path.exists(escape)
        assert sorted(os.listdir(tmp_path)) == ["victim.txt"]
    finally:
        for p in (shared, escape):
            if os.path.exists(p):
                os.remove(p)


def test_killing_the_parent_does_not_kill_the_harness():
    me = os.getpid()
    r = run(
        f"""
        import os, signal
        for target in (os.getppid(), {me}, -1, 1):
            try:
                os.kill(target, signal.SIGKILL)
                print("SENT", target)
            except OSError:
                pass
        try:
            os.killpg({me}, signal.SIGKILL)
            print("SENT group")
        except OSError:
            pass
        """
    )
    assert "SENT" not in r.stdout
    assert r.status == "failed" and "blocked os.kill" in r.stderr
    if ROOT:  # bypass the hook: another uid and another PID namespace stop it
        r = run(
            f"""
            import ctypes, signal
            libc = ctypes.CDLL(None, use_errno=True)
            for target in ({me}, {os.getppid()}, -1):
                print(target, libc.kill(target, int(signal.SIGKILL)), ctypes.get_errno())
            """
        )
        assert r.status in ("passed", "failed")
    # still here, and the harness keeps working
    assert os.getpid() == me
    assert run("print('alive')").stdout == "alive\n"


def test_starting_programs_is_blocked():
    r = run(
        """
        import os, subprocess
        for attempt in (lambda: os.system("echo hi"),
                        lambda: subprocess.run(["/bin/echo", "hi"]),
                        lambda: os.execv("/bin/echo", ["echo", "hi"])):
            try:
                attempt()
                print("RAN")
            except OSError:
                pass
        """
    )
    assert "RAN" not in r.stdout and "hi" not in r.stdout
    assert r.status == "failed"


def test_huge_output_is_capped():
    r = run(
        """
        import sys
        print("x" * 30_000_000)
        for i in range(50_000):
            print("line", i, file=sys.stderr)
        raise ValueError("the end is kept")
        """,
        SandboxLimits(wall_s=10),
    )
    assert r.status == "failed"
    assert len(r.stdout) < 20_000 and len(r.stderr) < 20_000
    assert r.stdout.startswith("xxxx") and "bytes truncated" in r.stdout
    assert r.stderr.startswith("line 0\n") and "bytes truncated" in r.stderr
    assert "ValueError: the end is kept" in r.stderr  # the tail (the traceback) survives the cap
    assert r.duration_s < 10


def test_run_many_preserves_order():
    sources = [
        "import time\ntime.sleep(0.4)\nprint(0)",
        "print(1)",
        "assert False",
        "import time\ntime.sleep(0.2)\nprint(3)",
        "print(4)",
    ]
    t0 = time.monotonic()
    results = run_many(sources, LIMITS, workers=2)
    assert [r.status for r in results] == ["passed", "passed", "failed", "passed", "passed"]
    assert [r.stdout for r in results] == ["0\n", "1\n", "", "3\n", "4\n"]
    assert time.monotonic() - t0 < WALL * 2
    assert run_many([], LIMITS) == []
    assert wait_no_leftovers() == []
