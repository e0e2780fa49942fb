"""EAGLE-2 (Li et al. 2024, arXiv 2401.15077 / 2406.16858): a one-layer draft model over the
target's features drafts a dynamic tree, verified in one forward by the one loop. EAGLE-3
drafts (Li et al. 2025, arXiv 2503.01840: three target layers fused, a reduced draft
vocabulary) load from their published checkpoints and draft the same tree.

model.py: the EAGLE-1/2 draft model; eagle3.py: the EAGLE-3 draft model; dyntree.py: the
dynamic tree (pure); drafter.py: the drafters; published.py: strict loading of accbench
artifacts, EAGLE-1/2 and EAGLE-3 checkpoints; train.py: ``accbench train eagle``; tune.py:
``accbench tune eagle`` (depth and node budget fitted to this device).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from accbench.methods import register
from accbench.methods.core import OptionError, SpeculativeDecoder, option
from accbench.methods.core.errors import AccbenchError, NeedsTraining
from accbench.methods.eagle.drafter import Eagle3Drafter, EagleDrafter
from accbench.methods.eagle.dyntree import DraftTree, dynamic_tree, rerank
from accbench.methods.eagle.eagle3 import Eagle3Draft
from accbench.methods.eagle.model import EagleDraft
from accbench.methods.eagle.published import has_weights, load_draft

#: used when neither options nor ``accbench tune eagle`` give them (CPU-sized: EAGLE-2 uses
#: depth 6, top_k 10, 60 nodes on GPUs; on a CPU the verification forward's cost grows with
#: the block, so a smaller tree pays off)
BUILTIN_DEFAULT = {"depth": 5, "top_k": 4, "total_tokens": 16}
#: tuned values, keyed by :func:`tuned_key`, in ``artifacts.folder("eagle")``
TUNED_FILE = "tuned.json"


def tuned_key(device, dtype, draft_path) -> str:
    """Tuned values belong to a device, a dtype and a draft (its folder)."""
    from accbench.methods.lookahead.drafter import device_key

    return f"{device_key(device, dtype)} | {Path(draft_path).resolve()}"


class EagleDecoder(SpeculativeDecoder):
    name = "eagle"
    description = ("EAGLE-2: one-layer feature draft model (EAGLE-1/2/3 checkpoints), dynamic draft tree, "
                   "tree verification (lossless).")
    lossless = True

    @dataclass
    class Options:
        depth: int | None = option(None, "draft tree depth (levels drafted; none: tuned, else 5)", ge=1)
        top_k: int | None = option(None, "children per expanded node and nodes expanded per level "
                                         "(none: tuned, else 4)", ge=1)
        total_tokens: int | None = option(None, "draft nodes verified per step (the re-ranking budget; "
                                                "none: tuned, else 16)", ge=1)
        source: str | None = option(None, "draft weights: a directory (accbench artifact, or an EAGLE-1/2 or "
                                          "EAGLE-3 checkpoint: config.json + pytorch_model.bin/model.safetensors); "
                                          "default: the model's trained artifact")
        heads: str | None = option(None, "alias of source")

        def __post_init__(self):
            if self.source and self.heads and self.source != self.heads:
                raise OptionError("eagle: give source or heads, not both")

    def __init__(self, model, tokenizer, **kw):
        super().__init__(model, tokenizer, **kw)
        path = self._source(self.options, self.artifacts, self.model_name)
        self.draft, self.draft_cfg = load_draft(model, path)
        self.draft_path = path
        o = self.options
        given = {k: getattr(o, k) for k in BUILTIN_DEFAULT if getattr(o, k) is not None}
        tuned = None if len(given) == len(BUILTIN_DEFAULT) else self._tuned()
        self.params_source = "options" if len(given) == len(BUILTIN_DEFAULT) else ("tuned" if tuned else "builtin")
        params = {**BUILTIN_DEFAULT, **(tuned or {}), **given}
        self.depth, self.top_k, self.total_tokens = params["depth"], params["top_k"], params["total_tokens"]

    def _tuned(self) -> dict[str, int] | None:
        """depth, top_k, total_tokens saved by ``accbench tune eagle`` for this draft here, or None."""
        try:
            path = self.artifacts.folder(self.name) / TUNED_FILE
            entry = json.loads(path.read_text()).get(tuned_key(self.device, self.model.dtype, self.draft_path))
            return {k: int(entry[k]) for k in BUILTIN_DEFAULT} if entry else None
        except (LookupError, OSError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def _source(cls, options, artifacts, model_name) -> Path:
        src = getattr(options, "source", None) or getattr(options, "heads", None)
        if src:
            path = Path(src)
            if not path.is_dir():
                raise AccbenchError(f"eagle: source {src} is not a directory (download a checkpoint, e.g. "
                                    "`huggingface-cli download yuhuili/EAGLE-LLaMA3-Instruct-8B --local-dir DIR`)")
            if not has_weights(path):
                raise AccbenchError(f"eagle: no draft weights in {path}")
            return path
        path = artifacts.default(cls.name)
        if path is None:
            raise NeedsTraining(cls.name, model_name or "MODEL")
        return Path(path)

    @classmethod
    def preflight(cls, model_name, options, artifacts) -> None:
        from accbench.methods.eagle.published import check_source

        class _O:
            source = options.get("source")
            heads = options.get("heads")
        path = cls._source(_O, artifacts, model_name)
        if _O.source or _O.heads:  # a published or hand-given checkpoint: read it safely, check its shapes
            check_source(path)

    def drafter(self, n_positions: int) -> EagleDrafter:
        return Eagle3Drafter(self) if isinstance(self.draft, Eagle3Draft) else EagleDrafter(self)

    @classmethod
    def train(cls, job) -> Path:
        from accbench.methods.eagle.train import train_eagle

        return train_eagle(cls.name, job)

    @classmethod
    def tune(cls, job) -> Path:
        """Depth and node budget fitted to this device's cost curve and the draft's acceptance:
        see :mod:`.tune`."""
        from accbench.methods.eagle.tune import tune

        return tune(job)


register(EagleDecoder)

__all__ = ["DraftTree", "Eagle3Draft", "Eagle3Drafter", "EagleDecoder", "EagleDraft", "EagleDrafter", "dynamic_tree",
           "has_weights", "load_draft", "rerank"]
