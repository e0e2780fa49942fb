"""``accbench train eagle`` on the tiny random Llama: the loss decreases, an interrupted run
resumes to the same weights as an uninterrupted one, the artifact loads strictly and is the
default that ``accbench run --methods ar,eagle`` finds, and decoding with it is lossless."""

from __future__ import annotations

import json

import pytest
import torch
from accbench.methods.eagle.model import CONFIG_FILE, WEIGHTS_FILE
from accbench.training.artifacts import ModelArtifacts
from safetensors.torch import load_file


def _job(steps=8, restart=True, model="tiny-random-llama", **opts):
    """A training job on a freshly loaded tiny model."""
    from accbench.methods.core import TrainJob
    from accbench.models import load_model
    from accbench.training.train_data import training_documents

    lm = load_model(model)
    base = {"data_tokens": 1200, "held_tokens": 300, "ckpt_every": 2, "eval_positions": 8, "eval_depth": 3}
    return TrainJob(method="eagle", model_name=model, model=lm.model, tokenizer=lm.tokenizer,
                    documents=training_documents(("mbpp",)), artifacts=ModelArtifacts(model),
                    device=lm.device, dtype=lm.dtype, steps=steps, batch_size=4, lr=3e-3, seq_len=64,
                    restart=restart, options={**base, **opts}, log=lambda line: None)


def test_loss_decreases_and_acceptance_is_stored(tmp_path, monkeypatch):
    from accbench.methods.eagle.train import train_eagle

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    path = train_eagle("eagle", _job(steps=24))
    cfg = json.loads((path / CONFIG_FILE).read_text())
    losses = cfg["losses"]
    assert len(losses) == 24 and sum(losses[-4:]) < sum(losses[:4])
    acc = cfg["acceptance"]
    assert acc["positions"] == 8 and len(acc["cumulative"]) == 3
    assert all(0.0 <= a <= 1.0 for a in acc["cumulative"])
    assert acc["cumulative"] == sorted(acc["cumulative"], reverse=True)
    assert 0.0 <= cfg["held_top1"] <= 1.0 and cfg["format"] == "accbench-eagle"
    assert ModelArtifacts("tiny-random-llama").default("eagle") == path


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from accbench.methods.eagle.train import train_eagle
    from accbench.methods.training import TrainingStopped

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    ref = load_file(str(train_eagle("eagle", _job(noise=0.05)) / WEIGHTS_FILE))
    with pytest.raises(TrainingStopped):
        train_eagle("eagle", _job(noise=0.05, stop_after=3, ckpt_every=100))
    path = train_eagle("eagle", _job(noise=0.05, restart=False))
    cfg = json.loads((path / CONFIG_FILE).read_text())
    assert cfg["resumed_from"] == 3 and cfg["steps_run"] == 5
    got = load_file(str(path / WEIGHTS_FILE))
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    # --restart discards the checkpoint
    with pytest.raises(TrainingStopped):
        train_eagle("eagle", _job(noise=0.05, stop_after=2, ckpt_every=100))
    path = train_eagle("eagle", _job(noise=0.05, restart=True))
    assert json.loads((path / CONFIG_FILE).read_text())["resumed_from"] == 0


def test_artifact_loads_and_run_is_lossless(tmp_path, monkeypatch, tiny_llama):
    from accbench.cli import main
    from accbench.engine.results import ResultsDir
    from accbench.methods.eagle.published import load_draft
    from accbench.methods.eagle.train import train_eagle
    from click.testing import CliRunner

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    path = train_eagle("eagle", _job(steps=6))
    draft, cfg = load_draft(tiny_llama.model, path)
    saved = load_file(str(path / WEIGHTS_FILE))
    for k, v in draft.weights().items():
        assert torch.equal(v, saved[k].to(v.dtype))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"def f{i}(x):\n    return x + {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--methods", "ar,eagle", "--model", "tiny-random-llama", "--suite",
                                    "prompts", "--data", str(prompts), "--max-new-tokens", "24", "--out", str(out),
                                    "--executor", "inline"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = [r for r in ResultsDir(out).load_rows() if r["method"] == "eagle"]
    assert len(rows) == 3 and all(r["exact_match_ar"] for r in rows)


def test_gemma3_draft_trains_and_decodes_losslessly(tmp_path, monkeypatch, tiny_gemma):
    """EagleDraft builds one layer of the target's own class: Gemma 3's (sliding + full
    attention target, soft-capping quirks) trains, loads and is lossless too."""
    from accbench.methods import get
    from accbench.methods.eagle.train import train_eagle

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    path = train_eagle("eagle", _job(steps=4, model="tiny-random-gemma"))
    cfg = json.loads((path / CONFIG_FILE).read_text())
    assert cfg["layer_class"] == type(tiny_gemma.model.model.layers[-1]).__name__
    eg = get("eagle")(tiny_gemma.model, tiny_gemma.tokenizer, model_name="tiny-random-gemma",
                      artifacts=ModelArtifacts("tiny-random-gemma"))
    ar = get("ar")(tiny_gemma.model, tiny_gemma.tokenizer)
    for text in ("def add(a, b):\n    return", "The quick brown fox"):
        p = tiny_gemma.tokenizer(text).input_ids
        assert eg.generate(p, 24).tokens == ar.generate(p, 24).tokens


def test_max_minutes_commits_the_draft_so_far_and_a_rerun_finishes(tmp_path, monkeypatch):
    from accbench.methods.eagle.train import train_eagle
    from accbench.methods.training import work_dir

    monkeypatch.setenv("ACCBENCH_CACHE_DIR", str(tmp_path))
    path = train_eagle("eagle", _job(steps=6, max_minutes=1e-9))
    cfg = json.loads((path / CONFIG_FILE).read_text())
    assert cfg["stopped_early"] and cfg["steps_done"] == 1 and work_dir(path).is_dir()
    assert ModelArtifacts("tiny-random-llama").default("eagle") == path
    again = train_eagle("eagle", _job(steps=6, restart=False))
    cfg = json.loads((again / CONFIG_FILE).read_text())
    assert again == path and not cfg["stopped_early"] and cfg["resumed_from"] == 1 and cfg["steps_done"] == 6
    assert not work_dir(path).exists()
