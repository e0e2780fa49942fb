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


# -- EAGLE-3 -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama8(tiny_llama):
    """A random 8-layer Llama (EAGLE-3's default layers 2, L//2, L-3 = 2, 4, 5 are distinct)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = tiny_llama.model.config
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                      bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.config._attn_implementation = "sdpa"
    return model


def _eagle3(model, path, **kw):
    from accbench.methods.eagle.eagle3 import synthetic_eagle3

    return synthetic_eagle3(model, path, **kw)


def test_eagle3_layers_are_hf_hidden_states(llama8):
    """The captured features are the inputs of layers 2, L//2, L-3 = HF hidden_states[2], [4], [5]."""
    from accbench.methods.eagle.drafter import LayerCapture
    from accbench.methods.eagle.eagle3 import aux_layers

    ids = aux_layers({}, 8, "test")
    assert ids == [2, 4, 5]
    cap = LayerCapture(llama8.model.layers, ids)
    cap.active = True
    x = torch.tensor([_prompts(1, 9)[0]])
    with torch.no_grad():
        out = llama8(input_ids=x, output_hidden_states=True)
    want = torch.cat([out.hidden_states[i][0] for i in ids], dim=-1)
    assert torch.equal(cap.features(), want)
    assert torch.equal(cap.features([1, 3]), want[[1, 3]])
    cap.remove()
    cap0 = LayerCapture(llama8.model.layers, [0, 8])  # the embeddings and the last layer's output (pre-norm)
    cap0.active = True
    with torch.no_grad():
        out = llama8(input_ids=x, output_hidden_states=True)
    assert torch.equal(cap0.features()[:, :64], out.hidden_states[0][0])
    cap0.remove()
    with pytest.raises(AccbenchError):
        aux_layers({}, 2, "test")  # (2, 1, -1) on a 2-layer target


def _rms(x, w, eps):
    v = x.float().pow(2).mean(-1, keepdim=True)
    return w * (x.float() * torch.rsqrt(v + eps)).to(x.dtype)


