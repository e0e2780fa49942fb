"""Suites: data lookup, MBPP in lm-eval's exact format and scoring, ROUGE, prompts files.

Real data is read from ``ACCBENCH_DATA_DIR`` or ``../shared/data`` (relative to the project
root); it is never copied into the repository."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
from accbench import suites
from accbench.errors import AccbenchError
from accbench.suites import data as sdata
from accbench.suites import mbpp as smbpp
from accbench.suites.base import Sample

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ACCBENCH_DATA_DIR") or ROOT.parent / "shared" / "data")
HAVE_DATA = (DATA / sdata.MBPP).is_file() and (DATA / sdata.CNNDM).is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"evaluation data not found in {DATA}")


@pytest.fixture
def data_env(monkeypatch):
    monkeypatch.setenv(sdata.ENV_VAR, str(DATA))
    return DATA


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(sdata.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def mbpp_suite():
    assert HAVE_DATA, f"evaluation data not found in {DATA} (set ACCBENCH_DATA_DIR)"
    return suites.build("mbpp", data_dir=str(DATA))


@pytest.fixture(scope="module")
def mbpp_records():
    assert HAVE_DATA, f"evaluation data not found in {DATA} (set ACCBENCH_DATA_DIR)"
    return {r["task_id"]: r for r in sdata.read_jsonl(DATA / sdata.MBPP)}


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cnndm_line(i: int) -> str:
    return json.dumps(
        {
            "article": f"###\nArticle: story number {i}\n\nSummarize the above article in 3 sentences.",
            "summary_gt": f"story {i} .",
            "max_tokens": 128,
            "stop": ["###"],
        }
    )


# ---------------------------------------------------------------------------------------
# registry


def test_registry_builtins_and_errors():
    avail = suites.available()
    assert {"mbpp", "cnndm", "summarization", "prompts"} <= set(avail)
    assert suites.get("mbpp").metrics == ["pass@1"]
    assert suites.get("cnndm").metrics[0] == "rougeL"
    with pytest.raises(AccbenchError, match="unknown suite 'nope'.*mbpp"):
        suites.get("nope")
    assert suites.takes_data_file("prompts") and suites.takes_data_file("summarization")
    assert not suites.takes_data_file("mbpp") and not suites.takes_data_file("cnndm")


def test_register_third_party_suite():
    @suites.register
    class Tiny(suites.Suite):
        name = "tiny-test-suite"

        def __init__(self, *, words: str = "a b"):
            self.words = words.split()

        def samples(self, limit=None):
            for i, w in enumerate(self.words[:limit]):
                yield Sample(id=str(i), prompt=w)

    try:
        s = suites.build("tiny-test-suite", data_dir="/nowhere", data_file="x.jsonl", words="x y z")
        assert [x.prompt for x in s.samples(2)] == ["x", "y"]
        with pytest.raises(AccbenchError, match="no option 'colour'.*words"):
            suites.build("tiny-test-suite", colour="red")
        assert suites.readiness("tiny-test-suite") == "ready"
    finally:
        suites._REGISTRY.pop("tiny-test-suite")


@needs_data
def test_readiness(tmp_path, monkeypatch):
    monkeypatch.delenv(sdata.ENV_VAR, raising=False)
    assert suites.readiness("mbpp", str(DATA)) == f"ready ({DATA / sdata.MBPP})"
    assert suites.readiness("cnndm", str(DATA)).startswith("ready (")
    assert suites.readiness("mbpp", str(tmp_path)) == f"needs data: put mbpp/mbpp.jsonl in {tmp_path} (from --data-dir)"
    assert "does not exist" in suites.readiness("mbpp", str(tmp_path / "missing"))
    assert suites.readiness("prompts") == "needs --data FILE"
    assert suites.readiness("summarization") == "needs --data FILE"
    f = _write(tmp_path / "p.jsonl", ['{"prompt": "hi"}'])
    assert suites.readiness("prompts", data_file=str(f)) == f"ready ({f})"
    # no data dir configured: the hub (datasets is installed here) or a hint
    expected = "needs network (hub)" if sdata._hub_available() else "needs data"
    assert suites.readiness("mbpp").startswith(expected)
    monkeypatch.setenv(sdata.ENV_VAR, str(DATA))
    assert suites.readiness("mbpp") == f"ready ({DATA / sdata.MBPP})"


# ---------------------------------------------------------------------------------------
# data lookup


def test_malformed_jsonl_names_file_and_line(tmp_path):
    f = _write(tmp_path / "bad.jsonl", ['{"prompt": "a"}', "", '{"prompt": "b"', '{"prompt": "c"}'])
    with pytest.raises(AccbenchError) as ei:
        sdata.read_jsonl(f)
    assert f"{f}:3:" in ei.value.message
    assert "\n" not in ei.value.message
    g = _write(tmp_path / "list.jsonl", ['{"prompt": "a"}', "[1, 2]"])
    with pytest.raises(AccbenchError, match=r"list\.jsonl:2: expected a JSON object"):
        sdata.read_jsonl(g)
    # through a suite and a data dir
    _write(tmp_path / "dd" / sdata.MBPP, ['{"task_id": 1', "{}"])
    with pytest.raises(AccbenchError, match=r"mbpp[/\\]mbpp\.jsonl:1: malformed JSON"):
        suites.build("mbpp", data_dir=str(tmp_path / "dd"))


def test_lookup_order_explicit_dir_beats_env(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a / sdata.CNNDM, [_cnndm_line(i) for i in range(3)])
    _write(b / sdata.CNNDM, [_cnndm_line(i) for i in range(5)])
    monkeypatch.setenv(sdata.ENV_VAR, str(b))
    assert len(suites.build("cnndm", data_dir=str(a))) == 3  # explicit dir wins
    assert len(suites.build("cnndm")) == 5  # env next
    assert sdata.local_path(sdata.CNNDM, str(a)) == a / sdata.CNNDM
    # a configured dir is authoritative: missing file there is an error, no fallback
    c = tmp_path / "c"
    c.mkdir()
    with pytest.raises(AccbenchError) as ei:
        suites.build("cnndm", data_dir=str(c))
    msg = ei.value.message
    assert "summarization/cnn_dailymail_0shot.jsonl" in msg and str(c) in msg


def test_missing_data_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(sdata.ENV_VAR, str(tmp_path / "nonexistent"))
    with pytest.raises(AccbenchError, match="does not exist.*mbpp/mbpp.jsonl"):
        suites.build("mbpp")
    monkeypatch.delenv(sdata.ENV_VAR)

    # no dir configured: the hub is tried; its failure becomes one clear line
    def boom():
        raise ConnectionError("no route to host\nmore detail")

    monkeypatch.setattr(sdata, "_hub_available", lambda: True)
    monkeypatch.setitem(sdata.HUB_LOADERS, sdata.MBPP, ("test/mbpp", boom))
    with pytest.raises(AccbenchError) as ei:
        suites.build("mbpp")
    msg = ei.value.message
    assert "mbpp/mbpp.jsonl" in msg and "ACCBENCH_DATA_DIR" in msg and "--data-dir" in msg
    assert "ConnectionError: no route to host" in msg and "\n" not in msg

    with pytest.raises(AccbenchError, match="needs --data FILE"):
        suites.build("prompts")
    with pytest.raises(AccbenchError, match="needs --data FILE"):
        suites.build("summarization")
    with pytest.raises(AccbenchError, match="--data nothere.jsonl: file not found"):
        suites.build("prompts", data_file="nothere.jsonl")


@needs_data
def test_hub_records_feed_the_same_suite(monkeypatch, mbpp_records):
    """The hub path yields records in the file's format (the real download needs network)."""
    monkeypatch.delenv(sdata.ENV_VAR, raising=False)
    recs = [mbpp_records[t] for t in sorted(mbpp_records)]
    monkeypatch.setattr(sdata, "_hub_available", lambda: True)
    monkeypatch.setitem(sdata.HUB_LOADERS, sdata.MBPP, ("test/mbpp", lambda: recs))
    s = suites.build("mbpp")
    assert s.source == "hub:test/mbpp" and len(s) == 500


