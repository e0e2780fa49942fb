"""A results folder: config.json, samples.jsonl (append-only, crash-safe) and summary.csv.

One writer at a time: ``accbench run`` holds an exclusive ``flock`` on ``.lock`` (which names
its pid and host) for the whole run. Rows are appended with ``write`` on an ``O_APPEND``
descriptor followed by ``fsync``; a write that fails (disk full, I/O error) is cut back to the
last complete line, and a torn last line left by a crash is cut off when the folder is opened
again, so the file only ever holds whole rows. Every row is checked when loaded. Rerunning
skips every row whose key is present.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterable

import click
from accbench.errors import AccbenchError

#: the fields that identify one measured sample; a row with the same key is never measured twice
KEY_FIELDS = ("model", "device", "suite", "prompt_length", "sample_id", "method")

_NUM = (int, float)
#: what every row must hold (the engine, the summary and the gate index these): name -> types
REQUIRED: dict[str, tuple] = {
    "model": (str,), "device": (str,), "suite": (str,), "prompt_length": (int, type(None)),
    "sample_id": (str,), "method": (str,), "new_token_ids": (list,), "n_new": (int,),
    "ttft_s": _NUM, "total_s": _NUM, "forward_passes": (int,), "tokens_per_step": (list,),
}
#: optional fields with a fixed type when present
OPTIONAL: dict[str, tuple] = {
    "tpot_s": _NUM + (type(None),), "quality": (dict, type(None)), "step_times_s": (list, type(None)),
    "exact_match_ar": (bool, type(None)),
}


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in KEY_FIELDS)


def row_problem(row: Any) -> str | None:
    """What is wrong with a row, or None when it is a sane accbench row."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__} {json.dumps(row)[:40]}"
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        return f"missing {', '.join(missing)}"
    for k, types in {**REQUIRED, **OPTIONAL}.items():
        v = row.get(k)
        if k in row and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
            return f"{k} is {type(v).__name__} {json.dumps(v, default=str)[:40]}"
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in row["new_token_ids"]):
        return "new_token_ids holds a non-integer"
    return None


