"""Published Medusa heads: FasterDecoding's checkpoints and their vLLM conversion.

Layouts read (strictly: every tensor used, every shape checked against the backbone):

- FasterDecoding's Medusa-2 models (``FasterDecoding/medusa-1.0-zephyr-7b-beta``,
  ``FasterDecoding/medusa-v1.0-vicuna-7b-v1.5``: ``MedusaModelMistral`` / ``MedusaModelLlama``
  saved with ``save_pretrained``): one Hugging Face model folder, ``config.json`` (the backbone's
  config plus ``medusa_num_heads`` / ``medusa_num_layers``) and sharded weights
  (``pytorch_model-0000k-of-0000n.bin`` + ``pytorch_model.bin.index.json``, some also
  ``model-*.safetensors`` + ``model.safetensors.index.json``) holding the fine-tuned backbone
  (``model.*``, ``lm_head.weight``) and the heads as ``medusa_head.{i}.{j}.linear.weight|bias``
  / ``medusa_head.{i}.{L}.weight``. See :func:`load_medusa2_source`.

- FasterDecoding (``medusa_lm_head.safetensors`` or ``medusa_lm_head.pt``, a pickle read only
  with ``torch.load(weights_only=True)``, next to a ``config.json``): head i is a sequence of L
  residual blocks ``x + SiLU(W x + b)`` (``{i}.{j}.linear.weight`` [H, H], ``{i}.{j}.linear.bias``
  [H]) then its own projection ``{i}.{L}.weight`` [V, H] (no bias). The number of heads is
  counted from the tensors: the published configs' ``medusa_num_heads`` can disagree (2 in the
  config of a file holding 5 heads); the disagreement is reported, not trusted.
- vLLM's conversion (``blocks.{i}.layers.{j}.weight``, ``lm_heads.{i}.weight``, no biases: zero).

A SOURCE is a local directory or a hugging face hub id (downloaded, or read from the local cache).
The heads become :class:`MedusaHeads` with ``own_proj=True``.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from accbench.methods.core.errors import AccbenchError
from accbench.methods.core.quirks import hidden_size
from accbench.methods.medusa.heads import HEADS_FILE, MedusaHeads

PUBLISHED_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def heads_file(path: Path) -> Path | None:
    """The published heads file in directory ``path`` (safetensors preferred), or None."""
    for name in PUBLISHED_FILES:
        if (path / name).is_file():
            return path / name
    return None


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not Path(source).expanduser().exists()


def _hub_snapshot(repo: str, patterns: list[str] | None, what: str, complete=None) -> Path:
    """The local snapshot of hub repository ``repo`` (cache first, then the network).
    ``complete(path)``: whether a cached snapshot holds everything (else it is downloaded)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of transformers
        raise AccbenchError(f"{what} {repo}: huggingface_hub is not installed; give a local directory") from None
    try:
        cached = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
        if complete is None or complete(cached):
            return cached
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    from accbench.models.loading import _hub_unreachable

    why = _hub_unreachable()
    if why:
        raise AccbenchError(f"{what} {repo} is not in the local hugging face cache and downloading it needs "
                            f"network ({why}): download it elsewhere and pass a local directory")
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - one line for any hub failure
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AccbenchError(f"{what} {repo}: download failed ({first}); pass a local directory instead") from None


