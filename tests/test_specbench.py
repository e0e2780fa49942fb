"""The `specbench` suite: Spec-Bench's question format, both turns, one summary line per task."""

import json
from pathlib import Path

import pytest
from accbench import suites
from accbench.cli import main
from accbench.engine.results import ResultsDir
from accbench.errors import AccbenchError
from accbench.reports.summary import summarize
from click.testing import CliRunner

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it about snow."]},
    {"question_id": 91, "category": "roleplay", "turns": ["Pretend you are a pirate. Greet me.",
                                                          "Say goodbye the same way."]},
    {"question_id": 161, "category": "translation", "turns": ["Translate 'good morning' into French."]},
    {"question_id": 241, "category": "qa", "turns": ["What is the capital of Italy?"]},
    {"question_id": 321, "category": "math_reasoning", "turns": ["What is 12 times 7? Think step by step."]},
]


def _file(tmp_path: Path, items=QUESTIONS) -> Path:
    p = tmp_path / "question.jsonl"
    p.write_text("".join(json.dumps(q) + "\n" for q in items))
    return p


def _run(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_reads_spec_bench_format(tmp_path):
    s = suites.build("specbench", data_file=str(_file(tmp_path)))
    got = [(x.id, x.meta["category"], x.meta["subcategory"], x.meta["turn"]) for x in s.samples()]
    assert got == [("81/t1", "mt_bench", "writing", 1), ("81/t2", "mt_bench", "writing", 2),
                   ("91/t1", "mt_bench", "roleplay", 1), ("91/t2", "mt_bench", "roleplay", 2),
                   ("161/t1", "translation", None, 1), ("241/t1", "qa", None, 1),
                   ("321/t1", "math_reasoning", None, 1)]
    assert [x.id for x in s.samples(limit=2)] == ["81/t1", "81/t2", "91/t1", "91/t2"]  # limit: questions


@pytest.mark.parametrize("line,message", [
    ({"question_id": 1, "category": "qa", "turns": []}, "non-empty list of strings"),
    ({"question_id": 1, "turns": ["x"]}, "string 'category'"),
])
def test_bad_lines_are_one_clear_error(tmp_path, line, message):
    with pytest.raises(AccbenchError, match=message):
        suites.build("specbench", data_file=str(_file(tmp_path, [line])))


def _rows(out):
    return {(r["sample_id"], r["method"]): r for r in ResultsDir(out).load_rows()}


def test_both_turns_per_task_rows_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", "tiny-random-llama", "--methods", "ar,pld", "--suite", "specbench",
            "--data", str(_file(tmp_path)), "--max-new-tokens", "10", "--out", str(out)]
    res = _run(args)
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    assert len(rows) == 7 * 2
    for (sid, _method), r in rows.items():
        assert r["turn"] == int(sid.split("/t")[1]) and r["category"] in ("mt_bench", "translation", "qa",
                                                                           "math_reasoning")
        assert r["new_token_ids"] == rows[(sid, "ar")]["new_token_ids"]  # lossless on both turns
        assert r["prompt_tokens"] == rows[(sid, "ar")]["prompt_tokens"]  # one prompt for every method
    # turn 2 is the conversation: turn 1, the baseline's answer to it, turn 2
    from accbench.models import load_model

    tok = load_model("tiny-random-llama").tokenizer
    for q in ("81", "91"):
        t1, t2 = rows[(f"{q}/t1", "ar")], rows[(f"{q}/t2", "ar")]
        assert t2["prompt_tokens"] > t1["prompt_tokens"] + len(tok(t1["output_text"]).input_ids) - 2
    assert rows[("81/t2", "ar")]["subcategory"] == "writing"

    frame = summarize(list(rows.values()))
    cats = frame[frame.method == "pld"]["category"].tolist()
    assert cats == ["all", "math_reasoning", "mt_bench", "qa", "translation"]
    per = frame.set_index(["method", "category"])
    assert per.loc[("pld", "all"), "n"] == 7 and per.loc[("pld", "mt_bench"), "n"] == 4

    # resume: drop the turn-2 rows; the rerun measures them again on the same prompts
    lines = (out / "samples.jsonl").read_text().splitlines()
    kept = [x for x in lines if "/t2" not in json.loads(x)["sample_id"]]
    (out / "samples.jsonl").write_text("\n".join(kept) + "\n")
    res = _run(args)
    assert res.exit_code == 0, res.output
    again = _rows(out)
    for key, r in rows.items():
        assert again[key]["prompt_tokens"] == r["prompt_tokens"]
        assert again[key]["new_token_ids"] == r["new_token_ids"]


def test_a_prompts_file_with_categories_gets_category_lines(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"Say {i}.", "category": "ab"[i % 2]}) + "\n" for i in range(4)))
    out = tmp_path / "run"
    res = _run(["run", "--model", "tiny-random-llama", "--methods", "ar", "--suite", "prompts", "--data", str(p),
                "--max-new-tokens", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    frame = summarize(ResultsDir(out).load_rows())
    assert frame["category"].tolist() == ["all", "a", "b"] and frame["n"].tolist() == [4, 2, 2]
