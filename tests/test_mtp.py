"""MTP: lossless self-speculative decoding with extra transformer-block heads, the heads' KV
caches, training (loss falls, resume is exact) and the Meta checkpoint layout."""

import json
import math

import pytest
import torch
from accbench import suites as suite_registry
from accbench.engine.prompts import encode_prompt
from accbench.methods import StopChecker, get
from accbench.methods.mtp import (
    BranchCapture,
    MTPDecoder,
    MTPHeads,
    head_logits,
    load_meta_checkpoint,
)

TEXTS = ["abc abc abc abc abc", "the cat the cat the cat the", "def f(x): return x\ndef g(x): return x\ndef h(x):",
         "1 2 3 4 1 2 3 4 1 2 3 4"]


def _no_stop(tok):
    return StopChecker(tok, [], [])


def _oracle(dec, n_prompt, ref, corrupt_every=0):
    """Make ``dec``'s drafters draft the AR continuation ``ref`` (the heads still run, so their
    caches evolve as usual); every ``corrupt_every``-th draft position is made wrong."""
    make = dec.drafter

    def drafter(n_positions):
        d = make(n_positions)
        real = d.draft

        def draft(h, positions, k):
            real(h, positions, k)
            c = int(positions[-1]) - n_prompt + 2  # tokens committed so far
            out = list(ref[c : c + k])
            if corrupt_every:
                out = [(t + 1) % 200 + 3 if (c + i) % corrupt_every == 0 else t for i, t in enumerate(out)]
            return out + [3] * (k - len(out))

        d.draft = draft
        return d

    dec.drafter = drafter


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_mtp_equals_ar_with_random_heads(fixture, request):
    lm = request.getfixturevalue(fixture)
    ar = get("ar")(lm.model, lm.tokenizer)
    for opts, texts in (({}, TEXTS), ({"num_draft": 1}, TEXTS[:2]), ({"n": 3, "branch_layer": -1}, TEXTS[2:])):
        dec = get("mtp")(lm.model, lm.tokenizer, heads="random", **opts)
        for t in texts:
            ids = lm.tokenizer(t).input_ids
            a = ar.generate(ids, 40, _no_stop(lm.tokenizer))
            m = dec.generate(ids, 40, _no_stop(lm.tokenizer))
            assert m.tokens == a.tokens, (opts, t)
            assert sum(m.tokens_per_step) == m.n_new == 40
            assert m.forward_passes == len(m.tokens_per_step)
            assert len(m.drafted) == dec.num_draft and all(x <= y for x, y in zip(m.accepted, m.drafted))
            assert {"draft_s", "verify_s"} <= set(m.extra)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_mtp_stops_inside_an_accepted_run(fixture, request):
    lm = request.getfixturevalue(fixture)
    tok = lm.tokenizer
    ar = get("ar")(lm.model, tok)
    ids = tok(TEXTS[2]).input_ids
    ref = ar.generate(ids, 48, _no_stop(tok)).tokens
    # EOS = a token AR emits mid-sequence: everything after its first occurrence must vanish
    fresh = [i for i in range(6, 40) if ref[i] not in ref[:i]]
    assert fresh, ref
    cut = fresh[0]
    eos_tok = ref[cut]
    dec = get("mtp")(lm.model, tok, heads="random")
    _oracle(dec, len(ids), ref)
    rec = dec.generate(ids, 48, StopChecker(tok, [], [eos_tok]))
    assert rec.tokens == ref[: cut + 1] and rec.finish_reason == "eos"
    assert sum(rec.tokens_per_step) == rec.n_new
    assert rec.tau > 2.0  # the oracle's runs were accepted: the stop really fell inside one
    # drafts after the stop are not counted as accepted: every step but the last adds one bonus token
    steps = len(rec.tokens_per_step) - 1
    assert sum(rec.accepted) <= (rec.n_new - 1) - (steps - 1)
    assert sum(rec.extra["blocks"].values()) == steps
    # a stop string spanning tokens inside an accepted run
    stop = tok.decode(ref[20:22])
    a = ar.generate(ids, 48, StopChecker(tok, [stop], []))
    dec2 = get("mtp")(lm.model, tok, heads="random")
    _oracle(dec2, len(ids), ref)
    m = dec2.generate(ids, 48, StopChecker(tok, [stop], []))
    assert m.tokens == a.tokens and m.finish_reason == a.finish_reason == "stop"
    assert sum(m.tokens_per_step) == m.n_new < 48


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_head_caches_equal_recomputation_after_rejections(fixture, request):
    lm = request.getfixturevalue(fixture)
    model, tok = lm.model, lm.tokenizer
    ids = tok(TEXTS[1]).input_ids
    ref = get("ar")(model, tok).generate(ids, 40, _no_stop(tok)).tokens
    dec = get("mtp")(model, tok, heads="random")
    _oracle(dec, len(ids), ref, corrupt_every=3)  # partial acceptance: accepted and rejected drafts
    rec = dec.generate(ids, 40, _no_stop(tok))
    assert rec.tokens == ref
    assert 0 < sum(rec.accepted) < sum(rec.drafted)
    hc = dec.last_head_cache
    L = hc.get_seq_length()
    # the heads have seen every committed position except those committed by the last step
    # (the last step's root, accepted drafts and bonus token have no trunk state in the heads yet)
    assert L == len(ids) + rec.n_new - 1 - rec.tokens_per_step[-1]
    seq = torch.tensor([ids + rec.tokens])
    with torch.inference_mode(), BranchCapture(model, dec.heads.branch_layer) as cap:
        model(input_ids=seq)
        fresh = dec.heads.make_cache()
        dec.heads(cap.h, torch.arange(seq.shape[1]), fresh)
    for got, want in zip(hc.layers, fresh.layers):
        torch.testing.assert_close(got.keys, want.keys[:, :, :L], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.values, want.values[:, :, :L], atol=1e-4, rtol=1e-4)