def _reference_eagle3(state, cfg, emb, feat, positions):
    """EAGLE-3's draft layer written out from the published layout (causal, no cache)."""
    heads = cfg["num_attention_heads"]
    kv, hd, eps = cfg["num_key_value_heads"], cfg["hidden_size"] // cfg["num_attention_heads"], cfg["rms_norm_eps"]
    x = feat @ state["fc.weight"].T
    z = torch.cat([_rms(emb, state["midlayer.input_layernorm.weight"], eps),
                   _rms(x, state["midlayer.hidden_norm.weight"], eps)], dim=-1)
    m = z.shape[0]
    q = (z @ state["midlayer.self_attn.q_proj.weight"].T).view(m, heads, hd).transpose(0, 1)
    k = (z @ state["midlayer.self_attn.k_proj.weight"].T).view(m, kv, hd).transpose(0, 1)
    v = (z @ state["midlayer.self_attn.v_proj.weight"].T).view(m, kv, hd).transpose(0, 1)
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    ang = positions.float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rot(t):
        a, b = t[..., : hd // 2], t[..., hd // 2:]
        return t * cos + torch.cat([-b, a], -1) * sin
    q, k = rot(q), rot(k)
    k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
    att = (q @ k.transpose(1, 2)) / hd ** 0.5
    att = att.masked_fill(~torch.ones(m, m, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    o = (att @ v).transpose(0, 1).reshape(m, heads * hd) @ state["midlayer.self_attn.o_proj.weight"].T
    y = x + o
    n = _rms(y, state["midlayer.post_attention_layernorm.weight"], eps)
    g = n @ state["midlayer.mlp.gate_proj.weight"].T
    u = n @ state["midlayer.mlp.up_proj.weight"].T
    y = y + (torch.nn.functional.silu(g) * u) @ state["midlayer.mlp.down_proj.weight"].T
    return y, _rms(y, state["norm.weight"], eps) @ state["lm_head.weight"].T


def test_eagle3_forward_matches_written_out_layout(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    model = tiny_llama.model
    d = _eagle3(model, tmp_path / "e3", layers=[0, 1, 2], draft_vocab=100, std=0.3)
    cfg = json.loads((d / "config.json").read_text())
    state = load_file(str(d / "model.safetensors"))
    draft, _ = load_draft(model, d)
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(6, 64, generator=g)
    feat = torch.randn(6, 192, generator=g)
    pos = torch.arange(3, 9)
    with torch.no_grad():
        out = draft(emb[None], feat[None], pos)[0]
        want, want_logits = _reference_eagle3(state, cfg, emb, feat, pos)
        assert torch.allclose(out, want, atol=1e-4, rtol=1e-4)
        assert torch.allclose(draft.logits(out), want_logits, atol=1e-4, rtol=1e-4)
        ids = torch.arange(100)
        assert torch.equal(draft.to_target(ids), ids + state["d2t"])
        assert bool(state["t2d"][draft.to_target(ids)].all())
        # with a cache: the same rows in two halves
        from transformers import DynamicCache

        cache = DynamicCache()
        a = draft(emb[None, :4], feat[None, :4], pos[:4], cache)[0]
        b = draft(emb[None, 4:], feat[None, 4:], pos[4:], cache)[0]
        assert torch.allclose(torch.cat([a, b]), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fixture,fmt,draft_vocab", [("tiny_llama", "safetensors", 100), ("tiny_llama", "bin", 100),
                                                     ("tiny_llama", "safetensors", None), ("tiny_llama", "bin", None),
                                                     ("tiny_gemma", "safetensors", 100)])
def test_eagle3_lossless_and_mapped(fixture, fmt, draft_vocab, request, tmp_path):
    lm = request.getfixturevalue(fixture)
    model = lm.model
    d = _eagle3(model, tmp_path / "e3", layers=[0, 1, 2], draft_vocab=draft_vocab, fmt=fmt)
    ar = get("ar")(model, lm.tokenizer)
    eg = get("eagle")(model, lm.tokenizer, source=str(d), depth=4, top_k=3, total_tokens=12)
    assert type(eg.draft).__name__ == "Eagle3Draft" and eg.params_source == "options"
    used = set(range(model.config.vocab_size))
    if draft_vocab:
        used = set((torch.arange(draft_vocab) + eg.draft.d2t.cpu()).tolist())
        assert len(used) == draft_vocab
    proposed = []
    for p in _prompts(3):
        dr_cls = eg.drafter
        eg.drafter = lambda n, _c=dr_cls: _spy(_c(n), proposed)
        a, b = ar.generate(p, 30), eg.generate(p, 30)
        eg.drafter = dr_cls
        assert b.tokens == a.tokens
        assert b.extra["eagle_version"] == 3 and sum(b.tokens_per_step) == len(b.tokens)
    assert proposed and set(proposed) <= used


def _spy(drafter, proposed):
    orig = drafter.propose

    def propose(tokens, budget):
        p = orig(tokens, budget)
        if p is not None:
            proposed.extend(int(t) for t in p.tokens)
        return p
    drafter.propose = propose
    return drafter


@pytest.mark.parametrize("depth,top_k,total", [(5, 4, 16), (2, 2, 1), (6, 3, 30)])
def test_eagle3_lossless_default_layers(depth, top_k, total, llama8, tiny_llama, tmp_path):
    d = _eagle3(llama8, tmp_path / "e3", draft_vocab=150, std=0.3)
    assert "eagle_aux_hidden_state_layer_ids" not in json.loads((d / "config.json").read_text())
    ar = get("ar")(llama8, tiny_llama.tokenizer)
    eg = get("eagle")(llama8, tiny_llama.tokenizer, source=str(d), depth=depth, top_k=top_k, total_tokens=total)
    assert eg.draft.layers_used == [2, 4, 5] and eg.draft.fc.in_features == 3 * 64
    for p in _prompts(2, seed=3):
        a, b = ar.generate(p, 40), eg.generate(p, 40)
        assert b.tokens == a.tokens


def _corrupt_eagle3(kind, model, d):
    from safetensors.torch import load_file, save_file

    _eagle3(model, d, layers=[0, 1, 2], draft_vocab=100)
    f = d / "model.safetensors"
    state = load_file(str(f))
    if kind == "missing":
        del state["midlayer.hidden_norm.weight"]
        want = "midlayer.hidden_norm.weight"
    elif kind == "shape":
        state["midlayer.self_attn.q_proj.weight"] = state["midlayer.self_attn.q_proj.weight"][:, :64].clone()
        want = "midlayer.self_attn.q_proj.weight"
    elif kind == "unexpected":
        state["layers.0.mlp.down_proj.weight"] = torch.zeros(2, 2)
        want = "unexpected tensor layers.0.mlp.down_proj.weight"
    elif kind == "d2t":
        state["d2t"] = state["d2t"] + 1000
        want = "d2t"
    elif kind == "pickle":
        import os
        import pickle

        f.unlink()
        (d / "pytorch_model.bin").write_bytes(pickle.dumps({"midlayer.x": os.getcwd}))
        return "cannot read"
    save_file(state, str(f))
    return want


@pytest.mark.parametrize("kind", ["missing", "shape", "unexpected", "d2t", "pickle"])
def test_eagle3_corrupt_fails_in_one_line(kind, tiny_llama, tmp_path):
    want = _corrupt_eagle3(kind, tiny_llama.model, tmp_path / "e3")
    with pytest.raises(AccbenchError) as e:
        load_draft(tiny_llama.model, tmp_path / "e3")
    assert want in e.value.message and "\n" not in e.value.message


@pytest.mark.parametrize("kind", ["missing", "shape", "pickle"])
def test_eagle3_corrupt_cli_exit_2(kind, tiny_llama, tmp_path):
    from accbench.cli import main
    from click.testing import CliRunner

    want = _corrupt_eagle3(kind, tiny_llama.model, tmp_path / "e3")
    res = CliRunner().invoke(main, ["run", "--methods", "eagle", "--model", "tiny-random-llama", "--suite", "mbpp",
                                    "--limit", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "out"),
                                    "-o", f"eagle.source={tmp_path / 'e3'}"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and want in lines[0]


# -- accbench tune eagle -------------------------------------------------------------------
class _Store:
    def __init__(self, root):
        self.root = Path(root)

    def default(self, key):
        return None

    def folder(self, key):
        return self.root / key


def _full_tree(seed, D, k):
    """A drafted tree of depth D (the dynamic expansion over _table's children) and node paths."""
    from accbench.methods.eagle import DraftTree

    kids = _table(seed, vocab=4)
    tree, paths, level = DraftTree(), {}, []
    for t, p in kids((), k):
        i = tree.add(t, -1, p)
        paths[i] = (t,)
        level.append(i)
    for _ in range(D - 1):
        front = sorted(level, key=lambda i: (-tree.scores[i], tree.depths[i], i))[:k]
        level = []
        for n in front:
            for t, p in kids(paths[n], k):
                i = tree.add(t, n, p)
                paths[i] = paths[n] + (t,)
                level.append(i)
    return tree, paths


def _greedy_accepted(tree, paths, kept, parents, target):
    from accbench.methods.core.tree import accept_greedy

    toks = [-1] + [tree.tokens[i] for i in kept]
    pred = [target(())] + [target(paths[i]) for i in kept]
    return accept_greedy(toks, [-1] + parents, pred)


@pytest.mark.parametrize("seed", range(30))
def test_accepted_ranks_predict_smaller_trees(seed):
    """The accepted length of a (depth, budget) tree read from the full tree's ranks equals
    what greedy acceptance on that smaller tree gives."""
    from accbench.methods.eagle import DraftTree
    from accbench.methods.eagle.drafter import accepted_ranks
    from accbench.methods.eagle.dyntree import rerank

    rng = random.Random(seed)
    D, k = rng.randint(1, 4), rng.randint(1, 3)
    tree, paths = _full_tree(seed, D, k)
    truth = {}  # the target's greedy token after each path

    def target(path):
        if path not in truth:
            truth[path] = random.Random(hash((seed, "t", path))).randrange(4)
        return truth[path]

    full, fpar = rerank(tree, len(tree.tokens))
    ranks = accepted_ranks(tree, full, _greedy_accepted(tree, paths, full, fpar, target), D)
    for d in range(1, D + 1):
        sub, where = DraftTree(), {}  # the depth-d tree: the first d levels
        for i in range(len(tree.tokens)):
            if tree.depths[i] <= d:
                where[i] = sub.add(tree.tokens[i], where.get(tree.parents[i], -1), tree.probs[i])
        inv = {v: key for key, v in where.items()}
        for n in range(1, len(tree.tokens) + 1):
            kept, parents = rerank(sub, n)
            got = len(_greedy_accepted(tree, paths, [inv[i] for i in kept], parents, target)) - 1
            assert got == sum(1 for r in ranks[d] if r < n), (d, n)


def test_tune_eagle_writes_and_runs_use_it(tiny_llama, tmp_path):
    from accbench.methods.core.jobs import TuneJob

    model = tiny_llama.model
    d = _eagle3(model, tmp_path / "e3", layers=[0, 1, 2], draft_vocab=100)
    store = _Store(tmp_path / "store")
    job = TuneJob(method="eagle", model_name="tiny-random-llama", model=model, tokenizer=tiny_llama.tokenizer,
                  prompts=_prompts(2), stop=None, artifacts=store, device=model.device, dtype=model.dtype,
                  options={"source": str(d), "max_depth": 3, "top_k": 2, "max_nodes": 8, "max_new_tokens": 12,
                           "prefix_len": 16, "repeats": 1})
    path = get("eagle").tune(job)
    data = json.loads(path.read_text())
    (key, entry), = data.items()
    assert str(d.resolve()) in key and entry["top_k"] == 2
    assert 1 <= entry["depth"] <= 3 and 1 <= entry["total_tokens"] <= 8 and entry["steps_measured"] > 0
    eg = get("eagle")(model, tiny_llama.tokenizer, source=str(d), artifacts=store)
    assert eg.params_source == "tuned"
    assert (eg.depth, eg.top_k, eg.total_tokens) == (entry["depth"], 2, entry["total_tokens"])
    rec = eg.generate(_prompts(1)[0], 12)
    assert rec.extra["eagle_total_tokens"] == entry["total_tokens"] and rec.extra["eagle_params"] == "tuned"
    over = get("eagle")(model, tiny_llama.tokenizer, source=str(d), artifacts=store, total_tokens=5)
    assert over.total_tokens == 5 and over.depth == entry["depth"]  # an option wins over the tuned value
    other = get("eagle")(model, tiny_llama.tokenizer, source=str(write_random(tmp_path / "e2", model)),
                         artifacts=store)
    assert other.params_source == "builtin" and other.total_tokens == 16  # tuned for another draft only


def test_tune_eagle_cli_then_run_uses_it(tiny_llama, tmp_path, monkeypatch):
    """`accbench tune eagle` through the CLI saves into the model's artifact store, where the
    decoder finds it."""
    from accbench.cli import main
    from accbench.training.artifacts import ModelArtifacts
    from click.testing import CliRunner

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path / "cache"))
    d = _eagle3(tiny_llama.model, tmp_path / "e3", layers=[0, 1, 2], draft_vocab=100)
    opts = ["-o", f"source={d}", "-o", "max_depth=2", "-o", "top_k=2", "-o", "max_nodes=4", "-o", "max_new_tokens=8",
            "-o", "prefix_len=16", "-o", "repeats=1"]
    res = CliRunner().invoke(main, ["tune", "eagle", "--model", "tiny-random-llama", "--suite", "mbpp",
                                    "--prompts", "1", *opts])
    assert res.exit_code == 0, res.output
    store = ModelArtifacts("tiny-random-llama")
    entry, = json.loads((store.folder("eagle") / "tuned.json").read_text()).values()
    eg = get("eagle")(tiny_llama.model, tiny_llama.tokenizer, source=str(d), artifacts=store)
    assert eg.params_source == "tuned" and (eg.depth, eg.total_tokens) == (entry["depth"], entry["total_tokens"])
    bad = CliRunner().invoke(main, ["tune", "eagle", "--model", "tiny-random-llama", "--suite", "mbpp", "--prompts",
                                    "1", "-o", "max_depth=0", "-o", f"source={d}"])
    assert bad.exit_code == 2 and "max_depth" in bad.output


def test_preflight_accepts_valid_checkpoints(tiny_llama, llama8, tmp_path):
    """The model-free preflight check passes every valid layout (its shapes from config.json
    agree with the module's)."""
    from accbench.methods.core.protocol import NoArtifacts
    from accbench.methods.eagle.published import check_source

    cls = get("eagle")
    for i, (model, kw) in enumerate([(tiny_llama.model, {"layers": [0, 1, 2], "draft_vocab": 100}),
                                     (tiny_llama.model, {"layers": [0, 2]}), (llama8, {"draft_vocab": 120})]):
        d = _eagle3(model, tmp_path / f"e3-{i}", **kw)
        check_source(d)
        cls.preflight("x", {"source": str(d)}, NoArtifacts())
        load_draft(model, d)
    e2 = write_random(tmp_path / "e2", tiny_llama.model)
    cls.preflight("x", {"source": str(e2)}, NoArtifacts())
