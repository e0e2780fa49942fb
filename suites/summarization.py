"""Summarization suites on HELM-style 0-shot prompt files.

Record format (one JSON object a line): ``article`` is the whole prompt (``###\\nArticle:
...\\n\\nSummarize the above article in N sentences.``), ``summary_gt`` the reference;
optional ``max_tokens`` (generation budget) and ``stop`` (stop strings) as in HELM's
request files. Every record of cnn_dailymail_0shot.jsonl has ``stop: ["###"]`` and
``max_tokens: 128``; the suite takes both from the file (defaults: ``["###"]``, 128). We do
not stop at ``"\\n\\n"``: models often open with a blank line, and the reference itself is
several lines.

Score: ROUGE-1/2/L F-measure with Porter stemming (``rouge-score``), as 0-100 floats.
Decoding is greedy (HELM's files say temperature 0.3; accbench compares methods greedily).

``cnndm``: the CNN/DailyMail file, ``split="eval"`` (items 0-499, the default) or
``"train"`` (items 500-999, reserved for methods that train), or ``"all"``.
``summarization``: the same on any file in this format given with ``--data FILE``
(default split ``"all"``).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Iterator

from accbench.errors import AccbenchError
from accbench.suites import data, register
from accbench.suites.base import Sample, Suite

SPLITS: dict[str, tuple[int, int | None]] = {"eval": (0, 500), "train": (500, 1000), "all": (0, None)}
DEFAULT_STOP = ["###"]
DEFAULT_MAX_NEW_TOKENS = 128
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

_scorer = None


def rouge_scorer():
    """A shared ``RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``."""
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer as rs

        _scorer = rs.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return _scorer


def rouge(reference: str, prediction: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure x 100."""
    scores = rouge_scorer().score(reference, prediction)
    return {k: 100.0 * scores[k].fmeasure for k in ROUGE_TYPES}


@register
class SummarizationSuite(Suite):
    name: ClassVar[str] = "summarization"
    description: ClassVar[str] = "Summarization on any HELM-format file (--data FILE), ROUGE-1/2/L"
    stop: list[str] = list(DEFAULT_STOP)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    metrics: ClassVar[list[str]] = ["rougeL", "rouge1", "rouge2"]
    #: known data file used when no --data FILE is given (None: --data is required)
    data_relpath: ClassVar[str | None] = None
    default_split: ClassVar[str] = "all"

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        data_file: str | os.PathLike[str] | None = None,
        split: str | None = None,
    ) -> None:
        if data_file is not None:
            path = data.resolve_data_file(data_file, data_dir)
            numbered = data.read_jsonl_numbered(path)
            self.source = str(path)
        elif self.data_relpath is not None:
            records, self.source = data.load_records(self.data_relpath, data_dir)
            numbered = list(enumerate(records, start=1))
        else:
            raise AccbenchError(
                f"suite '{self.name}' needs --data FILE (JSONL lines with 'article' = prompt and 'summary_gt')"
            )
        for lineno, rec in numbered:
            if not isinstance(rec.get("article"), str) or not isinstance(rec.get("summary_gt"), str):
                raise AccbenchError(
                    f"{self.source}:{lineno}: expected string fields 'article' (the prompt) and 'summary_gt'"
                )
        records = [rec for _, rec in numbered]
        if not records:
            raise AccbenchError(f"{self.source}: no records")

        split = self.default_split if split is None else split
        if split not in SPLITS:
            raise AccbenchError(f"{self.name}: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        lo, hi = SPLITS[split]
        self.split = split
        self.items: list[tuple[int, dict[str, Any]]] = list(enumerate(records))[lo:hi]
        if not self.items:
            raise AccbenchError(f"{self.source}: no items in split {split!r} (the file has {len(records)})")

        self.stop = _common(records, "stop", DEFAULT_STOP, self.source)
        self.max_new_tokens = int(_common(records, "max_tokens", DEFAULT_MAX_NEW_TOKENS, self.source))

    def __len__(self) -> int:
        return len(self.items)

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        items = self.items if limit is None else self.items[:limit]
        for idx, rec in items:
            yield Sample(id=str(idx), prompt=rec["article"], reference=rec["summary_gt"], meta={"index": idx})

    def score(self, sample: Sample, output_text: str) -> dict[str, float]:
        text = output_text
        for s in self.stop:  # cut at the first stop string, as generation would
            if s:
                text = text.split(s)[0]
        return rouge(sample.reference, text)

    @classmethod
    def readiness(cls, data_dir: str | os.PathLike[str] | None = None) -> str:
        if cls.data_relpath is None:
            return "needs --data FILE"
        return data.readiness(cls.data_relpath, data_dir)


@register
class CNNDMSuite(SummarizationSuite):
    name: ClassVar[str] = "cnndm"
    description: ClassVar[str] = "CNN/DailyMail 3.0.0 (HELM 0-shot prompts), items 0-499, ROUGE-1/2/L"
    data_relpath: ClassVar[str | None] = data.CNNDM
    default_split: ClassVar[str] = "eval"

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None, split: str | None = None) -> None:
        # no data_file: the file is fixed (found via --data-dir / ACCBENCH_DATA_DIR / the hub)
        super().__init__(data_dir=data_dir, split=split)


def _common(records: list[dict[str, Any]], key: str, default: Any, source: str) -> Any:
    """The value of ``key`` shared by all records (``default`` when absent)."""
    values = {repr(rec[key]) for rec in records if key in rec}
    if not values:
        return list(default) if isinstance(default, list) else default
    if len(values) > 1:
        raise AccbenchError(f"{source}: records disagree on '{key}'; accbench needs one value per file")
    v = next(rec[key] for rec in records if key in rec)
    if key == "stop":
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise AccbenchError(f"{source}: 'stop' must be a string or a list of strings")
        return list(v)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise AccbenchError(f"{source}: '{key}' must be a positive integer, got {v!r}")
    return v
