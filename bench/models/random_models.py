"""Tiny random models for tests: fixed-seed weights (the same in every process, whatever the
global RNG) and a fully offline byte-level tokenizer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from accbench.models.quiet import quiet_transformers

if TYPE_CHECKING:  # pragma: no cover
    from accbench.models.registry import ModelSpec


# A plain chat template for the tiny random models (they have no real chat format).
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


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
    with quiet_transformers(), torch.random.fork_rng(devices=[]):
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
