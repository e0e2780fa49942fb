"""Published checkpoint loaders: FasterDecoding's Medusa heads (.pt / .safetensors), their vLLM
conversion, strict one-line errors, Medusa's named trees, preflight."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest
import torch
from accbench.cli import main
from accbench.methods import get
from accbench.methods.core.errors import AccbenchError
from accbench.methods.medusa.trees import MedusaTree, named_trees
from click.testing import CliRunner
from safetensors.torch import save_file

N_HEADS = 5


def _prompts(n, length=17, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, 250) for _ in range(length)] for _ in range(n)]


def fd_tensors(model, n=N_HEADS, layers=1, w_std=0.0, seed=0):
    """FasterDecoding keys; zero blocks + projections copying lm_head = the base predictor."""
    g = torch.Generator().manual_seed(seed)
    lm = model.get_output_embeddings().weight.detach().float()
    h = lm.shape[1]
    out = {}
    for i in range(n):
        for j in range(layers):
            out[f"{i}.{j}.linear.weight"] = torch.randn(h, h, generator=g) * w_std
            out[f"{i}.{j}.linear.bias"] = torch.randn(h, generator=g) * w_std
        out[f"{i}.{layers}.weight"] = lm.clone()
    return out


def write_fd(path: Path, tensors, fmt="pt", declared=2) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"medusa_num_heads": declared, "medusa_num_layers": 1,
                                                  "base_model_name_or_path": "x"}))
    if fmt == "pt":
        torch.save(tensors, path / "medusa_lm_head.pt")
    else:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "medusa_lm_head.safetensors"))
    return path


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_fasterdecoding_layout_lossless(fmt, tiny_llama, tmp_path, capsys):
    lm = tiny_llama
    src = write_fd(tmp_path / "fd", fd_tensors(lm.model, w_std=0.05), fmt)
    ar = get("ar")(lm.model, lm.tokenizer)
    md = get("medusa1")(lm.model, lm.tokenizer, heads=str(src), tree="chain")
    assert md.heads.num_heads == N_HEADS and md.heads.own_proj
    assert "medusa_num_heads=2" in capsys.readouterr().err
    for p in _prompts(3):
        a, b = ar.generate(p, 30), md.generate(p, 30)
        assert b.tokens == a.tokens
    assert b.extra["published_heads"]["heads_in_file"] == N_HEADS
    assert b.extra["published_heads"]["config_medusa_num_heads"] == 2


def test_base_predictor_heads_accept_depth1(tiny_llama, tmp_path):
    """Zero blocks + lm_head projections: head 1 predicts the next-next token as the base
    predictor of the *current* state, so a depth-1 draft equals AR's token at t+1 only when the
    model repeats; we check losslessness and that num_heads slices."""
    lm = tiny_llama
    src = write_fd(tmp_path / "fd", fd_tensors(lm.model), "safetensors")
    md = get("medusa1")(lm.model, lm.tokenizer, heads=str(src), num_heads=4, tree="chain")
    assert md.heads.num_heads == 4
    ar = get("ar")(lm.model, lm.tokenizer)
    p = _prompts(1)[0]
    assert md.generate(p, 24).tokens == ar.generate(p, 24).tokens


def test_vllm_layout(tiny_llama, tmp_path):
    lm = tiny_llama
    fd = fd_tensors(lm.model, w_std=0.05)
    t = {}
    for i in range(N_HEADS):
        t[f"blocks.{i}.layers.0.weight"] = fd[f"{i}.0.linear.weight"]
        t[f"lm_heads.{i}.weight"] = fd[f"{i}.1.weight"]
    d = tmp_path / "v"
    d.mkdir()
    save_file(t, str(d / "medusa_lm_head.safetensors"))
    md = get("medusa1")(lm.model, lm.tokenizer, heads=str(d), tree="chain")
    assert md.artifact_cfg["published"]["layout"] == "vllm"
    assert float(md.heads.blocks[0][0].linear.bias.abs().sum()) == 0.0
    ar = get("ar")(lm.model, lm.tokenizer)
    p = _prompts(1)[0]
    assert md.generate(p, 24).tokens == ar.generate(p, 24).tokens


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _corrupt(kind, model, d: Path) -> Path:
    t = fd_tensors(model)
    if kind == "missing":
        del t["3.0.linear.bias"]
        return write_fd(d, t)
    if kind == "shape":
        t["1.1.weight"] = t["1.1.weight"][:, :-1].clone()
        return write_fd(d, t, "safetensors")
    if kind == "unexpected":
        t["0.9.extra"] = torch.zeros(2)
        return write_fd(d, t)
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    with open(d / "medusa_lm_head.pt", "wb") as f:
        pickle.dump({"0.0.linear.weight": Evil()}, f)
    return d


@pytest.mark.parametrize("kind,needle", [("missing", "3.0.linear.bias"), ("shape", "1.1.weight"),
                                         ("unexpected", "0.9.extra"), ("pickle", "refused")])
def test_corrupted_one_line_exit_2(kind, needle, tiny_llama, tmp_path):
    d = _corrupt(kind, tiny_llama.model, tmp_path / "bad")
    with pytest.raises(AccbenchError) as e:
        get("medusa1")(tiny_llama.model, tiny_llama.tokenizer, heads=str(d))
    assert needle in str(e.value) and "\n" not in str(e.value)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Question 1: what is 1 plus 1?"}) + "\n")
    res = CliRunner().invoke(main, ["run", "--methods", "medusa1", "--model", "tiny-random-llama", "--suite",
                                    "prompts", "--data", str(prompts), "--max-new-tokens", "8", "--out",
                                    str(tmp_path / "out"), "--executor", "inline", "-o", f"medusa1.heads={d}"])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "pwned" not in res.output


def test_named_trees():
    trees = named_trees()
    for name in ("mc_sim_7b_63", "vicuna_7b_stage2", "vicuna_7b_stage1", "vicuna_13b_stage2", "vicuna_13b_stage1",
                 "vicuna_33b_stage2", "vicuna_33b_stage1", "zephyr_stage2"):
        t = MedusaTree(trees[name])
        assert t.size == 64 and t.depth <= 4  # 63 nodes + root
    assert MedusaTree(trees["mc_sim_7b_63"]).depth == 4


def test_named_tree_selectable_and_too_deep(tiny_llama, tmp_path):
    lm = tiny_llama
    src = write_fd(tmp_path / "fd", fd_tensors(lm.model, n=3), "safetensors")
    with pytest.raises(AccbenchError, match="depth 4 exceeds the 3"):
        get("medusa1")(lm.model, lm.tokenizer, heads=str(src), tree="mc_sim_7b_63")
    src5 = write_fd(tmp_path / "fd5", fd_tensors(lm.model, w_std=0.05), "safetensors")
    md = get("medusa1")(lm.model, lm.tokenizer, heads=str(src5), tree="mc_sim_7b_63")
    assert md.tree_label == "mc_sim_7b_63"
    ar = get("ar")(lm.model, lm.tokenizer)
    p = _prompts(1)[0]
    assert md.generate(p, 20).tokens == ar.generate(p, 20).tokens


def test_preflight(tmp_path):
    cls = get("medusa1")
    with pytest.raises(AccbenchError, match="no such directory"):
        cls.preflight("tiny-random-llama", {"heads": str(tmp_path / "nope")}, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AccbenchError, match="medusa_lm_head"):
        cls.preflight("tiny-random-llama", {"heads": str(tmp_path / "empty")}, None)
    (tmp_path / "empty" / "medusa_lm_head.pt").write_bytes(b"x")
    cls.preflight("tiny-random-llama", {"heads": str(tmp_path / "empty")}, None)

    class NoArtifacts:
        def default(self, key):
            return None

    with pytest.raises(AccbenchError, match="accbench train medusa1 --model tiny-random-llama"):
        cls.preflight("tiny-random-llama", {}, NoArtifacts())


# --------------------------------------------------------------------------------------
# published Medusa-2 models: fine-tuned backbone + medusa_head.* in one model folder
# --------------------------------------------------------------------------------------

TUNED = "model.layers.0.mlp.down_proj.weight"  # the tensor the "fine-tuning" changes


def tuned_state(model, noise=0.0, seed=1):
    sd = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    if noise:
        g = torch.Generator().manual_seed(seed)
        sd[TUNED] = sd[TUNED] + torch.randn(sd[TUNED].shape, generator=g) * noise
    return sd


def write_medusa2(path: Path, model, backbone: dict, heads: dict, fmt="safetensors", shards=2, declared=2) -> Path:
    """FasterDecoding's Medusa-2 layout (MedusaModelLlama.save_pretrained): config.json = the
    backbone's config + medusa_num_heads / medusa_num_layers; sharded weights + index holding
    model.*, lm_head.weight and medusa_head.{i}.{j}.linear.* / medusa_head.{i}.{L}.weight."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg.update({"architectures": ["MedusaModelLlama"], "medusa_num_heads": declared, "medusa_num_layers": 1,
                "_name_or_path": "lmsys/vicuna-7b-v1.5"})
    (path / "config.json").write_text(json.dumps(cfg, default=str))
    tensors = {**backbone, **{f"medusa_head.{k}": v for k, v in heads.items()}}
    keys = sorted(tensors)
    ext, stem, index = (("safetensors", "model", "model.safetensors.index.json") if fmt == "safetensors"
                        else ("bin", "pytorch_model", "pytorch_model.bin.index.json"))
    weight_map = {}
    for s in range(shards):
        name = f"{stem}-{s + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: tensors[k].contiguous() for k in keys[s::shards]}
        if fmt == "safetensors":
            save_file(part, str(path / name))
        else:
            torch.save(part, path / name)
        weight_map.update(dict.fromkeys(part, name))
    (path / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return path


def _reference(model, sd):
    import copy

    ref = copy.deepcopy(model)
    ref.load_state_dict(sd)
    return ref


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_medusa2_published_layout_lossless_against_its_backbone(fmt, tiny_llama, tmp_path, capsys):
    lm = tiny_llama
    before = lm.model.state_dict()[TUNED].clone()
    sd = tuned_state(lm.model, noise=0.05)
    tuned = _reference(lm.model, sd)
    src = write_medusa2(tmp_path / "m2", lm.model, sd, fd_tensors(tuned, w_std=0.05), fmt)
    md = get("medusa2")(lm.model, lm.tokenizer, source=str(src), tree="chain")
    assert "medusa_num_heads=2" in capsys.readouterr().err
    assert md.heads.num_heads == N_HEADS and md.backbone is not lm.model
    torch.testing.assert_close(md.backbone.state_dict()[TUNED], sd[TUNED])
    assert torch.equal(lm.model.state_dict()[TUNED], before)  # the original model is untouched
    ar_tuned, ar_orig = get("ar")(tuned, lm.tokenizer), get("ar")(lm.model, lm.tokenizer)
    differs = 0
    for p in _prompts(3):
        b = md.generate(p, 30)
        assert b.tokens == ar_tuned.generate(p, 30).tokens
        differs += b.tokens != ar_orig.generate(p, 30).tokens
    assert differs  # the fine-tuned backbone is what drafts are verified with
    pub = b.extra["published_heads"]
    assert pub["layout"] == "medusa2-model" and pub["heads_in_file"] == N_HEADS


def test_medusa2_base_predictor_heads(tiny_llama, tmp_path):
    """Zero blocks + projections copying lm_head: every head is the base predictor."""
    lm = tiny_llama
    sd = tuned_state(lm.model)
    src = write_medusa2(tmp_path / "m2", lm.model, sd, fd_tensors(lm.model), "safetensors", shards=1)
    md = get("medusa2")(lm.model, lm.tokenizer, source=str(src), num_heads=3, tree="chain")
    assert md.heads.num_heads == 3
    h = torch.randn(lm.model.config.hidden_size)
    lm_w = lm.model.get_output_embeddings().weight
    torch.testing.assert_close(md.heads.logits(h, md.lm_w, md.lm_b), (lm_w @ h)[None].expand(3, -1))
    ar = get("ar")(lm.model, lm.tokenizer)
    for p in _prompts(2, seed=3):
        assert md.generate(p, 24).tokens == ar.generate(p, 24).tokens


def _prompts_file(tmp_path) -> Path:
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?"}) + "\n" for i in range(2)))
    return f


def _cli_run(tmp_path, method, *opts, model="tiny-random-llama", out="out"):
    args = ["run", "--methods", method, "--model", model, "--suite", "prompts", "--data", str(_prompts_file(tmp_path)),
            "--max-new-tokens", "12", "--out", str(tmp_path / out), "--executor", "inline"]
    for o in opts:
        args += ["-o", o]
    return CliRunner().invoke(main, args)


def test_medusa2_source_through_the_cli(tiny_llama, tmp_path):
    from accbench.engine.results import ResultsDir

    sd = tuned_state(tiny_llama.model)  # an unchanged backbone: medusa2 must equal the original's AR
    src = write_medusa2(tmp_path / "m2", tiny_llama.model, sd, fd_tensors(tiny_llama.model, w_std=0.05))
    res = _cli_run(tmp_path, "medusa2", f"medusa2.source={src}", "medusa2.base=tiny-random-llama")
    assert res.exit_code == 0, res.output
    rows = [r for r in ResultsDir(tmp_path / "out").load_rows() if r["method"] == "medusa2"]
    assert len(rows) == 2 and all(r["exact_match_ar"] for r in rows)


def _corrupt_medusa2(kind, model, d: Path) -> Path:
    sd, heads = tuned_state(model), fd_tensors(model)
    if kind == "missing":
        del sd["model.layers.1.mlp.up_proj.weight"]
    elif kind == "shape":
        heads["1.1.weight"] = heads["1.1.weight"][:-1].clone()
    elif kind == "backbone-shape":
        sd["model.norm.weight"] = sd["model.norm.weight"][:-1].clone()
    elif kind == "unexpected":
        sd["model.layers.0.mystery.weight"] = torch.zeros(3)
    elif kind == "no-heads":
        heads = {}
    write_medusa2(d, model, sd, heads, "bin", shards=2)
    if kind == "pickle":
        shard = d / "pytorch_model-00001-of-00002.bin"
        with open(shard, "wb") as f:
            pickle.dump({"model.norm.weight": Evil()}, f)
    return d


@pytest.mark.parametrize("kind,needle", [
    ("missing", "missing tensor model.layers.1.mlp.up_proj.weight (expected shape [128, 64])"),
    ("shape", "tensor medusa_head.1.1.weight has shape [258, 64], expected [259, 64]"),
    ("backbone-shape", "tensor model.norm.weight has shape [63], expected [64]"),
    ("unexpected", "unexpected tensor model.layers.0.mystery.weight"),
    ("no-heads", "no medusa_head.* tensors"),
    ("pickle", "refused")])
def test_medusa2_corrupted_one_line_exit_2(kind, needle, tiny_llama, tmp_path):
    d = _corrupt_medusa2(kind, tiny_llama.model, tmp_path / "bad")
    with pytest.raises(AccbenchError) as e:
        get("medusa2")(tiny_llama.model, tiny_llama.tokenizer, source=str(d))
    assert needle in str(e.value) and "\n" not in str(e.value)
    res = _cli_run(tmp_path, "medusa2", f"medusa2.source={d}")
    assert res.exit_code == 2, res.output
    err = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and needle in err[0] and "pwned" not in res.output


def test_medusa2_preflight(tiny_llama, tmp_path):
    cls = get("medusa2")
    with pytest.raises(AccbenchError, match="no such directory"):
        cls.preflight("tiny-random-llama", {"source": str(tmp_path / "nope")}, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AccbenchError, match="no config.json"):
        cls.preflight("tiny-random-llama", {"source": str(tmp_path / "empty")}, None)
    m1 = write_fd(tmp_path / "m1", fd_tensors(tiny_llama.model), "safetensors")  # Medusa-1 heads, not a model
    with pytest.raises(AccbenchError, match="it holds Medusa-1 heads"):
        cls.preflight("tiny-random-llama", {"source": str(m1)}, None)
    src = write_medusa2(tmp_path / "m2", tiny_llama.model, tuned_state(tiny_llama.model), fd_tensors(tiny_llama.model))
    cls.preflight("tiny-random-llama", {"source": str(src)}, None)
    cls.preflight("tiny-random-llama", {"source": str(src), "base": "tiny-random-llama"}, None)
    (src / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(AccbenchError, match="incomplete download"):
        cls.preflight("tiny-random-llama", {"source": str(src)}, None)
    with pytest.raises(AccbenchError, match="--model is the original model"):
        cls.preflight("tiny-random-llama", {"source": str(src), "base": "lmsys/vicuna-7b-v1.5"}, None)
    with pytest.raises(AccbenchError, match="give medusa2.source too"):
        cls.preflight("tiny-random-llama", {"base": "tiny-random-llama"}, None)
    # through the CLI: one line, exit 2, before any model loads or any results folder is written
    res = _cli_run(tmp_path, "medusa2", f"medusa2.source={tmp_path / 'm2'}", "medusa2.base=lmsys/vicuna-7b-v1.5")
    assert res.exit_code == 2 and "--model is the original model" in res.output, res.output
    assert not (tmp_path / "out").exists()
    res = _cli_run(tmp_path, "medusa2", f"medusa2.source={tmp_path / 'm1'}", "medusa2.heads=x")
    assert res.exit_code == 2 and "not both" in res.output, res.output


# --------------------------------------------------------------------------------------
# Meta's MTP checkpoints: -o mtp.heads=DIR with params.json + consolidated.pth
# --------------------------------------------------------------------------------------


def _permute_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """transformers' rotary halves -> Meta's interleaved pairs (the inverse of the converter's)."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


_HF_TO_META = {"self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
               "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
               "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.down_proj.weight": "feed_forward.w2.weight",
               "mlp.up_proj.weight": "feed_forward.w3.weight", "input_layernorm.weight": "attention_norm.weight",
               "post_attention_layernorm.weight": "ffn_norm.weight"}


def meta_checkpoint_of(model, n_future=3, seed=0) -> tuple[dict, dict]:
    """(params, state dict) in the layout of facebook/multi-token-prediction's 7B_*_4 folders, whose
    trunk + head 1 is ``model`` and whose ``extra_heads`` are random Llama blocks."""
    c = model.config
    nh, nkv = c.num_attention_heads, c.num_key_value_heads
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
            "output.weight": model.get_output_embeddings().weight.detach().clone()}

    def layer(pre_hf, pre_meta, src):
        for hf, mk in _HF_TO_META.items():
            w = src[pre_hf + hf]
            if hf.startswith("self_attn.q_proj"):
                w = _permute_to_meta(w, nh)
            elif hf.startswith("self_attn.k_proj"):
                w = _permute_to_meta(w, nkv)
            meta[pre_meta + mk] = w.contiguous()

    for i in range(c.num_hidden_layers):
        layer(f"model.layers.{i}.", f"layers.{i}.", sd)
    g = torch.Generator().manual_seed(seed)
    last = {k[len(f"model.layers.{c.num_hidden_layers - 1}."):]: v for k, v in sd.items()
            if k.startswith(f"model.layers.{c.num_hidden_layers - 1}.")}
    for j in range(n_future - 1):
        rnd = {k: (v + torch.randn(v.shape, generator=g) * 0.05) for k, v in last.items()}
        layer("", f"extra_heads.{j}.", rnd)
    params = {"dim": c.hidden_size, "n_layers": c.num_hidden_layers, "n_heads": nh, "n_kv_heads": nkv,
              "vocab_size": c.vocab_size, "multiple_of": 32, "norm_eps": c.rms_norm_eps, "rope_theta": 10000.0,
              "n_future_tokens": n_future}
    return params, meta


def write_meta(d: Path, params, sd) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "params.json").write_text(json.dumps(params))
    torch.save(sd, d / "consolidated.00.pth")
    return d


def test_meta_permutation_round_trip():
    from accbench.methods.mtp.meta import _unpermute_rotary

    w = torch.randn(64, 24)
    assert torch.equal(_unpermute_rotary(_permute_to_meta(w, 4), 4), w)


def test_meta_extra_heads_via_mtp_heads_dir_lossless(tiny_llama, tmp_path):
    from accbench.methods.mtp import MTPDecoder, load_meta_checkpoint

    lm = tiny_llama
    ck = write_meta(tmp_path / "7B_toy_4", *meta_checkpoint_of(lm.model))
    dec = MTPDecoder(lm.model, lm.tokenizer, heads=str(ck))
    assert dec.heads.n_extra == 2 and dec.heads.branch_layer == lm.model.config.num_hidden_layers - 1
    # the same heads as the full converter builds from the checkpoint
    _, ref = load_meta_checkpoint(ck)
    mine, theirs = dec.heads.state_dict(), ref.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k].to(mine[k].dtype))
    ar = get("ar")(lm.model, lm.tokenizer)
    for p in _prompts(3, seed=5):
        assert dec.generate(p, 30).tokens == ar.generate(p, 30).tokens
    res = _cli_run(tmp_path, "mtp", f"mtp.heads={ck}")
    assert res.exit_code == 0, res.output
    from accbench.engine.results import ResultsDir

    rows = [r for r in ResultsDir(tmp_path / "out").load_rows() if r["method"] == "mtp"]
    assert len(rows) == 2 and all(r["exact_match_ar"] for r in rows)


def _corrupt_meta(kind, model, d: Path) -> Path:
    params, sd = meta_checkpoint_of(model)
    if kind == "missing":
        del sd["extra_heads.1.feed_forward.w3.weight"]
    elif kind == "shape":
        sd["extra_heads.0.attention.wq.weight"] = sd["extra_heads.0.attention.wq.weight"][:-1].clone()
    elif kind == "trunk-shape":
        sd["layers.0.ffn_norm.weight"] = sd["layers.0.ffn_norm.weight"][:-2].clone()
    elif kind == "params":
        params["n_layers"] += 1
    elif kind == "other-trunk":
        sd["output.weight"] = sd["output.weight"] + 1.0
    write_meta(d, params, sd)
    if kind == "pickle":
        with open(d / "consolidated.00.pth", "wb") as f:
            pickle.dump({"output.weight": Evil()}, f)
    return d


@pytest.mark.parametrize("kind,needle", [
    ("missing", "missing tensor extra_heads.1.feed_forward.w3.weight (expected shape [128, 64])"),
    ("shape", "tensor extra_heads.0.attention.wq.weight has shape [63, 64], expected [64, 64]"),
    ("trunk-shape", "tensor layers.0.ffn_norm.weight has shape [62], expected [64]"),
    ("params", "n_layers=3 but the run's --model has 2"),
    ("other-trunk", "differs from this checkpoint's trunk (output.weight)"),
    ("pickle", "refused")])
def test_meta_corrupted_one_line_exit_2(kind, needle, tiny_llama, tmp_path):
    d = _corrupt_meta(kind, tiny_llama.model, tmp_path / "bad")
    with pytest.raises(AccbenchError) as e:
        get("mtp")(tiny_llama.model, tiny_llama.tokenizer, heads=str(d))
    assert needle in str(e.value) and "\n" not in str(e.value)
    res = _cli_run(tmp_path, "mtp", f"mtp.heads={d}")
    assert res.exit_code == 2, res.output
    err = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and needle in err[0] and "pwned" not in res.output


def test_mtp_preflight(tiny_llama, tmp_path):
    cls = get("mtp")
    with pytest.raises(AccbenchError, match="no such directory"):
        cls.preflight("tiny-random-llama", {"heads": str(tmp_path / "nope")}, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AccbenchError, match="params.json"):
        cls.preflight("tiny-random-llama", {"heads": str(tmp_path / "empty")}, None)
    (tmp_path / "empty" / "params.json").write_text("{}")
    with pytest.raises(AccbenchError, match="no consolidated"):
        cls.preflight("tiny-random-llama", {"heads": str(tmp_path / "empty")}, None)
    cls.preflight("tiny-random-llama", {"heads": "random"}, None)
    ck = write_meta(tmp_path / "ck", *meta_checkpoint_of(tiny_llama.model))
    cls.preflight("tiny-random-llama", {"heads": str(ck)}, None)

    class NoArtifacts:
        def default(self, key):
            return None

    from accbench.methods.core.errors import NeedsTraining

    with pytest.raises(NeedsTraining, match="accbench train mtp --model tiny-random-llama"):
        cls.preflight("tiny-random-llama", {}, NoArtifacts())
    res = _cli_run(tmp_path, "mtp", f"mtp.heads={tmp_path / 'nope'}")
    assert res.exit_code == 2 and "mtp.heads=" in res.output and "no such directory" in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_converted_heads_strict(tiny_llama, tmp_path):
    """An accbench / converted heads folder is read as strictly as Meta's."""
    from accbench.methods.mtp import MTPHeads
    from safetensors.torch import load_file

    heads = MTPHeads(tiny_llama.model, 2)
    heads.save(tmp_path / "h")
    st = load_file(str(tmp_path / "h" / "heads.safetensors"))
    key = sorted(st)[0]
    st[key] = st[key][..., :-1].contiguous()
    save_file(st, str(tmp_path / "h" / "heads.safetensors"))
    with pytest.raises(AccbenchError, match=f"tensor {key} has shape"):
        get("mtp")(tiny_llama.model, tiny_llama.tokenizer, heads=str(tmp_path / "h"))


# --------------------------------------------------------------------------------------
# the packaged model: a FasterDecoding Medusa-1 folder at smollm2-135m's dimensions
# --------------------------------------------------------------------------------------


def write_fd_for(model, path: Path, n=N_HEADS, declared=2) -> Path:
    """FasterDecoding's Medusa-1 layout (medusa_lm_head.safetensors + config.json saying
    ``declared`` heads while holding ``n``): zero blocks, projections = lm_head."""
    return write_fd(path, fd_tensors(model, n=n), "safetensors", declared=declared)


@pytest.mark.slow
def test_fasterdecoding_medusa1_dir_on_smollm2_through_the_cli(smollm2, tmp_path):
    from accbench.engine.results import ResultsDir

    src = write_fd_for(smollm2.model, tmp_path / "fd")
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--methods", "medusa", "--model", "smollm2-135m", "-o",
                                    f"medusa1.heads={src}", "--suite", "mbpp", "--limit", "2", "--max-new-tokens",
                                    "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = ResultsDir(out).load_rows()
    med = [r for r in rows if r["method"] == "medusa1"]
    assert len(med) == 2 and len([r for r in rows if r["method"] == "ar"]) == 2
    assert all(r["exact_match_ar"] for r in med), [(r["exact_match_ar"], r.get("first_divergence")) for r in med]
    assert all(r["n_new"] > 0 for r in med)


def test_medusa2_hub_id_offline_is_one_line(tiny_llama, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants
    from accbench.models import loading

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setattr(loading, "_hub_unreachable", lambda timeout=3.0: "huggingface.co:443 unreachable (test)")
    repo = "FasterDecoding/medusa-1.0-zephyr-7b-beta"
    with pytest.raises(AccbenchError, match="not in the local hugging face cache") as e:
        get("medusa2").preflight("tiny-random-llama", {"source": repo}, None)
    assert "\n" not in str(e.value) and repo in str(e.value)
    with pytest.raises(AccbenchError, match="not in the local hugging face cache"):
        get("medusa2")(tiny_llama.model, tiny_llama.tokenizer, source=repo)


def test_medusa2_given_medusa1_heads_or_another_base(tiny_llama, tmp_path):
    m1 = write_fd(tmp_path / "m1", fd_tensors(tiny_llama.model), "safetensors")
    with pytest.raises(AccbenchError, match="Medusa-1 heads .* --methods medusa1"):
        get("medusa2")(tiny_llama.model, tiny_llama.tokenizer, heads=str(m1))
    src = write_medusa2(tmp_path / "m2", tiny_llama.model, tuned_state(tiny_llama.model), fd_tensors(tiny_llama.model))
    with pytest.raises(AccbenchError, match="the model is the original"):
        get("medusa2")(tiny_llama.model, tiny_llama.tokenizer, model_name="tiny-random-llama", source=str(src),
                       base="lmsys/vicuna-7b-v1.5")
