"""EAGLE-2: the dynamic tree vs a brute-force reference, lossless decoding with a random draft
model on tiny models, and strict loading of EAGLE-1/2-layout checkpoints."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from accbench.methods import get
from accbench.methods.core.errors import AccbenchError
from accbench.methods.eagle import EagleDraft, dynamic_tree, load_draft


# -- the dynamic tree --------------------------------------------------------------------
def _table(seed, vocab=6):
    """Deterministic random top-k children for every path (ties possible: probs rounded)."""
    cache = {}

    def kids(path, k):
        if path not in cache:
            rng = random.Random(hash((seed, path)))
            ps = sorted((round(rng.random(), 1) for _ in range(vocab)), reverse=True)
            cache[path] = [(t, p / max(1e-9, sum(ps))) for t, p in enumerate(ps)]
        return cache[path][:k]
    return kids


def _reference(kids, depth, k, budget):
    """Brute force: draft naively level by level, then sort every node by its path product."""
    nodes = [(t,) for t, _ in kids((), k)]
    score = {}
    for t, p in kids((), k):
        score[(t,)] = p
    order = {n: i for i, n in enumerate(nodes)}
    level = list(nodes)
    for _ in range(depth - 1):
        front = sorted(level, key=lambda n: (-score[n], len(n), order[n]))[:k]
        level = []
        for n in front:
            for t, _p in kids(n, k):
                c = n + (t,)
                prod = 1.0
                for j in range(1, len(c) + 1):
                    prod *= dict(kids(c[: j - 1], k))[c[j - 1]]
                score[c] = prod
                order[c] = len(order)
                level.append(c)
    allnodes = sorted(score, key=lambda n: (-score[n], len(n), order[n]))
    return set(allnodes[:budget]), score


@pytest.mark.parametrize("seed", range(40))
def test_dynamic_tree_matches_brute_force(seed):
    rng = random.Random(seed)
    depth, k, budget = rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 20)
    kids = _table(seed)
    paths = {}

    def expand(frontier):
        return [kids(paths[n], k) for n in frontier]

    from accbench.methods.eagle import DraftTree

    tree = DraftTree()
    orig_add = tree.add

    def add(token, parent, prob):
        i = orig_add(token, parent, prob)
        paths[i] = (paths[parent] if parent >= 0 else ()) + (token,)
        return i
    tree.add = add
    _, kept, parents = dynamic_tree(kids((), k), expand, depth, k, budget, tree=tree)
    ref, score = _reference(kids, depth, k, budget)
    got = {paths[i] for i in kept}
    assert got == ref
    for j, i in enumerate(kept):  # prefix-closed, parents first, scores are path products
        assert parents[j] < j + 1
        p = paths[i]
        assert len(p) == 1 or p[:-1] in got
        assert tree.scores[i] == pytest.approx(score[p])


# -- decoding ----------------------------------------------------------------------------
def _prompts(n, length=17, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, 250) for _ in range(length)] for _ in range(n)]


def write_random(path: Path, model, seed=0, std=0.2) -> Path:
    d = EagleDraft(model)
    d.init_random(seed, std)
    return d.save(path)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gemma"])
@pytest.mark.parametrize("depth,top_k,total", [(5, 4, 16), (3, 2, 1), (6, 3, 30)])
def test_lossless_random_draft(fixture, depth, top_k, total, request, tmp_path):
    lm = request.getfixturevalue(fixture)
    art = write_random(tmp_path / "d", lm.model)
    ar = get("ar")(lm.model, lm.tokenizer)
    eg = get("eagle")(lm.model, lm.tokenizer, source=str(art), depth=depth, top_k=top_k, total_tokens=total)
    for p in _prompts(3):
        a, b = ar.generate(p, 40), eg.generate(p, 40)
        assert b.tokens == a.tokens
        assert sum(b.tokens_per_step) == len(b.tokens) and b.forward_passes == len(b.tokens_per_step)


# -- loading -----------------------------------------------------------------------------
def _eagle1_state(model, seed=0):
    d = EagleDraft(model)
    d.init_random(seed, 0.1)
    return {k: v.clone() for k, v in d.weights().items()}


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_load_eagle1_layout(fmt, tiny_llama, tmp_path):
    model = tiny_llama.model
    state = _eagle1_state(model)
    assert "fc.weight" in state and "layers.0.post_attention_layernorm.weight" in state
    assert not any("input_layernorm" in k for k in state)
    h = model.config.hidden_size
    assert list(state["fc.weight"].shape) == [h, 2 * h]
    state["embed_tokens.weight"] = model.get_input_embeddings().weight.detach().clone()
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "hidden_size": h}))
    if fmt == "bin":
        torch.save(state, tmp_path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file
        save_file(state, str(tmp_path / "model.safetensors"))
    draft, _ = load_draft(model, tmp_path)
    for k, v in draft.weights().items():
        assert torch.equal(v, state[k])
    eg = get("eagle")(model, tiny_llama.tokenizer, source=str(tmp_path))
    ar = get("ar")(model, tiny_llama.tokenizer)
    p = _prompts(1)[0]
    assert eg.generate(p, 20).tokens == ar.generate(p, 20).tokens


@pytest.mark.parametrize("corrupt", ["missing", "shape", "pickle"])
def test_load_corrupt_fails_in_one_line(corrupt, tiny_llama, tmp_path):
    model = tiny_llama.model
    state = _eagle1_state(model)
    if corrupt == "missing":
        del state["layers.0.mlp.down_proj.weight"]
        torch.save(state, tmp_path / "pytorch_model.bin")
        want = "layers.0.mlp.down_proj.weight"
    elif corrupt == "shape":
        state["fc.weight"] = state["fc.weight"][:, :-1].clone()
        torch.save(state, tmp_path / "pytorch_model.bin")
        want = "fc.weight"
    else:
        import os
        import pickle

        (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"fc.weight": os.getcwd}))
        want = "cannot read"
    with pytest.raises(AccbenchError) as e:
        load_draft(model, tmp_path)
    msg = e.value.message
    assert want in msg and "\n" not in msg


def test_preflight_names_how_to_get_it(tmp_path):
    from accbench.methods.core.errors import NeedsTraining
    from accbench.methods.core.protocol import NoArtifacts

    cls = get("eagle")
    with pytest.raises(NeedsTraining):
        cls.preflight("smollm2-135m", {}, NoArtifacts())
    with pytest.raises(AccbenchError):
        cls.preflight("smollm2-135m", {"source": str(tmp_path / "nope")}, NoArtifacts())
