"""`accbench run` / `accbench list` through click's CliRunner: results, resume, bad input."""

import json
from pathlib import Path

import pytest
from accbench import methods
from accbench.cli import main
from accbench.engine.results import ResultsDir, row_key
from accbench.methods.ar import ARDecoder
from click.testing import CliRunner


def _prompts_file(tmp_path: Path, n: int = 4) -> Path:
    p = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?"}) for i in range(n)]
    p.write_text("\n".join(lines) + "\n")
    return p


def _run(args, **kw):
    return CliRunner().invoke(main, args, catch_exceptions=False, **kw)


def _base_args(tmp_path, out, n=4):
    return ["run", "--model", "tiny-random-llama", "--suite", "prompts", "--data", str(_prompts_file(tmp_path, n)),
            "--max-new-tokens", "12", "--out", str(out)]


def test_run_writes_results(tmp_path):
    out = tmp_path / "run"
    res = _run(_base_args(tmp_path, out) + ["--methods", "ar"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["status"] == "complete"
    assert cfg["environment"]["packages"]["torch"]
    rows = ResultsDir(out).load_rows()
    assert len(rows) == 4
    for r in rows:
        assert r["n_new"] == len(r["new_token_ids"]) <= 12
        assert r["ttft_s"] <= r["total_s"]
        assert r["tau"] == 1.0 and r["forward_passes"] == r["n_new"]
    summary = (out / "summary.csv").read_text()
    assert "tokens_per_s" in summary and "tiny-random-llama" in summary
    assert "prompts" in res.output  # the table title


class _Boom(Exception):
    pass


def test_resume_after_crash_has_no_duplicates_and_no_losses(tmp_path, monkeypatch):
    """A crash mid-run keeps every finished row; rerunning completes the rest exactly once."""
    out = tmp_path / "run"
    args = _base_args(tmp_path, out, n=5) + ["--methods", "ar", "--warmup", "0", "--executor", "inline"]
    calls = {"n": 0}
    real = ARDecoder.decode

    def crashing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Boom()
        return real(self, *a, **k)

    monkeypatch.setattr(ARDecoder, "decode", crashing)
    with pytest.raises(_Boom):
        _run(args)
    partial = ResultsDir(out).load_rows()
    assert len(partial) == 3
    assert json.loads((out / "config.json").read_text())["status"] == "running"
    # a torn half-written line, as a kill during write() would leave
    with open(out / "samples.jsonl", "ab") as f:
        f.write(b'{"model": "tiny-random-llama", "trunc')
    monkeypatch.setattr(ARDecoder, "decode", real)
    res = _run(args)
    assert res.exit_code == 0, res.output
    rows = ResultsDir(out).load_rows()
    keys = [row_key(r) for r in rows]
    assert len(rows) == 5 and len(set(keys)) == 5
    assert [r["sample_id"] for r in rows[:3]] == [r["sample_id"] for r in partial]
    assert json.loads((out / "config.json").read_text())["status"] == "complete"
    # and a third run has nothing to do
    res = _run(args)
    assert res.exit_code == 0
    assert len(ResultsDir(out).load_rows()) == 5


def test_changed_settings_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    assert _run(_base_args(tmp_path, out, n=2) + ["--methods", "ar"]).exit_code == 0
    args = ["run", "--model", "tiny-random-llama", "--suite", "prompts", "--data", str(tmp_path / "prompts.jsonl"),
            "--max-new-tokens", "8", "--out", str(out), "--methods", "ar"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    assert "max_new_tokens" in res.output and "--overwrite" in res.output
    res = CliRunner().invoke(main, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    assert all(r["n_new"] <= 8 for r in ResultsDir(out).load_rows())


def _assert_clean_error(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.output.startswith("Error:") or "Error:" in res.output.splitlines()[-1]
    for n in needles:
        assert n in res.output, (n, res.output)


@pytest.mark.parametrize("extra,needles", [
    (["--methods", "nosuch"], ["unknown method", "ar"]),
    (["--suite", "nosuite"], ["unknown suite", "mbpp"]),
    (["--model", "no-such-model"], ["no-such-model", "smollm2-135m"]),
    (["--limit", "0"], ["--limit"]),
    (["--limit", "-3"], ["--limit"]),
])
def test_bad_input_is_one_clear_line(tmp_path, extra, needles):
    args = ["run", "--model", "tiny-random-llama", "--suite", "mbpp", "--out", str(tmp_path / "r")] + extra
    res = CliRunner().invoke(main, args)
    _assert_clean_error(res, *needles)
    assert not (tmp_path / "r" / "summary.csv").exists()


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(main, _base_args(tmp_path, blocker / "sub"))
    _assert_clean_error(res, "cannot write results")


def test_malformed_data_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    res = CliRunner().invoke(main, ["run", "--model", "tiny-random-llama", "--suite", "prompts", "--data", str(bad),
                                    "--out", str(tmp_path / "r")])
    _assert_clean_error(res, "bad.jsonl", "2")


def test_missing_model_package_says_install_command(tmp_path, monkeypatch):
    from accbench import models

    spec = models.ModelSpec(name="fake-gguf", source="gguf-package", description="test",
                            package="accbench-no-such-package", install="pip install accbench-no-such-package",
                            gguf_file="x.gguf")
    monkeypatch.setitem(models.MODELS, "fake-gguf", spec)
    args = _base_args(tmp_path, tmp_path / "r") + ["--executor", "inline"]  # MODELS is patched in this process
    args[args.index("tiny-random-llama")] = "fake-gguf"
    res = CliRunner().invoke(main, args)
    _assert_clean_error(res, "pip install accbench-no-such-package")
    assert not (tmp_path / "r" / "config.json").exists()  # checked before the folder is written (fail fast)


def test_list_shows_methods_models_suites():
    res = _run(["list"])
    assert res.exit_code == 0
    for name in ("ar", "smollm2-135m", "gemma3-270m", "tiny-random-llama", "mbpp", "cnndm", "prompts"):
        assert name in res.output
    assert "method options" in res.output
    pld = next(line for line in res.output.splitlines() if "num_draft" in line and "│ pld " in line)
    assert "pld" in pld and "int" in pld and "10" in pld and ">= 1" in pld and "most tokens drafted" in pld


@pytest.mark.parametrize("opt,needles", [
    ("pld.num_draft=abc", ["pld.num_draft='abc'", "expected int", "num_draft (int), max_ngram"]),
    ("pld.num_draft=-5", ["pld.num_draft='-5'", ">= 1", "num_draft (int), max_ngram"]),
    ("nosuch.key=1", ["'nosuch' is not a method", "pld"]),
    ("pld.nosuch=1", ["no option 'nosuch'", "num_draft, max_ngram, min_ngram"]),
    ("mtp.heads=x", ["'mtp' is not in --methods", "ar, pld"]),
    ("pld.min_ngram=5", ["min_ngram=5 exceeds pld.max_ngram=3", "num_draft (int)"]),
    ("pld=3", ["METHOD.KEY=VALUE"]),
])
def test_bad_method_option_is_one_line_before_any_model_loads(tmp_path, monkeypatch, opt, needles):
    import accbench.models

    monkeypatch.setattr(accbench.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    out = tmp_path / "r"
    res = CliRunner().invoke(main, _base_args(tmp_path, out) + ["--methods", "ar,pld", "-o", opt])
    _assert_clean_error(res, *needles)
    assert sum("Error" in line for line in res.output.splitlines()) == 1
    assert not (out / "config.json").exists()  # stopped before the results folder, any worker or model


def test_help_options_prints_the_methods_options(tmp_path):
    res = _run(["run", "--methods", "ar,pld", "--help-options"])
    assert res.exit_code == 0, res.output
    assert "ar has no options" in res.output
    assert "-o pld.num_draft=<int>  (default 10, >= 1)  most tokens drafted per step" in res.output


def test_method_options_are_stored_parsed(tmp_path):
    out = tmp_path / "run"
    res = _run(_base_args(tmp_path, out, n=2) + ["--methods", "ar,pld", "-o", "pld.num_draft=4"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["method_options"] == {"pld": {"num_draft": 4}}
    assert cfg["options"]["pld"] == {"num_draft": 4, "max_ngram": 3, "min_ngram": 1}
    assert all(len(r["drafted"]) <= 4 for r in ResultsDir(out).load_rows())


def test_third_party_method_via_entry_point(monkeypatch):
    class EP:
        name = "ext-ar"

        def load(self):
            class ExtAR(ARDecoder):
                name = "ext-ar"
            return ExtAR

    methods.available()  # built-ins imported and registered
    monkeypatch.setattr(methods, "_loaded", False)
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    monkeypatch.setattr(methods, "entry_points", lambda group: [EP()] if group == "accbench.methods" else [])
    avail = methods.available()
    assert "ext-ar" in avail and "ar" in avail


@pytest.mark.slow
def test_end_to_end_smollm2(tmp_path):
    out = tmp_path / "e2e"
    res = _run(["run", "--methods", "ar", "--model", "smollm2-135m", "--suite", "mbpp,cnndm", "--limit", "2",
                "--max-new-tokens", "32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = ResultsDir(out).load_rows()
    assert len(rows) == 4
    assert {r["suite"] for r in rows} == {"mbpp", "cnndm"}
    for r in rows:
        assert r["n_new"] > 0 and r["tokens_per_s"] > 0
        assert r["quality"], r
    assert "pass@1" in res.output and "rougeL" in res.output


def test_fit_to_length_cuts_middle_and_packs_in_front():
    from accbench.engine.prompts import fit_to_length

    ids = [1] + list(range(100, 120))  # BOS + 20 tokens
    cut = fit_to_length(ids, 10, [7, 8, 9], bos_id=1)
    assert cut == ids[:5] + ids[-5:]
    packed = fit_to_length(ids, 30, [7, 8, 9], bos_id=1)
    assert len(packed) == 30 and packed[0] == 1 and packed[-20:] == ids[1:]
    assert set(packed[1:10]) <= {7, 8, 9}


def test_prompt_lengths_are_a_sweep_axis(tmp_path):
    out = tmp_path / "run"
    res = _run(_base_args(tmp_path, out, n=2) + ["--methods", "ar,pld", "--prompt-lengths", "16,64"])
    assert res.exit_code == 0, res.output
    rows = ResultsDir(out).load_rows()
    assert len(rows) == 2 * 2 * 2
    assert sorted({r["prompt_length"] for r in rows}) == [16, 64]
    assert all(r["prompt_tokens"] == r["prompt_length"] for r in rows)
    assert all(r["exact_match_ar"] for r in rows if r["method"] == "pld")
    summary = (out / "summary.csv").read_text()
    assert "prompt_length" in summary
    assert "prompt 64 tokens" in res.output


def test_table_shows_acceptance_per_draft_position():
    import pandas as pd
    from accbench.reports.tables import summary_tables
    from rich.console import Console

    base = {"model": "m", "device": "cpu", "suite": "mbpp", "prompt_length": float("nan"), "dtype": "float32",
            "n": 3, "tokens_per_s": 10.0, "speedup": 1.0, "speedup_lo": 1.0, "speedup_hi": 1.0, "ttft_s": 0.1,
            "tpot_s": 0.05, "tau": 1.0, "exact_match_ar": float("nan"), "acceptance": float("nan")}
    frame = pd.DataFrame([{**base, "method": "ar"},
                          {**base, "method": "pld", "tau": 1.7, "exact_match_ar": 1.0,
                           "acceptance": "0.612;0.405;0.3;0.2;0.1;0.05"}])
    console = Console(width=250, record=True)
    for t in summary_tables(frame):
        console.print(t)
    text = console.export_text()
    assert "accept/pos" in text
    assert "0.61 0.41 0.30 0.20 0.10 …" in text
    # AR has no draft positions: a dash, not "nan"
    ar_line = next(line for line in text.splitlines() if "│ ar " in line)
    assert "nan" not in ar_line
    # an AR-only table (acceptance "" as the summary writes it) has no such column
    console = Console(width=250, record=True)
    for t in summary_tables(pd.DataFrame([{**base, "method": "ar", "acceptance": ""}])):
        console.print(t)
    assert "accept/pos" not in console.export_text()


def test_summary_and_table_report_draft_vs_verify_time():
    from accbench.reports.summary import summarize
    from accbench.reports.tables import summary_tables
    from rich.console import Console

    def row(method, sid, total, extra=None, drafted=None, accepted=None):
        return {"model": "m", "device": "cpu", "dtype": "float32", "suite": "mbpp", "prompt_length": None,
                "sample_id": sid, "method": method, "n_new": 10, "ttft_s": 0.1, "total_s": total, "tpot_s": 0.05,
                "forward_passes": 10 if method == "ar" else 5, "tokens_per_step": [1] * 10 if method == "ar" else [1, 3, 2, 2, 2],
                "drafted": drafted or [], "accepted": accepted or [], "quality": {}, "exact_match_ar": None
                if method == "ar" else True, "extra": extra or {}}

    rows = [row("ar", "1", 1.0), row("ar", "2", 1.0),
            row("pld", "1", 0.8, {"draft_s": 0.01, "verify_s": 0.69}, [4, 4], [3, 1]),
            row("pld", "2", 0.8, {"draft_s": 0.03, "verify_s": 0.67}, [4, 4], [1, 1])]
    frame = summarize(rows).set_index("method")
    assert frame.loc["pld", "draft_s"] == pytest.approx(0.04)
    assert frame.loc["pld", "verify_s"] == pytest.approx(1.36)
    assert frame.loc["pld", "draft_share"] == pytest.approx(0.04 / 1.40)
    assert frame.loc["pld", "acceptance"] == "0.500;0.250"
    assert frame.loc["ar"].isna()["draft_share"]
    console = Console(width=250, record=True)
    for t in summary_tables(frame.reset_index()):
        console.print(t)
    text = console.export_text()
    assert "draft time" in text
    assert "2.9%" in text  # 0.04 / 1.40


def test_run_and_list_json_for_scripts(tmp_path):
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    res = runner.invoke(main, _base_args(tmp_path, tmp_path / "run") + ["--methods", "ar,pld", "--json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["status"] == "complete" and doc["results"] == str(tmp_path / "run")
    lines = {(x["method"], x["category"]): x for x in doc["summary"]}
    assert lines[("pld", "all")]["n"] == 4 and lines[("ar", "all")]["speedup"] == 1.0
    assert lines[("pld", "all")]["speedup_lo"] is None  # n=4 < MIN_N: no interval, and NaN is null
    res = runner.invoke(main, ["list", "--json"], catch_exceptions=False)
    assert res.exit_code == 0
    listed = json.loads(res.stdout)
    pld = next(m for m in listed["methods"] if m["name"] == "pld")
    assert pld["lossless"] and any(o["name"] == "num_draft" for o in pld["options"])
    assert {"mbpp", "specbench"} <= {s["name"] for s in listed["suites"]}
    assert any(m["name"] == "tiny-random-llama" for m in listed["models"])
