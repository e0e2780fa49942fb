"""Published Medusa heads: FasterDecoding's checkpoints and their vLLM conversion.

Layouts read (strictly: every tensor used, every shape checked against the backbone):

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


def _hub_snapshot(repo: str, patterns: list[str] | None, what: str) -> Path:
    """The local snapshot of hub repository ``repo`` (cache first, then the network)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of transformers
        raise AccbenchError(f"{what} {repo}: huggingface_hub is not installed; give a local directory") from None
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
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


def parse_heads(tensors: dict[str, torch.Tensor], hidden: int, vocab: int, where: str
                ) -> tuple[str, list[list[tuple[torch.Tensor, torch.Tensor | None]]], list[torch.Tensor]]:
    """(layout, per head its blocks' (W, b), per head its projection), strictly checked."""
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
        raise AccbenchError(f"{where}: no Medusa head tensors (expected '0.0.linear.weight'... or "
                            f"'lm_heads.0.weight'...; found e.g. {sorted(keys)[0]!r})")
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
            raise AccbenchError(f"{where}: missing tensor {k} (expected shape {expected[k]}; "
                                f"{n} heads of {n_layers} blocks)")
        if _shape(tensors[k]) != expected[k]:
            raise AccbenchError(f"{where}: tensor {k} has shape {_shape(tensors[k])}, expected {expected[k]} "
                                f"(backbone hidden size {hidden}, vocabulary {vocab})")
    extra = sorted(keys - set(expected))
    if extra:
        raise AccbenchError(f"{where}: unexpected tensor {extra[0]} (shape {_shape(tensors[extra[0]])})"
                            + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
    blocks, projs = [], []
    for i in range(n):
        w, b, p = names(i)
        blocks.append([(tensors[wn], tensors[bn] if bn is not None else None) for wn, bn in zip(w, b)])
        projs.append(tensors[p])
    return layout, blocks, projs


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
    heads = MedusaHeads(hidden, vocab, k, n_layers, own_proj=True)
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
    heads.to(device=emb.device, dtype=emb.dtype).eval()
    heads.requires_grad_(False)
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
