"""The decoding core: nothing in it (or in any method) imports the harness; one counting rule
for every drafter on the one speculative loop; typed options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from accbench.methods import get
from accbench.methods.core import OptionError, StopChecker

HARNESS = ["accbench.engine", "accbench.models", "accbench.suites", "accbench.training", "accbench.cli",
           "accbench.reports", "accbench.progress"]


def test_core_and_methods_import_without_the_harness():
    """Import every module under accbench.methods with the harness's modules blocked."""
    code = f"""
import importlib, pkgutil, sys
BLOCKED = {HARNESS!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError("blocked harness import: " + name)
sys.meta_path.insert(0, Block())
import accbench.methods as m
names = []
for info in pkgutil.walk_packages(m.__path__, m.__name__ + "."):
    importlib.import_module(info.name)
    names.append(info.name)
m.available()
print(len(names))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip().splitlines()[-1]) >= 12  # core modules + every method package


def test_blocking_works():
    """The check above can fail: importing the engine from a method module is caught."""
    code = ("import sys\nclass B:\n    def find_spec(self, n, p=None, t=None):\n"
            "        if n.startswith('accbench.engine'): raise ImportError(n)\n"
            "sys.meta_path.insert(0, B())\nimport accbench.engine.results\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode != 0


# --------------------------------------------------------------------------------------
# one counting rule
# --------------------------------------------------------------------------------------


def _on_path(parents) -> list[int]:
    """Tree nodes of the first-child path from the root (node indices, root excluded)."""
    path, cur = [], 0
    for i in range(1, len(parents)):
        if parents[i] == cur:
            path.append(i)
            cur = i
    return path


class Spy:
    """Wraps a drafter: makes its first-child path draft the reference continuation (every
    ``corrupt``-th position wrong) and records every step's proposal depth and outcome."""

    def __init__(self, drafter, ref, corrupt):
        self.d, self.ref, self.corrupt = drafter, ref, corrupt
        self.steps: list[tuple[int, int, int, int]] = []  # (budget, depth, accepted, committed)
        self._last = (0, 0)

    def __getattr__(self, name):
        return getattr(self.d, name)

    def start(self, prompt, first, info):
        self.d.start(prompt, first, info)
        pool = getattr(self.d, "pool", None)
        if pool is not None:  # lookahead: always offer one candidate n-gram (the spy fills it in)
            n = self.d.dec.N - 1
            real_get = pool.get
            pool.get = lambda key: real_get(key) or [(3,) * n]
        index = getattr(self.d, "index", None)
        if index is not None:  # pld: always draft (the spy fills the draft in)
            real_draft = index.draft
            index.draft = lambda seq, k: real_draft(seq, k) or [3] * k

    def propose(self, tokens, budget):
        p = self.d.propose(tokens, budget)
        self._last = (budget, p.depth if p is not None else 0)
        if p is None:
            return p
        nodes = list(p.nodes) if p.nodes is not None else list(range(len(p.parents)))
        for depth, node in enumerate(_on_path(p.parents), start=1):
            pos = len(tokens) + depth - 1
            tok = self.ref[pos] if pos < len(self.ref) else 3
            if self.corrupt and pos % self.corrupt == 0:
                tok = (tok + 1) % 200 + 3
            row = nodes[node] - 1  # block row after the root
            if isinstance(p.tokens, torch.Tensor):
                p.tokens[row] = tok
            else:
                p.tokens[row] = tok
        return p

    def observe(self, info):
        if not info.prefill:
            self.steps.append((*self._last, info.accepted, info.committed))
        self.d.observe(info)


DRAFTERS = ["pld", "lookahead", "mtp", "medusa1"]
#: tokens a step commits when every draft is right (drafts + bonus) with the decoders below
FULL_STEP = {"pld": 6, "lookahead": 5, "mtp": 5, "medusa1": 5}


def _decoder(method, lm, tmp_path):
    if method == "pld":
        return get("pld")(lm.model, lm.tokenizer, num_draft=5)
    if method == "lookahead":
        return get("lookahead")(lm.model, lm.tokenizer, W=3, N=5, G=3)
    if method == "mtp":
        return get("mtp")(lm.model, lm.tokenizer, heads="random", n=5)  # 4 drafts: a stop can land inside
    from test_medusa import write_artifact

    return get("medusa1")(lm.model, lm.tokenizer, heads=str(write_artifact(tmp_path / "h", lm.model)), tree="chain")


def _spied_run(dec, ids, budget, stopper, ref, corrupt, monkeypatch):
    module = sys.modules[type(dec).decode.__module__]
    real = module.speculative_decode
    spies = []

    def wrapped(model, drafter, *a, **kw):
        spies.append(Spy(drafter, ref, corrupt))
        return (yield from real(model, spies[-1], *a, **kw))

    monkeypatch.setattr(module, "speculative_decode", wrapped)
    rec = dec.generate(ids, budget, stopper)
    monkeypatch.setattr(module, "speculative_decode", real)
    return rec, spies[0].steps