def resolve_source(source: str, what: str = "medusa heads", patterns: list[str] | None = None) -> Path:
    """A local directory for ``source`` (a directory, or a hub id fetched/cached)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise AccbenchError(f"{what} {source}: not a directory")
    if looks_like_hub_id(source):
        return _hub_snapshot(source, patterns, what)
    raise AccbenchError(f"{what} {source}: no such directory (and not a hugging face hub id)")


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a published heads file; one-line errors for anything else."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as e:  # noqa: BLE001
            raise AccbenchError(f"{file}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else e})") \
                from None
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refuses arbitrary pickled objects
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AccbenchError(f"{file}: refused to load (not a plain tensor state dict; torch.load weights_only: "
                            f"{first[:160]})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise AccbenchError(f"{file}: holds a {type(obj).__name__}, not a state dict of named tensors")
    return obj


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def parse_heads(tensors: dict[str, torch.Tensor], hidden: int, vocab: int, where: str, prefix: str = ""
                ) -> tuple[str, list[list[tuple[torch.Tensor, torch.Tensor | None]]], list[torch.Tensor]]:
    """(layout, per head its blocks' (W, b), per head its projection), strictly checked.
    ``prefix``: how the tensors are named in the file (Medusa-2 models: ``medusa_head.``)."""
    keys = set(tensors)
    if not keys:
        raise AccbenchError(f"{where}: holds no tensors")
    vllm = any(k.startswith(("blocks.", "lm_heads.")) for k in keys)
    if vllm:
        layout = "vllm"
        heads = sorted({int(m.group(1)) for k in keys if (m := re.match(r"lm_heads\.(\d+)\.weight$", k))})
        n = len(heads)
        layers = sorted({int(m.group(1)) for k in keys if (m := re.match(r"blocks\.0\.layers\.(\d+)\.weight$", k))})
        n_layers = len(layers)
        has_bias = any(k.endswith(".bias") for k in keys)

        def names(i):
            w = [f"blocks.{i}.layers.{j}.weight" for j in range(n_layers)]
            b = [f"blocks.{i}.layers.{j}.bias" for j in range(n_layers)] if has_bias else [None] * n_layers
            return w, b, f"lm_heads.{i}.weight"
    else:
        layout = "fasterdecoding"
        heads = sorted({int(k.split(".", 1)[0]) for k in keys if k.split(".", 1)[0].isdigit()})
        n = len(heads)
        n_layers = len({k for k in keys if re.match(r"0\.\d+\.linear\.weight$", k)})

        def names(i):
            w = [f"{i}.{j}.linear.weight" for j in range(n_layers)]
            b = [f"{i}.{j}.linear.bias" for j in range(n_layers)]
            return w, b, f"{i}.{n_layers}.weight"
    if n == 0:
        raise AccbenchError(f"{where}: no Medusa head tensors (expected '{prefix}0.0.linear.weight'... or "
                            f"'lm_heads.0.weight'...; found e.g. {prefix}{sorted(keys)[0]})")
    expected: dict[str, list[int]] = {}
    for i in range(n):
        w, b, p = names(i)
        for wn, bn in zip(w, b):
            expected[wn] = [hidden, hidden]
            if bn is not None:
                expected[bn] = [hidden]
        expected[p] = [vocab, hidden]
    for k in sorted(expected, key=lambda s: [int(x) if x.isdigit() else x for x in s.split(".")]):
        if k not in tensors:
            raise AccbenchError(f"{where}: missing tensor {prefix}{k} (expected shape {expected[k]}; "
                                f"{n} heads of {n_layers} blocks)")
        if _shape(tensors[k]) != expected[k]:
            raise AccbenchError(f"{where}: tensor {prefix}{k} has shape {_shape(tensors[k])}, expected {expected[k]} "
                                f"(backbone hidden size {hidden}, vocabulary {vocab})")
    extra = sorted(keys - set(expected))
    if extra:
        raise AccbenchError(f"{where}: unexpected tensor {prefix}{extra[0]} (shape {_shape(tensors[extra[0]])})"
                            + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
    blocks, projs = [], []
    for i in range(n):
        w, b, p = names(i)
        blocks.append([(tensors[wn], tensors[bn] if bn is not None else None) for wn, bn in zip(w, b)])
        projs.append(tensors[p])
    return layout, blocks, projs


def build_heads(blocks, projs, k: int, hidden: int, vocab: int, like: torch.Tensor) -> MedusaHeads:
    """:class:`MedusaHeads` (own projections) holding the first ``k`` parsed heads, on the
    device and dtype of ``like`` (the backbone's lm_head weight), frozen."""
    heads = MedusaHeads(hidden, vocab, k, len(blocks[0]), own_proj=True)
    with torch.no_grad():
        for i in range(k):
            for j, (w, b) in enumerate(blocks[i]):
                lin = heads.blocks[i][j].linear
                lin.weight.copy_(w.float())
                if b is not None:
                    lin.bias.copy_(b.float())
                else:
                    lin.bias.zero_()
            heads.proj[i].copy_(projs[i].float())
    heads.to(device=like.device, dtype=like.dtype).eval()
    heads.requires_grad_(False)
    return heads


def load_published_heads(source: str, model, num_heads: int | None = None,
                         log=None) -> tuple[MedusaHeads, dict[str, Any], Path]:
    """The heads of published checkpoint ``source`` fitted to ``model`` (its device and dtype,
    frozen), an artifact-style config (``heads``, empty ``stats``, ``published``) and the dir."""
    path = resolve_source(source, patterns=["config.json", *PUBLISHED_FILES])
    file = heads_file(path)
    if file is None:
        raise AccbenchError(f"medusa heads {source}: no {HEADS_FILE} (an accbench artifact) nor "
                            f"{' / '.join(PUBLISHED_FILES)} (a published checkpoint) in {path}")
    hub_cfg: dict[str, Any] = {}
    if (path / "config.json").is_file():
        try:
            hub_cfg = json.loads((path / "config.json").read_text())
        except ValueError as e:
            raise AccbenchError(f"{path / 'config.json'}: not JSON ({e})") from None
    emb = model.get_output_embeddings().weight
    hidden, vocab = hidden_size(model), emb.shape[0]
    layout, blocks, projs = parse_heads(read_tensors(file), hidden, vocab, str(file))
    found = len(projs)
    notes = []
    declared = hub_cfg.get("medusa_num_heads")
    if declared is not None and int(declared) != found:
        notes.append(f"config.json says medusa_num_heads={declared} but {file.name} holds {found} heads: "
                     f"using the tensors' count")
    declared_layers = hub_cfg.get("medusa_num_layers")
    if declared_layers is not None and int(declared_layers) != len(blocks[0]):
        notes.append(f"config.json says medusa_num_layers={declared_layers} but the heads have "
                     f"{len(blocks[0])} blocks: using the tensors")
    k = found if num_heads is None else int(num_heads)
    if k < 1 or k > found:
        raise AccbenchError(f"medusa num_heads={k}: {file} holds {found} heads")
    n_layers = len(blocks[0])
    heads = build_heads(blocks, projs, k, hidden, vocab, emb)
    for note in notes:
        (log or (lambda s: print(f"warning: {s}", file=sys.stderr)))(note)
    cfg = {"method": "published", "heads": heads.config(), "stats": {},
           "published": {"source": source, "dir": str(path), "file": file.name, "layout": layout,
                         "heads_in_file": found, "heads_used": k, "blocks_per_head": n_layers,
                         "config_medusa_num_heads": declared, "notes": notes}}
    return heads, cfg, path


def check_source(source: str, what: str = "medusa heads") -> None:
    """Preflight: ``source`` is an accbench artifact dir, a published heads dir, or a hub id
    that is cached or reachable. Raises AccbenchError (one line) otherwise; loads nothing."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / HEADS_FILE).is_file() and heads_file(path) is None:
            raise AccbenchError(f"{what} {source}: no {HEADS_FILE} nor {' / '.join(PUBLISHED_FILES)} in it")
        return
    if path.exists() or not looks_like_hub_id(source):
        raise AccbenchError(f"{what} {source}: no such directory (and not a hugging face hub id)")
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(source, allow_patterns=["config.json", *PUBLISHED_FILES], local_files_only=True)
        return
    except Exception:  # noqa: BLE001 - not cached
        pass
    from accbench.models.loading import _hub_unreachable

    why = _hub_unreachable(timeout=2.0)
    if why:
        raise AccbenchError(f"{what} {source} is not in the local hugging face cache and downloading it needs "
                            f"network ({why}): download it elsewhere and pass a local directory")


# --------------------------------------------------------------------------------------
# Medusa-2 models: a fine-tuned backbone and its heads in one Hugging Face model folder
# --------------------------------------------------------------------------------------

MEDUSA2_PREFIX = "medusa_head."
MODEL_WEIGHTS = (("model.safetensors.index.json", "model.safetensors"),
                 ("pytorch_model.bin.index.json", "pytorch_model.bin"))
_DERIVED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # older checkpoints store it; recomputed from the config
MEDUSA2_WHAT = "medusa2.source"


def model_weight_files(path: Path) -> list[Path] | None:
    """The weight files of Hugging Face model folder ``path``: safetensors preferred, a sharded
    model's shards from its index (every shard must be there); None when it holds no weights."""
    broken = None
    for index, single in MODEL_WEIGHTS:
        if (path / index).is_file():
            try:
                names = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise AccbenchError(f"{path / index}: not a weight index ({type(e).__name__}: {e})") from None
            missing = [n for n in names if not (path / n).is_file()]
            if not missing:
                return [path / n for n in names]
            broken = broken or f"{path / index} names {missing[0]}, which is not in {path}"
        elif (path / single).is_file():
            return [path / single]
    if broken:
        raise AccbenchError(f"{MEDUSA2_WHAT}: {broken} (an incomplete download?)")
    return None


def _weights_complete(path: Path) -> bool:
    try:
        return (path / "config.json").is_file() and model_weight_files(path) is not None
    except AccbenchError:
        return False


def resolve_medusa2_source(source: str) -> Path:
    """A local Medusa-2 model folder for ``source`` (a directory, or a hub id: the cached
    snapshot, else downloaded -- one weight format only, safetensors when the repository has it)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise AccbenchError(f"{MEDUSA2_WHAT} {source}: not a directory")
    if not looks_like_hub_id(source):
        raise AccbenchError(f"{MEDUSA2_WHAT} {source}: no such directory (and not a hugging face hub id)")
    meta = _hub_snapshot(source, ["*.json"], MEDUSA2_WHAT, complete=lambda p: (p / "config.json").is_file())
    if (meta / MODEL_WEIGHTS[0][0]).is_file():
        weights = ["*.safetensors"]
    elif (meta / MODEL_WEIGHTS[1][0]).is_file():
        weights = ["pytorch_model*.bin"]
    else:
        weights = ["model.safetensors", "pytorch_model.bin"]
    return _hub_snapshot(source, ["*.json", *weights], MEDUSA2_WHAT, complete=_weights_complete)


def _read_config(path: Path) -> dict[str, Any]:
    f = path / "config.json"
    if not f.is_file():
        raise AccbenchError(f"{MEDUSA2_WHAT} {path}: no config.json (a Medusa-2 model folder is a Hugging Face "
                            "model folder: config.json and the weights)")
    try:
        cfg = json.loads(f.read_text())
    except ValueError as e:
        raise AccbenchError(f"{f}: not JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise AccbenchError(f"{f}: not a JSON object")
    return cfg


def _check_config(cfg: dict[str, Any], model, path: Path) -> None:
    """The source's architecture equals the run's --model's (before reading gigabytes)."""
    from accbench.methods.core.quirks import text_config

    ours = text_config(model)
    theirs = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
                "intermediate_size"):
        a, b = theirs.get(key), getattr(ours, key, None)
        if a is None or b is None or a == b:
            continue
        base = cfg.get("base_model_name_or_path") or cfg.get("_name_or_path")
        raise AccbenchError(f"{MEDUSA2_WHAT} {path}: its config.json says {key}={a}, the run's --model has "
                            f"{key}={b}: --model must be the original model this Medusa-2 model was fine-tuned "
                            f"from" + (f" (its config names {base})" if base else ""))


def _alias_groups(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """State-dict keys that share storage (tied embeddings) -> one representative key."""
    first: dict[tuple, str] = {}
    out = {}
    for k, v in state.items():
        sig = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.device.type != "meta" else (k,)
        out[k] = first.setdefault(sig, k)
    return out


@torch.no_grad()
def load_medusa2_source(source: str, model, num_heads: int | None = None, log=None
                        ) -> tuple[MedusaHeads, dict[str, Any], Any, Path]:
    """A published Medusa-2 model (FasterDecoding's ``MedusaModelLlama`` / ``MedusaModelMistral``
    saved with ``save_pretrained``): the fine-tuned backbone as a private copy of ``model``
    (every backbone tensor replaced, shapes checked) and its ``medusa_head.*`` heads.
    Returns (heads, artifact-style config, backbone, folder)."""
    path = resolve_medusa2_source(source)
    hub_cfg = _read_config(path)
    _check_config(hub_cfg, model, path)
    files = model_weight_files(path)
    if files is None:
        hint = (" (it holds Medusa-1 heads: --methods medusa1 -o medusa1.heads=...)" if heads_file(path) else "")
        raise AccbenchError(f"{MEDUSA2_WHAT} {path}: no model weights (model.safetensors[.index.json] or "
                            f"pytorch_model.bin[.index.json]){hint}")
    backbone = copy.deepcopy(model)
    backbone.requires_grad_(False)
    state = backbone.state_dict()
    group = _alias_groups(state)
    loaded: set[str] = set()
    head_t: dict[str, torch.Tensor] = {}
    for f in files:
        for k, t in read_tensors(f).items():
            if k.startswith(MEDUSA2_PREFIX):
                head_t[k[len(MEDUSA2_PREFIX):]] = t
                continue
            if k not in state:
                if _DERIVED.search(k):
                    continue
                raise AccbenchError(f"{f}: unexpected tensor {k} (shape {_shape(t)}): not a tensor of the "
                                    f"--model architecture ({type(model).__name__}) nor medusa_head.*")
            if _shape(t) != _shape(state[k]):
                raise AccbenchError(f"{f}: tensor {k} has shape {_shape(t)}, expected {_shape(state[k])} "
                                    f"(the --model's)")
            state[k].copy_(t)
            loaded.add(group[k])
    for k in state:
        if group[k] == k and k not in loaded:
            raise AccbenchError(f"{MEDUSA2_WHAT} {path}: missing tensor {k} (expected shape {_shape(state[k])}); "
                                "every backbone tensor must be in the Medusa-2 model")
    if not head_t:
        raise AccbenchError(f"{MEDUSA2_WHAT} {path}: no {MEDUSA2_PREFIX}* tensors: a backbone without Medusa heads")
    emb = backbone.get_output_embeddings().weight
    hidden, vocab = hidden_size(backbone), emb.shape[0]
    layout, blocks, projs = parse_heads(head_t, hidden, vocab, f"{MEDUSA2_WHAT} {path}", prefix=MEDUSA2_PREFIX)
    if layout != "fasterdecoding":
        raise AccbenchError(f"{MEDUSA2_WHAT} {path}: medusa_head.* tensors in the {layout} layout")
    found = len(projs)
    notes = []
    declared = hub_cfg.get("medusa_num_heads")
    if declared is not None and int(declared) != found:
        notes.append(f"config.json says medusa_num_heads={declared} but the model holds {found} heads: using the "
                     f"tensors' count")
    declared_layers = hub_cfg.get("medusa_num_layers")
    if declared_layers is not None and int(declared_layers) != len(blocks[0]):
        notes.append(f"config.json says medusa_num_layers={declared_layers} but the heads have "
                     f"{len(blocks[0])} blocks: using the tensors")
    k = found if num_heads is None else int(num_heads)
    if k < 1 or k > found:
        raise AccbenchError(f"medusa2 num_heads={k}: {path} holds {found} heads")
    heads = build_heads(blocks, projs, k, hidden, vocab, emb)
    for note in notes:
        (log or (lambda s: print(f"warning: {s}", file=sys.stderr)))(note)
    base = hub_cfg.get("base_model_name_or_path") or hub_cfg.get("_name_or_path")
    cfg = {"method": "published-medusa2", "heads": heads.config(), "stats": {},
           "published": {"source": source, "dir": str(path), "file": ", ".join(f.name for f in files),
                         "layout": "medusa2-model", "heads_in_file": found, "heads_used": k,
                         "blocks_per_head": len(blocks[0]), "config_medusa_num_heads": declared,
                         "config_base_model": base, "backbone_tensors": len(loaded), "notes": notes}}
    return heads, cfg, backbone, path


def check_medusa2_source(source: str) -> None:
    """Preflight for ``medusa2.source``: a local Medusa-2 model folder (config.json and complete
    weights) or a hub id that is cached or reachable. One-line AccbenchError; loads nothing."""
    path = Path(source).expanduser()
    if path.is_dir():
        _read_config(path)
        if model_weight_files(path) is None:
            hint = (": it holds Medusa-1 heads (--methods medusa1 -o medusa1.heads=...)" if heads_file(path) else "")
            raise AccbenchError(f"{MEDUSA2_WHAT} {source}: no model weights (model.safetensors[.index.json] or "
                                f"pytorch_model.bin[.index.json]){hint}")
        return
    if path.exists() or not looks_like_hub_id(source):
        raise AccbenchError(f"{MEDUSA2_WHAT} {source}: no such directory (and not a hugging face hub id)")
    try:
        from huggingface_hub import snapshot_download

        cached = Path(snapshot_download(source, allow_patterns=["*.json"], local_files_only=True))
        if _weights_complete(cached):
            return
    except Exception:  # noqa: BLE001 - not cached
        pass
    from accbench.models.loading import _hub_unreachable

    why = _hub_unreachable(timeout=2.0)
    if why:
        raise AccbenchError(f"{MEDUSA2_WHAT} {source} is not in the local hugging face cache and downloading it "
                            f"needs network ({why}): download it elsewhere and pass a local directory")


def canonical_model(name: str) -> str:
    """What a model name means, for comparing two names: a registry name's hub id, a local
    directory's resolved path, else the name (hub ids compare case-insensitively)."""
    p = Path(name).expanduser()
    if p.exists():
        return str(p.resolve())
    try:
        from accbench.models.registry import resolve_spec

        spec = resolve_spec(name)
        if spec.hub_id:
            return spec.hub_id.lower()
        if spec.path:
            return str(Path(spec.path).expanduser().resolve())
    except Exception:  # noqa: BLE001 - an unknown name compares as written
        pass
    return name.lower()
