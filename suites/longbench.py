"""LongBench v1 long-context suites (Bai et al. 2023).

``longbench-multinews``: LongBench's ``multi_news`` (200 multi-document news summarization
prompts, 258-10,933 words, median 1,655), from ``longctx/multi_news.jsonl`` under the data
directory. Record fields: ``context`` (the articles), ``input`` (empty for this task),
``answers`` (one reference summary), ``length``, ``dataset``, ``language``, ``_id``.

Prompt: LongBench's own template for multi_news (``dataset2prompt.json``), verbatim.
Budget: 512 new tokens, LongBench's ``dataset2maxlen`` for multi_news. No stop strings (EOS
only), as in LongBench. Score: ROUGE-L F1 (LongBench's metric for the task) with ROUGE-1/2
alongside, from the shared ``rouge-score`` helper (stemming), 0-100; reference ``answers[0]``.

Prompts are as long as the articles; use ``--prompt-lengths`` to cut them (middle truncation,
LongBench-style, keeping the instruction at both ends) to the lengths you want to measure.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Iterator

from accbench.errors import AccbenchError
from accbench.suites import data, register
from accbench.suites.base import Sample, Suite
from accbench.suites.summarization import rouge

MULTI_NEWS_PROMPT = (
    "You are given several news articles. Write a one-page summary of all news.\n\n"
    "News:\n{context}\n\n"
    "Now, write a one-page summary of all the news.\n\n"
    "Summary:"
)


@register
class LongBenchMultiNews(Suite):
    name: ClassVar[str] = "longbench-multinews"
    description: ClassVar[str] = "LongBench multi_news: multi-document news summarization (200 long prompts), ROUGE-L"
    stop: list[str] = []
    max_new_tokens: int = 512
    metrics: ClassVar[list[str]] = ["rougeL", "rouge1", "rouge2"]

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None) -> None:
        records, self.source = data.load_records(data.MULTI_NEWS, data_dir)
        self.items: list[tuple[int, dict[str, Any]]] = []
        for i, rec in enumerate(records):
            ctx, answers = rec.get("context"), rec.get("answers")
            if not isinstance(ctx, str) or not isinstance(answers, list) or not answers \
                    or not isinstance(answers[0], str):
                raise AccbenchError(f"{self.source}:{i + 1}: expected 'context' (string) and "
                                    "'answers' (non-empty list of strings)")
            self.items.append((i, rec))
        if not self.items:
            raise AccbenchError(f"{self.source}: no records")

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def prompt(record: dict[str, Any]) -> str:
        return MULTI_NEWS_PROMPT.format(context=record["context"], input=record.get("input", ""))

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        items = self.items if limit is None else self.items[:limit]
        for idx, rec in items:
            yield Sample(id=str(idx), prompt=self.prompt(rec), reference=rec["answers"][0],
                         meta={"index": idx, "_id": rec.get("_id"), "length": rec.get("length")})

    def score(self, sample: Sample, output_text: str) -> dict[str, float]:
        return rouge(sample.reference, output_text)

    @classmethod
    def readiness(cls, data_dir: str | os.PathLike[str] | None = None) -> str:
        return data.readiness(data.MULTI_NEWS, data_dir)
