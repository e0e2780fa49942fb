"""A results folder cannot be corrupted, and bad input stops a run before anything happens:
one writer per folder, whole rows or none, every row checked when loaded, a refused resume
changes nothing, prompts and sampling values checked before any model loads."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from accbench import models
from accbench.cli import main
from accbench.engine.results import ResultsDir, row_key
from accbench.models.random_models import build_random_model
from accbench.models.registry import MODELS, ModelSpec
from accbench.reports.runsets import load_runs
from accbench.reports.summary import summarize
from click.testing import CliRunner


def _prompts(path: Path, n: int = 4, text: str = "Question {i}: what is {i} plus {i}?") -> Path:
    path.write_text("".join(json.dumps({"prompt": text.format(i=i)}) + "\n" for i in range(n)))
    return path


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", "tiny-random-llama", "--suite", "prompts", "--data", str(data), "--max-new-tokens", "8",
            "--warmup", "0", "--executor", "inline", "--out", str(out), *extra]


def _invoke(args):
    return CliRunner().invoke(main, args)


def _one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    for n in needles:
        assert n in res.output, (n, res.output)


def _unique(out: Path) -> list[dict]:
    rows = ResultsDir(out).load_rows(repair=False)
    assert len({row_key(r) for r in rows}) == len(rows)
    return rows


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A complete 4-sample AR run (copy it before changing it)."""
    d = tmp_path_factory.mktemp("done")
    data, out = _prompts(d / "p.jsonl"), d / "run"
    res = _invoke(_args(data, out))
    assert res.exit_code == 0, res.output
    return data, out


