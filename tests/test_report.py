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

CORE_PLOTS = ("speedup", "speed_quality", "ttft", "tau", "acceptance", "throughput")


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, data_dir):
    """Real runs on tiny-random-llama, as a user would make them (four folders, merged by the
    report): [0] a prompts file with categories (ar, pld, lazyllm), [1] cnndm (ar, pld: ROUGE),
    [2] mbpp (ar, pld: pass@1 in the sandbox), [3] LazyLLM alone on cnndm with run [1]'s
    settings (its speedups pair with run [1]'s AR rows, and the report says so). CNN/DM articles
    can exceed the tiny model's context in its byte tokens: --truncate middle cuts them."""
    d = tmp_path_factory.mktemp("runs")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Item {i}: " + "red green blue " * (3 + 4 * i),
                                           "category": ("qa", "translation")[i % 2]}) + "\n" for i in range(6)))
    runs = []
    for name, suite, extra, methods in (("prompts", "prompts", ["--data", str(prompts)], "ar,pld,lazyllm"),
                                        ("cnndm", "cnndm", ["--limit", "6", "--truncate", "middle"], "ar,pld"),
                                        ("mbpp", "mbpp", ["--limit", "5"], "ar,pld"),
                                        ("cnndm-lazyllm", "cnndm", ["--limit", "6", "--truncate", "middle", "--no-baseline"],
                                         "lazyllm")):
        out = d / name
        res = _invoke(["run", "--methods", methods, "--model", "tiny-random-llama", "--suite", suite, *extra,
                       "--max-new-tokens", "16", "--warmup", "0", "--out", str(out)])
        assert res.exit_code == 0, res.output
        runs.append(out)
    return runs


