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
