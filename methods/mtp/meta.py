"""Meta's released MTP checkpoints (facebook/multi-token-prediction) mapped onto the MTP decoder.

Their trunk is ``layers[:-1]``; the last layer is head 1 and the extra heads run in parallel
with it, so here they become a plain Llama model plus :class:`MTPHeads` with
``branch_layer = n_layers - 1``. Convert one into a model directory ``--model OUT`` loads::

    python -m accbench.methods.mtp.meta convert SRC OUT [--tokenizer DIR]

or, with the trunk already a Hugging Face model, read only the extra heads from the Meta
folder: ``accbench run --methods mtp --model TRUNK -o mtp.heads=SRC`` (:func:`load_meta_heads`).
The folder: ``params.json`` (``dim``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``vocab_size``,
``norm_eps``, ``rope_theta``, ``n_future_tokens``) and ``consolidated.pth`` (read only with
``torch.load(weights_only=True)``; or ``*.safetensors``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accbench.methods.core.errors import AccbenchError
from accbench.methods.mtp.heads import MTPHeads


def _unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's q/k rows pair dims (2i, 2i+1) for rotary (complex multiply); transformers' Llama
    rotates halves (i, i + d/2). Reorder the rows of each head from interleaved to halves."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.view(n_heads, hd // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


_META_LAYER = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def _meta_layer_state(sd: dict, prefix: str, n_heads: int, n_kv: int) -> dict[str, torch.Tensor]:
    out = {}
    for src, dst in _META_LAYER.items():
        w = sd[prefix + src]
        if src == "attention.wq.weight":
            w = _unpermute_rotary(w, n_heads)
        elif src == "attention.wk.weight":
            w = _unpermute_rotary(w, n_kv)
        out[dst] = w
    return out


PARAMS_FILE = "params.json"


def meta_weight_files(d: Path) -> list[Path]:
    """The weight files of Meta checkpoint folder ``d`` (``*.safetensors``, else one
    ``consolidated*.pth`` / ``*.pth`` / ``*.pt``); [] when there are none."""
    st = sorted(d.glob("*.safetensors"))
    return st or sorted(d.glob("consolidated*.pth")) or sorted(d.glob("*.pth")) or sorted(d.glob("*.pt"))


def is_meta_checkpoint(path: str | Path) -> bool:
    """``path`` is a Meta checkpoint folder: ``params.json`` and a weight file."""
    d = Path(path).expanduser()
    return (d / PARAMS_FILE).is_file() and bool(meta_weight_files(d))


def _load_pth(f: Path) -> dict:
    try:
        obj = torch.load(str(f), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refuses arbitrary pickled objects: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AccbenchError(f"{f}: refused to load (not a plain tensor state dict; torch.load weights_only: "
                            f"{first[:160]})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise AccbenchError(f"{f}: holds a {type(obj).__name__}, not a state dict of named tensors")
    return obj


def read_meta_state_dict(path: str | Path) -> tuple[dict, dict]:
    """(params, state dict) from a Meta checkpoint directory: ``params.json`` plus
    ``*.safetensors`` or ``consolidated*.pth`` (read with ``weights_only=True``: no pickle code).
    Anything else is a one-line :class:`AccbenchError`."""
    d = Path(path).expanduser()
    if not (d / PARAMS_FILE).is_file():
        raise AccbenchError(f"{d}: no {PARAMS_FILE} (a Meta checkpoint folder holds params.json and consolidated.pth)")
    try:
        params = json.loads((d / PARAMS_FILE).read_text())
    except ValueError as e:
        raise AccbenchError(f"{d / PARAMS_FILE}: not JSON ({e})") from None
    if not isinstance(params, dict):
        raise AccbenchError(f"{d / PARAMS_FILE}: not a JSON object")
    files = meta_weight_files(d)
    if not files:
        raise AccbenchError(f"{d}: no *.safetensors or consolidated*.pth next to {PARAMS_FILE}")
    if files[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: dict = {}
        for f in files:
            try:
                sd.update(load_file(str(f)))
            except Exception as e:  # noqa: BLE001
                raise AccbenchError(f"{f}: not a readable safetensors file ({(str(e).splitlines() or [e])[0]})") \
                    from None
    elif len(files) == 1:
        sd = _load_pth(files[0])
    else:
        raise AccbenchError(f"{d}: {len(files)} model-parallel shards ({files[0].name}, ...); merge them into one "
                            "state dict first")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return params, sd


def load_meta_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32):
    """Meta's MTP layout -> (``LlamaForCausalLM`` = trunk + next-token head, :class:`MTPHeads`).

    The layout: a Llama state dict (``tok_embeddings``, ``layers.{i}.attention.wq`` ...,
    ``norm``, ``output``) in which the trunk is ``layers[:-1]``, head 1 is ``layers[-1]``, and
    heads 2..n (``params["n_future_tokens"]`` in all) are ``extra_heads.{j}.*`` with the same
    layer naming, all reading the output of ``layers[-2]``. Here that is a plain Llama model (so
    greedy decoding with head 1 is exactly the released next-token model) plus heads with
    ``branch_layer = n_layers - 1``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    params, sd = read_meta_state_dict(path)
    dim, n_layers, n_heads = int(params["dim"]), int(params["n_layers"]), int(params["n_heads"])
    n_kv = int(params.get("n_kv_heads") or n_heads)
    vocab = int(params.get("vocab_size", -1))
    if vocab <= 0:
        vocab = sd["tok_embeddings.weight"].shape[0]
    n_future = int(params.get("n_future_tokens", 1))
    extra = sorted({int(k.split(".")[1]) for k in sd if k.startswith("extra_heads.")})
    if n_future < 2 or len(extra) != n_future - 1:
        raise AccbenchError(f"{path}: n_future_tokens={n_future} but {len(extra)} extra_heads in the state dict")
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=dim, intermediate_size=int(sd["layers.0.feed_forward.w1.weight"].shape[0]),
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv,
        rms_norm_eps=float(params.get("norm_eps", 1e-5)), rope_theta=float(params.get("rope_theta", 10000.0)),
        max_position_embeddings=int(params.get("max_seq_len", 4096)), tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": float(params.get("rope_theta", 10000.0))}
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    hf = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"],
          "lm_head.weight": sd["output.weight"]}
    for i in range(n_layers):
        for k, v in _meta_layer_state(sd, f"layers.{i}.", n_heads, n_kv).items():
            hf[f"model.layers.{i}.{k}"] = v
    model.load_state_dict({k: v.to(dtype) for k, v in hf.items()}, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)  # buffers off the meta device
    model.to(dtype).eval()
    heads = MTPHeads(model, n_future - 1, branch_layer=n_layers - 1)
    hs = {}
    for j in extra:
        for k, v in _meta_layer_state(sd, f"extra_heads.{j}.", n_heads, n_kv).items():
            hs[f"layers.{j}.{k}"] = v.to(dtype)
    missing, unexpected = heads.load_state_dict(hs, strict=False)
    missing = [k for k in missing if not k.startswith("rotary.")]
    if missing or unexpected:
        raise AccbenchError(f"extra heads do not map onto {heads.layer_class}: missing {missing[:3]}, "
                            f"unexpected {list(unexpected)[:3]}")
    heads.eval()
    return model, heads


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


