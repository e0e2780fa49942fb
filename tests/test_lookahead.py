"""Lookahead decoding: the block layout (mask + positions) against sequential decoding of every
chain, the Jacobi window / n-gram pool update on a hand-made trajectory, and lossless equality
with AR on tiny random models and on smollm2-135m real prompts (EOS / stop inside a run), the
loop's budget (no candidate deeper than the tokens left), seeded sampling, and tuning W, N, G
into the model's artifact store."""

import io
import json
import random

import pytest
import torch
from accbench import suites as suite_registry
from accbench.engine.prompts import encode_prompt
from accbench.methods import SamplingConfig, StopChecker, get
from accbench.methods.core import OptionError, TuneJob, Verified
from accbench.methods.core.tree import block_forward, make_cache
from accbench.methods.lookahead import (
    LookaheadDrafter,
    NgramPool,
    advance_window,
    device_key,
    lookahead_layout,
)
from accbench.methods.lookahead.tune import tune
from rich.console import Console


def _chains(W, N, G):
    """Brute force, from the paper's description: the token sequence each block row continues
    (block indices, current token first)."""
    L = N - 1
    out = {}
    for lvl in range(L):
        for i in range(W):
            k = 1 + lvl * W + i
            out[k] = [0] + [1 + j for j in range(i + 1)] + [1 + m * W + i for m in range(1, lvl + 1)]
    base = 1 + L * W
    for c in range(G):
        for j in range(L):
            out[base + c * L + j] = [0] + [base + c * L + t for t in range(j + 1)]
    out[0] = [0]
    return out


@pytest.mark.parametrize("W,N,G", [(3, 4, 2), (2, 2, 3), (4, 3, 0)])
def test_layout_is_one_causal_chain_per_row(W, N, G):
    vis, depth = lookahead_layout(W, N, G)
    n = 1 + (N - 1) * W + G * (N - 1)
    assert vis.shape == (n, n) and depth.shape == (n,)
    for k, chain in _chains(W, N, G).items():
        assert sorted(chain) == torch.nonzero(vis[k]).flatten().tolist(), k
        assert [int(depth[c]) for c in chain] == list(range(len(chain))), k  # consecutive positions


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_block_forward_equals_sequential_decoding_of_each_chain(fixture, request):
    lm = request.getfixturevalue(fixture)
    model = lm.model
    W, N, G = 3, 4, 2
    vis, depth = lookahead_layout(W, N, G)
    rng = random.Random(1)
    prompt = [rng.randrange(3, 200) for _ in range(11)]
    block = [prompt[-1]] + [rng.randrange(3, 200) for _ in range(vis.shape[0] - 1)]
    cache = make_cache(model)
    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt[:-1]]), past_key_values=cache, use_cache=True)
        logits, _ = block_forward(model, cache, torch.tensor([block]), depth, vis)
    rows = torch.tensor([0, 5, 9])
    cache2 = make_cache(model)
    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt[:-1]]), past_key_values=cache2, use_cache=True)
        sub, _ = block_forward(model, cache2, torch.tensor([block]), depth, vis, logits_rows=rows)
    torch.testing.assert_close(sub, logits[rows])
    for k, chain in _chains(W, N, G).items():
        seq = prompt[:-1] + [block[c] for c in chain]
        with torch.inference_mode():
            ref = model(input_ids=torch.tensor([seq])).logits[0, -1]
        torch.testing.assert_close(logits[k], ref, atol=1e-4, rtol=1e-4, msg=f"row {k}")


def test_pool_and_window_update_on_a_hand_made_trajectory():
    pool = NgramPool(cap=2)
    window = [[10, 11], [20, 21]]  # W=2, N=3: two levels
    advance_window(window, [30, 31], pool, collect=False)  # warm-up step: nothing collected
    assert window == [[20, 21], [30, 31]] and pool.table == {}
    advance_window(window, [40, 41], pool, collect=True)
    assert window == [[30, 31], [40, 41]]
    assert pool.get(20) == [(30, 40)] and pool.get(21) == [(31, 41)]
    advance_window(window, [50, 51], pool, collect=True)
    assert pool.get(30) == [(40, 50)] and pool.get(31) == [(41, 51)]
    # dedup: the same n-gram again is not stored twice, and moves to the front
    pool.add(20, (99, 98))
    assert pool.get(20) == [(99, 98), (30, 40)]
    pool.add(20, (30, 40))
    assert pool.get(20) == [(30, 40), (99, 98)]
    # capacity: at most cap per key, the oldest goes
    pool.add(20, (7, 7))
    assert pool.get(20) == [(7, 7), (30, 40)]
    # seeding from a sequence: every n-gram keyed by its first token, latest occurrence first
    p = NgramPool(cap=3)
    p.add_sequence([1, 2, 3, 1, 4, 5, 1], 3)
    assert p.get(1) == [(4, 5), (2, 3)] and p.get(2) == [(3, 1)] and p.get(5) == []


