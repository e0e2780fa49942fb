"""Spec-Bench's question file (``--data data/spec_bench/question.jsonl``): speed per task.

Each line: ``{"question_id": ..., "category": ..., "turns": ["...", ...]}``. Spec-Bench's six
tasks are ``mt_bench`` (its 80 questions carry MT-bench's eight labels: writing, roleplay,
reasoning, math, coding, extraction, stem, humanities), ``translation``, ``summarization``,
``qa``, ``math_reasoning`` and ``rag``. Rows carry ``category`` (the task: ``mt_bench`` for
the eight labels, else the file's category), ``subcategory`` (the MT-bench label) and
``turn``; summaries have one line per task plus the overall one.

Every turn is sent, as Spec-Bench does: turn k is its own sample (id ``<question_id>/t<k>``)
whose prompt is the conversation so far through the chat template (earlier turns with the
answers given to them, then turn k). The answer carried into the next turn is the group's
baseline's (AR's when AR runs): for a lossless method under greedy decoding it is the
method's own answer, and for every method the turn-k prompt is then the same, so the
pairing with AR stays exact. On a resumed run the answer is read from the results folder's
baseline row (regenerated, untimed, when the folder has none). With ``--prompt-format raw`` the
conversation is plain text: "User: <turn>" and "Assistant: <answer>" paragraphs, ending with
"Assistant:" (:func:`accbench.engine.prompts.encode_conversation`). ``--limit N`` takes the
first N questions (all their turns). The budget is 256 new tokens a turn (Spec-Bench's is
1024: ``--max-new-tokens 1024`` matches it).

Spec-Bench's own speed script (``evaluation/speed.py``) sums a question's turns into one
tokens/s figure; here each turn is a sample of its own (mt_bench has twice as many samples as
questions).
"""

from __future__ import annotations

import os
from typing import ClassVar, Iterator

from accbench.errors import AccbenchError
from accbench.suites import data, register
from accbench.suites.base import Sample, Suite

#: MT-bench's labels; Spec-Bench reports them together as its ``mt_bench`` task
MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
TASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


def task_of(category: str) -> tuple[str, str | None]:
    """(Spec-Bench task, MT-bench label or None) of a file's ``category``."""
    return ("mt_bench", category) if category in MT_BENCH else (category, None)


@register
class SpecBenchSuite(Suite):
    name: ClassVar[str] = "specbench"
    description: ClassVar[str] = ("Speed per Spec-Bench task: --data question.jsonl (question_id, category, turns); "
                                  "every turn, per-task rows; 256 new tokens (Spec-Bench: 1024)")
    stop: list[str] = []
    max_new_tokens: int = 256  # Spec-Bench generates up to 1024; --max-new-tokens 1024 matches it
    prompt_format: ClassVar[str] = "chat"
    metrics: ClassVar[list[str]] = []

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None,
                 data_file: str | os.PathLike[str] | None = None) -> None:
        if data_file is None:
            raise AccbenchError("suite 'specbench' needs --data FILE (Spec-Bench's data/spec_bench/question.jsonl)")
        self.stop = []
        self.max_new_tokens = type(self).max_new_tokens
        path = data.resolve_data_file(data_file, data_dir)
        self.source = str(path)
        self.questions: list[list[Sample]] = []
        seen: dict[str, int] = {}
        for lineno, rec in data.read_jsonl_numbered(path):
            turns, cat = rec.get("turns"), rec.get("category")
            if not (isinstance(turns, list) and turns and all(isinstance(t, str) and t for t in turns)):
                raise AccbenchError(f"{path}:{lineno}: expected 'turns', a non-empty list of strings")
            if not isinstance(cat, str) or not cat:
                raise AccbenchError(f"{path}:{lineno}: expected a string 'category'")
            qid = str(rec.get("question_id", lineno))
            if qid in seen:
                raise AccbenchError(f"{path}:{lineno}: duplicate question_id {qid!r} (first on line {seen[qid]})")
            seen[qid] = lineno
            task, sub = task_of(cat)
            self.questions.append([
                Sample(id=f"{qid}/t{k}", prompt=text, reference=None,
                       meta={"category": task, "subcategory": sub, "turn": k, "question": qid, "line": lineno,
                             "turns": turns[:k]})
                for k, text in enumerate(turns, start=1)])
        if not self.questions:
            raise AccbenchError(f"{path}: no questions")

    def __len__(self) -> int:
        return sum(len(q) for q in self.questions)

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        for q in self.questions if limit is None else self.questions[:limit]:
            yield from q

    def score(self, sample: Sample, output_text: str) -> dict[str, float]:
        return {}

    @classmethod
    def readiness(cls, data_dir: str | os.PathLike[str] | None = None) -> str:
        return "needs --data FILE (Spec-Bench question.jsonl)"
