"""Cache directories: where converted models live, how they are written atomically, file hashes.

A model cache directory is trusted only when its marker file (written last) says it is
complete. Builds happen in a temporary directory beside the final one and are renamed into
place; temporary directories left by crashed builds are removed once they are stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

from accbench.models.quiet import Progress, say

CACHE_ENV = "ACCBENCH_CACHE_DIR"
CACHE_FORMAT = 2  # bump when the cache layout or conversion changes: old caches are then rebuilt
MARKER = "accbench-cache.json"  # written last; a model cache directory is trusted only with it
TMP_PREFIX = ".tmp-"  # in-progress cache builds; never trusted, cleaned when stale
_STALE_TMP_S = 24 * 3600


def cache_root() -> Path:
    """Root of all accbench caches: $ACCBENCH_CACHE_DIR, else the platform user cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("accbench"))


def model_cache_dir() -> Path:
    """Where converted models live: ``cache_root()/models``."""
    return cache_root() / "models"


def cache_dir_for(name: str, sha256: str) -> Path:
    """The cache directory of a GGUF-derived model: ``<name>-<first 16 hex of its sha256>``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    return model_cache_dir() / f"{safe}-{sha256[:16]}"


def is_complete_cache(path: Path) -> bool:
    """A cache directory is trusted only when its marker (written last) says it is complete."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("format") != CACHE_FORMAT or not marker.get("complete"):
        return False
    return all((path / f).is_file() for f in marker.get("files", ["config.json"]))


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``final``; on success rename it to ``final``.

    On an exception the temporary directory is removed and ``final`` is untouched. If another
    process completed ``final`` meanwhile, ours is discarded. A stale, incomplete ``final``
    (no marker) is moved aside and replaced.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache is ordinary user data
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, final)  # atomic; fails if final exists and is not empty
    except OSError:
        if is_complete_cache(final):
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
            return
        if final.exists():
            trash = final.parent / f"{TMP_PREFIX}trash-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)


@contextlib.contextmanager
def build_lock(final: Path, progress: Progress = None) -> Iterator[None]:
    """One builder per cache directory across processes (POSIX advisory lock), so parallel
    first loads do not all spend a minute dequantizing. Correctness does not depend on it:
    :func:`atomic_dir` already makes concurrent builds safe."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".lock-{final.name}", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            say(progress, f"waiting for another process that is converting {final.name}...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def clean_stale_tmp(parent: Path) -> None:
    """Remove temporary build directories in ``parent`` older than a day (crashed builds)."""
    if not parent.is_dir():
        return
    now = time.time()
    for p in parent.glob(f"{TMP_PREFIX}*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------
# File hashes, memoized by (path, size, mtime_ns)
# --------------------------------------------------------------------------------------


def _hash_memo_path() -> Path:
    return cache_root() / "file-hashes.json"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file; remembered in a small JSON keyed by (path, size, mtime_ns)."""
    p = Path(path).resolve()
    st = p.stat()
    key = str(p)
    memo_path = _hash_memo_path()
    try:
        memo = json.loads(memo_path.read_text())
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    hit = memo.get(key)
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        sha = hit.get("sha256")
        if isinstance(sha, str) and len(sha) == 64:
            return sha
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    sha = h.hexdigest()
    memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    with contextlib.suppress(OSError):
        _atomic_write_text(memo_path, json.dumps(memo, indent=1, sort_keys=True))
    return sha


# --------------------------------------------------------------------------------------
# The Hugging Face hub's own cache
# --------------------------------------------------------------------------------------


def hub_cached(hub_id: str) -> bool:
    """Whether the local Hugging Face cache holds ``hub_id``'s config and weights."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    try:
        cfg = try_to_load_from_cache(hub_id, "config.json")
        if not isinstance(cfg, str):
            return False
        folder = Path(cfg).parent
        return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    except Exception:
        return False
