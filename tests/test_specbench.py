"""The `specbench` suite: Spec-Bench's question format, both turns, one summary line per task."""

import json
from pathlib import Path

import pytest
from accbench import suites
from accbench.cli import main
from accbench.engine.prompts import encode_conversation
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
    ({"question_id": 1, "category": "qa", "turns": ["x", 2]}, "non-empty list of strings"),
    ({"question_id": 1, "turns": ["x"]}, "string 'category'"),
])
def test_bad_lines_are_one_clear_error(tmp_path, line, message):
    with pytest.raises(AccbenchError, match=":1: .*" + message):
        suites.build("specbench", data_file=str(_file(tmp_path, [line])))


def test_missing_file_bad_json_and_duplicates_are_one_clear_error(tmp_path):
    with pytest.raises(AccbenchError, match="needs --data FILE"):
        suites.build("specbench")
    with pytest.raises(AccbenchError, match="file not found"):
        suites.build("specbench", data_file=str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(QUESTIONS[0]) + "\n{not json\n")
    with pytest.raises(AccbenchError, match="bad.jsonl:2: malformed JSON"):
        suites.build("specbench", data_file=str(bad))
    with pytest.raises(AccbenchError, match="duplicate question_id '81'"):
        suites.build("specbench", data_file=str(_file(tmp_path, [QUESTIONS[0], QUESTIONS[0]])))
    res = _run(["run", "--model", "tiny-random-llama", "--methods", "ar", "--suite", "specbench",
                "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "file not found" in res.output and "Traceback" not in res.output


def test_listed(tmp_path):
    res = _run(["list"])
    assert res.exit_code == 0 and "specbench" in res.output


def _rows(out):
    return {(r["sample_id"], r["method"]): r for r in ResultsDir(out).load_rows()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """``ar,pld`` on the first four questions (two two-turn mt_bench ones, translation, qa)."""
    tmp = tmp_path_factory.mktemp("specbench")
    out = tmp / "run"
    args = ["run", "--model", "tiny-random-llama", "--methods", "ar,pld", "--suite", "specbench",
            "--data", str(_file(tmp)), "--limit", "4", "--max-new-tokens", "10", "--out", str(out)]
    res = _run(args)
    assert res.exit_code == 0, res.output
    return args, out, _rows(out)


def test_both_turns_per_task_rows_and_resume(sweep, tiny_llama):
    args, out, rows = sweep
    assert sorted({sid for sid, _ in rows}) == ["161/t1", "241/t1", "81/t1", "81/t2", "91/t1", "91/t2"]  # --limit 4
    assert len(rows) == 6 * 2
    for (sid, _method), r in rows.items():
        assert r["turn"] == int(sid.split("/t")[1]) and r["category"] in ("mt_bench", "translation", "qa")
        assert r["subcategory"] == {"81": "writing", "91": "roleplay"}.get(sid.split("/")[0])
        assert r["new_token_ids"] == rows[(sid, "ar")]["new_token_ids"]  # lossless on both turns
        assert r["prompt_tokens"] == rows[(sid, "ar")]["prompt_tokens"]  # one prompt for every method
    # turn 2 is the conversation through the chat template: turn 1, AR's answer to it, turn 2
    tok = tiny_llama.tokenizer
    turns = {str(q["question_id"]): q["turns"] for q in QUESTIONS}
    for q in ("81", "91"):
        t1, t2 = rows[(f"{q}/t1", "ar")], rows[(f"{q}/t2", "ar")]
        assert t2["prompt_format"] == "chat"
        ids = encode_conversation(tok, turns[q], [t1["output_text"]], "chat")
        assert t2["prompt_tokens"] == len(ids) > t1["prompt_tokens"]
        text = tok.decode(ids)
        assert turns[q][0] in text and t1["output_text"].strip() in text and text.index(turns[q][1]) > text.index(
            turns[q][0])

    frame = summarize(list(rows.values()))
    cats = frame[frame.method == "pld"]["category"].tolist()
    assert cats == ["all", "mt_bench", "qa", "translation"]
    per = frame.set_index(["method", "category"])
    assert per.loc[("pld", "all"), "n"] == 6 and per.loc[("pld", "mt_bench"), "n"] == 4

    # resume: drop the turn-2 rows; the rerun measures them again on the same prompts (turn 1's
    # answers read from the folder)
    lines = (out / "samples.jsonl").read_text().splitlines()
    kept = [x for x in lines if "/t2" not in json.loads(x)["sample_id"]]
    (out / "samples.jsonl").write_text("\n".join(kept) + "\n")
    res = _run(args)
    assert res.exit_code == 0, res.output
    again = _rows(out)
    assert again.keys() == rows.keys()
    for key, r in rows.items():
        assert again[key]["prompt_tokens"] == r["prompt_tokens"]
        assert again[key]["new_token_ids"] == r["new_token_ids"]


def test_a_later_turn_without_its_answer_regenerates_it_and_a_known_answer_is_final(sweep, tmp_path, tiny_llama):
    """A group whose todo has turn 2 but neither turn 1 nor its answer (a worker that did not
    get the folder's answers) regenerates it, untimed, with AR: the same prompt as measured.
    An answer from the folder stays the one turn 2 is built on even when this group measures
    turn 1 again with another method."""
    from accbench.engine.config import SweepConfig
    from accbench.engine.driver import _payload
    from accbench.engine.group import Group, Work, group_messages

    known_answer = "Snow is quiet and white over the sleeping town tonight."  # longer than a 10-token answer
    args, _out, rows = sweep
    cfg = SweepConfig(methods=["ar", "pld"], models=["tiny-random-llama"], suites=["specbench"],
                      out=tmp_path / "unused", limit=4, max_new_tokens=10, data_file=args[args.index("--data") + 1])
    r0 = rows[("91/t2", "ar")]
    group = Group(r0["model"], r0["device"], "specbench", None)
    work = Work(["ar", "pld"], [("81/t1", ["pld"]), ("81/t2", ["ar", "pld"]), ("91/t2", ["ar", "pld"])])
    payload = _payload({"cfg": cfg.as_dict(), "device": "cpu"}, group, work, {})
    assert payload["answers"] == {}
    payload["answers"] = {"81/t1": f"  {known_answer}  "}
    got = {(d["sample_id"], d["method"]): d for kind, d in group_messages(payload, [0, 0, 0], catch=False)
           if kind == "row"}
    assert set(got) == {("81/t1", "pld"), ("81/t2", "ar"), ("81/t2", "pld"), ("91/t2", "ar"), ("91/t2", "pld")}
    for m in ("ar", "pld"):
        assert got[("91/t2", m)]["prompt_tokens"] == r0["prompt_tokens"]
        assert got[("91/t2", m)]["new_token_ids"] == rows[("91/t2", m)]["new_token_ids"]
    tok = tiny_llama.tokenizer
    known = len(encode_conversation(tok, QUESTIONS[0]["turns"], [known_answer], "chat"))
    assert got[("81/t2", "ar")]["prompt_tokens"] == got[("81/t2", "pld")]["prompt_tokens"] == known


def test_raw_conversation_has_role_markers(tiny_llama):
    tok = tiny_llama.tokenizer
    text = tok.decode(encode_conversation(tok, ["Hi there.", "And again?"], [" Hello! "], "raw"),
                      skip_special_tokens=True)
    assert text.strip() == "User: Hi there.\n\nAssistant: Hello!\n\nUser: And again?\n\nAssistant:"
    assert encode_conversation(tok, ["Hi there."], [], "raw") == tok("Hi there.").input_ids
    with pytest.raises(AccbenchError, match="needs 1 earlier answer"):
        encode_conversation(tok, ["a", "b"], [], "chat")


def test_a_prompts_file_with_categories_gets_category_lines(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"Say {i}.", "category": "ab"[i % 2]}) + "\n" for i in range(4)))
    out = tmp_path / "run"
    res = _run(["run", "--model", "tiny-random-llama", "--methods", "ar", "--suite", "prompts", "--data", str(p),
                "--max-new-tokens", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = ResultsDir(out).load_rows()
    assert sorted((r["category"], r["subcategory"], r["turn"]) for r in rows) == [("a", None, None)] * 2 + [
        ("b", None, None)] * 2
    frame = summarize(rows)
    assert frame["category"].tolist() == ["all", "a", "b"] and frame["n"].tolist() == [4, 2, 2]
