"""EAGLE-2 (Li et al. 2024, arXiv 2401.15077 / 2406.16858): a one-layer draft model over the
target's features drafts a dynamic tree, verified in one forward by the one loop.

model.py: the draft model; dyntree.py: the dynamic tree (pure); drafter.py: the drafter;
published.py: strict loading of accbench artifacts and EAGLE-1/2 checkpoints; train.py:
``accbench train eagle``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accbench.methods import register
from accbench.methods.core import OptionError, SpeculativeDecoder, option
from accbench.methods.core.errors import AccbenchError, NeedsTraining
from accbench.methods.eagle.drafter import EagleDrafter
from accbench.methods.eagle.dyntree import DraftTree, dynamic_tree, rerank
from accbench.methods.eagle.model import EagleDraft
from accbench.methods.eagle.published import has_weights, load_draft


class EagleDecoder(SpeculativeDecoder):
    name = "eagle"
    description = "EAGLE-2: one-layer feature draft model, dynamic draft tree, tree verification (lossless)."
    lossless = True

    @dataclass
    class Options:
        # CPU-sized defaults: EAGLE-2 uses depth 6, top_k 10, 60 nodes on GPUs; on a CPU the
        # verification forward's cost grows with the block, so a smaller tree pays off.
        depth: int = option(5, "draft tree depth (levels drafted)", ge=1)
        top_k: int = option(4, "children per expanded node and nodes expanded per level", ge=1)
        total_tokens: int = option(16, "draft nodes verified per step (the re-ranking budget)", ge=1)
        source: str | None = option(None, "draft weights: a directory (accbench artifact or an EAGLE-1/2 "
                                          "checkpoint: config.json + pytorch_model.bin/model.safetensors); "
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
        class _O:
            source = options.get("source")
            heads = options.get("heads")
        cls._source(_O, artifacts, model_name)

    def drafter(self, n_positions: int) -> EagleDrafter:
        return EagleDrafter(self)

    @classmethod
    def train(cls, job) -> Path:
        from accbench.methods.eagle.train import train_eagle

        return train_eagle(cls.name, job)


register(EagleDecoder)

__all__ = ["DraftTree", "EagleDecoder", "EagleDraft", "EagleDrafter", "dynamic_tree", "has_weights", "load_draft",
           "rerank"]
