"""Meta's released MTP checkpoints (facebook/multi-token-prediction) mapped onto the MTP decoder.

Their trunk is ``layers[:-1]``; the last layer is head 1 and the extra heads run in parallel
with it, so here they become a plain Llama model plus :class:`MTPHeads` with
``branch_layer = n_layers - 1``. Convert one into a model directory ``--model OUT`` loads::

    python -m accbench.methods.mtp.meta convert SRC OUT [--tokenizer DIR]
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
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


def read_meta_state_dict(path: str | Path) -> tuple[dict, dict]:
    """(params, state dict) from a Meta checkpoint directory: ``params.json`` plus
    ``*.safetensors`` or ``consolidated*.pth`` (read with ``weights_only=True``: no pickle code)."""
    d = Path(path)
    params = json.loads((d / "params.json").read_text())
    st = sorted(d.glob("*.safetensors"))
    pth = sorted(d.glob("consolidated*.pth")) or sorted(d.glob("*.pth")) or sorted(d.glob("*.pt"))
    if st:
        from safetensors.torch import load_file

        sd: dict = {}
        for f in st:
            sd.update(load_file(str(f)))
    elif len(pth) == 1:
        sd = torch.load(str(pth[0]), map_location="cpu", weights_only=True)
    elif pth:
        raise ValueError(f"{d}: {len(pth)} model-parallel shards; merge them into one state dict first")
    else:
        raise FileNotFoundError(f"no *.safetensors or consolidated.*.pth in {d}")
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
        raise ValueError(f"{path}: n_future_tokens={n_future} but {len(extra)} extra_heads in the state dict")
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
        raise ValueError(f"extra heads do not map onto {heads.layer_class}: missing {missing[:3]}, "
                         f"unexpected {list(unexpected)[:3]}")
    heads.eval()
    return model, heads


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
