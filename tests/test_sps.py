"""sps: speculative decoding with a draft model. Greedy float32 output equals AR's on tiny
random models with a random draft of the same vocabulary (a registry model of another
architecture, and a 1-layer model saved to a local directory), with the self-draft
(``self:N``, sharing the target's KV cache), with fixed gamma and the heuristic schedule; the
own draft cache is rolled back to exactly the committed prefix; a draft with another
tokenizer is refused in one line."""

from __future__ import annotations

import pytest
import torch
from accbench.methods import SamplingConfig, available, get
from accbench.methods.core import AccbenchError, OptionError
from accbench.methods.sps import early_exit_view, tokenizer_mismatch
from test_lookahead import TEXTS


def _save_random_draft(path, tok, vocab_size=None, seed=7):
    """A 1-layer random Llama with the given tokenizer, saved as a local model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def local_draft(tmp_path_factory, tiny_llama):
    return _save_random_draft(tmp_path_factory.mktemp("draft"), tiny_llama.tokenizer)


def _check_lossless(lm, opts, n_new=40):
    ar = get("ar")(lm.model, lm.tokenizer)
    sps = get("sps")(lm.model, lm.tokenizer, **opts)
    recs = []
    for t in TEXTS:
        ids = lm.tokenizer(t).input_ids
        a, s = ar.generate(ids, n_new), sps.generate(ids, n_new)
        assert s.tokens == a.tokens, f"{opts} {t!r}: differs from AR"
        assert s.lossless and s.extra["acceptance_rule"] == "greedy"
        assert s.forward_passes == len(s.tokens_per_step)
        recs.append(s)
    return recs


@pytest.mark.parametrize("schedule", ["constant", "heuristic"])
@pytest.mark.parametrize("draft", ["tiny-random-gemma", "local"])
def test_random_draft_model_is_lossless(tiny_llama, local_draft, draft, schedule):
    opts = {"draft": local_draft if draft == "local" else draft, "gamma": 4, "schedule": schedule}
    recs = _check_lossless(tiny_llama, opts)
    drafted = sum(sum(r.drafted) for r in recs)
    assert drafted > 0
    assert all(r.extra["draft_cache"] == "own" for r in recs)
    if schedule == "heuristic":  # a random draft is mostly rejected: gamma falls towards 1
        assert min(r.extra["mean_gamma"] for r in recs) < 4


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
@pytest.mark.parametrize("opts", [{"draft": "self:1"}, {"draft": "self:1", "gamma": 3, "schedule": "heuristic"},
                                  {"draft": "self"}, {"draft": "self:2", "gamma": 2}])
def test_self_draft_is_lossless(fixture, opts, request):
    lm = request.getfixturevalue(fixture)
    recs = _check_lossless(lm, opts)
    n = int(opts["draft"].partition(":")[2] or 1)
    assert all(r.extra["draft_cache"] == f"shared: target layers 0..{n - 1}" for r in recs)
    if opts["draft"] == "self:2":  # the whole target as its own draft: every draft is accepted
        assert all(a == d for r in recs for a, d in zip(r.accepted, r.drafted))


def test_heuristic_schedule_grows_by_two_when_all_accepted(tiny_llama):
    sps = get("sps")(tiny_llama.model, tiny_llama.tokenizer, draft="self:2", gamma=1, schedule="heuristic")
    rec = sps.generate(tiny_llama.tokenizer(TEXTS[0]).input_ids, 40)
    gammas = sps.last_drafter.gammas
    assert gammas[:4] == [1, 3, 5, 7]  # +2 after every fully accepted step, capped by the budget at the end
    assert rec.extra["gamma_end"] > gammas[-1]
    const = get("sps")(tiny_llama.model, tiny_llama.tokenizer, draft="self:2", gamma=3)
    const.generate(tiny_llama.tokenizer(TEXTS[0]).input_ids, 40)
    assert set(const.last_drafter.gammas[:-1]) == {3}


def test_heuristic_schedule_shrinks_on_rejection(tiny_llama):
    sps = get("sps")(tiny_llama.model, tiny_llama.tokenizer, draft="tiny-random-gemma", gamma=5,
                     schedule="heuristic")
    sps.generate(tiny_llama.tokenizer(TEXTS[1]).input_ids, 40)
    g = sps.last_drafter.gammas
    assert g[0] == 5 and min(g) == 1
    for a, b in zip(g, g[1:]):
        assert b in (a + 2, max(1, a - 1)) or b < a  # the last step may be cut by the budget


def test_own_draft_cache_is_rolled_back_to_the_committed_prefix(tiny_llama, local_draft):
    sps = get("sps")(tiny_llama.model, tiny_llama.tokenizer, draft=local_draft, gamma=4)
    ids = tiny_llama.tokenizer(TEXTS[2]).input_ids
    rec = sps.generate(ids, 30)
    d = sps.last_drafter
    seq = ids + rec.tokens
    assert d.cache.get_seq_length() == d.n_cached <= len(seq)
    with torch.no_grad():
        from transformers import DynamicCache

        fresh = DynamicCache()
        sps.draft_model(input_ids=torch.tensor([seq[: d.n_cached]]), past_key_values=fresh, use_cache=True)
    for a, b in zip(d.cache.layers, fresh.layers):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)


def test_self_draft_view_shares_the_target(tiny_llama):
    m = tiny_llama.model
    view = early_exit_view(m, 1)
    assert len(view.layers) == 1 and view.layers[0] is m.model.layers[0]
    assert view.embed_tokens is m.model.embed_tokens and view.norm is m.model.norm
    assert len(m.model.layers) == 2 and m.model.config.num_hidden_layers == 2
    for bad in ("self:0", "self:3", "self:x"):
        with pytest.raises(OptionError):
            get("sps")(m, tiny_llama.tokenizer, draft=bad)


def test_draft_with_another_tokenizer_is_one_clear_error(tiny_llama, tmp_path):
    from accbench.models.random_models import byte_tokenizer

    tok = byte_tokenizer()
    tok.add_tokens(["<extra>"])
    path = _save_random_draft(tmp_path / "other", tok, vocab_size=len(tok))
    assert tokenizer_mismatch(tiny_llama.tokenizer, tok)
    assert tokenizer_mismatch(tiny_llama.tokenizer, byte_tokenizer()) is None
    with pytest.raises(AccbenchError) as e:
        get("sps")(tiny_llama.model, tiny_llama.tokenizer, draft=path)
    msg = str(e.value)
    assert "\n" not in msg and "tokenizer" in msg and "1 token ids disagree" in msg


def test_sampling_is_seeded_and_uses_speculative_sampling(tiny_llama):
    ids = tiny_llama.tokenizer(TEXTS[1]).input_ids
    runs = []
    for _ in range(2):
        sps = get("sps")(tiny_llama.model, tiny_llama.tokenizer, draft="self:1",
                         sampling=SamplingConfig(temperature=0.8, seed=5))
        runs.append(sps.generate(ids, 30))
    assert runs[0].tokens == runs[1].tokens and len(runs[0].tokens) > 0
    r = runs[0]
    assert r.extra["acceptance_rule"] == "speculative_sampling" and r.extra["lossless_in_distribution"]
    assert not r.lossless  # not token-identical to AR: equal in distribution only


def test_registered_with_options():
    cls = available()["sps"]
    assert cls.name == "sps" and cls.lossless
    with pytest.raises(OptionError):
        get("sps")(None, None, schedule="sometimes")