@torch.no_grad()
def load_meta_heads(path: str | Path, model) -> MTPHeads:
    """The extra heads of Meta checkpoint folder ``path`` (``-o mtp.heads=DIR``) on the run's
    ``model``, which must be that checkpoint's trunk + next-token head as a Hugging Face Llama
    (e.g. ``python -m accbench.methods.mtp.meta convert``, or any conversion of the same weights).

    Strict: params.json must describe ``model`` (dim, layers, heads, kv heads, vocabulary);
    every tensor of the state dict is accounted for with its shape checked (trunk tensors
    against the model's; ``extra_heads.{j}.*`` against the head layers); the model's final norm,
    unembedding, embedding and last layer must equal the checkpoint's (heads on another trunk
    are meaningless). Any problem is one :class:`AccbenchError` line naming the tensor."""
    from accbench.methods.core.quirks import text_config

    d = Path(path).expanduser()
    params, sd = read_meta_state_dict(d)
    cfg = text_config(model)
    try:
        dim, n_layers, n_heads = int(params["dim"]), int(params["n_layers"]), int(params["n_heads"])
    except (KeyError, TypeError, ValueError) as e:
        raise AccbenchError(f"{d / PARAMS_FILE}: needs dim, n_layers and n_heads ({type(e).__name__}: {e})") from None
    n_kv = int(params.get("n_kv_heads") or n_heads)
    vocab = model.get_output_embeddings().weight.shape[0]
    want = {"dim": (dim, cfg.hidden_size), "n_layers": (n_layers, cfg.num_hidden_layers),
            "n_heads": (n_heads, cfg.num_attention_heads),
            "n_kv_heads": (n_kv, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)}
    if int(params.get("vocab_size", -1)) > 0:
        want["vocab_size"] = (int(params["vocab_size"]), vocab)
    for key, (a, b) in want.items():
        if a != b:
            raise AccbenchError(f"{d / PARAMS_FILE}: {key}={a} but the run's --model has {b}: --model must be this "
                                f"checkpoint's trunk (python -m accbench.methods.mtp.meta convert {d} OUT; --model OUT)")
    extra = sorted({int(k.split(".")[1]) for k in sd if k.startswith("extra_heads.") and k.split(".")[1].isdigit()})
    n_future = int(params.get("n_future_tokens", len(extra) + 1))
    if not extra:
        raise AccbenchError(f"{d}: no extra_heads.* tensors (an MTP checkpoint stores heads 2..n there)")
    if extra != list(range(len(extra))) or n_future != len(extra) + 1:
        raise AccbenchError(f"{d}: params.json says n_future_tokens={n_future} but the state dict holds extra_heads "
                            f"{extra} (expected 0..{n_future - 2})")
    heads = MTPHeads(model, len(extra), branch_layer=n_layers - 1)
    # every tensor the checkpoint must hold, with its shape in Meta's layout
    hf_state = model.state_dict()
    expected: dict[str, tuple[list[int], str | None]] = {
        "tok_embeddings.weight": (_shape(hf_state["model.embed_tokens.weight"]), "model.embed_tokens.weight"),
        "norm.weight": (_shape(hf_state["model.norm.weight"]), "model.norm.weight"),
        "output.weight": (_shape(model.get_output_embeddings().weight), None)}
    layer_state = heads.layers[0].state_dict()
    for src, dst in _META_LAYER.items():
        if dst not in layer_state:
            raise AccbenchError(f"the run's --model ({type(model).__name__}) has no {dst} in its layers: Meta's MTP "
                                "checkpoints are Llama models")
        for i in range(n_layers):
            expected[f"layers.{i}.{src}"] = (_shape(layer_state[dst]), f"model.layers.{i}.{dst}")
        for j in extra:
            expected[f"extra_heads.{j}.{src}"] = (_shape(layer_state[dst]), None)
    for k in sorted(expected, key=lambda s: [int(x) if x.isdigit() else x for x in s.split(".")]):
        if k not in sd:
            raise AccbenchError(f"{d}: missing tensor {k} (expected shape {expected[k][0]})")
        if _shape(sd[k]) != expected[k][0]:
            raise AccbenchError(f"{d}: tensor {k} has shape {_shape(sd[k])}, expected {expected[k][0]}")
    unexpected = sorted(k for k in sd if k not in expected and not k.endswith("rope.freqs"))
    if unexpected:
        raise AccbenchError(f"{d}: unexpected tensor {unexpected[0]} (shape {_shape(sd[unexpected[0]])})"
                            + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
    # the run's model must be this checkpoint's trunk
    last = n_layers - 1
    ours = {"tok_embeddings.weight": hf_state["model.embed_tokens.weight"], "norm.weight": hf_state["model.norm.weight"],
            "output.weight": model.get_output_embeddings().weight}
    for k, v in _meta_layer_state(sd, f"layers.{last}.", n_heads, n_kv).items():
        ours[f"layers.{last}.{k}"] = hf_state[f"model.layers.{last}.{k}"]
        sd[f"layers.{last}.{k}"] = v
    for k, mine in ours.items():
        theirs = sd[k].to(device=mine.device, dtype=torch.float32)
        if not torch.allclose(mine.detach().float(), theirs, rtol=1e-2, atol=1e-3):
            raise AccbenchError(f"{d}: the run's --model differs from this checkpoint's trunk ({k}): Meta's extra "
                                f"heads need their own trunk (python -m accbench.methods.mtp.meta convert {d} OUT; "
                                "--model OUT)")
    p = next(model.parameters())
    for j in extra:
        state = {k: v.to(device=p.device, dtype=p.dtype)
                 for k, v in _meta_layer_state(sd, f"extra_heads.{j}.", n_heads, n_kv).items()}
        heads.layers[j].load_state_dict(state, strict=True)
    heads.eval()
    return heads


def convert_meta_checkpoint(src: str | Path, out: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write a Meta MTP checkpoint as a model directory accbench loads with ``--model OUT``:
    the Llama model (safetensors) + ``heads.safetensors`` / ``mtp.json`` (found by ``mtp``
    automatically). ``tokenizer_dir``: a Llama-2 tokenizer to copy in (Meta ships
    ``tokenizer.model``; the converted directory needs a transformers tokenizer)."""
    out = Path(out)
    model, heads = load_meta_checkpoint(src)
    model.save_pretrained(str(out))
    heads.save(out, source=str(src), origin="meta-mtp")
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out))
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m accbench.methods.mtp.meta")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert a Meta MTP checkpoint (params.json + consolidated.00.pth)")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--tokenizer", default=None)
    a = ap.parse_args()
    print(convert_meta_checkpoint(a.src, a.out, a.tokenizer))