def _copy(done_run, tmp_path) -> Path:
    shutil.copytree(done_run[1], tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", refuse)


# -- 1. one writer per folder -----------------------------------------------------------


def test_a_second_run_into_a_held_folder_fails_at_once_naming_the_holder(tmp_path):
    data, out = _prompts(tmp_path / "p.jsonl", n=30), tmp_path / "run"
    args = ["run", "--model", "tiny-random-llama", "--suite", "prompts", "--data", str(data), "--max-new-tokens", "24",
            "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "accbench.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not ((out / ".lock").exists() and (out / ".lock").read_text().startswith(f"{first.pid} ")):
            assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        t0 = time.time()
        res = _invoke(args)
        _one_line_error(res, f"pid {first.pid}", socket.gethostname())
        assert time.time() - t0 < 30
        log = first.communicate(timeout=600)[0].decode()
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, log
    assert len(_unique(out)) == 30
    assert json.loads((out / "config.json").read_text())["status"] == "complete"


def test_reports_drop_duplicate_rows_with_a_warning(done_run, tmp_path, capsys):
    out = _copy(done_run, tmp_path)
    lines = (out / "samples.jsonl").read_bytes().splitlines(keepends=True)
    (out / "samples.jsonl").write_bytes(b"".join(lines + lines[:2]))  # as two writers would leave it
    rs = load_runs([out])
    assert len(rs.rows) == 4 and "dropped 2 duplicate row(s)" in capsys.readouterr().err
    rows = ResultsDir(out).load_rows(repair=False)
    frame = summarize(rows)
    assert "dropped 2 duplicate row(s)" in capsys.readouterr().err
    assert frame.loc[0, "n"] == 4
    res = _invoke(["report", str(out), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "dropped 2 duplicate row(s)" in res.output


# -- 2. whole rows or none --------------------------------------------------------------


def test_disk_full_mid_row_leaves_whole_rows_and_the_rerun_completes(tmp_path, monkeypatch):
    data, out = _prompts(tmp_path / "p.jsonl"), tmp_path / "run"
    real, rows_written = os.write, []

    def full_disk(fd, buf):
        if bytes(buf).startswith(b'{"model"'):
            rows_written.append(1)
            if len(rows_written) == 3:  # the third row: half of it lands, then the disk is full
                real(fd, bytes(buf)[: len(buf) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buf)

    monkeypatch.setattr(os, "write", full_disk)
    res = _invoke(_args(data, out))
    monkeypatch.setattr(os, "write", real)
    _one_line_error(res, "disk full", "samples.jsonl", "rerun the same command")
    assert (out / "samples.jsonl").read_bytes().endswith(b"\n")
    assert len(_unique(out)) == 2
    assert json.loads((out / "config.json").read_text())["status"] == "running"
    res = _invoke(_args(data, out))
    assert res.exit_code == 0, res.output
    assert len(_unique(out)) == 4
    assert json.loads((out / "config.json").read_text())["status"] == "complete"


def test_a_real_full_tmpfs_leaves_the_folder_readable(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        data, out = _prompts(tmp_path / "p.jsonl", n=40), mnt / "run"
        res = _invoke(_args(data, out, "--max-new-tokens", "24"))
        _one_line_error(res, "disk full")
        rows = _unique(out)  # whatever landed is whole rows
        assert len(rows) < 40
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        res = _invoke(_args(data, out, "--max-new-tokens", "24"))
        assert res.exit_code == 0, res.output
        assert len(_unique(out)) == 40
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- 3. every row checked ---------------------------------------------------------------


@pytest.mark.parametrize("bad,what", [(b"42", "expected a JSON object"), (b"{}", "missing model")])
def test_a_bad_row_is_one_error_line_in_run_report_and_check(done_run, tmp_path, bad, what):
    out = _copy(done_run, tmp_path)
    with open(out / "samples.jsonl", "ab") as f:
        f.write(bad + b"\n")
    before = (out / "config.json").read_bytes(), (out / "samples.jsonl").read_bytes()
    where = f"samples.jsonl:5: {what}"
    _one_line_error(_invoke(_args(done_run[0], out)), where)
    assert ((out / "config.json").read_bytes(), (out / "samples.jsonl").read_bytes()) == before
    _one_line_error(_invoke(["report", str(out), "--out", str(tmp_path / "rep")]), where)
    _one_line_error(_invoke(["check", str(out), "--baseline", str(tmp_path / "none.json")]), where)


def test_rows_with_unicode_line_separators_load(done_run, tmp_path):
    out = _copy(done_run, tmp_path)
    rows = ResultsDir(out).load_rows()
    rows[1]["output_text"] = "a\u2028b\u0085c\u2029d"
    (out / "samples.jsonl").write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows))
    assert "\u2028".encode() in (out / "samples.jsonl").read_bytes()
    assert ResultsDir(out).load_rows(repair=False)[1]["output_text"] == "a\u2028b\u0085c\u2029d"
    assert len(load_runs([out]).rows) == 4
    res = _invoke(_args(done_run[0], out))  # resuming: nothing to do
    assert res.exit_code == 0, res.output


# -- 4. a refused resume changes nothing ------------------------------------------------


def _files(out: Path) -> tuple[bytes, bytes]:
    return (out / "config.json").read_bytes(), (out / "samples.jsonl").read_bytes()


def test_a_refused_resume_leaves_the_folder_byte_identical(done_run, tmp_path):
    out = _copy(done_run, tmp_path)
    before = _files(out)
    assert json.loads(before[0])["status"] == "complete"
    _one_line_error(_invoke(_args(done_run[0], out, "--max-new-tokens", "6")), "max_new_tokens", "--overwrite")
    assert _files(out) == before


def test_an_unreadable_config_says_how_to_keep_the_rows(done_run, tmp_path):
    out = _copy(done_run, tmp_path)
    (out / "config.json").write_text("{not json")
    before = _files(out)
    _one_line_error(_invoke(_args(done_run[0], out)), "config.json", "--out NEW", "samples.jsonl", "--overwrite")
    assert _files(out) == before


# -- 5. inputs checked before any model loads -------------------------------------------


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory):
    """tiny-random-llama with a 64-token context, saved as a local model directory."""
    d = tmp_path_factory.mktemp("short") / "model"
    rc = {**MODELS["tiny-random-llama"].random_config, "max_position_embeddings": 64}
    model, tok = build_random_model(ModelSpec(name="short", source="random", description="", random_config=rc))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _long_args(tmp_path, model_dir, *extra):
    data = _prompts(tmp_path / "long.jsonl", n=2, text="{i} " + "a long prompt " * 10)  # ~150 tokens each
    return ["run", "--model", str(model_dir), "--suite", "prompts", "--data", str(data), "--max-new-tokens", "8",
            "--warmup", "0", "--executor", "inline", "--out", str(tmp_path / "run"), *extra]


def test_a_prompt_too_long_for_the_context_stops_before_any_model_loads(short_context_model, tmp_path,
                                                                        no_model_load):
    res = _invoke(_long_args(tmp_path, short_context_model))
    _one_line_error(res, "suite prompts", "sample 1", "64 tokens", "--truncate middle")
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_huge_prompt_is_refused_from_a_prefix_without_tokenizing_it_all(short_context_model, tmp_path,
                                                                          no_model_load, monkeypatch):
    from accbench.engine import prompts

    seen: list[int] = []
    real = prompts.encode_prompt
    monkeypatch.setattr(prompts, "encode_prompt", lambda tok, text, fmt: seen.append(len(text)) or real(tok, text, fmt))
    data = _prompts(tmp_path / "huge.jsonl", n=1, text="{i} " + "a long prompt " * 200_000)  # 2.8 M characters
    res = _invoke(["run", "--model", str(short_context_model), "--suite", "prompts", "--data", str(data),
                   "--max-new-tokens", "8", "--executor", "inline", "--out", str(tmp_path / "run")])
    _one_line_error(res, "suite prompts", "sample 1", "at least", "2,800,002 characters")
    assert seen and max(seen) < 10_000  # only a prefix was ever tokenized


def test_truncate_middle_fits_the_prompt_and_records_it(short_context_model, tmp_path):
    res = _invoke(_long_args(tmp_path, short_context_model, "--truncate", "middle"))
    assert res.exit_code == 0, res.output
    rows = _unique(tmp_path / "run")
    assert len(rows) == 2
    for r in rows:
        assert r["prompt_tokens"] == 64 - 8 < r["prompt_truncated_from"]
        assert r["prompt_tokens"] + r["n_new"] <= 64
    assert json.loads((tmp_path / "run" / "config.json").read_text())["settings"]["truncate"] == "middle"


@pytest.mark.parametrize("extra,needle", [
    (["--temperature", "-0.5"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_sampling_values_are_one_line_before_any_model_loads(tmp_path, no_model_load, extra, needle):
    res = _invoke(_args(_prompts(tmp_path / "p.jsonl"), tmp_path / "run", *extra))
    _one_line_error(res, needle)
    assert not (tmp_path / "run").exists()