CONFIGS = [dict(W=3, N=3, G=3), dict(W=2, N=4, G=2), dict(W=1, N=2, G=1), dict(W=4, N=3, G=0, prompt_pool=False),
           dict(W=3, N=4, G=4, prompt_pool=False, output_pool=False)]
TEXTS = ["abc abc abc abc abc", "the cat the cat the cat the", "def f(x): return x\ndef g(x): return x\ndef h(x):",
         "1 2 3 4 1 2 3 4 1 2 3 4"]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_lookahead_equals_ar_on_tiny_models(fixture, request):
    lm = request.getfixturevalue(fixture)
    ar = get("ar")(lm.model, lm.tokenizer)
    seen_multi = False
    for cfg in CONFIGS:
        la = get("lookahead")(lm.model, lm.tokenizer, **cfg)
        for t in TEXTS:
            ids = lm.tokenizer(t).input_ids
            a = ar.generate(ids, 30)
            r = la.generate(ids, 30)
            assert r.tokens == a.tokens, (cfg, t)
            assert sum(r.tokens_per_step) == r.n_new
            assert r.forward_passes == len(r.tokens_per_step)
            assert all(x <= y for x, y in zip(r.accepted, r.drafted))
            # every decode step commits its accepted drafts + 1 bonus (the last one may be cut by the budget)
            assert 0 <= sum(r.accepted) - (r.n_new - len(r.tokens_per_step)) <= 1
            seen_multi |= max(r.tokens_per_step) > 1
    assert seen_multi  # some step accepted drafts, so the acceptance path was exercised


def test_options_and_errors(tiny_llama):
    cls = get("lookahead")
    d = cls(tiny_llama.model, tiny_llama.tokenizer, W=2, N=3, G=1)
    assert (d.W, d.N, d.G, d.params_source) == (2, 3, 1, "options")
    with pytest.raises(OptionError):
        cls(tiny_llama.model, tiny_llama.tokenizer, W=0, N=3, G=1)
    with pytest.raises(OptionError):
        cls(tiny_llama.model, tiny_llama.tokenizer, window=3)


def test_proposals_never_exceed_the_budget(tiny_llama):
    dec = get("lookahead")(tiny_llama.model, tiny_llama.tokenizer, W=2, N=4, G=2)
    drafter = LookaheadDrafter(dec)
    prompt = [5, 6, 7, 5, 8, 9, 5, 6, 7]
    drafter.start(prompt, 5, Verified())
    tokens = [5]
    g = len(drafter.pool.get(5))
    assert g == 2  # seeded from the prompt: (6, 7, 5) and (8, 9, 5)
    full = drafter.propose(tokens, 10)
    assert full.depth == 3 and len(full.nodes) == 1 + 2 * 3 and len(full.rows) == 1 + 2 + 2 * 3
    for budget in (1, 2):
        p = drafter.propose(tokens, budget)
        assert p.depth == budget and len(p.nodes) == 1 + g * budget
        assert len(p.tokens) == len(full.tokens)  # the same block, fewer tree nodes and logits rows
        assert p.node_rows == [0] + list(range(1 + 2, 1 + 2 + g * budget))
        assert [int(p.rows[i]) for i in p.node_rows] == p.nodes
    assert drafter.propose(tokens, 0) is None
    # end to end: no step drafts deeper than what is left to generate
    ids = tiny_llama.tokenizer("abc abc abc abc abc").input_ids
    for budget in (1, 2, 3, 5):
        r = dec.generate(ids, budget)
        assert r.n_new == budget and len(r.drafted) <= budget - 1


def test_sampling_runs_and_repeats_with_the_seed(tiny_llama):
    la = get("lookahead")(tiny_llama.model, tiny_llama.tokenizer, sampling=SamplingConfig(temperature=0.8, seed=3),
                          W=3, N=3, G=3)
    ids = tiny_llama.tokenizer("the cat the cat the cat the").input_ids
    a = la.generate(ids, 20)
    la.reseed(3)
    b = la.generate(ids, 20)
    assert a.tokens == b.tokens and a.n_new == sum(a.tokens_per_step) <= 20
    assert not a.lossless


