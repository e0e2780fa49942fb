"""MBPP (Austin et al. 2021) in exactly the form of lm-eval's ``mbpp`` task.

Prompt: 3-shot, the shots are task_ids 2, 3, 4 of the data file (lm-eval hard-codes the
same three records in ``list_fewshot_samples``). Each shot is ``doc_to_text(shot) + code +
"\\n[DONE]"`` (target_delimiter ""), shots are joined by lm-eval's fewshot delimiter
``"\\n\\n"``, which also separates the last shot from the target's ``doc_to_text``.

Scoring mirrors lm-eval + HF ``evaluate``'s ``code_eval``: the program run is
``generation + "\\n" + "\\n".join(test_list)`` (code_eval runs ``candidate + "\\n" +
test_case`` and lm-eval's reference is the three asserts joined by ``"\\n"``), the
generation cut at the first ``[DONE]``. lm-eval ignores ``test_setup_code``; so do we by
default so the two pass@1 numbers agree. In the test split only task 367 has setup code;
it builds trees with the ``Node`` class the solution defines, so with
``test_setup_code=True`` it is inserted between the generation and the asserts.
The sandbox runs the program as code_eval does: ``exec(program, {})``, any exception
(SystemExit included) a failure; timeout 3 s (code_eval's default) plus 1 s of wall
clock for the interpreter's start-up.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar, Iterator

from accbench.errors import AccbenchError
from accbench.suites import data, register
from accbench.suites.base import Sample, Suite

#: standard MBPP split by task_id (inclusive ranges)
SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}
FEWSHOT_TASK_IDS: tuple[int, ...] = (2, 3, 4)
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default fewshot_delimiter
TARGET_DELIMITER = ""  # mbpp.yaml: target_delimiter: ""
STOP = "[DONE]"
#: code_eval's default per-program timeout (seconds)
CODE_EVAL_TIMEOUT_S = 3.0

_REQUIRED = ("task_id", "text", "code", "test_list")


def doc_to_text(doc: dict[str, Any]) -> str:
    """lm-eval mbpp.yaml ``doc_to_text``."""
    t = doc["test_list"]
    return (
        f"You are an expert Python programmer, and here is your task: {doc['text']} "
        f"Your code should pass these tests:\n\n{t[0]}\n{t[1]}\n{t[2]}\n[BEGIN]\n"
    )


def fewshot_target(doc: dict[str, Any]) -> str:
    """lm-eval mbpp.yaml ``doc_to_target`` for a few-shot doc."""
    return f"{doc['code']}\n{STOP}"


def doc_to_reference(doc: dict[str, Any]) -> str:
    """lm-eval mbpp.yaml ``doc_to_target`` for an evaluated doc (the reference passed to
    code_eval)."""
    t = doc["test_list"]
    return f"{t[0]}\n{t[1]}\n{t[2]}"


def build_prompt(doc: dict[str, Any], shots: list[dict[str, Any]]) -> str:
    """lm-eval's plain-text ``fewshot_context`` for this task."""
    labeled = "".join(doc_to_text(s) + TARGET_DELIMITER + fewshot_target(s) + FEWSHOT_DELIMITER for s in shots)
    return labeled + doc_to_text(doc)


def build_program(generation: str, test_list: list[str], test_setup_code: str = "") -> str:
    """The program whose exit status decides pass@1 (see module docstring)."""
    code = generation.split(STOP)[0]  # lm-eval cuts at the stop string; harmless if already cut
    tests = "\n".join(test_list)
    if test_setup_code.strip():
        return code + "\n" + test_setup_code + "\n" + tests
    return code + "\n" + tests


_DRIVER = """_program = {program!r}
exec(compile(_program, "<mbpp program>", "exec"), {{}})
"""


def sandbox_source(program: str) -> str:
    """What the sandbox runs: ``program`` executed the way HF code_eval executes it,
    ``exec(program, {})`` with any exception failing it. So ``sys.exit(0)`` before the
    asserts fails (code_eval catches BaseException; the sandbox counts a run as passed only
    when its own code, after this returns, sends the run's verdict) and
    ``if __name__ == "__main__":`` blocks do not run (``__name__`` resolves to ``"builtins"``)."""
    return _DRIVER.format(program=program)


def parse_task_ids(task_ids: Any) -> list[int]:
    """``[11, 12]``, ``"11,12"``, ``"11-20,35"`` -> list of ints (order kept)."""
    if isinstance(task_ids, int):
        return [task_ids]
    parts: list[Any]
    if isinstance(task_ids, str):
        parts = [p.strip() for p in task_ids.split(",") if p.strip()]
    else:
        parts = list(task_ids)
    out: list[int] = []
    for p in parts:
        try:
            if isinstance(p, str) and "-" in p.strip("-"):
                lo, hi = p.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(p))
        except (TypeError, ValueError):
            raise AccbenchError(f"mbpp: bad task id {p!r} (use e.g. 11,12 or 11-20)") from None
    return out


