"""The Decoder protocol every method implements, and the base class the built-in ones share.

A decoder is built once per loaded model::

    dec = SomeDecoder(model, tokenizer, sampling=SamplingConfig(), artifacts=store, **options)
    rec = dec.generate(prompt_ids, max_new_tokens=128, stop=StopChecker(tokenizer, ["[DONE]"]))

``generate`` drives ``decode``, a generator that yields after every target forward (the
prefill first) and returns the :class:`GenerationRecord`. The harness can step several
decoders' generators in lockstep on the same prompt, so AR and a method are timed side by
side; each decoder's :class:`Clock` counts only its own steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Generator, Protocol, Sequence, runtime_checkable

import torch
from accbench.methods.core.options import NoOptions, parse_options
from accbench.methods.core.record import GenerationRecord, run_to_end
from accbench.methods.core.sampling import SamplingConfig
from accbench.methods.core.stopping import StopChecker, eos_ids_of


class ArtifactStore(Protocol):
    """What a decoder may ask the harness for, for the model it was built on: the default
    artifact of a kind (trained heads, a tuned tree) and the folder a kind's files live in."""

    def default(self, key: str) -> Path | None: ...

    def folder(self, key: str) -> Path: ...


class NoArtifacts:
    """The store of a decoder built without a harness: nothing is found."""

    def default(self, key: str) -> Path | None:
        return None

    def folder(self, key: str) -> Path:
        raise LookupError(f"no artifact store: pass artifacts= to look up {key!r}")


@runtime_checkable
class Decoder(Protocol):
    """What every method provides. Register an implementation with
    :func:`accbench.methods.register` or the ``accbench.methods`` entry-point group.

    ``train(job)`` and ``tune(job)`` (classmethods, optional) receive the loaded model, the
    data and an artifact writer from ``accbench train`` / ``accbench tune`` and return the
    artifact's path.

    ``preflight(model_name, options, artifacts)`` (classmethod, optional) is called by
    ``accbench run`` for every (method, model) before anything is written and before any model
    loads: ``options`` are the method's ``-o`` values as given (``{key: value string}``),
    ``artifacts`` the harness's :class:`ArtifactStore` for that model (read without loading
    it). Raise an ``AccbenchError`` (one line: what is missing and how to get it, e.g.
    ``NeedsTraining``) when the method cannot run; return None otherwise. The default does
    nothing."""

    name: ClassVar[str]
    lossless: ClassVar[bool]
    description: ClassVar[str]

    def __init__(self, model, tokenizer, *, sampling: SamplingConfig | None = None,
                 model_name: str | None = None, artifacts: ArtifactStore | None = None, **options: Any) -> None: ...

    def generate(self, prompt_ids: Sequence[int] | torch.Tensor, max_new_tokens: int,
                 stop: StopChecker | Sequence[str] | None = None) -> GenerationRecord: ...


class DecoderBase:
    """Stores model/tokenizer/options, resolves ``stop`` into a StopChecker and prompt ids into
    a ``[1, T]`` tensor on the model's device. Subclasses implement :meth:`decode`."""

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = ""
    #: the method's options: a dataclass whose fields are made with ``core.options.option``
    Options: ClassVar[type] = NoOptions
    #: other names ``--methods`` accepts for this method
    aliases: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model, tokenizer, *, sampling: SamplingConfig | None = None,
                 model_name: str | None = None, artifacts: ArtifactStore | None = None, **options: Any):
        self.options = parse_options(self.name, self.Options, options)
        self.opts = dict(vars(self.options))
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name  # the registry name the model was loaded under
        self.artifacts = artifacts or NoArtifacts()
        self.sampling = sampling or SamplingConfig()
        self.device = next(model.parameters()).device
        self.eos_ids = eos_ids_of(tokenizer, model)
        self.paired = False  # set by the harness when it steps this decoder in lockstep with others
        self._generator: torch.Generator | None = None
        if not self.sampling.greedy:
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(self.sampling.seed)

    @classmethod
    def preflight(cls, model_name: str, options: dict[str, Any], artifacts: ArtifactStore) -> None:
        """Check, before the model loads, what this method needs for ``model_name`` (see
        :class:`Decoder`); raise an ``AccbenchError`` naming what is missing. Default: nothing."""
        return None

    @property
    def is_lossless(self) -> bool:
        """Whether this run's output is promised to equal greedy AR (sampling is never)."""
        return self.lossless and self.sampling.greedy

    def reseed(self, seed: int) -> None:
        if self._generator is not None:
            self._generator.manual_seed(seed)

    def generate(self, prompt_ids, max_new_tokens: int, stop=None) -> GenerationRecord:
        return run_to_end(self.decode(prompt_ids, max_new_tokens, stop))

    def decode(self, prompt_ids, max_new_tokens: int, stop=None) -> Generator[int, None, GenerationRecord]:
        """Yield the number of committed tokens after every target forward; return the record."""
        raise NotImplementedError

    def _stop_checker(self, stop) -> StopChecker:
        if isinstance(stop, StopChecker):
            return stop
        return StopChecker(self.tokenizer, stop, self.eos_ids)

    def _prompt_tensor(self, prompt_ids) -> torch.Tensor:
        if isinstance(prompt_ids, torch.Tensor):
            t = prompt_ids.reshape(1, -1)
        else:
            t = torch.tensor([list(prompt_ids)], dtype=torch.long)
        return t.to(self.device)