def test_missing_heads_need_training(tiny_llama, tmp_path, monkeypatch):
    from accbench.methods.core.errors import NeedsTraining
    from accbench.training.artifacts import ModelArtifacts

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    with pytest.raises(NeedsTraining):
        MTPDecoder(tiny_llama.model, tiny_llama.tokenizer, model_name="tiny-random-llama")
    with pytest.raises(NeedsTraining):  # the harness's store has no trained heads either
        MTPDecoder(tiny_llama.model, tiny_llama.tokenizer, model_name="tiny-random-llama",
                   artifacts=ModelArtifacts("tiny-random-llama"))


def test_default_heads_come_from_the_artifact_store(tiny_llama, tmp_path):
    heads = MTPHeads(tiny_llama.model, 2)
    heads.init_from_backbone(tiny_llama.model, "random", seed=1)
    heads.save(tmp_path / "trained")

    class Store:
        def default(self, key):
            return tmp_path / "trained" if key == "mtp" else None

        def folder(self, key):
            return tmp_path

    dec = MTPDecoder(tiny_llama.model, tiny_llama.tokenizer, model_name="tiny-random-llama", artifacts=Store())
    assert dec.heads_dir == tmp_path / "trained" and dec.heads.n_extra == 2 == dec.num_draft
    for k, v in heads.state_dict().items():
        torch.testing.assert_close(dec.heads.state_dict()[k], v)


def test_string_options_are_validated(tiny_llama):
    from accbench.methods.core.options import OptionError

    tok = tiny_llama.tokenizer
    dec = MTPDecoder(tiny_llama.model, tok, heads="random", num_draft="2", n="3", branch_layer="-1", seed="7")
    assert (dec.num_draft, dec.heads.n_extra, dec.heads.branch_layer) == (2, 2, len(tiny_llama.model.model.layers) - 1)
    assert dec.options.draft_vocab == "auto" and dec.options.seed == 7
    assert MTPDecoder(tiny_llama.model, tok, heads="random", num_draft="none").num_draft == 3
    assert MTPDecoder(tiny_llama.model, tok, heads="random", num_draft="9").num_draft == 3  # capped at the heads
    for bad in ({"num_draft": "abc"}, {"num_draft": "-1"}, {"n": "1"}, {"draft_vocab": "tiny"}, {"seed": "x"},
                {"branch_layer": "1.5"}, {"heads_dir": "x"}):
        with pytest.raises(OptionError):
            MTPDecoder(tiny_llama.model, tok, heads="random", **bad)


