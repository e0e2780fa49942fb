"""Device-dependent training defaults, applied by ``accbench train`` to whatever the user did
not set (``--steps``, ``--batch-size``, ``--lr``, ``--seq-len``, ``-o data_tokens=...``).

On CPU nothing is filled in: each method's own defaults (``methods/medusa/train.py``,
``methods/mtp/train.py``) are sized for the packaged 135M-270M models on 2 cores. On CUDA the
table below follows the Medusa paper's Medusa-1 recipe (Cai et al. 2024, and the Medusa
repository's training script: ShareGPT, 2 epochs, AdamW lr 1e-3, batch 8 sequences of 2048
tokens, 5 heads of 1 residual layer). Two things differ on purpose:

* the backbone pass is cached once (``data_tokens``), so "2 epochs" means ``steps`` =
  2 x data_tokens / (batch x seq_len) over that cache;
* ``data_tokens`` is 2M (not all of ShareGPT's ~60k conversations): a 7B model's bfloat16
  hidden states take 8 KiB a token, so 2M tokens is ~16 GiB of feature cache on disk. Raise it
  with ``-o data_tokens=N`` when the disk allows.
"""

from __future__ import annotations

import math
from typing import Any

EPOCHS = 2
GPU_DEFAULTS: dict[str, dict[str, Any]] = {
    "medusa1": {"batch_size": 8, "seq_len": 2048, "lr": 1e-3, "options": {"data_tokens": 2_000_000, "num_heads": 5}},
    # Medusa-2 tunes the backbone with LoRA too: half the batch fits beside the optimizer state
    "medusa2": {"batch_size": 4, "seq_len": 2048, "options": {"data_tokens": 2_000_000, "num_heads": 5}},
    "mtp": {"batch_size": 8, "seq_len": 2048, "lr": 1e-3, "steps": 2000},
    # EAGLE's draft layer (Li et al. 2024: AdamW betas 0.9/0.95, grad clip 0.5, many epochs):
    # windows of 2048, 2000 steps (~16 passes over the 2M cached tokens); the cross-entropy
    # over up to 32k tokens (all of a Llama-2 vocabulary, the most frequent of Gemma's 262k)
    "eagle": {"batch_size": 8, "seq_len": 2048, "lr": 3e-4, "steps": 2000,
              "options": {"data_tokens": 2_000_000, "ce_vocab": 32768}},
}


def is_cuda(device: str | None) -> bool:
    return bool(device) and str(device).strip().lower().startswith("cuda")


def apply_device_defaults(method: str, device: str | None, *, steps: int | None, batch_size: int | None,
                          lr: float | None, seq_len: int | None, options: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(steps, batch_size, lr, seq_len and options with this device's defaults filled in where
    the user gave none, a note saying what was filled in or None)."""
    given = {"steps": steps, "batch_size": batch_size, "lr": lr, "seq_len": seq_len}
    table = GPU_DEFAULTS.get(method) if is_cuda(device) else None
    if not table:
        return {**given, "options": dict(options)}, None
    out = {k: (v if v is not None else table.get(k)) for k, v in given.items()}
    opts = {**{k: v for k, v in table.get("options", {}).items() if k not in options}, **options}
    filled = [f"{k}={out[k]}" for k in given if given[k] is None and out[k] is not None]
    filled += [f"{k}={v}" for k, v in table.get("options", {}).items() if k not in options]
    if out["steps"] is None and "data_tokens" in opts and out["batch_size"] and out["seq_len"]:
        out["steps"] = max(1, math.ceil(EPOCHS * int(opts["data_tokens"]) / (out["batch_size"] * out["seq_len"])))
        filled.append(f"steps={out['steps']} ({EPOCHS} epochs over data_tokens)")
    note = f"GPU training defaults for {method}: " + ", ".join(filled) if filled else None
    return {**out, "options": opts}, note


def dataset_documents(dataset_id: str, limit: int | None = None) -> list[str]:
    """Training documents from a Hugging Face dataset of ShareGPT-style conversations
    (``conversations: [{"from": "human"|"gpt", "value": ...}]``, or ``messages: [{"role",
    "content"}]``, or a ``text`` column). Checked offline first: one clear error, before any
    model loads."""
    from accbench.errors import AccbenchError
    from accbench.models.loading import _hub_unreachable

    try:
        import datasets
    except ImportError:
        raise AccbenchError(f"--dataset {dataset_id} needs the datasets library: pip install datasets "
                            "(or pass --text FILE)") from None
    why = None if _cached_dataset(dataset_id) else _hub_unreachable(3.0)
    if why:
        raise AccbenchError(f"--dataset {dataset_id}: the Hugging Face hub is unreachable ({why}) and the dataset "
                            "is not cached here: connect, or pass --text FILE with local text")
    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as e:  # noqa: BLE001 - any loading failure is one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AccbenchError(f"--dataset {dataset_id}: cannot load it: {first}") from None
    docs: list[str] = []
    for row in ds:
        conv = row.get("conversations") or row.get("messages")
        if conv:
            turns = []
            for t in conv:
                who = t.get("from") or t.get("role") or ""
                text = t.get("value") or t.get("content") or ""
                turns.append(("USER: " if who in ("human", "user") else "ASSISTANT: ") + str(text).strip())
            docs.append("\n".join(turns))
        elif row.get("text"):
            docs.append(str(row["text"]))
        if limit and len(docs) >= limit:
            break
    if not docs:
        raise AccbenchError(f"--dataset {dataset_id}: no conversations, messages or text column found")
    return docs


def _cached_dataset(dataset_id: str) -> bool:
    try:
        from huggingface_hub import scan_cache_dir

        return any(r.repo_id == dataset_id and r.repo_type == "dataset" for r in scan_cache_dir().repos)
    except Exception:  # noqa: BLE001 - no cache folder yet
        return False
