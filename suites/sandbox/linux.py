"""The OS layers: a leased uid, namespaces, a private read-only root, rlimits.

Everything here runs in the parent except ``make_preexec``'s closure, which runs in the child
between fork and exec and therefore only makes system calls through objects created beforehand
(no imports, no locks): ``run_many``'s threads can use it.

The private root (a mount namespace, as root or inside a user namespace) is a small tmpfs
holding, read-only, only what the interpreter needs: /usr, /lib*, /bin, /sbin, the
interpreter's own prefix (site-packages covered with an empty tmpfs), /etc/ld.so.cache and
/etc/localtime, and a /dev with null, zero, full, random and urandom. /tmp is the program's own
directory, a tmpfs of ``SandboxLimits.disk_mb``: the only writable place, and the cap on total
disk use. /proc stays empty, so no process is visible. The data directory, the checkout, the
virtualenv, /run (and its sockets) and every other host path are simply not there. The program
is ``chroot``-ed into it, and then either runs as an unprivileged uid (root) or has no
capabilities (a user namespace maps only our own uid, which is not 0), so it cannot leave.
"""

from __future__ import annotations

import functools
import glob
import os
import signal
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

try:  # POSIX only
    import fcntl
    import resource
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    resource = None  # type: ignore[assignment]

LINUX = sys.platform.startswith("linux")

# linux/sched.h, linux/mount.h, linux/prctl.h
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

#: the directory the program sees as its own (and its HOME / TMPDIR) inside the private root
INNER_WORK = "/tmp"
_DEVICES = ("null", "zero", "full", "random", "urandom")


class Libc:
    """ctypes handles to unshare/mount/chroot/prctl, created in the parent."""

    def __init__(self) -> None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        self.get_errno = ctypes.get_errno
        self.unshare = lib.unshare
        self.unshare.argtypes = [ctypes.c_int]
        self.unshare.restype = ctypes.c_int
        self.mount = lib.mount
        self.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        self.mount.restype = ctypes.c_int
        self.prctl = lib.prctl
        self.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        self.prctl.restype = ctypes.c_int


_libc_lock = threading.Lock()
_libc_obj: Libc | None = None
_libc_failed = False


def libc() -> Libc | None:
    global _libc_obj, _libc_failed
    if not LINUX:
        return None
    with _libc_lock:
        if _libc_obj is None and not _libc_failed:
            try:
                _libc_obj = Libc()
            except (OSError, AttributeError, ImportError):
                _libc_failed = True
        return _libc_obj


# --------------------------------------------------------------------------------------------
# uid leases (root only): each concurrent run gets its own uid
# --------------------------------------------------------------------------------------------
class UidLease:
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


