"""A results folder: config.json, samples.jsonl (append-only, crash-safe) and summary.csv.

Rows are appended with one ``write`` on an ``O_APPEND`` descriptor followed by ``fsync``, so a
crash or Ctrl-C loses at most the row being written; a torn last line (no newline) is cut
off when the folder is opened again. Rerunning skips every row whose key is present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from accbench.errors import AccbenchError

#: the fields that identify one measured sample; a row with the same key is never measured twice
KEY_FIELDS = ("model", "device", "suite", "prompt_length", "sample_id", "method")


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in KEY_FIELDS)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultsDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.samples_path = self.path / "samples.jsonl"
        self.summary_path = self.path / "summary.csv"
        self._fd: int | None = None

    # -- setup ---------------------------------------------------------------------------
    def prepare(self, config: dict[str, Any], settings: dict[str, Any], overwrite: bool = False) -> None:
        """Create the folder (or check it can be resumed) and write config.json.

        ``settings`` are the options that change what a row means (dtype, seed, budgets, ...);
        resuming with different settings is refused unless ``overwrite``.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise AccbenchError(f"cannot write results to {self.path}: {e.strerror or e}") from None
        if self.config_path.exists() and not overwrite:
            try:
                old = json.loads(self.config_path.read_text())
            except (OSError, json.JSONDecodeError):
                raise AccbenchError(f"{self.config_path} is unreadable; use --overwrite to start over") from None
            old_settings = old.get("settings", {})
            diff = sorted(k for k in set(old_settings) | set(settings) if old_settings.get(k) != settings.get(k))
            if diff:
                detail = ", ".join(f"{k}: {old_settings.get(k)!r} -> {settings.get(k)!r}" for k in diff)
                raise AccbenchError(
                    f"{self.path} holds a run with other settings ({detail}); "
                    "use another --out or pass --overwrite to discard it")
            # Keep the union of what was asked across invocations.
            for k in ("methods", "models", "suites"):
                merged = list(dict.fromkeys(list(old.get(k, [])) + list(config.get(k, []))))
                config[k] = merged
        elif overwrite:
            for p in (self.samples_path, self.summary_path):
                if p.exists():
                    p.unlink()
        config = {**config, "settings": settings, "status": "running"}
        _atomic_write(self.config_path, json.dumps(config, indent=2, default=str) + "\n")

    def set_status(self, status: str, **fields: Any) -> None:
        config = json.loads(self.config_path.read_text())
        config.update(status=status, **fields)
        _atomic_write(self.config_path, json.dumps(config, indent=2, default=str) + "\n")

    def config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text())

    # -- rows ------------------------------------------------------------------------------
    def load_rows(self, repair: bool = True) -> list[dict[str, Any]]:
        """All complete rows. A torn final line (from a crash mid-write) is dropped, and with
        ``repair`` cut off the file so later appends start on a fresh line."""
        if not self.samples_path.exists():
            return []
        data = self.samples_path.read_bytes()
        rows: list[dict[str, Any]] = []
        good_end = 0
        pos = 0
        lineno = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            lineno += 1
            if nl == -1:  # torn last line
                break
            line = data[pos:nl]
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise AccbenchError(f"{self.samples_path}:{lineno}: not valid JSON; "
                                        "fix or delete that line (or --overwrite)") from None
            pos = nl + 1
            good_end = pos
        if repair and good_end < len(data):
            with open(self.samples_path, "r+b") as f:
                f.truncate(good_end)
        return rows

    def append(self, row: dict[str, Any]) -> None:
        if self._fd is None:
            self._fd = os.open(self.samples_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = (json.dumps(row, default=str, separators=(",", ":")) + "\n").encode()
        os.write(self._fd, data)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write_summary_csv(self, frame) -> None:
        tmp = self.summary_path.with_name(".summary.csv.tmp")
        frame.to_csv(tmp, index=False)
        os.replace(tmp, self.summary_path)


def iter_rows(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Rows of several results folders (for reports over runs from several machines)."""
    out: list[dict[str, Any]] = []
    for p in paths:
        out.extend(ResultsDir(p).load_rows(repair=False))
    return out