def test_no_drafts_decodes_one_token_per_step(tiny_llama):
    """num_draft=0: nothing is drafted, every step is a plain one-token step (AR's tokens)."""
    tok = tiny_llama.tokenizer
    ids = tok(TEXTS[0]).input_ids
    a = get("ar")(tiny_llama.model, tok).generate(ids, 20, _no_stop(tok))
    m = MTPDecoder(tiny_llama.model, tok, heads="random", num_draft=0).generate(ids, 20, _no_stop(tok))
    assert m.tokens == a.tokens and m.tokens_per_step == [1] * 20 and m.drafted == []
    assert m.extra["blocks"] == {1: 19}


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


def _job(tmp_path, steps, **options):
    """A training job on a freshly loaded tiny model (``unfreeze`` fine-tunes the model it is given)."""
    from accbench.methods.core import TrainJob
    from accbench.models import load_model
    from accbench.training.artifacts import ModelArtifacts
    from accbench.training.train_data import training_documents

    text = tmp_path / "train.txt"
    if not text.exists():
        docs = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n\nassert f{i}(2) == {2 * i + i % 7}" for i in range(40)]
        text.write_text("\n\n".join(docs))
    lm = load_model("tiny-random-llama")
    opts = {"windows": 6, "eval_chunks": 2, "ckpt_every": 3, **options}
    return TrainJob(method="mtp", model_name="tiny-random-llama", model=lm.model, tokenizer=lm.tokenizer,
                    documents=training_documents((), [str(text)]), artifacts=ModelArtifacts("tiny-random-llama"),
                    device=lm.device, dtype=lm.dtype, steps=steps, batch_size=2, seq_len=48, lr=3e-3, options=opts,
                    log=lambda line: None)


def _checkpoint_step(artifact):
    from accbench.methods.training import Checkpoint, work_dir

    return Checkpoint.read_state(work_dir(artifact) / "heads.safetensors")["step"]


def _heads_state(path):
    from safetensors.torch import load_file

    return load_file(str(path / "heads.safetensors"))


def test_trained_heads_become_the_default_and_decode_losslessly(tiny_llama, tmp_path, monkeypatch):
    from accbench.methods.mtp.train import train_mtp
    from accbench.training.artifacts import ModelArtifacts, get_default

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path / "cache"))
    out = train_mtp(_job(tmp_path, 6, n=3))
    meta = json.loads((out / "mtp.json").read_text())
    assert meta["steps_done"] == 6 and len(meta["final_loss"]) == 2
    acc = meta["held_out"]["head_acc"]
    assert acc[0] == 1.0 and len(acc) == 3 and all(0.0 <= a <= 1.0 for a in acc)
    assert get_default("tiny-random-llama", "mtp") == out
    store = ModelArtifacts("tiny-random-llama")
    dec = MTPDecoder(tiny_llama.model, tiny_llama.tokenizer, model_name="tiny-random-llama", artifacts=store)
    assert dec.heads.n_extra == 2
    assert dec._vocab is not None and 0 < len(dec._vocab) < tiny_llama.model.config.vocab_size  # draft vocabulary
    full = MTPDecoder(tiny_llama.model, tiny_llama.tokenizer, model_name="tiny-random-llama", artifacts=store,
                      draft_vocab="full")
    ar = get("ar")(tiny_llama.model, tiny_llama.tokenizer)
    for t in TEXTS[1:3]:
        ids = tiny_llama.tokenizer(t).input_ids
        a = ar.generate(ids, 24, _no_stop(tiny_llama.tokenizer)).tokens
        assert dec.generate(ids, 24, _no_stop(tiny_llama.tokenizer)).tokens == a
        assert full.generate(ids, 24, _no_stop(tiny_llama.tokenizer)).tokens == a


def test_training_loss_decreases(tmp_path, monkeypatch):
    from accbench.methods.mtp import train as mtp_train

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path / "cache"))
    seen = []
    real = mtp_train.F.cross_entropy

    def spy(*a, **k):
        loss = real(*a, **k)
        seen.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(mtp_train.F, "cross_entropy", spy)
    mtp_train.train_mtp(_job(tmp_path, 20, n=2))
    first, last = sum(seen[:3]) / 3, sum(seen[17:20]) / 3
    assert all(math.isfinite(x) for x in seen[:20])
    assert last < first - 0.5, (first, last)