def lease_uid(base: int, count: int, timeout_s: float = 120.0) -> UidLease:
    d = _lock_dir()
    deadline = time.monotonic() + timeout_s
    start = int.from_bytes(os.urandom(2), "little") % max(count, 1)
    while True:
        for i in range(count):
            uid = base + (start + i) % count
            if not _uid_is_free(uid):
                continue
            fd = os.open(os.path.join(d, str(uid)), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            return UidLease(uid, fd)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free sandbox uid in {base}..{base + count - 1}")
        time.sleep(0.05)


def procs_of_uid(uid: int) -> list[int]:
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


def sweep_uid(uid: int) -> None:
    """SIGKILL every process of the leased uid (only needed when the PID namespace is missing)."""
    for _ in range(50):
        pids = procs_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def count_own_processes() -> int:
    try:
        return len(procs_of_uid(os.getuid()))
    except Exception:
        return 0


# --------------------------------------------------------------------------------------------
# the private root
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RootPlan:
    links: tuple[tuple[str, str], ...]  # (path, target): /bin -> usr/bin on merged-/usr systems
    dirs: tuple[tuple[str, int], ...]  # (host directory bound read-only at the same path, its mount flags)
    files: tuple[tuple[str, int], ...]  # (host file bound read-only at the same path, flags)
    hidden: tuple[str, ...]  # covered with an empty read-only tmpfs (site-packages)


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def base_interpreter() -> str:
    """The interpreter behind a virtualenv (the sandbox runs it without the venv's packages)."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


def reachable_by_others(path: str) -> bool:
    """Whether a uid that is neither the owner nor in the group can execute ``path`` (every
    parent directory searchable by others, the file executable by others)."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & 0o001:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def _mount_flags(path: str) -> int:
    """The per-mount flags of ``path``'s mount, as mount(2) wants them on a bind remount (a
    user namespace must keep the locked ones)."""
    f = os.statvfs(path).f_flag
    out = 0
    for st_flag, ms_flag in (
        (getattr(os, "ST_NOSUID", 2), MS_NOSUID),
        (getattr(os, "ST_NODEV", 4), MS_NODEV),
        (getattr(os, "ST_NOEXEC", 8), MS_NOEXEC),
        (getattr(os, "ST_NOATIME", 1024), MS_NOATIME),
        (getattr(os, "ST_NODIRATIME", 2048), MS_NODIRATIME),
        (getattr(os, "ST_RELATIME", 4096), MS_RELATIME),
    ):
        if f & st_flag:
            out |= ms_flag
    return out


@functools.lru_cache(maxsize=1)
def root_plan() -> RootPlan:
    links, dirs = [], []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            dirs.append(top)
    exe = base_interpreter()
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    prefixes.add(os.path.dirname(os.path.dirname(exe)))
    for p in sorted(prefixes):
        if os.path.isdir(p) and not any(_is_under(p, d) for d in dirs):
            dirs.append(p)
    hidden = []
    for d in dirs:
        for pat in ("lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/python3/dist-packages",
                    "local/lib/python3*/site-packages", "local/lib/python3*/dist-packages"):
            hidden += [h for h in glob.glob(os.path.join(d, pat)) if os.path.isdir(h) and not os.path.islink(h)]
    files = [f for f in ("/etc/ld.so.cache", "/etc/localtime") if os.path.isfile(f)]
    return RootPlan(
        links=tuple(links),
        dirs=tuple((d, _mount_flags(d)) for d in dirs),
        files=tuple((f, _mount_flags(f)) for f in files),
        hidden=tuple(sorted(set(hidden))),
    )


# --------------------------------------------------------------------------------------------
# preexec_fn: runs in the child between fork and exec
# --------------------------------------------------------------------------------------------
def make_preexec(limits, uid: int | None, newroot: str | None, report_fd: int, nproc_base: int):
    """The child's setup. ``uid``: the leased uid when we are root, else None (a user namespace
    is tried). ``newroot``: an empty host directory for the private root (None: none). Writes
    the layers it set up, as ``layers:a,b,c``, to ``report_fd`` just before exec."""
    lc = libc()
    plan = root_plan() if newroot is not None else None
    as_bytes = max(64, limits.memory_mb) * 1024 * 1024
    fsize = max(1, limits.max_file_mb) * 1024 * 1024
    cpu = max(1, int(limits.cpu_s))
    nproc = max(3, limits.max_procs)  # relay + init + the program itself
    nofile = max(16, limits.max_open_files)
    as_root = uid is not None
    my_uid, my_gid = os.getuid(), os.getgid()
    ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
    root_b = newroot.encode() if newroot else b""
    dev_flags = _mount_flags("/dev") if plan is not None and os.path.isdir("/dev") else 0

    def fail(msg: str) -> None:
        raise OSError(msg)

    def mount(src, target, fstype, flags, data) -> None:
        if lc.mount(src, target, fstype, flags, data) != 0:
            fail(f"mount {target!r} failed: errno {lc.get_errno()}")

    def unshare_any(combos) -> int:
        got = 0
        for flags in combos:
            if flags & ~got == 0:
                continue
            if lc.unshare(flags & ~got) == 0:
                got |= flags
        return got

    def write_file(path: str, text: str) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def bind(src: str, flags: int, dev: bool = False) -> None:
        dst = root_b + src.encode()
        mount(src.encode(), dst, None, MS_BIND | MS_REC, None)
        mount(None, dst, None, ro | flags | (0 if dev else MS_NODEV), None)

    def build_root(owner: int) -> None:
        """The private root at ``newroot``; then chroot into it."""
        mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
        mount(b"tmpfs", root_b, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=1m,nr_inodes=1024")
        for path, target in plan.links:
            os.symlink(target, newroot + path)
        for path, flags in plan.dirs:
            os.makedirs(newroot + path, 0o755, exist_ok=True)
            bind(path, flags)
        for path in plan.hidden:
            mount(b"tmpfs", root_b + path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=4k,nr_inodes=8")
            mount(None, root_b + path.encode(), None, ro | MS_NODEV, None)
        os.makedirs(newroot + "/etc", 0o755, exist_ok=True)
        for path, flags in plan.files:
            os.close(os.open(newroot + path, os.O_CREAT | os.O_WRONLY, 0o644))
            bind(path, flags)
        dev = newroot + "/dev"
        os.mkdir(dev, 0o755)
        mount(b"tmpfs", dev.encode(), b"tmpfs", MS_NOSUID, b"mode=0755,size=64k,nr_inodes=64")
        for name in _DEVICES:
            if os.path.exists("/dev/" + name):
                os.close(os.open(f"{dev}/{name}", os.O_CREAT | os.O_WRONLY, 0o666))
                bind("/dev/" + name, dev_flags, dev=True)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"{dev}/{name}")
        mount(None, dev.encode(), None, ro, None)
        os.mkdir(newroot + "/proc", 0o555)  # empty: no process is visible
        os.mkdir(newroot + INNER_WORK, 0o700)
        opts = f"mode=0700,size={max(1, limits.disk_mb)}m,nr_inodes=4096"
        if as_root:  # in a user namespace the mounter already owns it (uid=/gid= are refused there)
            opts += f",uid={owner},gid={owner}"
        mount(b"tmpfs", (newroot + INNER_WORK).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode())
        mount(None, root_b, None, ro | MS_NODEV, None)  # the root itself: read-only
        os.chroot(newroot)
        os.chdir(INNER_WORK)

    def preexec() -> None:
        layers = ["process"]
        try:
            got = 0
            if lc is not None:
                if as_root:
                    got = unshare_any((CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC,
                                       CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC))
                else:
                    got = unshare_any((CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC,
                                       CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC,
                                       CLONE_NEWUSER | CLONE_NEWNET))
                    if got & CLONE_NEWUSER:  # map only ourselves (not 0): exec drops every capability
                        write_file("/proc/self/setgroups", "deny")
                        write_file("/proc/self/uid_map", f"{my_uid} {my_uid} 1")
                        write_file("/proc/self/gid_map", f"{my_gid} {my_gid} 1")
                        layers.append("user-namespace")
            for flag, name in ((CLONE_NEWNET, "network-namespace"), (CLONE_NEWPID, "pid-namespace"),
                               (CLONE_NEWIPC, "ipc-namespace")):
                if got & flag:
                    layers.append(name)
            if got & CLONE_NEWNS and plan is not None:
                build_root(uid if as_root else my_uid)
                layers += ["private-root", "disk-cap"]
            if resource is not None:
                for res, val in (
                    ("RLIMIT_CORE", (0, 0)),
                    ("RLIMIT_CPU", (cpu, cpu + 1)),
                    ("RLIMIT_AS", (as_bytes, as_bytes)),
                    ("RLIMIT_FSIZE", (fsize, fsize)),
                    ("RLIMIT_NOFILE", (nofile, nofile)),
                    ("RLIMIT_NPROC", (nproc, nproc) if as_root or got & CLONE_NEWUSER else (nproc + nproc_base,) * 2),
                ):
                    r = getattr(resource, res, None)
                    if r is None:
                        continue
                    try:
                        resource.setrlimit(r, val)
                    except (ValueError, OSError):
                        if res in ("RLIMIT_AS", "RLIMIT_NPROC") and LINUX:
                            raise
                layers.append("rlimits")
            if as_root:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                if os.getuid() != uid or os.geteuid() != uid:
                    fail("privilege drop did not take effect")
                layers.append("own-uid")
            if lc is not None:
                lc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
                lc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # after setuid, which clears it
            os.write(report_fd, ("layers:" + ",".join(layers)).encode())
        except BaseException as e:  # report, then let subprocess raise
            try:
                os.write(report_fd, f"sandbox setup failed: {e!r}".encode("utf-8", "replace"))
            except OSError:
                pass
            raise

    return preexec
