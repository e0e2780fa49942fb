"""Training text for methods that learn (Medusa, MTP): only splits that are never evaluated.

- MBPP train split (task_ids 601-974): each problem as the evaluation prompt format shows it
  (task + tests + ``[BEGIN]``) followed by its reference code and ``[DONE]``;
- CNN/DM items 500-999: the zero-shot prompt followed by the reference summary;
- any text files a user passes (documents separated by blank lines).

Evaluation uses MBPP 11-510 and CNN/DM 0-499, so nothing here is ever scored.
"""

from __future__ import annotations

import random
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


def token_chunks(tokenizer, docs: Sequence[str], seq_len: int, *, min_len: int = 16) -> list[list[int]]:
    """Tokenize documents and cut them into windows of at most ``seq_len`` tokens."""
    chunks: list[list[int]] = []
    for d in docs:
        ids = tokenizer(d).input_ids
        for s in range(0, len(ids), seq_len):
            piece = ids[s : s + seq_len]
            if len(piece) >= min_len:
                chunks.append(piece)
    return chunks


def split_held_out(chunks: list[list[int]], frac: float = 0.05, seed: int = 0) -> tuple[list, list]:
    """Shuffle deterministically and keep ``frac`` (at least one chunk) for held-out accuracy."""
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(len(chunks) * frac))
    held = [chunks[i] for i in order[:n_held]]
    train = [chunks[i] for i in order[n_held:]]
    return train, held


class TrainRequest:
    """What `accbench train METHOD` hands to ``MethodClass.train(request, console)``.

    Fields left as None mean "the method's default" (sized for a 2-core CPU on the packaged
    models; a GPU run scales them up with --steps / --batch-size)."""

    def __init__(self, *, method: str, model: str, steps: int | None = None, batch_size: int | None = None,
                 lr: float | None = None, seq_len: int | None = None, sources: Sequence[str] = ("mbpp", "cnndm"),
                 text_files: Sequence[str] = (), targets: str = "self", dtype: str | None = None,
                 device: str | None = None, data_dir: str | None = None, restart: bool = False, seed: int = 0,
                 options: dict | None = None):
        self.method, self.model = method, model
        self.steps, self.batch_size, self.lr, self.seq_len = steps, batch_size, lr, seq_len
        self.sources, self.text_files, self.targets = list(sources), list(text_files), targets
        self.dtype, self.device, self.data_dir = dtype, device, data_dir
        self.restart, self.seed = restart, seed
        self.options = dict(options or {})

    def documents(self) -> list[str]:
        return training_documents(self.sources, self.text_files, self.data_dir)