def test_tune_saves_a_default_the_decoder_uses(tiny_llama, tmp_path, monkeypatch):
    from accbench.training.artifacts import ModelArtifacts

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    lm, store = tiny_llama, ModelArtifacts("tiny-random-llama")
    prompts = [lm.tokenizer(t).input_ids for t in TEXTS[:2]]
    logged = []
    job = TuneJob(method="lookahead", model_name="tiny-random-llama", model=lm.model, tokenizer=lm.tokenizer,
                  prompts=prompts, stop=StopChecker(lm.tokenizer, [], get("ar")(lm.model, lm.tokenizer).eos_ids),
                  artifacts=store, device=lm.device, dtype=lm.dtype,
                  options={"max_new_tokens": "12", "grid": "2,3,2;1,2,1"}, log=logged.append)
    path = tune(job)
    assert path == store.folder("lookahead") / "tuned.json" and path.parent.is_relative_to(tmp_path)
    saved = json.loads(path.read_text())[device_key(lm.model.device, lm.model.dtype)]
    assert (saved["W"], saved["N"], saved["G"]) in {(2, 3, 2), (1, 2, 1)} and len(saved["grid"]) == 2
    assert all(r["identical"] for r in saved["grid"]) and any("saved W=" in m for m in logged)
    assert not list(path.parent.glob("*.tmp"))
    d = get("lookahead")(lm.model, lm.tokenizer, artifacts=store)
    assert (d.W, d.N, d.G, d.params_source) == (saved["W"], saved["N"], saved["G"], "tuned")
    shown = io.StringIO()  # the decoder's classmethod runs the same search; a console gets a table
    assert get("lookahead").tune(TuneJob(**{**vars(job), "console": Console(file=shown, width=200)})) == path
    assert "lookahead grid" in shown.getvalue() and "speedup" in shown.getvalue()
    plain = get("lookahead")(lm.model, lm.tokenizer)  # no store: the built-in defaults
    assert (plain.W, plain.N, plain.G, plain.params_source) == (4, 4, 4, "builtin")
    with pytest.raises(OptionError):
        tune(TuneJob(**{**vars(job), "options": {"grid": "3,3"}}))
    with pytest.raises(OptionError):
        tune(TuneJob(**{**vars(job), "options": {"prompts": 2}}))


# ---------------------------------------------------------------- real prompts (smollm2)


def _real_prompts(tok, data_dir):
    out = []
    for name, idx in (("mbpp", 0), ("cnndm", 1)):
        suite = suite_registry.build(name, data_dir=str(data_dir))
        s = list(suite.samples(limit=idx + 1))[idx]
        out.append((name, encode_prompt(tok, s.prompt, "raw"), suite.stop))
    return out


def _stop_inside_a_run(rec):
    """Positions p whose token first occurs at p and lies inside a multi-token step, not at
    its end (so a stop there cuts an accepted run)."""
    pos, out = 0, []
    for n in rec.tokens_per_step:
        for j in range(n - 1):
            p = pos + j
            if rec.tokens[p] not in rec.tokens[:p]:
                out.append(p)
        pos += n
    return out


def check_real_prompts(lm, data_dir, method, opts, budget=32):
    tok = lm.tokenizer
    ar = get("ar")(lm.model, tok)
    dec = get(method)(lm.model, tok, **opts)
    cut_checked = 0
    for name, ids, stop in _real_prompts(tok, data_dir):
        stopper = StopChecker(tok, stop, ar.eos_ids)
        a = ar.generate(ids, budget, stopper)
        r = dec.generate(ids, budget, stopper)
        assert r.tokens == a.tokens, name
        assert r.finish_reason == a.finish_reason
        assert sum(r.tokens_per_step) == r.n_new
        # declare as EOS a token that AR emits mid-output and that the method commits inside a run
        inside = _stop_inside_a_run(r)
        if inside:
            p = inside[0]
            eos_stop = StopChecker(tok, stop, [r.tokens[p]])
            a2 = ar.generate(ids, budget, eos_stop)
            r2 = dec.generate(ids, budget, eos_stop)
            assert a2.tokens == a.tokens[: p + 1] and a2.finish_reason == "eos"
            assert r2.tokens == a2.tokens and r2.finish_reason == "eos"
            assert sum(r2.tokens_per_step) == r2.n_new == p + 1  # nothing after the stop emitted or counted
            assert sum(r2.accepted) <= r2.n_new - 1
            # the same with a stop string: the text of the stopping token (when it is distinctive)
            piece = tok.decode([r.tokens[p]])
            if len(piece.strip()) >= 3 and piece not in tok.decode(a.tokens[:p]):
                st = StopChecker(tok, [piece], ar.eos_ids)
                a3 = ar.generate(ids, budget, st)
                r3 = dec.generate(ids, budget, st)
                assert r3.tokens == a3.tokens and r3.finish_reason == a3.finish_reason == "stop"
                assert sum(r3.tokens_per_step) == r3.n_new
            cut_checked += 1
    assert cut_checked >= 1, "no prompt had a multi-token run to cut: the stop-inside-a-run case was not exercised"


@pytest.mark.slow
def test_lookahead_equals_ar_on_real_prompts(smollm2, data_dir):
    check_real_prompts(smollm2, data_dir, "lookahead", dict(W=3, N=4, G=3))
