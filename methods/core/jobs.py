"""What ``accbench train`` and ``accbench tune`` hand a method: the loaded model, the data and
an artifact writer, so that training and tuning never load models, read suites or choose
cache paths themselves. Declared on the protocol as ``cls.train(job) -> Path`` and
``cls.tune(job) -> Path``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from accbench.methods.core.protocol import ArtifactStore


class ArtifactWriter(ArtifactStore, Protocol):
    """The harness's artifact cache for one model (see ``accbench.training.artifacts``)."""

    def dir_for(self, key: str, config: dict[str, Any]) -> Path:
        """The final folder of the artifact ``key`` trained with ``config`` (may not exist)."""

    def commit(self, tmp: Path, final: Path) -> Path:
        """Mark ``tmp`` complete and move it to ``final`` atomically."""

    def set_default(self, key: str, path: Path, **info: Any) -> None:
        """Make ``path`` the artifact decoders of ``key`` use when none is asked for."""


@dataclass
class TrainJob:
    method: str
    model_name: str
    model: Any  # the loaded Hugging Face model (on ``device``, in ``dtype``)
    tokenizer: Any
    documents: list[str]  # training text: never-evaluated splits and --text files
    artifacts: ArtifactWriter
    device: torch.device
    dtype: torch.dtype
    steps: int | None = None  # None: the method's default for this device
    batch_size: int | None = None
    lr: float | None = None
    seq_len: int | None = None
    seed: int = 0
    restart: bool = False  # ignore an existing checkpoint
    targets: str = "self"  # "self" (the model's own predictions) | "ground-truth"
    options: dict[str, Any] = field(default_factory=dict)  # method-specific (-o KEY=VALUE)
    log: Callable[[str], None] = print  # a progress line (console and log file)
    console: Any = None  # a rich Console for tables, when there is one


@dataclass
class TuneJob:
    method: str
    model_name: str
    model: Any
    tokenizer: Any
    prompts: list[list[int]]  # encoded held-out prompts, in the formats `accbench run` uses
    stop: Any  # a StopChecker for those prompts
    artifacts: ArtifactWriter
    device: torch.device
    dtype: torch.dtype
    options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print
    console: Any = None
