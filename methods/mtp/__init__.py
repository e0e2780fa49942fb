"""Multi-token prediction (Gloeckle et al. 2024): extra transformer-block heads on a shared trunk,
used for lossless self-speculative decoding.

Architecture. ``n`` heads share the trunk, the final norm and the unembedding. Head 1 is the
model's own next-token path. Heads 2..n are each one decoder layer of the backbone's own type
(``LlamaDecoderLayer``, ``Gemma3DecoderLayer``... built from the model's config, with their own
rotary embedding and their own KV cache), reading the trunk's hidden state at the *branch
point* and followed by the shared final norm and unembedding; head i at position t predicts
token t+i.

Branch point (``branch_layer``): the residual-stream state after that many backbone layers,
before the final norm. The default is all layers (the final pre-norm state), so the whole model
is head 1 and the base model is untouched. Meta's released MTP models branch one layer earlier
(their trunk is ``layers[:-1]``; the last layer is head 1 and the extra heads run in parallel
with it): :func:`load_meta_checkpoint` maps that layout onto the same decoder with
``branch_layer = n_layers - 1``.

Decoding (greedy, lossless). After each verified step the heads run on the trunk states of the
newly *committed* positions only and draft t+2..t+n from the last one; the next forward
verifies ``[last committed token, drafts...]`` as a chain (``tree.block_forward``), accepts the
matching prefix plus the bonus token, and crops the base KV cache. Because the heads are only
ever fed committed positions, their KV caches need no rollback beyond :meth:`MTPHeads.crop`,
which the decoder applies defensively; a test checks that after rejections they equal a
recomputation from scratch.

Artifacts: a directory with ``heads.safetensors`` and ``mtp.json`` (and, for a fine-tuned or
converted backbone, a full Hugging Face model beside them, loadable with ``--model DIR``).
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from accbench.methods import register
from accbench.methods.core.base import Clock, DecoderBase, GenerationRecord, block_extra, sample_from_logits
from accbench.methods.core.tree import block_forward, commit, crop_cache, logits_from_hidden, make_cache

HEADS_FILE = "heads.safetensors"
META_FILE = "mtp.json"
DRAFT_VOCAB_KEY = "draft_vocab"  # optional in HEADS_FILE: the token ids drafts are drawn from


# --------------------------------------------------------------------------------------
# the heads
# --------------------------------------------------------------------------------------


def text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def resolve_branch(model, branch_layer: int | None) -> int:
    """``None`` -> all layers; negative counts from the end (``-1``: before the last layer)."""
    n_layers = len(model.model.layers)
    b = n_layers if branch_layer is None else int(branch_layer)
    if b < 0:
        b += n_layers
    if not 0 <= b <= n_layers:
        raise ValueError(f"branch_layer {branch_layer} out of range for a {n_layers}-layer model")
    return b


class MTPHeads(nn.Module):
    """``n_extra`` decoder layers of the backbone's type (heads 2..n), with their own rotary
    embedding; the final norm and unembedding stay the backbone's (not stored here)."""

    def __init__(self, model, n_extra: int, branch_layer: int | None = None):
        super().__init__()
        if n_extra < 1:
            raise ValueError("MTP needs at least one extra head (n >= 2)")
        base_cfg = text_config(model)
        cfg = copy.deepcopy(base_cfg)
        cfg.num_hidden_layers = n_extra
        if getattr(cfg, "layer_types", None) is not None:
            # every head attends over the whole prefix (no sliding window)
            cfg.layer_types = ["full_attention"] * n_extra
        self.config = cfg
        self.n_extra = n_extra
        self.branch_layer = resolve_branch(model, branch_layer)
        layer_cls = type(model.model.layers[-1])
        self.layer_class = layer_cls.__name__
        self.layers = nn.ModuleList([layer_cls(cfg, i) for i in range(n_extra)])
        self.rotary = type(model.model.rotary_emb)(config=cfg)
        self._rope_kw = ({"layer_type": "full_attention"}
                         if "layer_type" in inspect.signature(self.rotary.forward).parameters else {})
        self._eager = getattr(base_cfg, "_attn_implementation", "sdpa") == "eager"
        self.draft_vocab: torch.Tensor | None = None  # set by load() when the artifact has one
        p = next(model.parameters())
        self.to(device=p.device, dtype=p.dtype)

    # -- initialisation ------------------------------------------------------------------
    def init_from_backbone(self, model, mode: str = "copy", seed: int = 0) -> None:
        """``copy``: every head starts as a copy of the backbone's last layer (Meta's heads run
        parallel to it); ``random``: the config's normal init (seeded); ``identity``: copy with
        the output projections zeroed, so each head starts by passing its input through."""
        g = torch.Generator().manual_seed(seed)
        last = model.model.layers[-1].state_dict()
        for layer in self.layers:
            if mode in ("copy", "identity"):
                layer.load_state_dict(last)
                if mode == "identity":
                    with torch.no_grad():
                        for name, prm in layer.named_parameters():
                            if name.endswith(("o_proj.weight", "down_proj.weight")):
                                prm.zero_()
            elif mode == "random":
                std = float(getattr(self.config, "initializer_range", 0.02))
                with torch.no_grad():
                    for name, prm in layer.named_parameters():
                        if prm.dim() >= 2:
                            prm.copy_(torch.randn(prm.shape, generator=g) * std)
                        else:  # norms: keep the backbone's (1 for Llama, 0 = unit scale for Gemma)
                            prm.copy_(dict(model.model.layers[-1].named_parameters())[name])
            else:
                raise ValueError(f"unknown MTP head init {mode!r}: copy, identity or random")

    # -- forward -------------------------------------------------------------------------
    def make_cache(self) -> DynamicCache:
        return DynamicCache()

    def _mask(self, prefix: int, m: int, device) -> torch.Tensor | None:
        if m == 1:
            return None  # one query sees every cached key
        allowed = torch.ones(m, prefix + m, dtype=torch.bool, device=device)
        allowed[:, prefix:] = torch.ones(m, m, dtype=torch.bool, device=device).tril_()
        allowed = allowed[None, None]
        if self._eager:
            dtype = next(self.parameters()).dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
        return allowed

    def forward(self, h: torch.Tensor, positions: torch.Tensor, cache: DynamicCache | None = None,
                heads: int | None = None, only: int | None = None) -> list[torch.Tensor]:
        """Run the first ``heads`` heads (or only head index ``only``) on trunk states ``h``
        [B, m, H] at ``positions`` [m] (appended after the ``cache``'s prefix when a cache is
        given). Returns each head's pre-norm output [B, m, H]."""
        m = h.shape[1]
        prefix = cache.get_seq_length() if cache is not None else 0
        mask = self._mask(prefix, m, h.device)
        pos = positions.view(1, -1)
        rope = self.rotary(h, pos, **self._rope_kw)
        outs = []
        layers = [self.layers[only]] if only is not None else self.layers[: heads or self.n_extra]
        for layer in layers:
            outs.append(layer(h, attention_mask=mask, position_ids=pos, past_key_values=cache,
                              use_cache=cache is not None, position_embeddings=rope))
        return outs

    def crop(self, cache: DynamicCache, length: int) -> None:
        crop_cache(cache, length)

    # -- (de)serialisation ---------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"n_heads": self.n_extra + 1, "branch_layer": self.branch_layer, "layer_class": self.layer_class,
                "hidden_size": int(self.config.hidden_size)}

    def save(self, directory: str | Path, draft_vocab: torch.Tensor | None = None, **info: Any) -> None:
        """Write the heads (and optionally the draft vocabulary: token ids drafts are drawn from)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()
                 if not k.startswith("rotary.")}
        if draft_vocab is not None:
            state[DRAFT_VOCAB_KEY] = draft_vocab.detach().to("cpu", torch.long).contiguous()
        save_file(state, str(d / HEADS_FILE))
        (d / META_FILE).write_text(json.dumps({**self.meta(), **info}, indent=2, default=str))

    @classmethod
    def load(cls, model, directory: str | Path) -> "MTPHeads":
        from safetensors.torch import load_file

        d = Path(directory)
        meta = json.loads((d / META_FILE).read_text())
        heads = cls(model, int(meta["n_heads"]) - 1, int(meta["branch_layer"]))
        if meta.get("layer_class") and meta["layer_class"] != heads.layer_class:
            raise ValueError(f"MTP heads in {d} are {meta['layer_class']} blocks; this model uses {heads.layer_class}")
        if int(meta.get("hidden_size", heads.config.hidden_size)) != int(heads.config.hidden_size):
            raise ValueError(f"MTP heads in {d} were trained for hidden size {meta['hidden_size']}")
        state = load_file(str(d / HEADS_FILE), device=str(next(model.parameters()).device))
        heads.draft_vocab = state.pop(DRAFT_VOCAB_KEY, None)
        missing, unexpected = heads.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("rotary.")]
        if missing or unexpected:
            raise ValueError(f"MTP heads in {d} do not match this model (missing {missing[:3]}, "
                             f"unexpected {list(unexpected)[:3]})")
        heads.to(dtype=next(model.parameters()).dtype)
        return heads


class BranchCapture:
    """Forward hook that keeps the backbone's residual-stream state at the branch point (the
    output of layer ``branch - 1``, or of the embedding for branch 0) on every forward."""

    def __init__(self, model, branch: int):
        module = model.model.embed_tokens if branch == 0 else model.model.layers[branch - 1]
        self.h: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.h = output[0] if isinstance(output, tuple) else output

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "BranchCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def head_logits(model, outs: list[torch.Tensor]) -> torch.Tensor:
    """Shared final norm + unembedding over the heads' outputs (one matmul for all heads)."""
    x = torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
    return logits_from_hidden(model, model.model.norm(x))


