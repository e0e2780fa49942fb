"""Where trained artifacts (Medusa heads, MTP heads, tuned trees...) live.

``cache_root()/artifacts/<model>/<method>-<hash of the training config>/``: the hash keys the
artifact by everything that shaped it, so changing a training option never silently reuses
an old artifact. Artifacts are written into a temporary sibling folder and renamed into
place, so a crash never leaves a half artifact that is later trusted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accbench.methods.training import config_hash
from accbench.models import cache_root


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"


def method_dir(model_name: str, method: str) -> Path:
    return cache_root() / "artifacts" / _safe(model_name) / _safe(method)


def artifact_dir(model_name: str, method: str, config: dict[str, Any]) -> Path:
    return method_dir(model_name, method) / config_hash(config)


def default_pointer(model_name: str, method: str) -> Path:
    """A small JSON naming the artifact a method uses when none is asked for."""
    return method_dir(model_name, method) / "default.json"


def set_default(model_name: str, method: str, path: Path, **info: Any) -> None:
    p = default_pointer(model_name, method)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({"path": str(path), **info}, indent=2, default=str))
    os.replace(tmp, p)


def get_default(model_name: str, method: str) -> Path | None:
    p = default_pointer(model_name, method)
    if not p.exists():
        return None
    path = Path(json.loads(p.read_text())["path"])
    return path if (path / "COMPLETE").exists() else None


def commit_dir(tmp: Path, final: Path) -> Path:
    """Mark ``tmp`` complete and move it to ``final`` (replacing an older one)."""
    (tmp / "COMPLETE").write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return final


class ModelArtifacts:
    """The artifact cache of one model, as decoders (``ArtifactStore``) and training and
    tuning jobs (``ArtifactWriter``) see it."""

    def __init__(self, model_name: str):
        self.model_name = model_name

    def default(self, key: str) -> Path | None:
        return get_default(self.model_name, key)

    def folder(self, key: str) -> Path:
        return method_dir(self.model_name, key)

    def dir_for(self, key: str, config: dict[str, Any]) -> Path:
        return artifact_dir(self.model_name, key, config)

    def commit(self, tmp: Path, final: Path) -> Path:
        return commit_dir(tmp, final)

    def set_default(self, key: str, path: Path, **info: Any) -> None:
        set_default(self.model_name, key, path, **info)
