"""The verdict cannot be faked: wrong MBPP solutions that exit 0 by tricks score 0, the answer key
is out of reach, and honest programs score exactly as they did before the verdict channel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from accbench.suites.mbpp import MBPPSuite, sandbox_source
from accbench.suites.sandbox import run_many

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-focused")

WRONG = "def remove_Occ(s, ch):\n    return s\n"  # task 11, wrong on every test
FALSE_PASSES = {
    "os._exit before the asserts": "import os\nos._exit(0)\n",
    "atexit hook": "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "non-daemon thread": "import os, threading, time\n"
                         "threading.Thread(target=lambda: (time.sleep(0.2), os._exit(0))).start()\n",
    "SIGALRM handler": "import os, signal\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
                       "signal.setitimer(signal.ITIMER_REAL, 0.05)\n",
    "settrace hook": "import os, sys\n"
                     "sys.settrace(lambda f, e, a: os._exit(0) if e == 'exception' else None)\n",
    "patched TracebackException": "import os, traceback\n"
                                  "class T:\n    def __init__(self, *a, **k):\n        os._exit(0)\n"
                                  "traceback.TracebackException = T\n",
    "rebound sys.exit": "import sys\nsys.exit = lambda *a, **k: None\nraise SystemExit(0)\n",
    "forged verdict event": "import sys\nsys.audit('accbench.verdict')\n",
}


@pytest.fixture(scope="module")
def suite(data_dir):
    return MBPPSuite(task_ids="11", data_dir=data_dir)


def test_reference_passes_and_wrong_solution_fails(suite):
    sample = next(suite.samples())
    assert suite.score(sample, suite.docs[0]["code"]) == {"pass@1": 1.0}
    assert suite.score(sample, WRONG) == {"pass@1": 0.0}


@pytest.mark.parametrize("name", sorted(FALSE_PASSES))
def test_tricks_that_exit_zero_score_zero(suite, name):
    sample = next(suite.samples())
    assert suite.score(sample, WRONG + FALSE_PASSES[name]) == {"pass@1": 0.0}


def test_the_answer_key_is_out_of_reach(suite, data_dir):
    key = data_dir / "mbpp" / "mbpp.jsonl"
    assert key.exists()
    cheat = (f"import json\nfor l in open({str(key)!r}):\n    d = json.loads(l)\n"
             "    if d['task_id'] == 11:\n        exec(d['code'])\n")
    assert suite.score(next(suite.samples()), cheat) == {"pass@1": 0.0}


def test_honest_programs_score_as_before(data_dir):
    """500 reference solutions and 140 smollm2-135m outputs, problem by problem, against the
    statuses recorded with the sandbox before the verdict channel (tests/golden)."""
    gold = json.loads((Path(__file__).parent / "golden" / "mbpp_sandbox_verdicts.json").read_text())
    suite = MBPPSuite(split="test", data_dir=data_dir)
    samples = {s.id: s for s in suite.samples()}
    code = {str(d["task_id"]): d["code"] for d in suite.docs}
    items = [(f"ref/{t}", samples[t], code[t], st) for t, st in gold["references"].items()]
    items += [(o["run"], samples[o["task_id"]], o["text"], o["status"]) for o in gold["outputs"]]
    res = run_many([sandbox_source(suite.program(s, text)) for _, s, text, _ in items], suite._limits(), workers=2)
    differ = {k: (was, r.status) for (k, _, _, was), r in zip(items, res) if r.status != was and k != "ref/123"}
    assert differ == {}
    assert sum(r.passed for r in res) >= 498 + 6
