"""The Decoder protocol every method implements, and the pieces all decoders share.

A decoder is built once per loaded model::

    dec = SomeDecoder(model, tokenizer, **options)
    rec = dec.generate(prompt_ids, max_new_tokens=128, stop=StopChecker(tokenizer, ["[DONE]"]))

and returns a :class:`GenerationRecord`. Timing is done inside ``generate`` with
:class:`accbench.methods.base.Clock` so that every method measures TTFT and E2E the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import torch

# --------------------------------------------------------------------------------------
# The record a generation returns
# --------------------------------------------------------------------------------------


@dataclass
class GenerationRecord:
    """What one ``generate`` call returns. Token counts always come from ``tokens``."""

    tokens: list[int]  # new token ids, cut at the first stop string / EOS (the stopping token kept)
    ttft_s: float  # prompt ids in -> first new token id exists
    total_s: float  # prompt ids in -> last token out (E2E)
    forward_passes: int  # target-model forward passes, prefill included
    tokens_per_step: list[int]  # tokens committed by each decoding step (prefill's first token = step 0)
    drafted: list[int] = field(default_factory=list)  # drafted[k]: drafts proposed at draft position k
    accepted: list[int] = field(default_factory=list)  # accepted[k]: drafts accepted at draft position k
    lossless: bool = True  # the method promises AR-identical greedy output
    finish_reason: str = "length"  # "eos" | "stop" | "length"
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific figures (draft_s, verify_s, ...)

    @property
    def n_new(self) -> int:
        return len(self.tokens)

    @property
    def tau(self) -> float:
        """Tokens committed per target forward pass (the decode-phase mean accepted length).

        The prefill forward produces the first token; every later forward commits
        ``tokens_per_step[i]`` tokens. AR gives exactly 1.0.
        """
        steps = self.tokens_per_step[1:]
        if not steps:
            return 1.0
        return sum(steps) / len(steps)


# --------------------------------------------------------------------------------------
# Stopping: one implementation for every method
# --------------------------------------------------------------------------------------


class StopChecker:
    """Decides where a generated token sequence ends: at EOS or at the first stop string.

    The rule is a function of the token sequence only, applied position by position, so a
    method that commits several tokens at once cuts exactly where AR would have stopped.
    The stopping token itself is kept (``generate`` keeps EOS too); the text returned by
    :meth:`text` ends before the stop string.
    """

    def __init__(self, tokenizer, stop: Sequence[str] | None = None, eos_token_ids: Sequence[int] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        if eos_token_ids is None:
            eos_token_ids = eos_ids_of(tokenizer)
        self.eos = frozenset(int(i) for i in eos_token_ids)
        # A stop string of c characters is covered by at most c + 2 trailing tokens
        # (every token decodes to at least one character, or to part of one).
        self._window = (max(len(s) for s in self.stop) + 2) if self.stop else 0

    def first_stop(self, tokens: Sequence[int], start: int = 0) -> tuple[int, str] | None:
        """Index *i* >= start of the first token that ends the sequence, and why, or None.

        ``tokens[: i + 1]`` is what a token-by-token decoder would have produced.
        """
        eos, window, stop = self.eos, self._window, self.stop
        for i in range(start, len(tokens)):
            if tokens[i] in eos:
                return i, "eos"
            if window:
                tail = self.tokenizer.decode(tokens[max(0, i + 1 - window) : i + 1])
                for s in stop:
                    if s in tail:
                        return i, "stop"
        return None

    def text(self, tokens: Sequence[int]) -> str:
        """The output text: special tokens dropped, cut before the first stop string."""
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        cut = len(text)
        for s in self.stop:
            j = text.find(s)
            if j != -1:
                cut = min(cut, j)
        return text[:cut]


def eos_ids_of(tokenizer, model=None) -> list[int]:
    """EOS ids from the generation config (if a model is given) and the tokenizer."""
    ids: set[int] = set()
    if model is not None:
        gc = getattr(model, "generation_config", None)
        e = getattr(gc, "eos_token_id", None) if gc is not None else None
        if e is not None:
            ids.update([e] if isinstance(e, int) else list(e))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


# --------------------------------------------------------------------------------------
# Sampling: greedy by default; temperature / top-p with a seed
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def sample_from_logits(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick next tokens from ``logits[..., vocab]``: argmax when greedy, else temperature + top-p."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, cfg)
    flat = probs.reshape(-1, probs.shape[-1])
    out = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    return out.reshape(probs.shape[:-1])


def sampling_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature-scaled, top-p-filtered probabilities (float32)."""
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(dim=-1)
        drop = (cum - sorted_p) > cfg.top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


class Clock:
    """perf_counter timing that synchronizes CUDA before every reading (and only then)."""

    def __init__(self, device: torch.device | str):
        dev = torch.device(device)
        self._sync = torch.cuda.synchronize if dev.type == "cuda" else None
        self.t0 = 0.0

    def start(self) -> None:
        if self._sync:
            self._sync()
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        if self._sync:
            self._sync()
        return time.perf_counter() - self.t0


def block_extra(blocks: dict[int, int]) -> dict[str, Any]:
    """A drafting method's verification blocks, for ``GenerationRecord.extra``: ``blocks``
    (block size -> decode steps) and their step-weighted mean ``mean_block``."""
    return {"blocks": blocks, "mean_block": sum(k * c for k, c in blocks.items()) / max(1, sum(blocks.values()))}


# --------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------


@runtime_checkable
class Decoder(Protocol):
    """What every method provides. Register an implementation with
    :func:`accbench.methods.register` or the ``accbench.methods`` entry-point group."""

    name: ClassVar[str]
    lossless: ClassVar[bool]
    description: ClassVar[str]

    def __init__(self, model, tokenizer, *, sampling: SamplingConfig | None = None,
                 model_name: str | None = None, **options: Any) -> None: ...

    def generate(self, prompt_ids: Sequence[int] | torch.Tensor, max_new_tokens: int,
                 stop: StopChecker | Sequence[str] | None = None) -> GenerationRecord: ...


class DecoderBase:
    """Convenience base: stores model/tokenizer/options, resolves ``stop`` into a StopChecker
    and prompt ids into a ``[1, T]`` tensor on the model's device."""

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    description: ClassVar[str] = ""
    #: options the method accepts, with defaults (used for --help and config records)
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, model, tokenizer, *, sampling: SamplingConfig | None = None,
                 model_name: str | None = None, **options: Any):
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(f"method {self.name!r} has no option(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.options) or 'none'}")
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name  # the registry name the model was loaded under (for artifacts)
        self.sampling = sampling or SamplingConfig()
        self.opts = {**self.options, **options}
        self.device = next(model.parameters()).device
        self.eos_ids = eos_ids_of(tokenizer, model)
        self._generator: torch.Generator | None = None
        if not self.sampling.greedy:
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(self.sampling.seed)

    @property
    def is_lossless(self) -> bool:
        """Whether this run's output is promised to equal greedy AR (sampling is never)."""
        return self.lossless and self.sampling.greedy

    def reseed(self, seed: int) -> None:
        if self._generator is not None:
            self._generator.manual_seed(seed)

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
