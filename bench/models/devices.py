"""Device and dtype names as the CLI and configs give them, checked and turned into torch objects."""

from __future__ import annotations

import re

import torch
from accbench.errors import AccbenchError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "f32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "f16": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cpu (CUDA only when asked for). Accepts cpu, cuda, cuda:N."""
    if device is None or (isinstance(device, str) and device.strip() == ""):
        return torch.device("cpu")
    if isinstance(device, torch.device):
        s = str(device)
    else:
        s = str(device).strip().lower()
    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", s)
    if not m or (m.group(1) == "cpu" and m.group(2) not in (None, "0")):
        raise AccbenchError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if m.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise AccbenchError(f"device {s!r} requested but CUDA is not available (torch {torch.__version__}); use cpu")
    index = int(m.group(2)) if m.group(2) is not None else 0
    n = torch.cuda.device_count()
    if index >= n:
        raise AccbenchError(f"device {s!r} does not exist: {n} CUDA device(s) visible")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """None -> float32 on cpu, bfloat16 on cuda. Accepts float32/fp32, bfloat16/bf16, float16/fp16."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16, torch.float16):
            return dtype
        raise AccbenchError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() in ("", "auto")):
        kind = device.type if isinstance(device, torch.device) else str(device or "cpu").strip().lower()
        return torch.bfloat16 if kind.startswith("cuda") else torch.float32
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise AccbenchError(f"unknown dtype {dtype!r}; use float32 (fp32), bfloat16 (bf16) or float16 (fp16)")
    return _DTYPES[key]