def test_training_resumes_exactly(tmp_path, monkeypatch):
    from accbench.methods.mtp.train import train_mtp
    from accbench.methods.training import work_dir

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path / "a"))
    full = _heads_state(train_mtp(_job(tmp_path, 7, n=2)))
    # stopped after the first step (max_minutes ~ 0: it checkpoints and commits what it has) ...
    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path / "b"))
    part = train_mtp(_job(tmp_path, 7, n=2, max_minutes=1e-9))
    assert json.loads((part / "mtp.json").read_text())["steps_done"] == 1
    assert _checkpoint_step(part) == 1
    # ... then the same command resumes from the checkpoint and ends where an uninterrupted run does
    resumed_dir = train_mtp(_job(tmp_path, 7, n=2))
    assert resumed_dir == part and not work_dir(part).exists()
    resumed = _heads_state(resumed_dir)
    assert resumed.keys() == full.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=1e-5)


def test_ctrl_c_keeps_finished_steps_and_resumes_exactly(tmp_path, monkeypatch):
    import pytest
    from accbench.methods.mtp import train as mtp_train

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path / "a"))
    full = _heads_state(mtp_train.train_mtp(_job(tmp_path, 7, n=2, ckpt_every=100)))
    # Ctrl-C inside the 4th step (n=2: one cross-entropy per step), long before any periodic checkpoint
    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path / "b"))
    real, calls = mtp_train.F.cross_entropy, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mtp_train.F, "cross_entropy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mtp_train.train_mtp(_job(tmp_path, 7, n=2, ckpt_every=100))
    works = list((tmp_path / "b").rglob("*.work"))
    assert len(works) == 1 and _checkpoint_step(works[0].with_name(works[0].name[: -len(".work")])) == 3
    monkeypatch.setattr(mtp_train.F, "cross_entropy", real)
    resumed = _heads_state(mtp_train.train_mtp(_job(tmp_path, 7, n=2, ckpt_every=100)))
    assert resumed.keys() == full.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=1e-5)


def test_unfreeze_saves_a_runnable_fine_tuned_model(tmp_path, monkeypatch):
    from accbench.methods.mtp.train import train_mtp
    from accbench.models import load_model

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path / "cache"))
    out = train_mtp(_job(tmp_path, 2, n=2, unfreeze=True))
    assert (out / "config.json").exists() and (out / "heads.safetensors").exists()
    lm = load_model(str(out))
    dec = MTPDecoder(lm.model, lm.tokenizer, model_name=str(out))  # heads found in the model directory
    assert dec.heads_dir == out
    ids = lm.tokenizer(TEXTS[0]).input_ids
    a = get("ar")(lm.model, lm.tokenizer).generate(ids, 20, _no_stop(lm.tokenizer))
    assert dec.generate(ids, 20, _no_stop(lm.tokenizer)).tokens == a.tokens


# --------------------------------------------------------------------------------------
# Meta's checkpoint layout
# --------------------------------------------------------------------------------------


