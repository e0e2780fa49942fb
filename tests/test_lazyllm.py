"""LazyLLM: exactness with pruning off, importance scores, Aux Cache, positions, real prompts;
and the longbench-multinews suite."""

from __future__ import annotations

import math

import pytest
import torch
from accbench.methods.ar import ARDecoder
from accbench.methods.core import OptionError
from accbench.methods.lazyllm import LazyLLMDecoder, computed_fraction_bound, resolve_schedule

TEXT = ("The committee met on Tuesday to discuss the new budget. Several members raised concerns "
        "about the cost of the bridge repairs, while others argued that the schools needed more "
        "money first. After three hours the vote was postponed until next month. ")


def _ids(loaded, n_tokens: int) -> list[int]:
    ids = loaded.tokenizer(TEXT * (n_tokens // 20 + 2)).input_ids
    return ids[:n_tokens]


def _longbench_ids(loaded, n_tokens: int, index: int = 0) -> list[int]:
    from accbench.engine.prompts import encode_prompt, fit_to_length
    from accbench.suites import build

    samples = list(build("longbench-multinews").samples(limit=index + 2))
    filler = encode_prompt(loaded.tokenizer, samples[index + 1].prompt, "raw")
    # chat, as `accbench run` sends longbench prompts: the instruct model answers a raw prompt
    # with end-of-turn at once
    ids = encode_prompt(loaded.tokenizer, samples[index].prompt, "chat")
    return fit_to_length(ids, n_tokens, filler, loaded.tokenizer.bos_token_id)


def _ref_key(model, layer: int, hidden: torch.Tensor, position: int) -> torch.Tensor:
    """K of one token at ``layer`` from its layer input ``hidden`` [H] at ``position``, with the
    model's own modules: [kv_heads, head_dim]."""
    import sys

    lay = model.model.layers[layer]
    attn = lay.self_attn
    x = lay.input_layernorm(hidden.view(1, 1, -1))
    k = attn.k_proj(x).view(1, 1, -1, attn.head_dim).transpose(1, 2)
    if hasattr(attn, "k_norm"):
        k = attn.k_norm(k)
    pos = torch.tensor([[position]])
    rot = model.model.rotary_emb
    if model.config.model_type.startswith("gemma"):
        cos, sin = rot(x, pos, model.config.layer_types[layer])
    else:
        cos, sin = rot(x, position_ids=pos)
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    _, k = rope(k, k, cos, sin)
    return k[0, :, 0]


# ----------------------------------------------------------------------------- schedule


def test_schedule_resolution():
    assert resolve_schedule(30, "8,15,23", "0.7,0.5,0.35") == [(8, 0.7), (15, 0.5), (23, 0.35)]
    assert resolve_schedule(30, [4, 10], 0.5) == [(4, 0.5), (10, 0.5)]
    s = resolve_schedule(30, prune_rate=0.5, stages=3)
    assert [layer for layer, _ in s] == [8, 15, 23] and [k for _, k in s] == [0.5, 0.25, 0.125]
    assert resolve_schedule(2, prune_rate=0.5) == [(0, 0.125)]  # shallow model: stages share layer 0
    for bad in (dict(prune_layers="29", keep="0.5"), dict(prune_layers="3,5", keep="0.3,0.6"),
                dict(prune_layers="3", keep=None), dict(prune_rate=1.0), dict(prune_layers="3", keep="0")):
        with pytest.raises(ValueError):
            resolve_schedule(30, **bad)
    assert computed_fraction_bound(4, [(1, 0.5)]) == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)


def test_unknown_option_and_architecture(tiny_llama):
    with pytest.raises(OptionError, match="no option 'keep_ratio'; valid: prune_layers"):
        LazyLLMDecoder(tiny_llama.model, tiny_llama.tokenizer, keep_ratio=0.5)
    with pytest.raises(OptionError, match="keep ratios must be in"):
        LazyLLMDecoder(tiny_llama.model, tiny_llama.tokenizer, prune_layers="3", keep="1.5")


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_keep_all_equals_ar_tiny(fixture, request):
    loaded = request.getfixturevalue(fixture)
    ids = _ids(loaded, 300)  # > tiny gemma's 128-token window: sliding layers are masked
    ar = ARDecoder(loaded.model, loaded.tokenizer).generate(ids, 48, stop=[])
    lz = LazyLLMDecoder(loaded.model, loaded.tokenizer, prune_layers="0", keep="1.0").generate(ids, 48, stop=[])
    assert lz.tokens == ar.tokens
    assert lz.extra["computed_frac"] == 1.0 and lz.extra["revivals"] == 0
    assert lz.lossless is False


def test_keep_all_equals_ar_smollm2(smollm2):
    ids = _longbench_ids(smollm2, 1024)
    ar = ARDecoder(smollm2.model, smollm2.tokenizer).generate(ids, 24)
    lz = LazyLLMDecoder(smollm2.model, smollm2.tokenizer, prune_rate=0.0).generate(ids, 24)
    assert lz.tokens == ar.tokens


# ----------------------------------------------------------------------------- importance


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_importance_matches_eager_attention(fixture, request):
    loaded = request.getfixturevalue(fixture)
    model = loaded.model
    ids = _ids(loaded, 100)  # inside tiny gemma's window: the eager row is not windowed
    dec = LazyLLMDecoder(model, loaded.tokenizer, prune_layers="0", keep="0.5")
    with torch.inference_mode():
        state, _, _ = dec.prefill(torch.tensor([ids]), len(ids) + 4)
        model.set_attn_implementation("eager")
        try:
            out = model(input_ids=torch.tensor([ids]), output_attentions=True)
        finally:
            model.set_attn_implementation("sdpa")
    ref = out.attentions[0][0, :, -1, :].float().mean(dim=0)  # all query heads, last row
    assert state.scores[0].shape == ref.shape
    torch.testing.assert_close(state.scores[0], ref, atol=1e-5, rtol=1e-4)
    # the kept set is the top half by that score, plus the last token
    kept = set(state.kv.positions(1).tolist())
    assert len(kept) == math.ceil(0.5 * len(ids)) and len(ids) - 1 in kept
    others = [i for i in range(len(ids) - 1)]
    worst_kept = min(ref[i] for i in kept if i != len(ids) - 1)
    best_dropped = max((ref[i] for i in others if i not in kept), default=-1)
    assert worst_kept >= best_dropped - 1e-6


# ----------------------------------------------------------------------------- positions, Aux Cache


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_positions_after_pruning_and_aux_cache(fixture, request):
    loaded = request.getfixturevalue(fixture)
    model = loaded.model
    ids = _ids(loaded, 200)
    n = len(ids)
    dec = LazyLLMDecoder(model, loaded.tokenizer, prune_layers="0", keep="0.3")
    with torch.inference_mode():
        state, logits, rope = dec.prefill(torch.tensor([ids]), n + 16)
        hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    kv = state.kv
    # layer 0 computed every token; layer 1 only the kept ones, in position order, last included
    assert kv.positions(0).tolist() == list(range(n))
    kept = kv.positions(1).tolist()
    assert kept == sorted(kept) and len(kept) == math.ceil(0.3 * n) and kept[-1] == n - 1
    assert state.computed == [n, len(kept)]
    pruned = [i for i in range(n) if i not in set(kept)]
    assert state.depth[pruned].eq(1).all() and state.depth[kept].eq(2).all()
    # Aux Cache: a pruned token's state where it was pruned = recomputing it from the embeddings
    torch.testing.assert_close(state.aux[pruned], hs[1][0, pruned], atol=1e-5, rtol=1e-5)
    # kept tokens keep their original positions: their layer-1 keys are RoPE'd at those positions
    for j, i in list(enumerate(kept))[:: max(1, len(kept) // 5)]:
        torch.testing.assert_close(kv.k[1][0, :, j], _ref_key(model, 1, hs[1][0, i], i), atol=1e-4, rtol=1e-4)
    assert torch.isfinite(logits).all()

    # decode: the selection is redone every step; revived tokens resume from the Aux Cache
    revived_seen = 0
    tok = logits.argmax(-1)
    with torch.inference_mode():
        for step in range(12):
            before = set(kv.positions(1).tolist())
            logits = dec.step(state, tok.view(1, 1), n + step, rope)
            tok = logits.argmax(-1)
            pos1 = kv.positions(1).tolist()
            assert len(pos1) == len(set(pos1)), "a token was computed twice at one layer"
            for j, p in enumerate(pos1):
                if p < n and p not in before:  # revived at this step
                    revived_seen += 1
                    ref = _ref_key(model, 1, state.aux[p], p)
                    torch.testing.assert_close(kv.k[1][0, :, j], ref, atol=1e-4, rtol=1e-4)
            assert n + step in pos1 and kv.positions(0).tolist()[-1] == n + step
            assert torch.isfinite(logits).all()
    assert revived_seen > 0 and state.revivals == revived_seen
    assert state.revived_token_layers == revived_seen  # each revival costs layer 1 once


# ----------------------------------------------------------------------------- real prompts


def test_pruned_smollm2_is_fluent(smollm2):
    from accbench.suites import build
    from accbench.suites.summarization import rouge

    suite = build("longbench-multinews")
    samples = list(suite.samples(limit=4))
    ar = ARDecoder(smollm2.model, smollm2.tokenizer)
    lz = LazyLLMDecoder(smollm2.model, smollm2.tokenizer)  # the default schedule
    drops = []
    for k in range(3):
        ids = _longbench_ids(smollm2, 1024, index=k)
        a = ar.generate(ids, 40)
        b = lz.generate(ids, 40)
        assert b.extra["computed_frac"] < 0.8
        text = smollm2.tokenizer.decode(b.tokens, skip_special_tokens=True)
        words = text.split()
        assert len(words) >= 10 and len(set(words)) / len(words) > 0.4, text  # not degenerate
        ref = samples[k].reference
        drops.append(rouge(ref, smollm2.tokenizer.decode(a.tokens, skip_special_tokens=True))["rougeL"]
                     - rouge(ref, text)["rougeL"])
    assert sum(drops) / len(drops) < 6.0, drops


# ----------------------------------------------------------------------------- suite


def test_longbench_multinews_suite():
    from accbench import suites
    from accbench.suites.longbench import MULTI_NEWS_PROMPT

    assert "longbench-multinews" in suites.available()
    suite = suites.build("longbench-multinews")
    assert len(suite) == 200 and suite.max_new_tokens == 512 and suite.stop == []
    s = next(iter(suite.samples(limit=1)))
    rec = suite.items[0][1]
    assert s.prompt == MULTI_NEWS_PROMPT.format(context=rec["context"])
    assert s.prompt.startswith("You are given several news articles. Write a one-page summary of all news.\n\nNews:\n")
    assert s.prompt.endswith("\n\nNow, write a one-page summary of all the news.\n\nSummary:")
    assert s.reference == rec["answers"][0]
    assert suite.score(s, s.reference)["rougeL"] == pytest.approx(100.0)
    assert suite.score(s, "")["rougeL"] == 0.0
    half = " ".join(s.reference.split()[: len(s.reference.split()) // 2])
    assert 20.0 < suite.score(s, half)["rougeL"] < 100.0
    assert len(list(suite.samples(limit=3))) == 3


def test_lazyllm_in_a_prompt_length_sweep(tiny_llama, tmp_path):
    from accbench.engine.config import SweepConfig
    from accbench.engine.driver import run_sweep
    from accbench.reports.summary import summarize
    from accbench.reports.tables import summary_tables

    cfg = SweepConfig(methods=["ar", "lazyllm"], models=["tiny-random-llama"], suites=["longbench-multinews"],
                      out=tmp_path / "run", limit=2, max_new_tokens=6, prompt_lengths=[128, 256], warmup=0,
                      method_options={"lazyllm": {"prune_layers": "0", "keep": "0.5"}})
    res = run_sweep(cfg)
    rows = res.load_rows()
    assert len(rows) == 8 and {r["prompt_tokens"] for r in rows} == {128, 256}
    frame = summarize(rows)
    lz = frame[frame.method == "lazyllm"]
    assert set(lz.prompt_length) == {128, 256}
    assert (lz.computed_frac - 0.75).abs().max() < 0.01  # layer 0 all, layer 1 half
    assert lz.ttft_speedup.notna().all() and "d_rougeL" in frame.columns
    assert len(summary_tables(frame)) == 2