@pytest.fixture(scope="module")
def report_dir(tiny_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = _invoke(["report", *map(str, tiny_runs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _md_tables(md: str) -> dict[str, list[dict[str, str]]]:
    """report.md's tables: title -> rows as {column: text}."""
    out, title, cols = {}, None, None
    for ln in md.splitlines():
        if ln.startswith("**") and ln.endswith("**"):
            title, cols = ln.strip("*"), None
        elif ln.startswith("| ") and title is not None:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
            if cols is None:
                cols = cells
                out[title] = []
            else:
                out[title].append(dict(zip(cols, cells)))
        elif ln.startswith("|---"):
            continue
        elif not ln.strip():
            continue
        else:
            title = None if not ln.startswith("_") else title
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
    # all runs merged: every suite appears
    for suite in ("prompts", "cnndm", "mbpp"):
        assert f"{suite} · tiny-random-llama" in md
    # the speedup figure says that LazyLLM's cnndm speedups come from another folder's AR rows
    desc = " ".join(Image.open(report_dir / "speedup.png").info["Description"].split())
    assert f"pair with AR rows of {tiny_runs[1]}" in desc, desc


def test_report_numbers_trace_to_samples(report_dir, tiny_runs):
    """tokens/s, tau and the draft share in report.md are recomputed here from samples.jsonl."""
    tables = _md_tables((report_dir / "report.md").read_text())
    speed = next(v for k, v in tables.items() if k.startswith("prompts ·") and k.endswith("· speed"))
    steps_t = next(v for k, v in tables.items() if k.startswith("prompts ·") and k.endswith("· decoding steps"))
    rows = ResultsDir(tiny_runs[0]).load_rows()
    for method in ("ar", "pld"):
        rs = [r for r in rows if r["method"] == method]
        tps = sum(r["n_new"] for r in rs) / sum(r["total_s"] for r in rs)
        toks = sum(sum(r["tokens_per_step"][1:]) for r in rs)
        steps = sum(len(r["tokens_per_step"]) - 1 for r in rs)
        line = next(x for x in speed if x["method"] == method and x["category"] == "all")
        assert line["n"] == str(len(rs)) and line["tok/s"] == f"{tps:.3g}"
        line = next(x for x in steps_t if x["method"] == method and x["category"] == "all")
        assert line["mean accepted tokens (tau)"] == f"{toks / steps:.3f}"
        if method == "pld":  # draft time as a share of decode time, from the rows' extras
            draft = sum(r["extra"]["draft_s"] for r in rs)
            share = draft / (draft + sum(r["extra"]["verify_s"] for r in rs))
            line = next(x for x in speed if x["method"] == method and x["category"] == "all")
            assert line["draft time (% of decode)"] == f"{share * 100:.1f}"
    summary = (report_dir / "summary.csv").read_text()
    assert "tiny-random-llama" in summary


def test_report_tables_show_every_part(report_dir, tiny_runs):
    """Headline (LazyLLM: TTFT speedup with its interval and computed fraction), quality deltas
    with intervals and verdicts, the pass@1 2x2 table, latency percentiles, tau under its
    label with the draft shape beside it, both acceptances, per-category rows, the cross-run
    pairing note, and one "Runs" section."""
    md = (report_dir / "report.md").read_text()
    tables = _md_tables(md)
    head = tables["Headline per method"]
    lazy = next(r for r in head if r["suite"] == "cnndm" and r["method"] == "lazyllm")
    assert lazy["headline"] == "TTFT speedup" and re.fullmatch(
        r"\d+\.\d\dx \[\d+\.\d\d, \d+\.\d\d\], \d+% of prompt computed", lazy["value (95% CI)"]), lazy
    assert str(tiny_runs[1]) in lazy["AR pair from"]
    cn_speed = next(v for k, v in tables.items() if k.startswith("cnndm ·") and k.endswith("· speed"))
    assert {"TTFT speedup vs AR (median, 95% CI)", "prompt computed", "match AR (outputs identical)"} <= set(cn_speed[0])
    assert next(r for r in cn_speed if r["method"] == "pld")["match AR (outputs identical)"] == "100%"
    cn_q = next(v for k, v in tables.items() if k.startswith("cnndm ·") and k.endswith("· quality"))
    pld = next(r for r in cn_q if r["method"] == "pld")
    assert re.fullmatch(r"\d+\.\d Δ [+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]", pld["rougeL"]), pld
    assert pld["quality vs AR (verdict)"].endswith("on rougeL")
    mb_q = next(v for k, v in tables.items() if k.startswith("mbpp ·") and k.endswith("· quality"))
    pld = next(r for r in mb_q if r["method"] == "pld")
    assert re.fullmatch(r"\d+ / \d+ / \d+ / \d+", pld["pass@1 pairs: both / only AR / only method / neither"])
    assert sum(map(int, pld["pass@1 pairs: both / only AR / only method / neither"].split(" / "))) == 5
    assert re.fullmatch(r"\d\.\d{3}", pld["McNemar p"])
    lat = next(v for k, v in tables.items() if k.startswith("mbpp ·") and k.endswith("· latency"))
    assert {f"{m} ms p{q}" for m in ("TTFT", "TPOT", "ITL") for q in (50, 90, 99)} <= set(lat[0])
    assert "an ITL gap covers several tokens" in md
    dec = next(v for k, v in tables.items() if k.startswith("cnndm ·") and k.endswith("· decoding steps"))
    cols = list(dec[0])
    assert cols[cols.index("mean accepted tokens (tau)") + 2] == "draft shape"
    assert "uncond. k=1" in cols and "cond. k=2" in cols and "unconditional = accepted_k / drafted_k" in md
    assert next(r for r in dec if r["method"] == "pld")["draft shape"].startswith("chain")
    pr = next(v for k, v in tables.items() if k.startswith("prompts ·") and k.endswith("· speed"))
    assert {r["category"] for r in pr} == {"all", "qa", "translation"}
    assert f"lazyllm (run {tiny_runs[3]}): speedups pair with AR rows of {tiny_runs[1]} (same settings, same device)" \
        in md
    assert md.count("## Runs") == 1 and "****" not in md
    assert "WARNING" not in md  # every run is complete


def test_report_from_a_summary_without_the_newer_columns(tiny_runs, tmp_path):
    """Runs summarized before a column existed: the report leaves that piece out."""
    from accbench.reports.report import build_report
    from accbench.reports.runsets import load_runs

    rs = load_runs(tiny_runs)
    f = rs.frame
    newer = [c for c in f.columns if c.startswith(("ttft_p", "tpot_p", "itl_p", "d_", "draft_", "pass_", "ttft_speedup"))
             or c in ("category", "acceptance_cond", "computed_frac", "mcnemar_p", "quality_verdict",
                      "quality_metric", "quality_n", "n_pairs")]
    rs._frame = f[f["category"] == "all"].drop(columns=newer)
    build_report(rs, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "· speed**" in md and "· quality**" in md and "· latency**" not in md
    assert "| TTFT speedup vs AR" not in md and "| McNemar p |" not in md and "| cond. k=2" not in md
    assert "uncond. k=1" in md  # acceptance itself is an old column


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (CI installs it: apt-get install -y chromium)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=10000"]
    return flags, {**os.environ, "HOME": str(tmp_path)}


def _status(flags, env, url, width=1400, height=2400) -> tuple[dict[str, str], str, str]:
    dom = subprocess.run(flags + [f"--window-size={width},{height}", "--dump-dom", url], capture_output=True,
                         text=True, timeout=180, env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    tag = re.search(r'<div id="report-status"[^>]*>', dom.stdout)
    assert tag, dom.stdout[-2000:]
    return dict(re.findall(r'(data-[\w-]+)="([^"]*)"', tag.group(0))), dom.stdout, dom.stderr


def test_html_renders_offline_in_chromium(report_dir, tmp_path):
    """Offline, every image loads, no script error, and at 1400 px no table is wider than its
    container (so none scrolls sideways or hides a column)."""
    html = (report_dir / "report.html").read_text()
    n_figs = html.count("<img ")
    assert n_figs >= len(CORE_PLOTS)
    # nothing to fetch: every image is a data URI, no external src/href
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)
    flags, env = _browser(tmp_path)
    url = (report_dir / "report.html").resolve().as_uri()
    st, dom, stderr = _status(flags, env, url)
    widths = [tuple(map(int, re.fullmatch(r"\d+:(\d+)/(\d+)", w).groups())) for w in st["data-table-widths"].split()]
    assert len(widths) == html.count('<div class="wide">') >= 10
    assert all(0 < w <= c for w, c in widths), f"tables wider than their container at 1400 px: {widths}"
    assert st["data-overflow"] == "0" and st["data-page-scroll"] == "0", st
    # the cnndm tables' rougeL and match-AR columns are there (and, as nothing overflows, visible)
    assert re.search(r"<th[^>]*>rougeL</th>", dom) and re.search(r"<th[^>]*>match AR \(outputs identical\)</th>", dom)
    # the state is in data attributes of a hidden element, never on the page; "Runs" only once
    assert "images loaded" not in dom and dom.count(">Runs</h2>") == 1
    assert int(st["data-images"]) == n_figs and st["data-loaded"] == st["data-images"], st
    assert st["data-errors"] == "0", st
    console = [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console  # console messages (CSP violations, script errors) are logged here
    shot = tmp_path / "report.png"
    res = subprocess.run(flags + ["--window-size=1400,2400", "--hide-scrollbars", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=180, env=env)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape[:2] == (2400, 1400) and pixels.std() > 10
    keep = os.environ.get("ACCBENCH_REPORT_SHOTS")
    if keep:  # the whole page at 1400 px, in screen-sized parts
        height = int(st["data-height"])
        full = tmp_path / "full.png"
        subprocess.run(flags + [f"--window-size=1400,{height}", "--hide-scrollbars", f"--screenshot={full}", url],
                       capture_output=True, text=True, timeout=180, env=env, check=True)
        Path(keep).mkdir(parents=True, exist_ok=True)
        img = Image.open(full)
        for i, top in enumerate(range(0, img.size[1], 1600)):
            img.crop((0, top, 1400, min(top + 1600, img.size[1]))).save(Path(keep) / f"report_{i + 1:02d}.png")
        (Path(keep) / "table_widths.txt").write_text(st["data-table-widths"] + "\n")


def test_overflow_check_catches_a_wide_table(tmp_path):
    """The check the test above relies on: a table wider than the page is reported."""
    from accbench.reports.html import Section, TableSpec, cell, render_html

    wide = TableSpec("too wide", [f"column number {i}" for i in range(40)],
                     [[cell(f"value-{i}-{j}-long-text") for i in range(40)] for j in range(3)])
    narrow = TableSpec("fine", ["a", "b"], [[cell(1.0), cell(2.0)]])
    page = tmp_path / "page.html"
    page.write_text(render_html("t", [], [Section("s", tables=[narrow, wide])]))
    flags, env = _browser(tmp_path)
    st, _, _ = _status(flags, env, page.resolve().as_uri())
    assert st["data-overflow"] == "1" and st["data-overflow-detail"].startswith("1:"), st
    (w0, c0), (w1, c1) = [tuple(map(int, w.split(":")[1].split("/"))) for w in st["data-table-widths"].split()]
    assert w0 <= c0 and w1 > c1


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
    assert rows[("cnndm", "pld")]["verdict"].startswith("worse (speed")
    assert rows[("cnndm", "pld")]["speed_change"] == pytest.approx(-2 / 3, abs=1e-6)
    assert rows[("cnndm", "ar")]["verdict"] == "within noise"
    assert "worse" in out
    rows, _ = _compare_rows(summ, _planted_copy(summ, tmp_path / "faster", faster), tmp_path)
    assert rows[("cnndm", "pld")]["verdict"].startswith("better (speed")
    rows, _ = _compare_rows(summ, _planted_copy(summ, tmp_path / "worseq", worse_quality), tmp_path)
    r = rows[("cnndm", "pld")]
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
    assert {p["suite"] for p in pred} == {"prompts", "cnndm", "mbpp"} and all(p["method"] == "pld" for p in pred)
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
    f = f[f["category"] == "all"]
    devices = set(f["device"])
    assert len(devices) == 2 and "cuda · NVIDIA H100 80GB HBM3" in devices
    assert len(f) == 6  # ar, pld and lazyllm on each machine, each paired with its own machine's AR
    assert (f[f["method"] == "ar"]["speedup"] == 1.0).all()
    desc = Image.open(out / "throughput.png").info["Description"]
    assert "cuda · NVIDIA H100 80GB HBM3" in desc


def test_one_colour_per_method_in_every_figure(tiny_runs, tmp_path, monkeypatch):
    """A method has one colour (plots.method_color; AR grey) in every figure: in legends, and
    in the bars and lines of the per-method panels (tau, acceptance); legends sit outside the
    axes (never over the data)."""
    from collections import defaultdict

    import matplotlib.colors as mcolors
    from accbench.reports import plots
    from accbench.reports.runsets import load_runs

    figs = []
    monkeypatch.setattr(plots.plt, "close", lambda fig=None: figs.append(fig))
    paths = plots.all_plots(load_runs(tiny_runs), tmp_path)
    assert set(paths) == set(CORE_PLOTS) and len(figs) == len(paths)
    methods = {"ar", "pld", "lazyllm"}
    greys = {"#555555", "#888888", "#222222", "#ffffff", "#000000"}
    seen = defaultdict(lambda: defaultdict(set))  # method -> figure -> colours

    def hexes(c):
        arr = np.atleast_2d(mcolors.to_rgba_array(c))
        return {mcolors.to_hex(x) for x in arr if x[3] > 0}

    for name, fig in zip(paths, figs):
        fig.canvas.draw()
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is not None:
                box, axbox = leg.get_window_extent(), ax.get_window_extent()
                assert box.x0 >= axbox.x1 - 1, f"{name}: legend over the data"
                for handle, text in zip(leg.legend_handles, leg.get_texts()):
                    m = text.get_text().removeprefix("method: ")
                    if m in methods:
                        c = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
                        seen[m][name] |= hexes(c)
            m = ax.get_title().split(" · ")[0]
            if m in methods:  # a per-method panel: every bar and line is that method's
                for patch in ax.patches:
                    seen[m][name] |= hexes(patch.get_facecolor()) - greys
                for line in ax.lines:
                    seen[m][name] |= hexes(line.get_color()) - greys
    assert {"ar", "pld", "lazyllm"} <= set(seen)
    for m, by_fig in seen.items():
        assert all(c == {plots.method_color(m)} for c in by_fig.values()), (m, dict(by_fig))
    assert set(seen["pld"]) >= {"speedup", "speed_quality", "ttft", "tau", "acceptance", "throughput"}
    assert set(seen["lazyllm"]) >= {"speedup", "ttft", "throughput"} and "tau" not in seen["lazyllm"]
    assert plots.method_color("ar") == plots.AR_COLOR
    assert len({plots.method_color(m) for m in ("ar", "pld", "lazyllm", "lookahead", "medusa1", "mtp")}) == 6


def _split_by_method(src: Path, dst: Path, keep: set[str]) -> Path:
    shutil.copytree(src, dst)
    rows = [x for x in (dst / "samples.jsonl").read_text().splitlines() if json.loads(x)["method"] in keep]
    (dst / "samples.jsonl").write_text("\n".join(rows) + "\n")
    return dst


def test_cross_run_pairing_needs_identical_settings(tiny_runs, tmp_path):
    """A LazyLLM-only run borrows AR rows from another folder only under identical settings
    on the same device, and the report says so under the table; without a compatible AR it
    shows no speedup and says what differs; an incomplete run is flagged at the top."""
    from accbench.reports.runsets import load_runs

    src = tiny_runs[0]
    only = {keep: _split_by_method(src, tmp_path / keep, {keep}) for keep in ("ar", "lazyllm")}
    rs = load_runs([only["ar"], only["lazyllm"]])
    f = rs.frame
    assert f[f.method == "lazyllm"]["speedup"].notna().all()
    notes = rs.pairing_notes()
    assert any(f"speedups pair with AR rows of {only['ar']} (same settings, same device)" in n
               for n in notes.values()), notes
    info = next(iter(rs.pairing().values()))["lazyllm"]
    assert dict(info["other"]) == {str(only["ar"]): 6} and info["none"] == 0
    # another device: no pairing
    gpu = tmp_path / "gpu"
    shutil.copytree(only["ar"], gpu)
    cfg = json.loads((gpu / "config.json").read_text())
    cfg["device"] = "cuda"
    cfg["environment"]["gpus"] = ["NVIDIA H100 80GB HBM3"]
    (gpu / "config.json").write_text(json.dumps(cfg))
    _planted_copy(gpu, tmp_path / "gpu2", lambda r: {**r, "device": "cuda"})
    rs = load_runs([tmp_path / "gpu2", only["lazyllm"]])
    assert rs.frame[rs.frame.method == "lazyllm"]["speedup"].isna().all()
    assert any("differ in device cuda · NVIDIA H100 80GB HBM3 vs cpu" in n for n in rs.pairing_notes().values())
    # other settings: no pairing, and the note says which
    cfg = json.loads((only["ar"] / "config.json").read_text())
    cfg["settings"]["max_new_tokens"] = 99
    cfg["status"] = "running"
    (only["ar"] / "config.json").write_text(json.dumps(cfg))
    rs = load_runs([only["ar"], only["lazyllm"]])
    assert rs.frame[rs.frame.method == "lazyllm"]["speedup"].isna().all()
    notes = " ".join(rs.pairing_notes().values())
    assert "no AR row of the same settings and device" in notes and "max_new_tokens 99 vs 16" in notes, notes
    out = tmp_path / "rep"
    res = _invoke(["report", str(only["ar"]), str(only["lazyllm"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert md.split("\n\n")[1].startswith("WARNING: ") and "incomplete run" in md
    assert "no AR row of the same settings and device" in md and "max_new_tokens 99 vs 16" in md
    assert "<p class=\"warn\">WARNING: " in (out / "report.html").read_text()
    speed = next(v for k, v in _md_tables(md).items() if k.endswith("· speed"))
    lazy = next(r for r in speed if r["method"] == "lazyllm" and r["category"] == "all")
    assert lazy["speedup vs AR (median, 95% CI)"].startswith("no AR")


def test_a_folder_with_its_own_ar_never_pairs_elsewhere(tiny_runs, tmp_path):
    """Two folders with AR rows of identical settings: each method pairs with its own folder's
    AR; only a folder without AR rows borrows (from the first folder given)."""
    from accbench.reports.runsets import load_runs

    first = tmp_path / "first"
    shutil.copytree(tiny_runs[0], first)
    second = _planted_copy(tiny_runs[0], tmp_path / "second",
                           lambda r: {**r, "total_s": r["total_s"] * (2.0 if r["method"] == "ar" else 1.0)})
    lazy = _split_by_method(tiny_runs[0], tmp_path / "lazy", {"lazyllm"})
    rs = load_runs([first, second, lazy])
    by = {(r["run"], r["method"], r["sample_id"]): r for r in rs.rows}
    from accbench.reports.runsets import ar_index, ar_of

    idx = ar_index(rs.rows)
    for run in (first, second):
        for r in (x for x in rs.rows if x["run"] == str(run) and x["method"] == "pld"):
            assert ar_of(r, idx) is by[(str(run), "ar", r["sample_id"])]
    for r in (x for x in rs.rows if x["run"] == str(lazy)):
        assert ar_of(r, idx) is by[(str(first), "ar", r["sample_id"])]
    info = next(iter(rs.pairing().values()))
    assert info["pld"]["same"] == 12 and not info["pld"]["other"]
    assert dict(info["lazyllm"]["other"]) == {str(first): 6}


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
    assert calls[1] == [1, 2, 4] and len(calls) == 3 and not c["warnings"] and c["relative"]["4"] > 1

    monkeypatch.setattr(costs, "forward_cost", lambda model, ks, **kw: {k: (0.5e-3 if k == 4 else 1e-3) for k in ks})
    res = _invoke(["cost-curve", "--model", "tiny-random-llama", "--ks", "1,2,4", "--out", str(out)])
    assert res.exit_code == 0 and "warning:" in res.output
    assert json.loads(out.read_text())["warnings"]
    res = CliRunner().invoke(main, ["project", str(tiny_runs[0]), "--cost-curve", str(out)])
    assert res.exit_code == 2 and "cost(4)/cost(1) = 0.50 < 0.9" in res.output and "Traceback" not in res.output
