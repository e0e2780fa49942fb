"""Loading a model: resolve its name, read the weights from wherever its source keeps them,
and hand back a :class:`LoadedModel` in eval mode on the requested device and dtype."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from accbench.errors import AccbenchError
from accbench.models.cache import build_lock, cache_dir_for, hub_cached, is_complete_cache
from accbench.models.devices import resolve_device, resolve_dtype
from accbench.models.gguf import build_gguf_cache, gguf_source
from accbench.models.quiet import Progress, quiet_transformers, say
from accbench.models.random_models import build_random_model
from accbench.models.registry import ModelSpec, resolve_spec

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DeviceMap = str | dict | None  # accelerate's device_map: "auto" or {module name: device}


@dataclass
class LoadedModel:
    model: PreTrainedModel  # eval mode, on device, dtype applied, requires_grad False on params
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    name: str  # the name the user gave
    dtype: torch.dtype
    device: torch.device
    source_path: str  # where it was loaded from (cache dir, local dir, hub id)
    load_s: float


def load_model(name: str, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
               progress: Progress = None, device_map: DeviceMap = None) -> LoadedModel:
    """Resolve ``name`` and load it: eval mode, SDPA attention, on ``device`` in ``dtype``.

    ``device_map="auto"`` (or an explicit accelerate device map) shards a model too large for
    one GPU over the visible GPUs instead of moving it to ``device``; ``LoadedModel.device``
    is then where its first parameters (the embeddings) live, where inputs go. Random models
    are built in memory and always moved to ``device`` whole."""
    t0 = time.perf_counter()
    spec = resolve_spec(name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if spec.source == "random":
        device_map = None
    model, tok, source_path = _load_by_source(spec, dt, progress, device_map)
    if device_map is None:
        model = model.to(dev)
    else:
        dev = next(model.parameters()).device
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _finish_tokens(model, tok)
    return LoadedModel(model=model, tokenizer=tok, spec=spec, name=name, dtype=dt, device=dev,
                       source_path=source_path, load_s=time.perf_counter() - t0)


def _load_by_source(spec: ModelSpec, dt: torch.dtype, progress: Progress,
                    device_map: DeviceMap) -> tuple[Any, Any, str]:
    if spec.source == "random":
        model, tok = build_random_model(spec)
        model = model.to(dtype=dt)
        source_path = f"random:{spec.name}"
    elif spec.source == "gguf-package":
        model, tok, source_path = _load_gguf(spec, dt, progress, device_map)
    elif spec.source == "hub":
        model, tok, source_path = _load_hub(spec, dt, progress, device_map)
    elif spec.source == "local":
        model, tok, source_path = _load_local(spec, dt, progress, device_map)
    else:  # pragma: no cover - register_model validates
        raise AccbenchError(f"unknown model source {spec.source!r}")
    return model, tok, source_path


def _from_pretrained(path: str, dtype: torch.dtype, device_map: DeviceMap):
    """Tokenizer and model from a directory or hub id. safetensors are preferred; a checkpoint
    that only has PyTorch .bin files is read with ``weights_only=True`` (tensors only, no code).
    With a ``device_map``, accelerate places the layers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"weights_only": True}
    if device_map is not None:
        kw["device_map"] = device_map
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", **kw)
    return model, tok


def _load_gguf(spec: ModelSpec, dtype: torch.dtype, progress: Progress,
               device_map: DeviceMap) -> tuple[Any, Any, str]:
    src = gguf_source(spec)
    final = cache_dir_for(spec.name if spec.source != "local" else Path(src.origin).stem, src.sha256)
    if not is_complete_cache(final):
        with build_lock(final, progress):
            if not is_complete_cache(final):  # another process may have built it meanwhile
                say(progress, f"{spec.name}: first use, converting the GGUF once into {final}")
                build_gguf_cache(spec, src, final, progress)
    model, tok = _from_pretrained(str(final), dtype, device_map)
    return model, tok, str(final)