# ---------------------------------------------------------------------------------------
# MBPP


TASK11_TEXT = (
    "You are an expert Python programmer, and here is your task: Write a python function to remove "
    "first and last occurrence of a given character from the string. Your code should pass these "
    'tests:\n\nassert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
    'assert remove_Occ("PHP","P") == "H"\n[BEGIN]\n'
)
FEWSHOT_BLOCK = (
    "You are an expert Python programmer, and here is your task: Write a function to find the similar "
    "elements from the given two tuple lists. Your code should pass these tests:\n\n"
    "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
    "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
    "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n[BEGIN]\n"
    "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
    "  return (res) \n[DONE]\n\n"
    "You are an expert Python programmer, and here is your task: Write a python function to identify "
    "non-prime numbers. Your code should pass these tests:\n\nassert is_not_prime(2) == False\n"
    "assert is_not_prime(10) == True\nassert is_not_prime(35) == True\n[BEGIN]\n"
    "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n"
    "        if n % i == 0:\r\n            result = True\r\n    return result\n[DONE]\n\n"
    "You are an expert Python programmer, and here is your task: Write a function to find the largest "
    "integers from a given list of numbers using heap queue algorithm. Your code should pass these "
    "tests:\n\nassert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] \n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]\n[BEGIN]\n"
    "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n"
    "  return largest_nums\n[DONE]\n\n"
)


