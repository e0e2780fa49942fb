"""Training text for methods that learn (Medusa, MTP): only splits that are never evaluated.

- MBPP train split (task_ids 601-974): each problem as the evaluation prompt format shows it
  (task + tests + ``[BEGIN]``) followed by its reference code and ``[DONE]``;
- CNN/DM items 500-999: the zero-shot prompt followed by the reference summary;
- any text files a user passes (documents separated by blank lines).

Evaluation uses MBPP 11-510 and CNN/DM 0-499, so nothing here is ever scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from accbench.errors import AccbenchError

MBPP_TRAIN_IDS = range(601, 975)
CNNDM_TRAIN_ITEMS = range(500, 1000)


def training_documents(sources: Sequence[str] = ("mbpp", "cnndm"), extra_files: Iterable[str] = (),
                       data_dir: str | None = None) -> list[str]:
    from accbench.suites.data import load_records
    from accbench.suites.mbpp import doc_to_text

    docs: list[str] = []
    for src in sources:
        if src == "mbpp":
            for r in load_records("mbpp/mbpp.jsonl", data_dir=data_dir)[0]:
                if int(r["task_id"]) in MBPP_TRAIN_IDS:
                    docs.append(doc_to_text(r) + r["code"].replace("\r\n", "\n") + "\n[DONE]")
        elif src == "cnndm":
            recs = load_records("summarization/cnn_dailymail_0shot.jsonl", data_dir=data_dir)[0]
            for i in CNNDM_TRAIN_ITEMS:
                if i < len(recs):
                    docs.append(recs[i]["article"] + " " + recs[i]["summary_gt"].replace("\n", " "))
        else:
            raise AccbenchError(f"unknown training source {src!r}; valid: mbpp, cnndm")
    for f in extra_files:
        p = Path(f)
        if not p.is_file():
            raise AccbenchError(f"training text file {p} not found")
        docs.extend(d.strip() for d in p.read_text(encoding="utf-8", errors="replace").split("\n\n") if d.strip())
    if not docs:
        raise AccbenchError("no training text: give --data-source or --text FILE")
    return docs
