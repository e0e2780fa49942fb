"""`accbench report`, `compare`, `project` and `cost-curve` on results produced in the test by
running accbench on the tiny random model (never hand-written numbers); the HTML is opened
in headless Chromium."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from accbench.cli import main
from accbench.engine.results import ResultsDir
from click.testing import CliRunner
from PIL import Image

CORE_PLOTS = ("speedup", "speed_quality", "ttft", "tau", "throughput")


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two real runs of ar + pld on tiny-random-llama: a prompts suite and a summarization
    suite (ROUGE), as a user would make them (two folders, merged by the report)."""
    d = tmp_path_factory.mktemp("runs")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Item {i}: " + "red green blue " * (3 + 4 * i)}) + "\n"
                               for i in range(4)))
    summ = d / "summ.jsonl"
    summ.write_text("".join(json.dumps({
        "article": f"###\nArticle: The town council met on day {i} and voted to repair the old bridge. "
                   "The bridge repair will take six weeks.\n\nSummarize the above article in 1 sentence.\n",
        "summary_gt": "The council voted to repair the bridge.", "stop": ["###"], "max_tokens": 16}) + "\n"
        for i in range(6)))  # at least stats.MIN_N samples: compare gives verdicts, not "too few samples"
    runs = []
    for name, suite, data, methods in (("a", "prompts", prompts, "ar,pld,lazyllm"),
                                       ("b", "summarization", summ, "ar,pld")):
        out = d / name
        res = _invoke(["run", "--methods", methods, "--model", "tiny-random-llama", "--suite", suite, "--data",
                       str(data), "--max-new-tokens", "16", "--warmup", "0", "--out", str(out)])
        assert res.exit_code == 0, res.output
        runs.append(out)
    return runs