def test_mbpp_prompt_exact(mbpp_suite):
    first = next(mbpp_suite.samples())
    assert first.id == "11"
    assert first.prompt == FEWSHOT_BLOCK + TASK11_TEXT
    assert first.reference == (
        'assert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"'
    )
    assert mbpp_suite.stop == ["[DONE]"] and mbpp_suite.max_new_tokens == 256
    # every test prompt shares the few-shot block
    assert all(s.prompt.startswith(FEWSHOT_BLOCK) for s in mbpp_suite.samples())


def test_mbpp_splits(data_env):
    sizes = {}
    for split in ("test", "validation", "train", "prompt"):
        ids = [int(s.id) for s in suites.build("mbpp", split=split).samples()]
        sizes[split] = len(ids)
        lo, hi = smbpp.SPLITS[split]
        assert ids == list(range(lo, hi + 1))
    assert sizes == {"test": 500, "validation": 90, "train": 374, "prompt": 10}
    s = suites.build("mbpp", task_ids="11-13,20")
    assert [x.id for x in s.samples()] == ["11", "12", "13", "20"]
    assert [x.id for x in s.samples(limit=2)] == ["11", "12"]
    assert [x.id for x in suites.build("mbpp", task_ids=[15]).samples()] == ["15"]
    with pytest.raises(AccbenchError, match="unknown split"):
        suites.build("mbpp", split="dev")
    with pytest.raises(AccbenchError, match="unknown task_ids"):
        suites.build("mbpp", task_ids="9999")


def _lm_eval_mbpp_dir() -> Path:
    import lm_eval

    d = Path(lm_eval.__file__).parent / "tasks" / "mbpp"
    assert (d / "mbpp.yaml").is_file(), "lm-eval's mbpp task is missing"
    return d


