"""Speed-only suite on the user's own prompts (``--data FILE``).

One JSON object a line, either ``{"prompt": "..."}`` or Spec-Bench's question format
``{"question_id": ..., "category": ..., "turns": ["...", ...]}`` (the first turn is used; the
``specbench`` suite sends every turn). A ``category`` field gives per-category summary lines.
Ids come from ``id`` or ``question_id`` when present, else the line number (from 1).
"""

from __future__ import annotations

import os
from typing import ClassVar, Iterator

from accbench.errors import AccbenchError
from accbench.suites import data, register
from accbench.suites.base import Sample, Suite


@register
class PromptsSuite(Suite):
    name: ClassVar[str] = "prompts"
    description: ClassVar[str] = 'Speed only: your JSONL prompts ({"prompt": ...} or Spec-Bench {"turns": [...]})'
    stop: list[str] = []
    max_new_tokens: int = 128
    metrics: ClassVar[list[str]] = []

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        data_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if data_file is None:
            raise AccbenchError(
                'suite \'prompts\' needs --data FILE (JSONL lines {"prompt": ...} or {"turns": [...]})'
            )
        self.stop = []
        self.max_new_tokens = type(self).max_new_tokens
        path = data.resolve_data_file(data_file, data_dir)
        self.source = str(path)
        self.items: list[Sample] = []
        seen: dict[str, int] = {}
        for lineno, rec in data.read_jsonl_numbered(path):
            if isinstance(rec.get("prompt"), str):
                prompt = rec["prompt"]
            elif isinstance(rec.get("turns"), list) and rec["turns"] and isinstance(rec["turns"][0], str):
                prompt = rec["turns"][0]
            else:
                raise AccbenchError(f"{path}:{lineno}: expected a string 'prompt' or a non-empty list 'turns'")
            raw_id = rec.get("id", rec.get("question_id"))
            sid = str(lineno) if raw_id is None else str(raw_id)
            if sid in seen:
                raise AccbenchError(f"{path}:{lineno}: duplicate id {sid!r} (first on line {seen[sid]})")
            seen[sid] = lineno
            meta = {"line": lineno}
            if rec.get("category") is not None:
                meta["category"] = str(rec["category"])
            self.items.append(Sample(id=sid, prompt=prompt, reference=None, meta=meta))
        if not self.items:
            raise AccbenchError(f"{path}: no prompts")

    def __len__(self) -> int:
        return len(self.items)

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        yield from (self.items if limit is None else self.items[:limit])

    def score(self, sample: Sample, output_text: str) -> dict[str, float]:
        return {}

    @classmethod
    def readiness(cls, data_dir: str | os.PathLike[str] | None = None) -> str:
        return "needs --data FILE"