def dedupe_rows(rows: list[dict[str, Any]], where: str, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The first row of each row key (plus ``extra`` fields); a warning line when some are dropped."""
    seen: set[tuple] = set()
    out = []
    for r in rows:
        k = row_key(r) + tuple(r.get(f) for f in extra)
        if k not in seen:
            seen.add(k)
            out.append(r)
    if len(out) < len(rows):
        click.echo(f"Warning: dropped {len(rows) - len(out)} duplicate row(s) (same row key) in {where}", err=True)
    return out


def _write_error(path: Path, e: OSError) -> AccbenchError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return AccbenchError(f"disk full writing {path}: the run stays resumable, free space and rerun the same command")
    return AccbenchError(f"cannot write {path}: {e.strerror or e}: the run stays resumable, "
                         "fix that and rerun the same command")


def _append_whole(fd: int, path: Path, data: bytes) -> None:
    """Append ``data`` whole, or (on any OSError) cut the file back to its size before."""
    start = os.fstat(fd).st_size
    try:
        done = 0
        while done < len(data):
            n = os.write(fd, data[done:])
            if n <= 0:
                raise OSError(errno.ENOSPC, "short write")
            done += n
        os.fsync(fd)
    except OSError as e:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise _write_error(path, e) from None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, e) from None


class ResultsDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.samples_path = self.path / "samples.jsonl"
        self.summary_path = self.path / "summary.csv"
        self.lock_path = self.path / ".lock"
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self.frame = None  # the summary frame, once a run has written summary.csv

    # -- setup ---------------------------------------------------------------------------
    def lock(self) -> None:
        """Become the folder's only writer (until :meth:`close`), or raise naming the holder."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise AccbenchError(f"cannot write results to {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            pid, host = (holder + ["?", "?"])[:2]
            raise AccbenchError(f"{self.path} is in use by another accbench run (pid {pid} on host {host}); "
                                "wait for it to finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd

    def prepare(self, config: dict[str, Any], settings: dict[str, Any], overwrite: bool = False) -> None:
        """Take the lock, check the folder can be resumed (its config.json, its settings and
        every row) and only then write config.json; a refused resume changes nothing.

        ``settings`` are the options that change what a row means (dtype, seed, budgets, ...);
        resuming with different settings is refused unless ``overwrite``.
        """
        self.lock()
        try:
            self._prepare(config, settings, overwrite)
        except BaseException:
            self.close()
            raise

    def _prepare(self, config: dict[str, Any], settings: dict[str, Any], overwrite: bool) -> None:
        if overwrite:
            for p in (self.samples_path, self.summary_path):
                p.unlink(missing_ok=True)
        else:
            if self.config_path.exists():
                old = self._old_config()
                old_settings = old.get("settings", {})
                diff = sorted(k for k in set(old_settings) | set(settings) if old_settings.get(k) != settings.get(k))
                if diff:
                    detail = ", ".join(f"{k}: {old_settings.get(k)!r} -> {settings.get(k)!r}" for k in diff)
                    raise AccbenchError(
                        f"{self.path} holds a run with other settings ({detail}); "
                        "use another --out or pass --overwrite to discard it")
                # Keep the union of what was asked across invocations.
                for k in ("methods", "models", "suites"):
                    config[k] = list(dict.fromkeys(list(old.get(k, [])) + list(config.get(k, []))))
            self.load_rows(repair=False)  # every row checked before anything is written
            self.load_rows(repair=True)  # then a torn last line is cut off
        config = {**config, "settings": settings, "status": "running"}
        _atomic_write(self.config_path, json.dumps(config, indent=2, default=str) + "\n")

    def _old_config(self) -> dict[str, Any]:
        try:
            old = json.loads(self.config_path.read_text(encoding="utf-8"))
            why = None if isinstance(old, dict) and isinstance(old.get("settings", {}), dict) else "not a config"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            why = getattr(e, "strerror", None) or "not valid JSON"
        if why:
            raise AccbenchError(
                f"{self.config_path} is unreadable ({why}); to keep the rows start a new folder with --out NEW "
                "and move samples.jsonl there, or pass --overwrite to discard the rows")
        return old

    def set_status(self, status: str, **fields: Any) -> None:
        config = self.config()
        config.update(status=status, **fields)
        _atomic_write(self.config_path, json.dumps(config, indent=2, default=str) + "\n")

    def config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text(encoding="utf-8"))

    # -- rows ------------------------------------------------------------------------------
    def load_rows(self, repair: bool = True) -> list[dict[str, Any]]:
        """All complete rows, each checked (the first bad one raises naming file:line). Lines
        end at b"\\n" only. A torn final line (from a crash mid-write) is dropped, and with
        ``repair`` cut off the file so later appends start on a fresh line."""
        if not self.samples_path.exists():
            return []
        data = self.samples_path.read_bytes()
        rows: list[dict[str, Any]] = []
        good_end = data.rfind(b"\n") + 1  # after it: a torn last line
        for lineno, line in enumerate(data[:good_end].split(b"\n")[:-1], 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row, problem = None, "not valid JSON"
            else:
                problem = row_problem(row)
            if problem:
                raise AccbenchError(f"{self.samples_path}:{lineno}: {problem}; fix or delete that line "
                                    "(or --overwrite to discard the rows)")
            rows.append(row)
        if repair and good_end < len(data):
            with open(self.samples_path, "r+b") as f:
                f.truncate(good_end)
        return rows

    def append(self, row: dict[str, Any]) -> None:
        """Append one row whole; on a failed write the file is left as it was and AccbenchError raised."""
        data = (json.dumps(row, default=str, separators=(",", ":")) + "\n").encode()
        if self._fd is None:
            try:
                self._fd = os.open(self.samples_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as e:
                raise _write_error(self.samples_path, e) from None
        _append_whole(self._fd, self.samples_path, data)

    def append_failure(self, rec: dict[str, Any]) -> None:
        """One failed.jsonl record, whole or not at all."""
        path = self.path / "failed.jsonl"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise _write_error(path, e) from None
        try:
            _append_whole(fd, path, (json.dumps(rec, default=str) + "\n").encode())
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the rows and give up the lock."""
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)  # closing the descriptor releases its flock
                setattr(self, name, None)

    def write_summary_csv(self, frame) -> None:
        tmp = self.summary_path.with_name(".summary.csv.tmp")
        try:
            frame.to_csv(tmp, index=False)
            os.replace(tmp, self.summary_path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise _write_error(self.summary_path, e) from None


def iter_rows(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Rows of several results folders (for reports over runs from several machines)."""
    out: list[dict[str, Any]] = []
    for p in paths:
        out.extend(dedupe_rows(ResultsDir(p).load_rows(repair=False), str(p)))
    return out