def _expected_counts(steps):
    depth = max((s[1] for s in steps), default=0)
    drafted = [sum(1 for s in steps if s[1] > d) for d in range(depth)]
    accepted = [sum(1 for s in steps if min(s[2], s[3]) > d) for d in range(depth)]
    reached = [sum(1 for s in steps if s[1] > d and min(s[2], s[3]) >= d) for d in range(depth)]
    return drafted, accepted, reached


@pytest.mark.parametrize("method", DRAFTERS)
def test_one_counting_rule_at_a_stop_inside_an_accepted_run(method, tiny_llama, tmp_path, monkeypatch):
    lm = tiny_llama
    ids = [5, 17, 33, 17, 33, 17, 90, 44, 12, 9, 17, 33]
    ar = get("ar")(lm.model, lm.tokenizer)
    ref = ar.generate(ids, 48, StopChecker(lm.tokenizer, [], [])).tokens
    # a token's first occurrence that falls on a draft, not on a bonus token, of a full step
    stop_at = next(i for i in range(8, 40) if ref[i] not in ref[:i] and i % FULL_STEP[method])
    stopper = StopChecker(lm.tokenizer, [], [ref[stop_at]])
    want = ar.generate(ids, 48, stopper)
    dec = _decoder(method, lm, tmp_path)
    rec, steps = _spied_run(dec, ids, 48, stopper, ref, 0, monkeypatch)
    assert rec.tokens == want.tokens and rec.finish_reason == "eos"
    budget, depth, a, n_c = steps[-1]
    assert a >= n_c, "the stop fell inside an accepted run (drafts after it were cut)"
    assert (rec.drafted, rec.accepted, rec.reached) == _expected_counts(steps)
    assert sum(rec.accepted) == sum(min(s[2], s[3]) for s in steps)


@pytest.mark.parametrize("method", DRAFTERS)
def test_one_counting_rule_when_the_budget_ends_inside_a_draft(method, tiny_llama, tmp_path, monkeypatch):
    lm = tiny_llama
    ids = [5, 17, 33, 17, 33, 17, 90, 44, 12, 9, 17, 33]
    nostop = StopChecker(lm.tokenizer, [], [])
    ref = get("ar")(lm.model, lm.tokenizer).generate(ids, 60, nostop).tokens
    dec = _decoder(method, lm, tmp_path)
    for budget in (13, 14, 15):  # somewhere inside a multi-token draft for every drafter
        rec, steps = _spied_run(dec, ids, budget, nostop, ref, 5, monkeypatch)
        assert rec.tokens == ref[:budget]
        assert all(depth <= b for b, depth, _, _ in steps), "no proposal deeper than the remaining budget"
        assert all(n_c <= b + 1 for b, _, _, n_c in steps)
        assert (rec.drafted, rec.accepted, rec.reached) == _expected_counts(steps)
        assert sum(rec.tokens_per_step) == budget
        _check_steps_and_shape(rec, method)


def _check_steps_and_shape(rec, method):
    """One timestamp per committed step, from the first token on; the drafter's shape."""
    times = rec.step_times_s
    assert len(times) == len(rec.tokens_per_step) and times[0] == rec.ttft_s
    assert all(b >= a for a, b in zip(times, times[1:])) and times[-1] <= rec.total_s
    shape = rec.draft_shape
    assert shape["kind"] in ("chain", "tree") and shape["depth"] >= 1 and shape["nodes"] >= shape["depth"]
    assert max(len(rec.drafted), 1) <= shape["depth"]


def test_step_times_of_the_plain_loops(tiny_llama):
    lm = tiny_llama
    for name in ("ar", "lazyllm"):
        rec = get(name)(lm.model, lm.tokenizer).generate([5, 17, 33, 17, 90, 44, 12, 9] * 4, 12,
                                                        StopChecker(lm.tokenizer, [], []))
        assert len(rec.step_times_s) == rec.n_new == 12 and rec.step_times_s[0] == rec.ttft_s
        assert all(b >= a for a, b in zip(rec.step_times_s, rec.step_times_s[1:]))
        assert rec.step_times_s[-1] <= rec.total_s and rec.draft_shape is None


# --------------------------------------------------------------------------------------
# typed options
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("opts,message", [
    ({"num_draft": "abc"}, "expected int"), ({"num_draft": -5}, ">= 1"), ({"nosuch": 1}, "valid: num_draft"),
    ({"min_ngram": 4, "max_ngram": 2}, "exceeds"),
])
def test_bad_options_are_one_clear_error(opts, message, tiny_llama):
    with pytest.raises(OptionError, match=message):
        get("pld")(tiny_llama.model, tiny_llama.tokenizer, **opts)


def test_string_options_are_typed(tiny_llama):
    dec = get("pld")(tiny_llama.model, tiny_llama.tokenizer, num_draft="4", max_ngram="2")
    assert dec.options.num_draft == 4 and dec.options.max_ngram == 2 and json.dumps(dec.opts)