@register
class MBPPSuite(Suite):
    name: ClassVar[str] = "mbpp"
    description: ClassVar[str] = "MBPP code generation, lm-eval 'mbpp' prompt (3-shot), pass@1 by execution"
    stop: list[str] = [STOP]
    #: lm-eval's default max_gen_toks for generate_until tasks
    max_new_tokens: int = 256
    metrics: ClassVar[list[str]] = ["pass@1"]
    #: scored by running generated code (in accbench.suites.sandbox)
    sandboxed: ClassVar[bool] = True
    #: lm-eval's mbpp task sends the few-shot text as is (no chat template)
    prompt_format: ClassVar[str] = "raw"
    data_relpath: ClassVar[str] = data.MBPP

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        split: str = "test",
        task_ids: Any = None,
        test_setup_code: bool = False,
        timeout_s: float = CODE_EVAL_TIMEOUT_S,
        workers: int = 2,
    ) -> None:
        self.stop = [STOP]
        self.max_new_tokens = type(self).max_new_tokens
        self.test_setup_code = _as_bool(test_setup_code, "test_setup_code")
        self.timeout_s = float(timeout_s)
        self.workers = int(workers)
        records, self.source = data.load_records(data.MBPP, data_dir)
        by_id: dict[int, dict[str, Any]] = {}
        for i, rec in enumerate(records):
            missing = [k for k in _REQUIRED if k not in rec]
            if missing or not isinstance(rec.get("test_list"), list) or len(rec["test_list"]) < 3:
                what = f"missing {', '.join(missing)}" if missing else "test_list needs 3 asserts"
                raise AccbenchError(f"{self.source}: record {i + 1} is not an MBPP problem ({what})")
            by_id[int(rec["task_id"])] = rec
        missing_shots = [t for t in FEWSHOT_TASK_IDS if t not in by_id]
        if missing_shots:
            raise AccbenchError(
                f"{self.source}: few-shot task_ids {missing_shots} missing (need the full MBPP file, not a split)"
            )
        self.shots = [by_id[t] for t in FEWSHOT_TASK_IDS]

        if task_ids is not None:
            ids = parse_task_ids(task_ids)
            unknown = [t for t in ids if t not in by_id]
            if unknown:
                raise AccbenchError(f"mbpp: unknown task_ids {unknown[:10]}")
            self.split = "custom"
            self.docs = [by_id[t] for t in ids]
        else:
            if split not in SPLITS:
                raise AccbenchError(f"mbpp: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
            lo, hi = SPLITS[split]
            self.split = split
            self.docs = [by_id[t] for t in sorted(by_id) if lo <= t <= hi]
            if not self.docs:
                raise AccbenchError(f"{self.source}: no problems in split {split!r} (task_ids {lo}-{hi})")

    # -- Suite API ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.docs)

    def samples(self, limit: int | None = None) -> Iterator[Sample]:
        docs = self.docs if limit is None else self.docs[:limit]
        for doc in docs:
            yield Sample(
                id=str(doc["task_id"]),
                prompt=build_prompt(doc, self.shots),
                reference=doc_to_reference(doc),
                meta={
                    "task_id": int(doc["task_id"]),
                    "test_list": list(doc["test_list"]),
                    "test_setup_code": doc.get("test_setup_code") or "",
                },
            )

    def program(self, sample: Sample, output_text: str) -> str:
        setup = sample.meta.get("test_setup_code", "") if self.test_setup_code else ""
        return build_program(output_text, sample.meta["test_list"], setup)

    def _limits(self):
        from accbench.suites.sandbox import SandboxLimits

        # code_eval: a 3 s itimer around exec() inside an already running process (and an
        # outer join at timeout + 1 s); our wall clock also covers interpreter start-up.
        return SandboxLimits(wall_s=self.timeout_s + 1.0, cpu_s=max(1, math.ceil(self.timeout_s)) + 1)

    def score(self, sample: Sample, output_text: str) -> dict[str, float]:
        from accbench.suites.sandbox import run_program

        res = run_program(sandbox_source(self.program(sample, output_text)), limits=self._limits())
        return {"pass@1": 1.0 if res.passed else 0.0}

    def score_many(self, pairs: list[tuple[Sample, str]]) -> list[dict[str, float]]:
        from accbench.suites.sandbox import run_many

        if not pairs:
            return []
        results = run_many(
            [sandbox_source(self.program(s, o)) for s, o in pairs], limits=self._limits(), workers=self.workers
        )
        return [{"pass@1": 1.0 if r.passed else 0.0} for r in results]

    @classmethod
    def readiness(cls, data_dir: str | os.PathLike[str] | None = None) -> str:
        return data.readiness(data.MBPP, data_dir)


def _as_bool(v: Any, what: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    if isinstance(v, int):
        return bool(v)
    raise AccbenchError(f"{what}: expected true/false, got {v!r}")
