"""Run untrusted generated Python (MBPP / HumanEval solutions plus their tests) safely, and
decide pass/fail in a way the program cannot fake.

``run_program(source)`` runs ``source`` in a fresh interpreter; ``run_many`` runs a list, a few
at a time. The code is treated as hostile. Files: child.py (the code that runs inside: relay,
init, the audit hook, the verdict), linux.py (uid leases, namespaces, the private root,
rlimits), runner.py (starting, watching, classifying, cleaning up).

**The verdict.** A run passes only when (a) the harness's own code, running after the program
returned normally, wrote the run's random nonce on the verdict pipe, (b) the exit status is 0
and (c) nothing was blocked. The nonce reaches the program process through a pipe that is read
and closed before the program starts; it then lives only in the audit hook's closure, and the
hook writes it only for the "accbench.verdict" event raised from the very frame that ran the
program (the event from anywhere else is a blocked attempt). So ``os._exit(0)`` before the
asserts, an exit from an ``atexit`` hook, a thread, a signal handler or a patched traceback
after an assert failed, a rebound ``sys.exit``: none of them sends the nonce, and all fail.
Tracing (``sys.settrace``/``setprofile``, which could skip an assert) and heap walks
(``gc.get_objects``/``get_referrers``/``get_referents``, ``sys._current_frames``) are blocked.

**Layers** (each reported in ``SandboxResult.layers``; ``describe_layers()`` names those this
machine allows, and a run records them in config.json):

* ``process``: ``python -I -B``, environment of PATH, LANG/LC_ALL and HOME=TMPDIR=the program's
  directory only; stdin /dev/null; its own session; output head and tail kept.
* ``rlimits``: CPU seconds, address space, processes, file size, open files, no core dumps.
* ``own-uid`` (root): the child runs as a uid leased from a reserved pool
  (``SANDBOX_UID_BASE``..., ``flock``-ed so concurrent runs never share one), no groups,
  ``PR_SET_NO_NEW_PRIVS``.
* ``user-namespace`` (not root, where the kernel allows it): the child maps only its own uid,
  so exec leaves it no capabilities; it is what makes the namespaces below possible.
* ``network-namespace``: no interface up; TCP, DNS and abstract unix sockets reach nothing.
* ``pid-namespace``: the relay forks an init (PID 1) which forks the program; init reaps, and
  when the program ends the kernel kills everything left (double forks, ``setsid``).
* ``ipc-namespace``.
* ``private-root`` and ``disk-cap`` (a mount namespace): the program is chroot-ed into a
  read-only tmpfs holding only /usr, /lib*, /bin, /sbin, the interpreter's prefix (its
  site-packages covered), /etc/ld.so.cache, /etc/localtime, a minimal /dev and an empty
  /proc. Its own directory /tmp is a ``disk_mb`` tmpfs, the only writable place. The data
  directory, the checkout, the virtualenv, /run with its path sockets, other users' and the
  host's processes are not there to be read or reached.
* ``audit-hook`` (PEP 578): clear errors for writes outside the program's directory, starting
  programs, sockets, signals to others. Not a boundary by itself (ctypes bypasses it); the OS
  layers are. ``verdict-nonce``: the verdict above.

Falling back: without root and without user namespaces, or where a mount fails, the layers the
OS refuses are missing (``describe_layers`` says which) and the rest still apply: the program
then runs in a throwaway directory on the host file system, and only the hook, permissions and
RLIMIT_FSIZE limit its writes. As root, that fallback needs an interpreter the leased uid can
reach (every parent directory o+x); one under a private home (pyenv in /root) is an ``error``
result saying so, never a run as root on the host's file system.

What is *not* enforced: a program that digs through its own memory with ctypes could find the
nonce; reading is restricted to what the private root holds (without it, to Unix
permissions); memory is limited per process (RLIMIT_AS), not per run. On macOS only the
process, the wall clock, the scrubbed environment and the hook remain; Windows is refused.

Status: ``passed``, ``failed`` (no verdict: an exception, an early exit, a nonzero status, a
blocked attempt), ``timeout`` (wall clock or SIGXCPU), ``memory`` (MemoryError and the like),
``error`` (the sandbox itself could not run the program).
"""

from __future__ import annotations

import functools
import os

from accbench.suites.sandbox.runner import (
    SandboxLimits,
    SandboxResult,
    cleanup_on_signals,
    run_many,
    run_program,
    sweep_stale,
    terminate_all,
)

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "run_program",
    "run_many",
    "describe_layers",
    "cleanup_on_signals",
    "terminate_all",
    "sweep_stale",
    "SANDBOX_UID_BASE",
    "SANDBOX_UID_COUNT",
]

# uids used for sandboxed children when the parent is root. 65100..65131 sits in the range that
# Debian reserves (65000-65533) and that no distribution hands out; any uid in it that *does*
# have a passwd entry is skipped. Override with ACCBENCH_SANDBOX_UID_BASE / _COUNT.
SANDBOX_UID_BASE = int(os.environ.get("ACCBENCH_SANDBOX_UID_BASE", "65100"))
SANDBOX_UID_COUNT = int(os.environ.get("ACCBENCH_SANDBOX_UID_COUNT", "32"))

ALL_LAYERS = ("process", "rlimits", "own-uid", "user-namespace", "network-namespace", "pid-namespace",
              "ipc-namespace", "private-root", "disk-cap", "audit-hook", "verdict-nonce")


@functools.lru_cache(maxsize=1)
def describe_layers() -> dict[str, object]:
    """Run one trivial program and report which layers were in place: ``{"active": [...],
    "missing": [...], "mode": "root" | "user", "ok": bool}`` (``ok``: the program passed)."""
    res = run_program("assert 1 + 1 == 2\n", SandboxLimits(wall_s=20, cpu_s=10))
    active = [x for x in ALL_LAYERS if x in res.layers]
    mode = "root" if os.name == "posix" and os.geteuid() == 0 else "user"
    relevant = [x for x in ALL_LAYERS if not (mode == "root" and x == "user-namespace")
                and not (mode == "user" and x == "own-uid")]
    return {"mode": mode, "active": active, "missing": [x for x in relevant if x not in active],
            "ok": res.passed, **({} if res.passed else {"error": res.stderr[-500:]})}
