"""Loading draft weights strictly: accbench's own artifact (``draft.safetensors``) and published
EAGLE-1/2 checkpoints (``yuhuili/EAGLE-*``: ``config.json`` with one layer and
``pytorch_model.bin`` or ``model.safetensors`` holding ``fc.weight`` [h, 2h], ``fc.bias`` [h],
``layers.0.self_attn.*``, ``layers.0.mlp.*``, ``layers.0.post_attention_layernorm.weight``; no
``input_layernorm``; ``embed_tokens.weight`` optional and unused: the base model's embeddings
are the draft's). ``.bin`` files are read with ``torch.load(weights_only=True)``: anything but
plain tensors fails. Every tensor the draft uses is required with its exact shape; a mismatch
is one ``AccbenchError`` line naming the tensor, its shape and the expected shape.

EAGLE-3 checkpoints (``yuhuili/EAGLE3-*``: ``fc.weight`` [h, 3h], ``midlayer.*``, ``norm.weight``,
``lm_head.weight`` [draft_vocab, h], ``d2t`` / ``t2d``) are recognised by their ``midlayer.*`` /
``d2t`` tensors and loaded, as strictly, into :class:`~accbench.methods.eagle.eagle3.Eagle3Draft`
(eagle3.py describes the layout and where each fact comes from).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accbench.methods.core.errors import AccbenchError
from accbench.methods.eagle.eagle3 import Eagle3Draft, check_shapes, is_eagle3, load_eagle3
from accbench.methods.eagle.model import CONFIG_FILE, WEIGHTS_FILE, EagleDraft

WEIGHT_FILES = (WEIGHTS_FILE, "model.safetensors", "pytorch_model.bin")
OPTIONAL = ("embed_tokens.weight",)


def weights_file(directory: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- one line for any unreadable or unsafe file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AccbenchError(f"eagle: cannot read {path} safely: {type(e).__name__}: {msg[:200]}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise AccbenchError(f"eagle: {path} is not a plain name -> tensor dict")
    return state


def read_config(d: Path) -> dict:
    if not (d / CONFIG_FILE).is_file():
        return {}
    try:
        cfg = json.loads((d / CONFIG_FILE).read_text())
    except ValueError as e:
        raise AccbenchError(f"eagle: {d / CONFIG_FILE} is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise AccbenchError(f"eagle: {d / CONFIG_FILE} is not a JSON object")
    return cfg


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, reading as little as the format allows (safetensors: the header;
    ``.bin``: memory-mapped, ``weights_only``), with read_state's one-line errors."""
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # noqa: BLE001
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AccbenchError(f"eagle: cannot read {path} safely: {type(e).__name__}: {msg[:200]}") from None
    return {k: tuple(v.shape) for k, v in read_state(path).items()}


def check_source(directory: str | Path) -> None:
    """Preflight, without the model: the weights read safely and, for EAGLE-3, every tensor
    is there with the shape its config.json implies (the load checks all again against the
    target). One AccbenchError line otherwise."""
    d = Path(directory)
    path = weights_file(d)
    if path is None:
        raise AccbenchError(f"eagle: no {' / '.join(WEIGHT_FILES)} in {d}")
    cfg = read_config(d)
    shapes = read_shapes(path)
    if is_eagle3(shapes):
        if not cfg:
            raise AccbenchError(f"eagle: {path} is an EAGLE-3 checkpoint but {d / CONFIG_FILE} is missing")
        check_shapes(cfg, shapes, path)
    elif "fc.weight" not in shapes:
        raise AccbenchError(f"eagle: {path} lacks tensor fc.weight (not an EAGLE draft)")


def load_draft(model, directory: str | Path) -> tuple[EagleDraft | Eagle3Draft, dict]:
    """The draft model in ``directory`` (accbench artifact, EAGLE-1/2 or EAGLE-3 checkpoint), checked."""
    d = Path(directory)
    path = weights_file(d)
    if path is None:
        raise AccbenchError(f"eagle: no {' / '.join(WEIGHT_FILES)} in {d}")
    cfg = read_config(d)
    state = read_state(path)
    if is_eagle3(state):
        if not cfg:
            raise AccbenchError(f"eagle: {path} is an EAGLE-3 checkpoint but {d / CONFIG_FILE} is missing")
        return load_eagle3(model, cfg, state, path), cfg
    if cfg.get("num_hidden_layers", 1) not in (1, None):
        raise AccbenchError(f"eagle: {d / CONFIG_FILE} has num_hidden_layers={cfg['num_hidden_layers']}, expected 1")
    fuse = int(cfg.get("fuse", 1))
    draft = EagleDraft(model, fuse=fuse)
    expected = {k: tuple(v.shape) for k, v in draft.weights().items()}
    hidden = draft.hidden
    vocab = model.get_input_embeddings().weight.shape[0]
    for k, shape in expected.items():
        if k not in state:
            raise AccbenchError(f"eagle: {path} lacks tensor {k} (expected shape {list(shape)})")
        if tuple(state[k].shape) != shape:
            raise AccbenchError(f"eagle: {path}: tensor {k} has shape {list(state[k].shape)}, expected {list(shape)}")
    for k, v in state.items():
        if k in expected:
            continue
        if k == "embed_tokens.weight":
            if tuple(v.shape) != (vocab, hidden):
                raise AccbenchError(f"eagle: {path}: tensor {k} has shape {list(v.shape)}, "
                                    f"expected {[vocab, hidden]}")
            continue
        raise AccbenchError(f"eagle: {path}: unexpected tensor {k} {list(v.shape)} (not an EAGLE-1/2 draft layer)")
    p = next(model.parameters())
    draft.load_state_dict({k: state[k].to(device=p.device, dtype=p.dtype) for k in expected}, strict=False)
    draft.requires_grad_(False)
    return draft, cfg


def has_weights(directory: str | Path) -> bool:
    return weights_file(Path(directory)) is not None
