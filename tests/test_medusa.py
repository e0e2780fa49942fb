"""Medusa-1 / Medusa-2: trees built from paths, lossless tree decoding (random heads, oracle
heads that exercise long accepted paths and KV compaction), Medusa-2's private backbone,
training (loss decreases, interrupted training resumes to the same weights), the
NeedsTraining message, and equality with AR on real prompts with smollm2-135m."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from accbench.methods import SamplingConfig, StopChecker, get
from accbench.methods.core.errors import NeedsTraining
from accbench.methods.medusa import (
    CONFIG_FILE,
    DELTA_FILE,
    HEADS_FILE,
    MedusaHeads,
    MedusaTree,
    best_tree,
    expected_accepted,
)
from accbench.training.artifacts import ModelArtifacts
from safetensors.torch import load_file, save_file

BRANCHY = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 2]]


def write_artifact(path: Path, model, *, num_heads=4, w_std=0.0, seed=0, own_proj=False, head_vocab=None,
                   delta_std=None) -> Path:
    """A heads artifact without training: W ~ N(0, w_std) so drafts vary."""
    path.mkdir(parents=True, exist_ok=True)
    lm_w = model.get_output_embeddings().weight.detach()
    vocab, hidden = lm_w.shape
    g = torch.Generator().manual_seed(seed)
    ids = None if head_vocab is None else torch.randperm(vocab, generator=g)[:head_vocab].sort().values
    heads = MedusaHeads(hidden, vocab, num_heads, 1, own_proj, ids)
    heads.init_proj_from(lm_w)
    with torch.no_grad():
        for n, p in heads.named_parameters():
            if "linear" in n:
                p.copy_(torch.randn(p.shape, generator=g) * w_std)
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(path / HEADS_FILE))
    cfg = {"method": "medusa1", "heads": heads.config(), "stats": {}}
    if delta_std is not None:
        delta = {}
        for name, mod in model.named_modules():
            if name.endswith(("q_proj", "down_proj")):
                delta[f"{name}.lora_a"] = torch.randn(4, mod.in_features, generator=g) * delta_std
                delta[f"{name}.lora_b"] = torch.randn(mod.out_features, 4, generator=g) * delta_std
                delta[f"{name}.scale"] = torch.tensor([1.0])
        save_file(delta, str(path / DELTA_FILE))
    (path / CONFIG_FILE).write_text(json.dumps(cfg))
    return path


def _prompts(n, length=17, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, 250) for _ in range(length)] for _ in range(n)]


# --------------------------------------------------------------------------------------
# trees
# --------------------------------------------------------------------------------------


def test_tree_from_paths_candidates_and_structure():
    tree = MedusaTree([[1, 0], [0, 0, 2]])  # prefixes are added: (0,), (1,), (0, 0)
    assert tree.paths == [(0,), (1,), (0, 0), (1, 0), (0, 0, 2)]
    assert tree.parents == [-1, 0, 0, 1, 2, 3]
    assert tree.depths == [0, 1, 1, 2, 2, 3]
    assert tree.topk == 3 and tree.depth == 3 and tree.size == 6
    cands = torch.arange(100, 112).view(4, 3)  # head d (row), rank r (column) -> token 100 + 3d + r
    tokens = cands.reshape(-1)[tree.flat_index(3)].tolist()
    assert tokens == [100, 101, 103, 103, 108]  # node (r1..rd) -> head d's rank-rd candidate
    vis = tree.visible
    for i, p in enumerate(tree.parents):  # every node sees exactly itself and its ancestors
        anc = {i}
        while p != -1:
            anc.add(p)
            p = tree.parents[p]
        assert {j for j in range(tree.size) if vis[i, j]} == anc


def test_best_tree_is_optimal_among_prefix_closed_trees():
    rng = random.Random(3)
    # monotone weights over depth-2, top-3 paths (a child never weighs more than its parent)
    w = {}
    for r1 in range(3):
        w[(r1,)] = rng.random()
        for r2 in range(3):
            w[(r1, r2)] = w[(r1,)] * rng.random()
    paths = list(w)
    for n in range(1, 7):
        got = best_tree(w, n)
        assert len(got) == n and all(p[:-1] in got or len(p) == 1 for p in got)
        best = max(expected_accepted(w, c) for c in itertools.combinations(paths, n)
                   if all(len(p) == 1 or p[:-1] in c for p in c))
        assert expected_accepted(w, got) == pytest.approx(best)


# --------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
@pytest.mark.parametrize("tree", ["chain", json.dumps(BRANCHY)])
def test_lossless_with_random_heads(fixture, tree, request, tmp_path):
    lm = request.getfixturevalue(fixture)
    art = write_artifact(tmp_path / "h", lm.model, w_std=0.3, head_vocab=200)
    ar = get("ar")(lm.model, lm.tokenizer)
    md = get("medusa1")(lm.model, lm.tokenizer, heads=str(art), tree=tree)
    for p in _prompts(3):
        a, b = ar.generate(p, 40), md.generate(p, 40)
        assert b.tokens == a.tokens
        assert sum(b.tokens_per_step) == len(b.tokens) and b.forward_passes == len(b.tokens_per_step)
        assert len(b.drafted) == md.tree.depth and b.lossless


class OracleMedusa:
    """Drafts that put the AR continuation at chosen ranks (and wrong tokens elsewhere), so
    long, non-contiguous paths get accepted: exercises acceptance and KV compaction."""

    def __init__(self, dec, truth, ranks, wrong_every=3):
        self.dec, self.truth, self.ranks, self.wrong_every = dec, truth, ranks, wrong_every
        self.calls = 0

    def __call__(self, h, committed):
        dec, k, topk = self.dec, self.dec.heads.num_heads, self.dec.topk
        self.calls += 1
        cands = torch.full((k, topk), 7, dtype=torch.long)
        for d in range(k):
            for r in range(topk):
                cands[d, r] = 30 + 5 * d + r  # plausible-looking wrong tokens
            pos = len(committed) - 1 + d + 1
            if pos < len(self.truth) and not (self.calls % self.wrong_every == 0 and d == 2):
                cands[d, self.ranks[d]] = self.truth[pos]
        return cands.reshape(-1).to(dec.device)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
def test_oracle_drafts_long_paths_and_cache_compaction(fixture, request, tmp_path):
    lm = request.getfixturevalue(fixture)
    art = write_artifact(tmp_path / "h", lm.model)
    ar = get("ar")(lm.model, lm.tokenizer)
    md = get("medusa1")(lm.model, lm.tokenizer, heads=str(art), tree=json.dumps(BRANCHY))
    for p in _prompts(2, seed=5):
        a = ar.generate(p, 60)
        md.candidates = OracleMedusa(md, a.tokens, ranks=[0, 1, 0, 2])  # path (0,1,0,2): nodes 1,5,8,11
        b = md.generate(p, 60)
        assert b.tokens == a.tokens
        assert b.tau > 2.5  # mostly full-depth acceptance, so compaction was exercised
        assert max(b.tokens_per_step) == 5


def test_stop_string_cut_matches_ar(tiny_llama, tmp_path):
    lm = tiny_llama
    art = write_artifact(tmp_path / "h", lm.model)
    ar = get("ar")(lm.model, lm.tokenizer)
    md = get("medusa1")(lm.model, lm.tokenizer, heads=str(art), tree=json.dumps(BRANCHY))
    p = _prompts(1, seed=9)[0]
    full = ar.generate(p, 40)
    stop = lm.tokenizer.decode(full.tokens[10:12])
    stopper = StopChecker(lm.tokenizer, [stop], ar.eos_ids)
    a = ar.generate(p, 40, stopper)
    md.candidates = OracleMedusa(md, full.tokens, ranks=[0, 0, 0, 0], wrong_every=10**9)
    b = md.generate(p, 40, stopper)
    assert b.tokens == a.tokens and b.finish_reason == a.finish_reason == "stop"


def test_budget_limits_the_proposed_tree_to_a_depth_prefix(tiny_llama, tmp_path, monkeypatch):
    from accbench.methods.medusa import MedusaDrafter

    lm = tiny_llama
    art = write_artifact(tmp_path / "h", lm.model)
    ar = get("ar")(lm.model, lm.tokenizer)
    md = get("medusa1")(lm.model, lm.tokenizer, heads=str(art), tree=json.dumps(BRANCHY))
    p = _prompts(1, seed=13)[0]
    full = ar.generate(p, 13)
    md.candidates = OracleMedusa(md, full.tokens, ranks=[0, 1, 0, 2], wrong_every=10**9)
    seen = []
    propose = MedusaDrafter.propose

    def spy(self, tokens, budget):
        prop = propose(self, tokens, budget)
        seen.append((budget, prop))
        return prop

    monkeypatch.setattr(MedusaDrafter, "propose", spy)
    for n in (12, 13):  # full-depth steps of 5 tokens leave 0, then 1 draft of budget
        rec = md.generate(p, n)
        assert rec.tokens == full.tokens[:n]
    assert {0, 1} <= {b for b, _ in seen}  # the budget cut some trees
    for budget, prop in seen:
        if budget == 0:
            assert prop is None
            continue
        depth = min(budget, md.tree.depth)
        n = md.tree.prefix_size(depth)
        assert prop.depth == depth and isinstance(prop.tokens, torch.Tensor) and len(prop.tokens) == n - 1
        assert list(prop.parents) == md.tree.parents[:n] and prop.depths.tolist() == md.tree.depths[:n]
        assert torch.equal(prop.visible.cpu(), md.tree.visible[:n, :n])
    assert len(rec.drafted) == md.tree.depth and rec.drafted[0] > rec.drafted[-1]


def test_options_are_checked_before_a_model_loads():
    from accbench.methods.core import OptionError, parse_options

    cls = get("medusa1")
    assert parse_options("medusa1", cls.Options, {"tree": "greedy7", "eps": "0.2"}).eps == 0.2
    for bad in ({"eps": "0"}, {"delta": "-1"}, {"tree": "bushy"}, {"tree": "[[0], [-1]]"}, {"tree": "greedy0"}):
        with pytest.raises(OptionError):
            parse_options("medusa1", cls.Options, bad)


def test_tune_saves_the_default_tree_the_decoder_then_uses(tiny_llama, tmp_path, monkeypatch):
    from accbench.methods.core import TuneJob

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path / "cache"))
    lm = tiny_llama
    art = write_artifact(tmp_path / "h", lm.model, w_std=0.3)
    cfg = json.loads((art / CONFIG_FILE).read_text())
    cfg["stats"] = {"positions": 100, "top1": [0.6, 0.4, 0.3, 0.2],
                    "topk_acc": [[0.6, 0.2, 0.1], [0.4, 0.2, 0.1], [0.3, 0.2, 0.1], [0.2, 0.1, 0.1]],
                    "prefix_counts": {"0": 60, "1": 20, "0,0": 30, "0,0,0": 12}}
    (art / CONFIG_FILE).write_text(json.dumps(cfg))
    store = ModelArtifacts("tiny-random-llama")
    lines = []
    job = TuneJob(method="medusa1", model_name="tiny-random-llama", model=lm.model, tokenizer=lm.tokenizer,
                  prompts=_prompts(2), stop=StopChecker(lm.tokenizer, []), artifacts=store,
                  device=torch.device("cpu"), dtype=torch.float32,
                  options={"max_nodes": "6", "prefix_len": "16", "repeats": "1", "heads": str(art)}, log=lines.append)
    final = get("medusa1").tune(job)
    info = json.loads((final / "tree.json").read_text())
    assert (final / "COMPLETE").exists() and 1 <= len(info["paths"]) <= 6
    assert store.default("medusa1-tree-cpu") == final and any("saved as the default" in ln for ln in lines)
    md = get("medusa1")(lm.model, lm.tokenizer, heads=str(art), artifacts=store)
    assert md.tree_label == f"tuned{len(info['paths'])}" and set(md.tree.paths) == {tuple(q) for q in info["paths"]}


def test_medusa2_private_backbone_lossless_against_itself(tiny_llama, tmp_path):
    lm = tiny_llama
    art = write_artifact(tmp_path / "h", lm.model, w_std=0.3, delta_std=0.2)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    md = get("medusa2")(lm.model, lm.tokenizer, heads=str(art), tree=json.dumps(BRANCHY))
    assert md.backbone is not lm.model
    for k, v in lm.model.state_dict().items():  # the shared model is untouched
        assert torch.equal(v, before[k]), k
    changed = [k for k, v in md.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("q_proj" in k or "down_proj" in k for k in changed)
    own_ar = get("ar")(md.backbone, lm.tokenizer)
    for p in _prompts(2, seed=11):
        assert md.generate(p, 40).tokens == own_ar.generate(p, 40).tokens


def test_typical_acceptance_sampling_runs_and_is_not_lossless(tiny_llama, tmp_path):
    lm = tiny_llama
    art = write_artifact(tmp_path / "h", lm.model, w_std=0.3)
    md = get("medusa1")(lm.model, lm.tokenizer, heads=str(art), tree=json.dumps(BRANCHY),
                        sampling=SamplingConfig(temperature=0.8, seed=1))
    md.reseed(1)
    a = md.generate(_prompts(1)[0], 30)
    md.reseed(1)
    b = md.generate(_prompts(1)[0], 30)
    assert not a.lossless and len(a.tokens) == 30 and a.tokens == b.tokens  # seeded: reproducible


def test_needs_training_names_the_command(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    with pytest.raises(NeedsTraining) as e:
        get("medusa1")(tiny_llama.model, tiny_llama.tokenizer, model_name="tiny-random-llama",
                       artifacts=ModelArtifacts("tiny-random-llama"))
    assert "accbench train medusa1 --model tiny-random-llama" in str(e.value)


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


def _job(method="medusa1", steps=8, **opts):
    """A training job on a freshly loaded tiny model (training may change the model it is given)."""
    from accbench.methods.core import TrainJob
    from accbench.models import load_model
    from accbench.training.train_data import training_documents

    lm = load_model("tiny-random-llama")
    base = {"data_tokens": 1200, "held_tokens": 300, "ckpt_every": 2}
    return TrainJob(method=method, model_name="tiny-random-llama", model=lm.model, tokenizer=lm.tokenizer,
                    documents=training_documents(("mbpp",)), artifacts=ModelArtifacts("tiny-random-llama"),
                    device=lm.device, dtype=lm.dtype, steps=steps, batch_size=32, lr=1e-2, seq_len=64,
                    options={**base, **opts}, log=lambda line: None)


def test_training_loss_decreases_resume_and_decode(tmp_path, monkeypatch, tiny_llama):
    from accbench.methods.medusa.train import train_medusa
    from accbench.methods.training import TrainingStopped

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    path = train_medusa("medusa1", _job(steps=16))
    cfg = json.loads((path / CONFIG_FILE).read_text())
    losses = cfg["losses"]["heads"]
    assert len(losses) == 16 and sum(losses[-4:]) < sum(losses[:4])
    assert len(cfg["stats"]["top1"]) == 4 and cfg["stats"]["positions"] > 0

    # an uninterrupted 8-step run, then the same run interrupted after 3 steps and resumed
    ref = load_file(str(train_medusa("medusa1", _job()) / HEADS_FILE))
    with pytest.raises(TrainingStopped):
        train_medusa("medusa1", _job(stop_after=3, ckpt_every=100))
    job = _job()
    job.restart = False
    path = train_medusa("medusa1", job)
    cfg = json.loads((path / CONFIG_FILE).read_text())
    assert cfg["resumed_from"] == {"heads": 3} and cfg["steps_run"] == {"heads": 5}
    got = load_file(str(path / HEADS_FILE))
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)

    # the trained artifact is the default: the decoder finds it by model name and is lossless
    md = get("medusa1")(tiny_llama.model, tiny_llama.tokenizer, model_name="tiny-random-llama",
                        artifacts=ModelArtifacts("tiny-random-llama"), tree="greedy15")
    ar = get("ar")(tiny_llama.model, tiny_llama.tokenizer)
    for p in _prompts(2, seed=2):
        assert md.generate(p, 30).tokens == ar.generate(p, 30).tokens


def test_medusa2_training_saves_a_delta(tmp_path, monkeypatch, tiny_llama):
    from accbench.methods.medusa.train import train_medusa

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    job = _job("medusa2", steps=3, stage1_steps=3)
    path = train_medusa("medusa2", job)
    assert not any("lora" in n for n, _ in job.model.named_parameters())  # the model is left as it was
    delta = load_file(str(path / DELTA_FILE))
    assert any(k.endswith("lora_b") and v.abs().sum() > 0 for k, v in delta.items())
    md = get("medusa2")(tiny_llama.model, tiny_llama.tokenizer, model_name="tiny-random-llama",
                        artifacts=ModelArtifacts("tiny-random-llama"), tree="chain")
    own_ar = get("ar")(md.backbone, tiny_llama.tokenizer)
    p = _prompts(1, seed=4)[0]
    assert md.generate(p, 30).tokens == own_ar.generate(p, 30).tokens


# --------------------------------------------------------------------------------------
# real prompts
# --------------------------------------------------------------------------------------


def test_smollm2_medusa1_equals_ar_on_real_prompts(smollm2, data_dir, tmp_path):
    """With the trained heads when they exist (else random-W heads: the check is equality)."""
    from accbench import suites as suite_registry
    from accbench.engine.prompts import encode_prompt
    from accbench.training.artifacts import get_default

    lm = smollm2
    trained = get_default(lm.name, "medusa1")
    heads = str(trained) if trained else str(write_artifact(tmp_path / "h", lm.model, w_std=0.05, head_vocab=4096))
    ar = get("ar")(lm.model, lm.tokenizer)
    md = get("medusa1")(lm.model, lm.tokenizer, heads=heads, tree="greedy15" if trained else json.dumps(BRANCHY))
    for suite_name in ("mbpp", "cnndm"):
        suite = suite_registry.build(suite_name, data_dir=str(data_dir))
        stopper = StopChecker(lm.tokenizer, suite.stop, ar.eos_ids)
        sample = next(iter(suite.samples(limit=1)))
        ids = encode_prompt(lm.tokenizer, sample.prompt, "raw")
        a, b = ar.generate(ids, 32, stopper), md.generate(ids, 32, stopper)
        assert b.tokens == a.tokens, (suite_name, a.tokens, b.tokens)
