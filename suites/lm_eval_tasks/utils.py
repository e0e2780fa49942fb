"""Functions behind accbench's offline lm-eval tasks (``accbench_mbpp``, ``accbench_cnndm``).

lm-eval imports this file when it loads one of the YAML files beside it. Importing it also
registers the ``accbench`` lm-eval model, so ``lm_eval --model accbench --tasks
<this folder>/accbench_mbpp.yaml`` works with lm-eval's own command.

Data comes from accbench's data folder (``data_dir`` in ``--metadata`` / ``--model_args``,
else ``$ACCBENCH_DATA_DIR``, else the Hugging Face hub), never from a hub download inside
lm-eval. MBPP is scored by accbench's sandbox (the same program and limits as the ``mbpp``
suite), CNN/DM by the ``cnndm`` suite's ROUGE.
"""

from __future__ import annotations

import functools
from typing import Any

import accbench.lmeval  # noqa: F401  (registers the `accbench` lm-eval model)
from accbench.suites import mbpp as _mbpp
from accbench.suites import summarization as _summ

_MBPP_FIELDS = ("task_id", "text", "code", "test_list", "test_setup_code")


def _dataset(split_docs: dict[str, list[dict[str, Any]]]):
    import datasets

    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in split_docs.items()})


@functools.lru_cache(maxsize=4)
def _mbpp_suite(data_dir: str | None = None) -> _mbpp.MBPPSuite:
    return _mbpp.MBPPSuite(data_dir=data_dir or None)


# -- MBPP ------------------------------------------------------------------------------


def mbpp_dataset(data_dir: str | None = None, **_: Any):
    """The MBPP test split (task_ids 11-510, in order), as accbench's ``mbpp`` suite has it."""
    suite = _mbpp_suite(data_dir)
    docs = [{k: (doc.get(k) or "") if k == "test_setup_code" else doc[k] for k in _MBPP_FIELDS}
            for doc in suite.docs]
    return _dataset({"test": docs})


def mbpp_fewshot_samples() -> list[dict[str, Any]]:
    """The three shots of lm-eval's ``mbpp`` (task_ids 2, 3, 4), read from the data file."""
    suite = _mbpp_suite()
    return [{**{k: shot[k] for k in ("task_id", "text", "code", "test_list")}, "is_fewshot": True}
            for shot in suite.shots]


def pass_at_1(references: list[str], predictions: list[Any]) -> float:
    """pass@1 of one generation: the program accbench's ``mbpp`` suite runs
    (generation + "\\n" + the asserts), in accbench's sandbox with code_eval's 3 s limit."""
    from accbench.suites.base import Sample

    ref = references[0] if isinstance(references, list) else references
    pred = predictions[0]
    if isinstance(pred, list):
        pred = pred[0]
    sample = Sample(id="", prompt="", reference=ref, meta={"test_list": ref.split("\n"), "test_setup_code": ""})
    return _mbpp_suite().score(sample, pred)["pass@1"]  # MBPPSuite.score: its program, sandbox and limits


# -- CNN/DailyMail ---------------------------------------------------------------------


def cnndm_dataset(data_dir: str | None = None, **_: Any):
    """CNN/DM items 0-499 with the HELM zero-shot prompt, as accbench's ``cnndm`` suite."""
    suite = _summ.CNNDMSuite(data_dir=data_dir or None)
    docs = [{"index": idx, "article": rec["article"], "summary_gt": rec["summary_gt"]} for idx, rec in suite.items]
    return _dataset({"test": docs})


def cnndm_rouge(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 x 100 with stemming (``rouge-score``), as the ``cnndm`` suite."""
    text = results[0]
    for s in _summ.DEFAULT_STOP:
        text = text.split(s)[0]
    return _summ.rouge(doc["summary_gt"], text)