def _load_hub(spec: ModelSpec, dtype: torch.dtype, progress: Progress,
              device_map: DeviceMap) -> tuple[Any, Any, str]:
    hub_id = spec.hub_id or spec.name
    if not hub_cached(hub_id):
        why = _hub_unreachable()
        if why:
            raise AccbenchError(f"cannot download {hub_id} (no network?): {why}; it is not in the local "
                                "hugging face cache either. Use a packaged model (accbench list) or a local directory.")
    say(progress, f"loading {hub_id} from the hugging face hub (or its local cache)...")
    try:
        model, tok = _from_pretrained(hub_id, dtype, device_map)
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AccbenchError(
            f"cannot download {hub_id} (no network? gated model without a token?): {first}") from e
    return model, tok, hub_id


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """A reason the hub cannot be reached, or None. Fails fast instead of huggingface_hub's
    minute of retries when there is no network."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # cannot probe through a proxy cheaply; let huggingface_hub try
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port} unreachable ({e.strerror or e})"


def _load_local(spec: ModelSpec, dtype: torch.dtype, progress: Progress,
                device_map: DeviceMap) -> tuple[Any, Any, str]:
    path = spec.path or str(Path(spec.name).expanduser().resolve())
    if spec.gguf_file:
        return _load_gguf(spec, dtype, progress, device_map)
    if not (Path(path) / "config.json").exists():
        raise AccbenchError(f"{path} has no config.json (and no single .gguf file): not a model directory")
    try:
        model, tok = _from_pretrained(path, dtype, device_map)
    except (OSError, ValueError) as e:
        raise AccbenchError(f"cannot load the model in {path}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from e
    return model, tok, path


def _finish_tokens(model, tok) -> None:
    """Pad token and generation-config ids that agree with the tokenizer."""
    gc = model.generation_config
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    if gc.eos_token_id is None and tok.eos_token_id is not None:
        gc.eos_token_id = tok.eos_token_id
    if gc.pad_token_id is None:
        eos = gc.eos_token_id
        gc.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else (
            eos if isinstance(eos, int) or eos is None else eos[0])


# --------------------------------------------------------------------------------------
# Fail-fast checks (before anything is written or loaded)
# --------------------------------------------------------------------------------------

#: hub ids that are gated (a token of an account that accepted the license is needed)
GATED_PREFIXES = ("meta-llama/", "google/gemma", "mistralai/")


def _hf_token() -> str | None:
    tok = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if tok:
        return tok
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # pragma: no cover - an old or broken huggingface_hub
        return None


def load_problem(name: str, probe=None) -> str | None:
    """Why ``name`` cannot be loaded here, as one sentence saying what is missing and how to
    get it, or None when it should load. Reads no weights. ``probe()`` returns a reason the hub
    is unreachable or None (default :func:`_hub_unreachable`; pass a memoized one so a run
    probes the network once, not once per model)."""
    from accbench.models.gguf import package_installed

    spec = resolve_spec(name)
    label = name if spec.hub_id in (None, name) else f"{name} ({spec.hub_id})"
    if spec.source == "gguf-package":
        if not package_installed(spec):
            return (f"model {label} needs the package {spec.package}, which is not installed: "
                    f"{spec.install or 'pip install ' + str(spec.package)}")
        return None
    if spec.source == "local":
        p = Path(spec.path or name)
        if not spec.gguf_file and not (p / "config.json").exists():
            return f"{p} has no config.json (and no single .gguf file): not a model directory"
        return None
    if spec.source != "hub":
        return None
    hub_id = spec.hub_id or spec.name
    if hub_cached(hub_id):
        return None
    gated = hub_id.startswith(GATED_PREFIXES)
    no_token = gated and not _hf_token()
    why = (probe or _hub_unreachable)()
    if why:
        return (f"{label} is not cached here and the Hugging Face hub is unreachable ({why}): connect"
                + (" (it is gated: also accept its license on huggingface.co and set HF_TOKEN)" if no_token else "")
                + ", or pass --model DIR with a local copy")
    if no_token:
        return (f"{label} is gated and no Hugging Face token is set: accept its license on "
                f"https://huggingface.co/{hub_id} and set HF_TOKEN (or run `hf auth login`), "
                "or pass --model DIR with a local copy")
    return None


def memo_probe(timeout: float = 3.0):
    """A hub probe that runs :func:`_hub_unreachable` at most once (per returned callable)."""
    seen: list = []

    def probe() -> str | None:
        if not seen:
            seen.append(_hub_unreachable(timeout))
        return seen[0]

    return probe