def _meta_reference_forward(sd, p, tokens):
    """Meta's MTP Llama (interleaved complex rotary), written independently: logits of every
    head, [n_future, T, V]."""
    dim, nh, nkv = p["dim"], p["n_heads"], p["n_kv_heads"]
    hd = dim // nh
    T = len(tokens)
    freqs = 1.0 / (p["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    cis = torch.polar(torch.ones(T, hd // 2), torch.outer(torch.arange(T).float(), freqs))

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + p["norm_eps"]) * w

    def rope(x):  # [T, h, hd]
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * cis[:, None]).flatten(-2)

    def block(x, pre):
        g = lambda k: sd[pre + k]  # noqa: E731
        hn = norm(x, g("attention_norm.weight"))
        q = rope((hn @ g("attention.wq.weight").T).view(T, nh, hd))
        k = rope((hn @ g("attention.wk.weight").T).view(T, nkv, hd)).repeat_interleave(nh // nkv, 1)
        v = (hn @ g("attention.wv.weight").T).view(T, nkv, hd).repeat_interleave(nh // nkv, 1)
        s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + torch.einsum("hqk,khd->qhd", s, v).reshape(T, dim) @ g("attention.wo.weight").T
        hn = norm(x, g("ffn_norm.weight"))
        ff = torch.nn.functional.silu(hn @ g("feed_forward.w1.weight").T) * (hn @ g("feed_forward.w3.weight").T)
        return x + ff @ g("feed_forward.w2.weight").T

    h = sd["tok_embeddings.weight"][torch.tensor(tokens)]
    for i in range(p["n_layers"] - 1):
        h = block(h, f"layers.{i}.")
    outs = [block(h, f"layers.{p['n_layers'] - 1}.")]
    outs += [block(h, f"extra_heads.{j}.") for j in range(p["n_future_tokens"] - 1)]
    return torch.stack([norm(o, sd["norm.weight"]) @ sd["output.weight"].T for o in outs])


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_meta_checkpoint_layout_maps_onto_the_decoder(tmp_path, fmt):
    p = {"dim": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 300, "multiple_of": 32,
         "norm_eps": 1e-5, "rope_theta": 10000.0, "n_future_tokens": 3}
    g = torch.Generator().manual_seed(0)

    def r(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    sd = {"tok_embeddings.weight": r(300, 64, scale=1.0), "norm.weight": 1 + r(64), "output.weight": r(300, 64)}
    blocks = [f"layers.{i}." for i in range(3)] + [f"extra_heads.{j}." for j in range(2)]
    for pre in blocks:
        sd.update({pre + "attention.wq.weight": r(64, 64), pre + "attention.wk.weight": r(32, 64),
                   pre + "attention.wv.weight": r(32, 64), pre + "attention.wo.weight": r(64, 64),
                   pre + "feed_forward.w1.weight": r(96, 64), pre + "feed_forward.w3.weight": r(96, 64),
                   pre + "feed_forward.w2.weight": r(64, 96), pre + "attention_norm.weight": 1 + r(64),
                   pre + "ffn_norm.weight": 1 + r(64)})
    ck = tmp_path / "7B_toy_4"
    ck.mkdir()
    (ck / "params.json").write_text(json.dumps(p))
    if fmt == "pth":
        torch.save(sd, ck / "consolidated.00.pth")
    else:
        from safetensors.torch import save_file

        save_file(sd, str(ck / "consolidated.safetensors"))
    model, heads = load_meta_checkpoint(ck)
    assert heads.n_extra == 2 and heads.branch_layer == 2
    tokens = [5, 17, 250, 3, 99, 42, 42, 7, 130, 11]
    ref = _meta_reference_forward(sd, p, tokens)
    with torch.inference_mode(), BranchCapture(model, heads.branch_layer) as cap:
        base = model(input_ids=torch.tensor([tokens])).logits[0]
        outs = heads(cap.h, torch.arange(len(tokens)))
        extra = head_logits(model, [o[0] for o in outs]).view(2, len(tokens), -1)
    torch.testing.assert_close(base, ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(extra, ref[1:], atol=1e-4, rtol=1e-4)

    # saved as an artifact, the heads drive the decoder losslessly against greedy head 1
    heads.save(tmp_path / "heads")
    from accbench.models import byte_tokenizer

    tok = byte_tokenizer()
    dec = MTPDecoder(model, tok, heads=str(tmp_path / "heads"))
    assert isinstance(dec.heads, MTPHeads) and dec.heads.branch_layer == 2
    ar = get("ar")(model, tok)
    a = ar.generate(tokens, 30, _no_stop(tok))
    m = dec.generate(tokens, 30, _no_stop(tok))
    assert m.tokens == a.tokens


# --------------------------------------------------------------------------------------
# real prompts
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("suite_name", ["mbpp", "cnndm"])
def test_mtp_equals_ar_on_smollm2_real_prompts(smollm2, suite_name):
    lm = smollm2
    ar = get("ar")(lm.model, lm.tokenizer)
    suite = suite_registry.build(suite_name)
    stopper = StopChecker(lm.tokenizer, suite.stop, ar.eos_ids)
    plain = get("mtp")(lm.model, lm.tokenizer, heads="random")
    for s in list(suite.samples(limit=2)):
        ids = encode_prompt(lm.tokenizer, s.prompt, "raw")
        a = ar.generate(ids, 40, stopper)
        assert plain.generate(ids, 40, stopper).tokens == a.tokens, s.id
        # drafts that are often right (AR's own continuation, every 4th position corrupted):
        # long accepted runs, rejections, and the suite's stop inside a run
        ref = ar.generate(ids, 48, StopChecker(lm.tokenizer, [], [])).tokens
        dec = get("mtp")(lm.model, lm.tokenizer, heads="random")
        _oracle(dec, len(ids), ref, corrupt_every=4)
        m = dec.generate(ids, 40, stopper)
        assert m.tokens == a.tokens and m.finish_reason == a.finish_reason, s.id
        assert sum(m.tokens_per_step) == m.n_new
