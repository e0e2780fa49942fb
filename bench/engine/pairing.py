"""Lockstep pairing: AR and every method decode the same sample at the same moment.

Every decoder's ``decode`` is a generator that yields its committed-token count after each
target forward and returns its GenerationRecord; its Clock counts only its own steps. For one
sample there is one generator per method (AR first), and the live generator with the fewest
committed tokens is resumed next (ties: AR first, then --methods order) until all have
returned. AR and each method therefore decode the same token range within moments of each
other, so a load burst that starts or stops mid-sample slows both sides alike.

Between steps, outside every timed region, the engine only does what the pairing needs: it
picks the next side, stores that side's index in the worker's beacon (a shared-memory int:
a plain store, so a driver that sees the worker die knows which method was decoding) and
reads the CUDA allocator's counters.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, MutableSequence, Sequence

import torch
from accbench.engine import measure
from accbench.methods.core import DecoderBase, GenerationRecord

#: the beacon's slots: [phase, sample position, method position] (see accbench.engine.worker)
PHASE, SAMPLE, METHOD = 0, 1, 2
LOAD, BUILD, WARMUP, DECODE, SCORE = range(5)
PHASES = ("load", "build", "warmup", "decode", "score")

DESIGN = {
    "design": "lockstep",
    "description": "AR and every method decode each sample together: one generator per method, the one "
                   "with the fewest committed tokens resumed next (ties: AR first, then --methods order); "
                   "each side's clock counts only its own steps, so a load change mid-sample hits both sides.",
}


@dataclass
class Failure:
    """A side that raised: the exception's text and traceback."""

    error: str
    traceback: str


@dataclass
class Side:
    """One method's decoder in a lockstep, and what it measured over the repeats."""

    slot: int  # the method's position in the group (what the beacon says)
    method: str
    decoder: Any
    records: list[GenerationRecord] = field(default_factory=list)
    peak_mb: float = 0.0
    failure: Failure | None = None


def error_text(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def steps_of(dec, ids: list[int], budget: int, stop):
    """The decoder's step generator; a class with no ``decode`` of its own (a plugin that
    implements only ``generate``) runs as one step."""
    own = getattr(type(dec), "decode", None)
    if own is None or own is DecoderBase.decode:
        return _one_step(dec, ids, budget, stop)
    return dec.decode(ids, budget, stop)


def _one_step(dec, ids, budget, stop):
    return dec.generate(ids, budget, stop)
    yield  # never reached: makes this a generator that returns on its first resume


class CudaMemory:
    """Per-side peak on CUDA: what was allocated when the sample began (the weights, shared by
    every side), plus what the side itself holds between its steps (its KV cache...), plus
    the transient peak of its own step."""

    def __init__(self, device: torch.device, n: int):
        self.device = device
        self.base = torch.cuda.memory_allocated(device)
        self.held = [0] * n
        self.peak = [self.base] * n
        self.at = 0

    def before(self, rank: int) -> None:
        self.at = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def after(self, rank: int) -> None:
        top = torch.cuda.max_memory_allocated(self.device)
        self.peak[rank] = max(self.peak[rank], self.base + self.held[rank] + top - self.at)
        self.held[rank] += torch.cuda.memory_allocated(self.device) - self.at

    def peaks_mb(self) -> list[float]:
        return [p / 2**20 for p in self.peak]


class ProcessMemory:
    """CPU: the process's peak RSS over the sample, shared by every side."""

    def __init__(self, device: torch.device, n: int):
        self.device, self.n = device, n
        measure.reset_peak_memory(device)

    def before(self, rank: int) -> None: ...

    def after(self, rank: int) -> None: ...

    def peaks_mb(self) -> list[float]:
        return [measure.peak_memory_mb(self.device)] * self.n


def memory_scope(device: torch.device) -> str:
    """``peak_mem_scope`` of the rows: "method" (CUDA, per side) or "group" (CPU, shared)."""
    return "method" if device.type == "cuda" else "group"


def lockstep(sides: Sequence[Side], ids: list[int], budget: int, stop, *, beacon: MutableSequence[int],
             memory, catch: bool = True) -> list[GenerationRecord | Failure]:
    """Decode ``ids`` with every side together; a record (or, with ``catch``, the Failure of a
    side that raised) per side, in order. The sides go on when one fails."""
    out: list[Any] = [None] * len(sides)
    gens = {}
    for rank, s in enumerate(sides):
        s.decoder.paired = len(sides) > 1
        try:
            gens[rank] = steps_of(s.decoder, ids, budget, stop)
        except Exception as e:
            if not catch:
                raise
            out[rank] = Failure(error_text(e), traceback.format_exc())
    counts = dict.fromkeys(gens, 0)
    while gens:
        rank = min(gens, key=lambda r: (counts[r], r))
        beacon[METHOD] = sides[rank].slot
        memory.before(rank)
        try:
            counts[rank] = next(gens[rank])
        except StopIteration as done:
            out[rank] = done.value
            del gens[rank]
        except Exception as e:
            if not catch:
                raise
            out[rank] = Failure(error_text(e), traceback.format_exc())
            del gens[rank]
        memory.after(rank)
    return out


def measure_together(sides: list[Side], ids: list[int], budget: int, stop, *, repeats: int,
                     seed: int, device: torch.device, beacon: MutableSequence[int], catch: bool = True) -> None:
    """``repeats`` lockstep generations of one sample; fills each side's records (all kept),
    peak memory and failure. Each decoder is reseeded with ``seed`` before every generation."""
    meter = CudaMemory if device.type == "cuda" else ProcessMemory
    for _ in range(repeats):
        live = [s for s in sides if s.failure is None]
        if not live:
            return
        for s in live:
            s.decoder.reseed(seed)
        memory = meter(device, len(live))
        results = lockstep(live, ids, budget, stop, beacon=beacon, memory=memory, catch=catch)
        for s, res, peak in zip(live, results, memory.peaks_mb()):
            if isinstance(res, Failure):
                s.failure = res
            else:
                s.records.append(res)
                s.peak_mb = max(s.peak_mb, peak)


def record_fields(records: list[GenerationRecord], peak_mb: float) -> dict[str, Any]:
    """A row's measured fields: the median repeat by total time (every repeat's timing kept)."""
    order = sorted(range(len(records)), key=lambda i: records[i].total_s)
    rec = records[order[len(order) // 2]]
    n = rec.n_new
    return {
        "new_token_ids": rec.tokens,
        "n_new": n,
        "finish_reason": rec.finish_reason,
        "ttft_s": rec.ttft_s,
        "total_s": rec.total_s,
        "tpot_s": (rec.total_s - rec.ttft_s) / (n - 1) if n > 1 else None,
        "tokens_per_s": n / rec.total_s if rec.total_s > 0 else None,
        "forward_passes": rec.forward_passes,
        "tau": rec.tau,
        "tokens_per_step": rec.tokens_per_step,
        "drafted": rec.drafted,
        "accepted": rec.accepted,
        "reached": rec.reached,
        "step_times_s": [round(t, 6) for t in rec.step_times_s],
        "draft_shape": rec.draft_shape,
        "lossless": rec.lossless,
        "peak_mem_mb": peak_mb,
        "repeat_total_s": [r.total_s for r in records],
        "repeat_ttft_s": [r.ttft_s for r in records],
        "extra": rec.extra,
    }