# --------------------------------------------------------------------------------------
# finding the heads
# --------------------------------------------------------------------------------------


def find_heads_dir(model_name: str | None, heads_opt: str | None) -> Path | None:
    if heads_opt:
        p = Path(heads_opt).expanduser()
        if not (p / HEADS_FILE).is_file():
            from accbench.errors import AccbenchError

            raise AccbenchError(f"mtp: no {HEADS_FILE} in {p}")
        return p
    if model_name:
        p = Path(model_name).expanduser()
        if (p / HEADS_FILE).is_file() and (p / META_FILE).is_file():  # a fine-tuned / converted model dir
            return p
        from accbench.training.artifacts import get_default

        return get_default(model_name, "mtp")
    return None


# --------------------------------------------------------------------------------------
# the decoder
# --------------------------------------------------------------------------------------


@register
class MTPDecoder(DecoderBase):
    name = "mtp"
    lossless = True
    description = "Multi-token prediction heads (Gloeckle et al. 2024): self-speculative drafts, verified losslessly."
    options = {
        "heads": None,  # artifact directory; default: the trained default for this model; "random": untrained
        "num_draft": None,  # drafts per step (<= extra heads); default: all extra heads
        "n": 4,  # total heads for heads="random"
        "branch_layer": None,  # branch point for heads="random" (None: final pre-norm state)
        "seed": 0,  # init seed for heads="random"
        # "auto": draft over the artifact's draft vocabulary when it has one (the tokens that
        # occurred as targets in training), else the whole vocabulary; "full": always the whole
        # vocabulary. Drafting over fewer unembedding rows is cheaper (the unembedding is a
        # large share of a small model); verification is unchanged, so output stays lossless.
        "draft_vocab": "auto",
    }

    def __init__(self, model, tokenizer, **kw):
        super().__init__(model, tokenizer, **kw)
        heads_opt = self.opts["heads"]
        if heads_opt == "random":
            self.heads = MTPHeads(model, int(self.opts["n"]) - 1, self.opts["branch_layer"])
            self.heads.init_from_backbone(model, "random", seed=int(self.opts["seed"]))
            self.heads_dir = None
        else:
            d = find_heads_dir(self.model_name, heads_opt)
            if d is None:
                from accbench.errors import NeedsTraining

                raise NeedsTraining("mtp", self.model_name or "this model")
            self.heads = MTPHeads.load(model, d)
            self.heads_dir = d
        self.heads.eval()
        nd = self.opts["num_draft"]
        self.num_draft = self.heads.n_extra if nd is None else max(0, min(int(nd), self.heads.n_extra))
        dv = self.opts["draft_vocab"]
        if dv not in ("auto", "full"):
            raise ValueError("draft_vocab is 'auto' or 'full'")
        self._vocab = None
        self._w_draft = None
        if dv == "auto" and self.heads.draft_vocab is not None:
            self._vocab = self.heads.draft_vocab.to(self.device)
            self._w_draft = model.get_output_embeddings().weight[self._vocab].detach().contiguous()
        self._cap = getattr(model.config, "final_logit_softcapping", None)

    # the draft: heads over the newly committed trunk states, drafts from the last one
    def _draft(self, h: torch.Tensor, positions: torch.Tensor, hcache: DynamicCache, k: int) -> list[int]:
        if self.num_draft <= 0:
            return []
        # every head in use sees every committed position (their caches stay complete), even
        # when the budget leaves room for fewer drafts
        outs = self.heads(h, positions, hcache, heads=self.num_draft)
        if k <= 0:
            return []
        last = [o[:, -1] for o in outs[:k]]
        if self._w_draft is None:
            logits = head_logits(self.model, last)  # [k, V]
            return sample_from_logits(logits, self.sampling, self._generator).tolist()
        x = self.model.model.norm(torch.cat(last, dim=0))
        logits = torch.nn.functional.linear(x, self._w_draft)  # [k, |draft vocab|]
        if self._cap:
            logits = torch.tanh(logits / self._cap) * self._cap
        idx = sample_from_logits(logits, self.sampling, self._generator)
        return self._vocab[idx].tolist()

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, stop=None) -> GenerationRecord:
        stopper = self._stop_checker(stop)
        model, sampling, gen = self.model, self.sampling, self._generator
        k_max = self.num_draft
        ids = self._prompt_tensor(prompt_ids)
        n_prompt = ids.shape[1]
        device = self.device
        causal = torch.ones(k_max + 1, k_max + 1, dtype=torch.bool, device=device).tril_()
        depths = torch.arange(k_max + 1, device=device)
        all_pos = torch.arange(n_prompt + max_new_tokens + k_max + 1, device=device)
        drafted = [0] * k_max
        accepted = [0] * k_max
        draft_s = 0.0
        blocks: dict[int, int] = {}  # verification block size -> decode steps
        cache = make_cache(model)
        hcache = self.heads.make_cache()
        clock = Clock(device)
        capture = BranchCapture(model, self.heads.branch_layer)
        try:
            clock.start()
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            tokens = [int(sample_from_logits(logits[0, -1], sampling, gen))]
            ttft = clock.elapsed()
            steps = [1]
            forwards = 1
            hit = stopper.first_stop(tokens)
            new_h, new_pos = capture.h, all_pos[:n_prompt]
            while hit is None and len(tokens) < max_new_tokens:
                t_draft = clock.elapsed()
                k = min(k_max, max_new_tokens - len(tokens) - 1)
                draft = self._draft(new_h, new_pos, hcache, k)
                draft_s += clock.elapsed() - t_draft
                prefix = n_prompt + len(tokens) - 1  # cached: all but the last committed token
                block = torch.tensor([[tokens[-1]] + draft], device=device)
                logits, _ = block_forward(model, cache, block, depths[: k + 1], causal[: k + 1, : k + 1])
                forwards += 1
                blocks[k + 1] = blocks.get(k + 1, 0) + 1
                pred = sample_from_logits(logits, sampling, gen).tolist()
                a = 0
                while a < k and draft[a] == pred[a]:
                    a += 1
                crop_cache(cache, prefix + 1 + a)
                new_h, new_pos = capture.h[:, : a + 1], all_pos[prefix : prefix + 1 + a]
                n_c, hit = commit(tokens, draft[:a] + [pred[a]], stopper, max_new_tokens)
                steps.append(n_c)
                a = min(a, n_c)  # drafts cut by a stop or the budget are not counted as accepted
                for pos in range(k):
                    drafted[pos] += 1
                    accepted[pos] += pos < a
            total = clock.elapsed()
        finally:
            capture.remove()
        self.last_head_cache = hcache  # for tests: the heads' KV after the run
        last = max((i + 1 for i, d in enumerate(drafted) if d), default=0)
        return GenerationRecord(
            tokens=tokens, ttft_s=ttft, total_s=total, forward_passes=forwards, tokens_per_step=steps,
            drafted=drafted[:last], accepted=accepted[:last], lossless=self.is_lossless,
            finish_reason=hit[1] if hit else "length",
            extra={"draft_s": draft_s, "verify_s": total - ttft - draft_s,
                   **block_extra(blocks)},
        )

    # -- training (bench/mtp_train.py) ---------------------------------------------------
    @classmethod
    def train(cls, req, console) -> Path:
        from accbench.methods.mtp.train import train_mtp

        return train_mtp(req, console)


# --------------------------------------------------------------------------------------
# Meta's released MTP checkpoints (facebook/multi-token-prediction)
# --------------------------------------------------------------------------------------


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


if __name__ == "__main__":  # python -m accbench.methods.mtp convert SRC OUT [--tokenizer DIR]
    import argparse

    ap = argparse.ArgumentParser(prog="python -m accbench.methods.mtp")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert a Meta MTP checkpoint (params.json + consolidated.00.pth)")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--tokenizer", default=None)
    a = ap.parse_args()
    print(convert_meta_checkpoint(a.src, a.out, a.tokenizer))