def _lm_eval_fewshot_samples(d: Path) -> list[dict]:
    """lm-eval's ``list_fewshot_samples`` without importing its utils module (which loads
    HF evaluate's code_eval from the hub at import time)."""
    tree = ast.parse((d / "utils.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    ns: dict = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(d / "utils.py"), "exec"), ns)
    return ns["list_fewshot_samples"]()


@needs_data
def test_mbpp_fewshot_docs_equal_lm_eval(mbpp_records):
    for shot in _lm_eval_fewshot_samples(_lm_eval_mbpp_dir()):
        rec = mbpp_records[shot["task_id"]]
        for k in ("text", "code", "test_list"):
            assert rec[k] == shot[k], (shot["task_id"], k)


@needs_data
def test_mbpp_prompts_byte_equal_to_lm_eval(mbpp_suite, mbpp_records, monkeypatch):
    """Build lm-eval's own ConfigurableTask from its mbpp.yaml, fed with the same docs
    offline (custom_dataset; the hub-loaded metric swapped out), and compare every prompt,
    the reference string and the generation settings."""
    import functools

    d = _lm_eval_mbpp_dir()
    yaml = pytest.importorskip("yaml")
    datasets = pytest.importorskip("datasets")
    import lm_eval.utils
    from lm_eval.api.task import ConfigurableTask

    # lm-eval compiles each jinja template on every render (~4,000 compiles here); caching
    # the compiled templates changes no output and cuts this test from ~11 s to ~1 s.
    env = lm_eval.utils.env
    monkeypatch.setattr(env, "from_string", functools.lru_cache(maxsize=None)(env.from_string))

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("!function", loader.construct_scalar(node)))
    cfg = yaml.load((d / "mbpp.yaml").read_text(), Loader=Loader)
    test_docs = [mbpp_records[t] for t in range(11, 511)]
    cfg["metric_list"] = []
    cfg["fewshot_config"]["samples"] = lambda: _lm_eval_fewshot_samples(d)
    cfg["custom_dataset"] = lambda **kw: datasets.DatasetDict({"test": datasets.Dataset.from_list(test_docs)})
    task = ConfigurableTask(config=cfg)

    ours = list(mbpp_suite.samples())
    theirs = list(task.test_docs())
    assert len(ours) == len(theirs) == 500
    for s, doc in zip(ours, theirs):
        assert s.id == str(doc["task_id"])
        assert s.prompt == task.fewshot_context(doc, cfg["num_fewshot"])
        assert s.reference == task.doc_to_target(doc)
    assert mbpp_suite.stop == cfg["generation_kwargs"]["until"]
    assert cfg["generation_kwargs"]["do_sample"] is False


def test_mbpp_program_matches_code_eval():
    # HF code_eval: test_program = candidate + "\n" + test_case; lm-eval: test_case = asserts joined by "\n"
    tests = ["assert f(1) == 2", "assert f(2) == 3", "assert f(3) == 4"]
    gen = "def f(x):\n    return x + 1\n"
    assert smbpp.build_program(gen, tests) == gen + "\n" + "\n".join(tests)
    assert smbpp.build_program(gen + "[DONE]\njunk", tests) == gen + "\n" + "\n".join(tests)
    assert smbpp.build_program(gen, tests, "y = 1") == gen + "\ny = 1\n" + "\n".join(tests)


def test_mbpp_sandbox_source_runs_like_code_eval():
    """code_eval does exec(program, {}) and fails on any BaseException: sys.exit(0) before
    the asserts fails (no verdict), and a __main__ block does not run."""
    from accbench.suites.sandbox import run_program

    tests = ["assert f(1) == 2", "assert f(2) == 3", "assert f(3) == 4"]

    def rc(gen: str) -> int:
        return 0 if run_program(smbpp.sandbox_source(smbpp.build_program(gen, tests))).passed else 1

    assert rc("def f(x):\n    return x + 1") == 0
    assert rc("def f(x):\n    return x\nimport sys\nsys.exit(0)") != 0
    assert rc("def f(x):\n    return x + 1\nif __name__ == '__main__':\n    raise ValueError") == 0
    assert rc("print('quotes \\' \\\" and \\\\ survive')\ndef f(x):\n    return x + 1") == 0


def _sandbox():
    import accbench.suites.sandbox  # noqa: F401


def test_mbpp_reference_solutions_pass_and_wrong_fail(mbpp_suite, mbpp_records):
    _sandbox()
    by_id = {s.id: s for s in mbpp_suite.samples()}
    picks = ["11", "12", "100", "510"]
    for tid in picks[:2]:
        assert mbpp_suite.score(by_id[tid], mbpp_records[int(tid)]["code"] + "\n[DONE]") == {"pass@1": 1.0}
    assert mbpp_suite.score(by_id["11"], "def remove_Occ(s, ch):\n    return s\n") == {"pass@1": 0.0}
    assert mbpp_suite.score(by_id["11"], "this is not python") == {"pass@1": 0.0}
    # exiting before the asserts fails, as in code_eval (the bare sandbox would pass it)
    exits = "def remove_Occ(s, ch):\n    return s\nimport sys\nsys.exit(0)\n"
    assert mbpp_suite.score(by_id["11"], exits) == {"pass@1": 0.0}
    pairs = [(by_id[t], mbpp_records[int(t)]["code"]) for t in picks]
    pairs.append((by_id["12"], mbpp_records[11]["code"]))  # the wrong task's solution
    assert [r["pass@1"] for r in mbpp_suite.score_many(pairs)] == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_mbpp_test_setup_code(data_env, mbpp_records):
    """Task 367 is the one test task with setup code. lm-eval ignores it, so the reference
    fails there (default, equal to lm-eval); with test_setup_code=True it passes."""
    _sandbox()
    code = mbpp_records[367]["code"]
    plain = suites.build("mbpp", task_ids=[367])
    (s,) = list(plain.samples())
    assert s.meta["test_setup_code"].startswith("root = Node(1)")
    assert plain.score(s, code) == {"pass@1": 0.0}
    with_setup = suites.build("mbpp", task_ids=[367], test_setup_code=True)
    assert with_setup.score(s, code) == {"pass@1": 1.0}


# ---------------------------------------------------------------------------------------
# summarization


def test_rouge_hand_computed():
    from accbench.suites.summarization import rouge

    r = rouge("the cat sat on the mat", "the cat sat")
    # unigrams: P = 3/3, R = 3/6 -> F = 2/3; bigrams: P = 2/2, R = 2/5 -> F = 4/7; LCS = 3 -> 2/3
    assert r["rouge1"] == pytest.approx(200 / 3)
    assert r["rouge2"] == pytest.approx(400 / 7)
    assert r["rougeL"] == pytest.approx(200 / 3)
    assert rouge("cats running", "cat run") == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    assert rouge("a b", "") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


@needs_data
def test_cnndm_suite_and_rouge_against_rouge_score(data_env):
    from rouge_score import rouge_scorer

    s = suites.build("cnndm")
    assert len(s) == 500 and s.stop == ["###"] and s.max_new_tokens == 128
    assert s.metrics == ["rougeL", "rouge1", "rouge2"]
    items = list(s.samples(limit=3))
    assert [x.id for x in items] == ["0", "1", "2"]
    assert items[0].prompt.startswith("###\nArticle: (CNN)The Palestinian Authority")
    assert items[0].prompt.endswith("\n\nSummarize the above article in 3 sentences.")
    ref = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for i, x in enumerate(items):
        # a plausible "output": the article's first sentences (lead-3 style)
        out = " ".join(x.prompt.split("Article: ", 1)[1].split(". ")[: 2 + i]) + "."
        expect = ref.score(x.reference, out)
        got = s.score(x, out)
        assert got == pytest.approx({k: 100 * v.fmeasure for k, v in expect.items()})
        assert 0 < got["rouge1"] < 100
        assert s.score(x, out + "\n###\nArticle: more") == got  # cut at the stop string
    assert s.score(items[0], items[0].reference)["rougeL"] == pytest.approx(100.0)
    assert s.score_many([(items[0], items[0].reference)])[0]["rouge1"] == pytest.approx(100.0)

    train = suites.build("cnndm", split="train")
    ids = [x.id for x in train.samples()]
    assert len(ids) == 500 and ids[0] == "500" and ids[-1] == "999"
    with pytest.raises(AccbenchError, match="unknown split"):
        suites.build("cnndm", split="test")


@needs_data
def test_generic_summarization_on_a_file(tmp_path, no_env):
    s = suites.build("summarization", data_file=str(DATA / sdata.CNNDM))
    assert len(s) == 1000 and s.stop == ["###"]
    f = _write(tmp_path / "xsum.jsonl", [_cnndm_line(i) for i in range(4)])
    s = suites.build("summarization", data_file=str(f), split="eval")
    assert [x.id for x in s.samples()] == ["0", "1", "2", "3"]
    with pytest.raises(AccbenchError, match="no items in split 'train'"):
        suites.build("summarization", data_file=str(f), split="train")
    bad = _write(tmp_path / "bad.jsonl", [_cnndm_line(0), '{"article": "x"}'])
    with pytest.raises(AccbenchError, match=r"bad\.jsonl:2: expected string fields"):
        suites.build("summarization", data_file=str(bad))
    # --data relative to the data dir
    s = suites.build("summarization", data_dir=str(tmp_path), data_file="xsum.jsonl")
    assert len(s) == 4


# ---------------------------------------------------------------------------------------
# prompts


def test_prompts_suite_both_formats(tmp_path):
    f = _write(
        tmp_path / "mixed.jsonl",
        [
            '{"prompt": "Tell me a story."}',
            "",
            '{"question_id": 81, "category": "writing", "turns": ["Compose a blog post.", "Rewrite it."]}',
            '{"id": "x7", "prompt": "Why?"}',
        ],
    )
    s = suites.build("prompts", data_file=str(f), data_dir="/unused")
    got = [(x.id, x.prompt, x.reference) for x in s.samples()]
    assert got == [("1", "Tell me a story.", None), ("81", "Compose a blog post.", None), ("x7", "Why?", None)]
    assert list(s.samples())[1].meta["category"] == "writing"
    assert s.stop == [] and s.max_new_tokens == 128 and s.metrics == []
    assert s.score(next(s.samples()), "anything") == {}
    assert len(list(s.samples(limit=1))) == 1

    bad = _write(tmp_path / "bad.jsonl", ['{"prompt": "a"}', '{"text": "b"}'])
    with pytest.raises(AccbenchError, match=r"bad\.jsonl:2: expected a string 'prompt'"):
        suites.build("prompts", data_file=str(bad))
    dup = _write(tmp_path / "dup.jsonl", ['{"id": 1, "prompt": "a"}', '{"id": "1", "prompt": "b"}'])
    with pytest.raises(AccbenchError, match="duplicate id '1'"):
        suites.build("prompts", data_file=str(dup))


def test_data_file_goes_only_to_suites_that_take_it(tmp_path, data_env):
    """One --data for a sweep over mbpp,prompts: mbpp ignores it."""
    assert HAVE_DATA, f"evaluation data not found in {DATA} (set ACCBENCH_DATA_DIR)"
    f = _write(tmp_path / "p.jsonl", ['{"prompt": "hi"}'])
    assert len(suites.build("mbpp", data_file=str(f))) == 500
    assert len(suites.build("prompts", data_file=str(f))) == 1