@pytest.fixture(scope="module")
def report_dir(tiny_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = _invoke(["report", *map(str, tiny_runs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_report_files_and_captions(report_dir, tiny_runs):
    assert (report_dir / "report.md").is_file() and (report_dir / "report.html").is_file()
    for name in CORE_PLOTS:
        png = report_dir / f"{name}.png"
        assert png.is_file(), f"{name}.png missing"
        img = Image.open(png)
        assert img.size[0] > 600 and img.size[1] > 300
        # every figure states model, device, dtype, suite, sample count and date
        desc = img.info.get("Description", "")
        for needle in ("model: tiny-random-llama", "device: cpu", "dtype: float32", "suite: ", "n="):
            assert needle in desc, (name, desc)
        assert re.search(r"\d{4}-\d\d-\d\d", desc), desc
        assert np.asarray(img.convert("L")).std() > 5  # not blank
    md = (report_dir / "report.md").read_text()
    for name in CORE_PLOTS:
        assert f"]({name}.png)" in md
    # both runs merged: both suites appear
    assert "prompts · tiny-random-llama" in md and "summarization · tiny-random-llama" in md


def test_report_numbers_trace_to_samples(report_dir, tiny_runs):
    """The tokens/s and tau in report.md are recomputed here from samples.jsonl."""
    md = (report_dir / "report.md").read_text()
    rows = ResultsDir(tiny_runs[0]).load_rows()
    for method in ("ar", "pld"):
        rs = [r for r in rows if r["method"] == method]
        tps = sum(r["n_new"] for r in rs) / sum(r["total_s"] for r in rs)
        toks = sum(sum(r["tokens_per_step"][1:]) for r in rs)
        steps = sum(len(r["tokens_per_step"]) - 1 for r in rs)
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {method} | {len(rs)} |")
                    and f"| {tps:.3g} |" in ln)
        assert f"| {toks / steps:.3f} |" in line
        if method == "pld":  # draft time as a share of decode time, from the rows' extras
            draft = sum(r["extra"]["draft_s"] for r in rs)
            share = draft / (draft + sum(r["extra"]["verify_s"] for r in rs))
            assert f"| {share * 100:.1f} |" in line
    summary = (report_dir / "summary.csv").read_text()
    assert "tiny-random-llama" in summary


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_html_renders_offline_in_chromium(report_dir, tmp_path):
    html = (report_dir / "report.html").read_text()
    n_figs = html.count("<img ")
    assert n_figs >= len(CORE_PLOTS)
    # nothing to fetch: every image is a data URI, no external src/href
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (CI installs it: apt-get install -y chromium)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=10000", "--window-size=1400,2400"]
    url = (report_dir / "report.html").resolve().as_uri()
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=180, env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    status = re.search(r'id="report-status" data-images="(\d+)" data-loaded="(\d+)" data-errors="(\d+)"'
                       r'[^>]*data-overflow="(\d+)" data-overflow-detail="([^"]*)"', dom.stdout)
    assert status, dom.stdout[-2000:]
    images, loaded, errors, overflow = map(int, status.groups()[:4])
    assert overflow == 0, f"tables wider than the page at 1400 px: {status.group(5)}"
    assert "images loaded" not in dom.stdout and dom.stdout.count(">Runs<") == 2  # nav link + one heading
    assert images == n_figs and loaded == images, status.group(0)
    assert errors == 0, status.group(0)
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console  # console messages (CSP violations, script errors) are logged here
    shot = tmp_path / "report.png"
    res = subprocess.run(flags + ["--hide-scrollbars", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=180, env=env)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape[:2] == (2400, 1400) and pixels.std() > 10
    if os.environ.get("ACCBENCH_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["ACCBENCH_KEEP_SCREENSHOT"])


def test_report_bad_input(tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Error:" in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "samples.jsonl" in res.output


# ---------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------


def _planted_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    rows = [json.loads(line) for line in (dst / "samples.jsonl").read_text().splitlines() if line.strip()]
    (dst / "samples.jsonl").write_text("".join(json.dumps(edit(r)) + "\n" for r in rows))
    return dst


def _compare_rows(a, b, tmp_path):
    out = tmp_path / f"cmp-{b.name}.json"
    res = _invoke(["compare", str(a), str(b), "--json", str(out)])
    assert res.exit_code == 0, res.output
    return {(r["suite"], r["method"]): r for r in json.loads(out.read_text())}, res.output


def test_compare_verdicts_on_planted_changes(tiny_runs, tmp_path):
    summ = tiny_runs[1]
    same, _ = _compare_rows(summ, summ, tmp_path)
    assert all(r["verdict"] == "within noise" for r in same.values())

    def slower(r):
        if r["method"] == "pld":
            r["total_s"] *= 3.0
        return r

    def faster(r):
        if r["method"] == "pld":
            r["total_s"] *= 0.3
        return r

    def worse_quality(r):
        if r["method"] == "pld":
            r["quality"] = {k: v - 10.0 for k, v in r["quality"].items()}
        return r

    rows, out = _compare_rows(summ, _planted_copy(summ, tmp_path / "slower", slower), tmp_path)
    assert rows[("summarization", "pld")]["verdict"].startswith("worse (speed")
    assert rows[("summarization", "pld")]["speed_change"] == pytest.approx(-2 / 3, abs=1e-6)
    assert rows[("summarization", "ar")]["verdict"] == "within noise"
    assert "worse" in out
    rows, _ = _compare_rows(summ, _planted_copy(summ, tmp_path / "faster", faster), tmp_path)
    assert rows[("summarization", "pld")]["verdict"].startswith("better (speed")
    rows, _ = _compare_rows(summ, _planted_copy(summ, tmp_path / "worseq", worse_quality), tmp_path)
    r = rows[("summarization", "pld")]
    assert r["verdict"] == "worse (quality)" and r["quality_change"] == pytest.approx(-10.0)


# ---------------------------------------------------------------------------------------
# cost curves and projection
# ---------------------------------------------------------------------------------------


def test_block_sizes_from_chain_drafts():
    from accbench.reports.projection import block_sizes

    # 5 decode steps; 3 drafted at least 1 token, 2 at least 2, 1 at least 3
    row = {"tokens_per_step": [1, 1, 2, 1, 3, 1], "drafted": [3, 2, 1]}
    assert sorted(block_sizes(row)) == [1, 1, 2, 3, 4]
    assert block_sizes({"tokens_per_step": [1, 1, 1], "drafted": []}) == [1, 1]


def test_cost_curve_project_and_report(tiny_runs, tmp_path):
    curve = tmp_path / "curve.json"
    res = _invoke(["cost-curve", "--model", "tiny-random-llama", "--ks", "1,2,4,8,16", "--prefix-len", "32",
                   "--repeats", "3", "--out", str(curve)])
    assert res.exit_code == 0, res.output
    c = json.loads(curve.read_text())
    assert c["format"] == "accbench-cost-curve/1" and c["relative"]["1"] == 1.0
    assert set(c["relative"]) == {"1", "2", "4", "8", "16"} and all(v > 0 for v in c["seconds"].values())
    # a config.json alone: random weights of that shape
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 128}))
    res = _invoke(["cost-curve", "--model", str(cfg_dir / "config.json"), "--ks", "1,4", "--prefix-len", "16",
                   "--repeats", "2", "--out", str(tmp_path / "c2.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c2.json").read_text())["weights"].startswith("random weights")

    pj = tmp_path / "proj.json"
    res = _invoke(["project", *map(str, tiny_runs), "--cost-curve", str(curve), "--json", str(pj)])
    assert res.exit_code == 0, res.output
    pred = json.loads(pj.read_text())
    assert {p["suite"] for p in pred} == {"prompts", "summarization"} and all(p["method"] == "pld" for p in pred)
    for p in pred:  # measured on the same machine: measured and error are both there
        assert p["predicted"] > 0 and p["measured"] > 0
        assert p["error_pct"] == pytest.approx((p["predicted"] / p["measured"] - 1) * 100)
    out = tmp_path / "rep"
    res = _invoke(["report", *map(str, tiny_runs), "--out", str(out), "--cost-curve", str(curve)])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert "Predicted decode speedup" in md and (out / "cost_curve.png").is_file()
    assert (out / "projection.png").is_file()
    res = CliRunner().invoke(main, ["project", str(tiny_runs[0]), "--cost-curve", str(tmp_path / "missing.json")])
    assert res.exit_code == 2


def test_runs_from_two_machines_merge_with_device_as_axis(tiny_runs, tmp_path):
    """A second machine's run (here: run A's rows relabelled as a GPU machine's) stays apart."""
    gpu = tmp_path / "gpu"
    shutil.copytree(tiny_runs[0], gpu)
    cfg = json.loads((gpu / "config.json").read_text())
    cfg["device"] = "cuda"
    cfg["environment"]["gpus"] = ["NVIDIA H100 80GB HBM3"]
    (gpu / "config.json").write_text(json.dumps(cfg))
    _planted_copy(gpu, tmp_path / "gpu2", lambda r: {**r, "device": "cuda"})
    out = tmp_path / "rep"
    res = _invoke(["report", str(tiny_runs[0]), str(tmp_path / "gpu2"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    import pandas as pd

    f = pd.read_csv(out / "summary.csv")
    devices = set(f["device"])
    assert len(devices) == 2 and "cuda · NVIDIA H100 80GB HBM3" in devices
    assert len(f) == 6  # ar, pld and lazyllm on each machine, each paired with its own machine's AR
    assert (f[f["method"] == "ar"]["speedup"] == 1.0).all()
    desc = Image.open(out / "throughput.png").info["Description"]
    assert "cuda · NVIDIA H100 80GB HBM3" in desc


def test_one_colour_per_method_in_every_figure(tiny_runs, tmp_path, monkeypatch):
    """Every figure's legend gives a method the same colour (AR grey), and the legends sit
    outside the axes (never over the data)."""
    from collections import defaultdict

    import matplotlib.colors as mcolors
    from accbench.reports import plots
    from accbench.reports.runsets import load_runs

    figs = []
    monkeypatch.setattr(plots.plt, "close", lambda fig=None: figs.append(fig))
    plots.all_plots(load_runs(tiny_runs), tmp_path)
    colours = defaultdict(set)
    for fig in figs:
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is None:
                continue
            fig.canvas.draw()
            box, axbox = leg.get_window_extent(), ax.get_window_extent()
            assert box.x0 >= axbox.x1 - 1, "legend over the data"
            for handle, text in zip(leg.legend_handles, leg.get_texts()):
                name = text.get_text().removeprefix("method: ")
                if name in ("ar", "pld", "lazyllm"):
                    c = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
                    colours[name].add(mcolors.to_hex(c if not hasattr(c, "ndim") or c.ndim == 1 else c[0]))
    assert {"pld", "lazyllm"} <= set(colours)
    assert all(len(c) == 1 for c in colours.values()), dict(colours)
    assert colours["pld"] == {plots.method_color("pld")} != colours["lazyllm"]


def test_cross_run_pairing_needs_identical_settings(tiny_runs, tmp_path):
    """A LazyLLM-only run borrows AR rows from another folder only under identical settings,
    and the report says so under the table; an incomplete run is flagged at the top."""
    from accbench.reports.runsets import load_runs

    src = tiny_runs[0]
    only = {}
    for keep in ("ar", "lazyllm"):
        dst = tmp_path / keep
        shutil.copytree(src, dst)
        rows = [x for x in (dst / "samples.jsonl").read_text().splitlines() if json.loads(x)["method"] == keep]
        (dst / "samples.jsonl").write_text("\n".join(rows) + "\n")
        only[keep] = dst
    f = load_runs([only["ar"], only["lazyllm"]]).frame
    assert f[f.method == "lazyllm"]["speedup"].notna().all()
    notes = load_runs([only["ar"], only["lazyllm"]]).pairing_notes()
    assert any(f"pair with AR rows of {only['ar']}" in n for n in notes.values())
    cfg = json.loads((only["ar"] / "config.json").read_text())
    cfg["settings"]["max_new_tokens"] = 99
    cfg["status"] = "running"
    (only["ar"] / "config.json").write_text(json.dumps(cfg))
    rs = load_runs([only["ar"], only["lazyllm"]])
    assert rs.frame[rs.frame.method == "lazyllm"]["speedup"].isna().all()
    assert any("without an AR row of the same settings" in n for n in rs.pairing_notes().values())
    out = tmp_path / "rep"
    res = _invoke(["report", str(only["ar"]), str(only["lazyllm"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert md.split("\n\n")[1].startswith("WARNING: ") and "incomplete run" in md
    assert "without an AR row of the same settings" in md


def test_cost_curve_remeasures_implausible_points_and_project_refuses_them(tiny_runs, tmp_path, monkeypatch):
    import accbench.methods.core.costs as costs

    calls = []

    def fake(model, ks, **kw):  # k=4 looks cheaper than one token the first two times, then right
        calls.append(list(ks))
        return {k: (0.5e-3 if k == 4 and len(calls) <= 2 else 1e-3 * (1 + 0.1 * k)) for k in ks}

    monkeypatch.setattr(costs, "forward_cost", fake)
    out = tmp_path / "c.json"
    res = _invoke(["cost-curve", "--model", "tiny-random-llama", "--ks", "1,2,4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    c = json.loads(out.read_text())
    assert calls[1] == [1, 4] and len(calls) == 3 and not c["warnings"] and c["relative"]["4"] > 1

    monkeypatch.setattr(costs, "forward_cost", lambda model, ks, **kw: {k: (0.5e-3 if k == 4 else 1e-3) for k in ks})
    res = _invoke(["cost-curve", "--model", "tiny-random-llama", "--ks", "1,2,4", "--out", str(out)])
    assert res.exit_code == 0 and "warning:" in res.output
    assert json.loads(out.read_text())["warnings"]
    res = CliRunner().invoke(main, ["project", str(tiny_runs[0]), "--cost-curve", str(out)])
    assert res.exit_code == 2 and "cost(4)/cost(1) = 0.50 < 0.9" in res.output and "Traceback" not in res.output
