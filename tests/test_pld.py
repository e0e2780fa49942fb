"""Prompt lookup decoding: the n-gram index on hand-made sequences, lossless equality with AR on
tiny random models under several option sets, and on smollm2-135m real MBPP / CNN-DM prompts,
including a stop (EOS or stop string) that falls inside an accepted run."""

import pytest
from accbench.methods import get
from accbench.methods.pld import NgramIndex
from test_lookahead import TEXTS, check_real_prompts


def test_ngram_index_drafts_the_latest_longest_match():
    idx = NgramIndex(1, 3)
    #      0  1  2  3  4  5  6  7  8
    seq = [1, 2, 3, 9, 1, 2, 3, 7, 1]
    # suffix [1] ends 1-grams at 0 and 4: the latest (4) wins -> continuation from 5
    assert idx.draft(seq, 3) == [2, 3, 7]
    seq = seq + [2, 3]
    # suffix [1, 2, 3] (3-gram) occurred ending at 2 and 6: latest -> continuation from 7
    assert idx.draft(seq, 4) == [7, 1, 2, 3]
    # the longest n-gram is preferred over a more recent shorter one
    idx2 = NgramIndex(1, 2)
    s2 = [5, 6, 8, 4, 6, 9, 5, 6]  # 2-gram [5, 6] ends at 1 -> [8, ...]; 1-gram [6] latest ends at 4 -> [9, ...]
    assert idx2.draft(s2, 2) == [8, 4]
    # no match, and the suffix never matches itself
    assert NgramIndex(1, 3).draft([1, 2, 3], 5) == []
    assert NgramIndex(2, 2).draft([4, 4], 3) == []
    assert NgramIndex(1, 1).draft([4, 4], 3) == [4]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
@pytest.mark.parametrize("opts", [dict(), dict(num_draft=3, max_ngram=2), dict(num_draft=1, max_ngram=1)])
def test_pld_equals_ar_on_tiny_models_with_options(fixture, opts, request):
    lm = request.getfixturevalue(fixture)
    ar = get("ar")(lm.model, lm.tokenizer)
    pld = get("pld")(lm.model, lm.tokenizer, **opts)
    multi = False
    for t in TEXTS:
        ids = lm.tokenizer(t).input_ids
        a = ar.generate(ids, 30)
        p = pld.generate(ids, 30)
        assert p.tokens == a.tokens, t
        assert sum(p.tokens_per_step) == p.n_new and p.forward_passes == len(p.tokens_per_step)
        assert all(x <= y for x, y in zip(p.accepted, p.drafted))
        assert 0 <= p.n_new - len(p.tokens_per_step) - sum(p.accepted) + 1 <= 1
        multi |= max(p.tokens_per_step) > 1
    assert multi


@pytest.mark.slow
def test_pld_equals_ar_on_real_prompts(smollm2, data_dir):
    check_real_prompts(smollm2, data_dir, "pld", {})
