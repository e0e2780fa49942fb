"""Peak-memory counters and environment facts recorded with every run."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (outside timed regions)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: writing 5 resets the process's peak RSS (VmHWM)
            _CLEAR_REFS.write_text("5")
        except OSError:
            pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset: CUDA allocator peak, or process peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha(here: Path | None = None) -> str | None:
    """The commit of the accbench source, only when that source is itself a git checkout of
    accbench (the enclosing repository's top level has accbench's pyproject.toml). An installed
    wheel inside some other project's repository gets None: config.json then relies on
    ``packages.accbench``, the installed version."""
    here = (here or Path(__file__)).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not top or not _is_accbench_project(Path(top)):
            return None
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=top, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _is_accbench_project(top: Path) -> bool:
    try:
        text = (top / "pyproject.toml").read_text()
    except OSError:
        return False
    import tomllib

    try:
        return tomllib.loads(text).get("project", {}).get("name") == "accbench"
    except tomllib.TOMLDecodeError:
        return False


def environment(device: torch.device | None = None) -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": {p: _pkg(p) for p in ("accbench", "torch", "transformers", "accelerate", "numpy",
                                          "rouge-score", "gguf", "safetensors", "lm-eval")},
        "git_sha": git_sha(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["cuda"] = torch.version.cuda
    return env
