"""`make demo` runs: its own two commands (run + report), here on tiny-random-llama with one
sample per suite, so the test stays fast and offline."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    bin_dir = Path(sys.executable).parent
    # -o setup: the venv this test runs in is the installed one; do not reinstall it
    cmd = ["make", "-s", "-o", "setup", "-o", ".venv/.installed", "demo", f"BIN={bin_dir}",
           "DEMO_MODEL=tiny-random-llama", "DEMO_LIMIT=1", "DEMO_TOKENS=8", f"DEMO_OUT={out}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "report" / "report.md").is_file()
    assert (out / "report" / "report.html").is_file()
    last = res.stdout.strip().splitlines()[-1]
    assert last == f"demo report: {out}/report/report.md and {out}/report/report.html"
    assert "ar added as the baseline" not in res.stdout  # ar is in DEMO_METHODS
    for m in ("pld", "lookahead"):
        assert m in res.stdout  # the comparison table
