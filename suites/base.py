"""What a suite is: prompts + references + a scorer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator


@dataclass
class Sample:
    id: str  # stable id within the suite (e.g. MBPP task_id, CNN/DM item index)
    prompt: str  # the text handed to the model (raw format; chat wrapping happens later)
    reference: Any = None  # what the scorer compares against (None for speed-only suites)
    meta: dict[str, Any] = field(default_factory=dict)


class Suite:
    """Base class for suites. Subclasses set ``name``, ``stop``, ``max_new_tokens`` and
    implement :meth:`samples` and (unless speed-only) :meth:`score`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: stop strings for generation (EOS always stops too)
    stop: list[str] = []
    #: default generation budget
    max_new_tokens: int = 128
    #: prompt format under --prompt-format auto: "chat" (instruction-style) or "raw"
    prompt_format: ClassVar[str] = "chat"
    #: names of the quality metrics score() returns; the first is the headline one
    metrics: ClassVar[list[str]] = []

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        raise NotImplementedError

    def score(self, sample: Sample, output_text: str) -> dict[str, float]:
        """Quality metrics for one output (empty for speed-only suites)."""
        return {}

    def score_many(self, pairs: list[tuple[Sample, str]]) -> list[dict[str, float]]:
        return [self.score(s, o) for s, o in pairs]
