"""Shared verification helpers: tree masks/positions against sequential decoding, cache
compaction, greedy acceptance, and the lossless PLD decoder built on them."""

import random

import pytest
import torch
from accbench.methods import StopChecker, get
from accbench.methods.core.stopping import commit
from accbench.methods.core.tree import (
    accept_greedy,
    block_forward,
    compact_cache,
    make_cache,
    tree_depths,
    tree_visibility,
)
from transformers import DynamicCache

PARENTS = [-1, 0, 0, 1, 1, 2, 3, 3, 6]  # a small tree with branching at several depths


def _prefill(model, ids):
    cache = make_cache(model)
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    return cache


def _path(parents, i):
    out = []
    while i != -1:
        out.append(i)
        i = parents[i]
    return out[::-1]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_tree_forward_equals_sequential_decoding_of_each_path(fixture, request):
    lm = request.getfixturevalue(fixture)
    model = lm.model
    rng = random.Random(0)
    prompt = [rng.randrange(3, 200) for _ in range(13)]
    block = [rng.randrange(3, 200) for _ in PARENTS]
    cache = _prefill(model, prompt[:-1])
    with torch.inference_mode():
        block[0] = prompt[-1]
        logits, _ = block_forward(model, cache, torch.tensor([block]), tree_depths(PARENTS), tree_visibility(PARENTS))
    assert cache.get_seq_length() == len(prompt) - 1 + len(PARENTS)
    for leaf in range(len(PARENTS)):
        path = _path(PARENTS, leaf)
        seq = prompt[:-1] + [block[i] for i in path]
        with torch.inference_mode():
            ref = model(input_ids=torch.tensor([seq])).logits[0, -len(path):]
        torch.testing.assert_close(logits[path], ref, atol=1e-4, rtol=1e-4)


def test_compaction_keeps_exactly_the_accepted_path(tiny_llama):
    model = tiny_llama.model
    prompt = list(range(5, 25))
    block = [prompt[-1], 40, 41, 42, 43, 44, 45, 46, 47]
    cache = _prefill(model, prompt[:-1])
    with torch.inference_mode():
        block_forward(model, cache, torch.tensor([block]), tree_depths(PARENTS), tree_visibility(PARENTS))
        keep = _path(PARENTS, 8)  # 0 -> 1 -> 3 -> 6 -> 8
        compact_cache(cache, len(prompt) - 1, keep)
        ref = DynamicCache()
        model(input_ids=torch.tensor([prompt[:-1] + [block[i] for i in keep]]), past_key_values=ref, use_cache=True)
    assert cache.get_seq_length() == ref.get_seq_length()
    for a, b in zip(cache.layers, ref.layers):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-5)


def test_accept_greedy_takes_longest_matching_path():
    #          root  1   2   3   4   5   6   7   8
    tokens = [9, 10, 11, 12, 13, 14, 15, 16, 17]
    # pred[p] = the target's argmax after node p
    pred = [10, 13, 14, 15, 0, 0, 17, 0, 0]
    # node 1 (10 == pred[0]) ok; node 2 (11 != 10) no; node 3 (12 != pred[1]=13) no; node 4 (13 == 13) ok
    assert accept_greedy(tokens, PARENTS, pred) == [0, 1, 4]
    assert accept_greedy(tokens, PARENTS, [99] * 9) == [0]


def test_commit_cuts_at_stop_inside_an_accepted_run(tiny_llama):
    tok = tiny_llama.tokenizer
    eos = tok.eos_token_id
    out = [5, 6]
    stopper = StopChecker(tok, [], [eos])
    n, hit = commit(out, [7, eos, 8, 9], stopper, 100)
    assert out == [5, 6, 7, eos] and n == 2 and hit[1] == "eos"
    out = [5]
    n, hit = commit(out, [6, 7, 8, 9], StopChecker(tok, [], [eos]), 3)
    assert out == [5, 6, 7] and n == 2 and hit is None


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_pld_equals_ar_on_tiny_models(fixture, request):
    lm = request.getfixturevalue(fixture)
    ar = get("ar")(lm.model, lm.tokenizer)
    pld = get("pld")(lm.model, lm.tokenizer)
    texts = ["abc abc abc abc abc", "the cat the cat the cat the", "def f(x): return x\ndef g(x): return x\ndef h(x):",
             "1 2 3 4 1 2 3 4 1 2 3 4"]
    tau = []
    for t in texts:
        ids = lm.tokenizer(t).input_ids
        a = ar.generate(ids, 40)
        p = pld.generate(ids, 40)
        assert p.tokens == a.tokens, t
        assert sum(p.tokens_per_step) == p.n_new
        assert all(x <= y for x, y in zip(p.accepted, p.drafted))
        tau.append(p.tau)
    assert max(tau) >= 1.0
