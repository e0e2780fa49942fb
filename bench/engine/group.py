"""The worker side: one group = one model x device x suite x prompt length.

A group loads the model once, builds the decoder of every method it still has work for,
warms each up (unrecorded), then measures every sample with all its methods together
(:mod:`accbench.engine.pairing`) and yields one row per (sample, method). A method that
raises while being built, warmed up, decoding or scored fails for that sample (or, when
built or warmed up, for the whole group) and the others go on; the driver records it.

While it works, the group keeps its *beacon* (three shared ints: phase, sample position,
method position) up to date, so that whoever watches the worker knows what was in flight
when it died.
"""

from __future__ import annotations

import functools
import os
import socket
import time
import traceback
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, MutableSequence

from accbench.engine import measure
from accbench.engine.config import SweepConfig
from accbench.engine.pairing import (
    BUILD,
    DECODE,
    LOAD,
    METHOD,
    PHASE,
    PHASES,
    SAMPLE,
    SCORE,
    WARMUP,
    Side,
    error_text,
    measure_together,
    memory_scope,
    record_fields,
)
from accbench.engine.prompts import PromptBuilder, context_length, prompt_room
from accbench.errors import AccbenchError, NeedsTraining

Message = tuple[str, Any]

#: what every row copies from its sample's ``meta`` (None when the suite has none): ``category``
#: (Spec-Bench's task, a ``prompts`` file's ``category``), ``subcategory`` (mt_bench's MT-bench
#: label), ``turn`` (1, 2, ... in a multi-turn suite)
ROW_FIELDS = ("category", "subcategory", "turn")


@dataclass(frozen=True)
class Group:
    model: str
    device: str  # the rows' device key (torch device or --device-label)
    suite: str
    prompt_length: int | None

    @property
    def label(self) -> str:
        plen = f"/{self.prompt_length}tok" if self.prompt_length else ""
        return f"{self.model}/{self.suite}{plen}"

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "suite": self.suite,
                "prompt_length": self.prompt_length}

    def key(self, sample_id: str, method: str) -> tuple:
        """The row key (accbench.engine.results.KEY_FIELDS) of one of this group's rows."""
        return (self.model, self.device, self.suite, self.prompt_length, sample_id, method)


class Work:
    """The (sample, method) pairs a group still has to measure, samples in suite order and
    each sample's methods in the group's order (AR first)."""

    def __init__(self, methods: list[str], todo: list[tuple[str, list[str]]]):
        self.methods = methods
        self.todo = [(sid, list(ms)) for sid, ms in todo if ms]

    def drop(self, sample_id: str | None, method: str | None) -> None:
        """Remove a pair; ``None`` matches every sample (or every method)."""
        for sid, ms in self.todo:
            if sample_id is None or sid == sample_id:
                ms[:] = [m for m in ms if method is not None and m != method]
        self.todo = [(sid, ms) for sid, ms in self.todo if ms]

    def samples_of(self, method: str) -> list[str]:
        return [sid for sid, ms in self.todo if method in ms]

    def methods_of(self, sample_id: str) -> list[str]:
        return next((ms for sid, ms in self.todo if sid == sample_id), [])

    def pending_methods(self) -> list[str]:
        return [m for m in self.methods if self.samples_of(m)]

    def n_pairs(self) -> int:
        return sum(len(ms) for _, ms in self.todo)

    def as_payload(self) -> list[list]:
        return [[sid, list(ms)] for sid, ms in self.todo]

    def __bool__(self) -> bool:
        return bool(self.todo)


def sample_seed(seed: int, sample_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(sample_id.encode())) % (2**31)


def failure(method: str, sample_id: str | None, phase: int, error: str, tb: str | None = None,
            sample_ids: list[str] | None = None) -> dict[str, Any]:
    """A failed.jsonl record's worker-side fields; ``sample_id`` None: ``sample_ids`` all failed."""
    rec: dict[str, Any] = {"method": method, "sample_id": sample_id, "phase": PHASES[phase], "error": error}
    if sample_id is None:
        rec["sample_ids"] = list(sample_ids or [])
    if tb:
        rec["traceback"] = tb[-4000:]
    return rec


def build_decoder(method: str, loaded, cfg: SweepConfig, device: str):
    """``cls(model, tokenizer, sampling=, model_name=, artifacts=, **options)``; with
    ``--train-missing`` a decoder that needs training is trained first."""
    from accbench import methods as method_registry
    from accbench.methods.core import SamplingConfig
    from accbench.training.artifacts import ModelArtifacts

    cls = method_registry.get(method)
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    opts = dict(cfg.method_options.get(method, {}))

    def make():
        return cls(loaded.model, loaded.tokenizer, sampling=sampling, model_name=loaded.name,
                   artifacts=ModelArtifacts(loaded.name), **opts)

    try:
        try:
            return make()
        except NeedsTraining:
            if not cfg.train_missing:
                raise
            from accbench.training import commands
            from rich.console import Console

            commands.train_method(method, loaded.name, loaded, dtype=cfg.dtype, device=device,
                                  data_dir=cfg.data_dir, console=Console())
            return make()
    except AccbenchError:
        raise
    except (ValueError, TypeError) as e:
        raise AccbenchError(f"method {method!r}: {e}") from None


def group_messages(payload: dict[str, Any], beacon: MutableSequence[int], *, catch: bool = True) -> Iterator[Message]:
    """Run one group. ``payload``: ``cfg`` (SweepConfig fields), ``group`` (Group fields),
    ``methods`` (the group's methods, AR first), ``todo`` ([sample id, [methods]] still to
    do), ``device`` (the torch device to use here). Yields ``("start", where)``, ``("msg",
    text)``, ``("row", row)`` and ``("failed", record)``; with ``catch`` False a method's
    exception propagates instead (inline debugging)."""
    import torch
    from accbench import suites as suite_registry
    from accbench.methods.core import StopChecker, eos_ids_of
    from accbench.models import load_model, resolve_device, resolve_dtype

    cfg, group = SweepConfig.from_dict(payload["cfg"]), Group(**payload["group"])
    work = Work(payload["methods"], payload["todo"])
    device = resolve_device(payload["device"])
    dtype = str(resolve_dtype(cfg.dtype, device)).replace("torch.", "")
    beacon[PHASE], beacon[SAMPLE], beacon[METHOD] = LOAD, -1, -1
    yield "start", _where(device)
    torch.manual_seed(cfg.seed)
    suite = suite_registry.build(group.suite, data_dir=cfg.data_dir, data_file=cfg.data_file)
    samples = list(suite.samples(limit=cfg.limit))
    msgs: list[str] = []
    loaded = load_model(group.model, dtype=cfg.dtype, device=str(device), progress=msgs.append,
                        device_map=cfg.device_map)
    for m in msgs:
        yield "msg", m
    budget = cfg.max_new_tokens or suite.max_new_tokens
    room, why = prompt_room(group.model, context_length(loaded.model.config), budget)
    prompts = PromptBuilder(loaded.tokenizer, suite, samples, cfg.prompt_format, group.prompt_length,
                            max_tokens=room, truncate=cfg.truncate, why=why)
    by_id = {s.id: s for s in samples}
    stopper = StopChecker(loaded.tokenizer, suite.stop, eos_ids_of(loaded.tokenizer, loaded.model))
    first_ids = prompts.ids(_opening(by_id[work.todo[0][0]], by_id))  # warm-up prompt: no answers needed
    decoders: dict[str, Any] = {}
    for m in work.pending_methods():
        dec = yield from _ready(m, work, loaded, cfg, payload["device"], first_ids, min(budget, 32), stopper,
                                beacon, catch)
        if dec is not None:
            decoders[m] = dec
    talk = Conversations(payload.get("answers") or {}, by_id, prompts, decoders, cfg, work, budget, stopper)
    for pos, (sid, ms) in enumerate(work.as_payload()):
        beacon[PHASE], beacon[SAMPLE], beacon[METHOD] = DECODE, pos, -1
        sides = [Side(work.methods.index(m), m, decoders[m]) for m in ms if m in decoders]
        if not sides:
            continue
        sample = by_id[sid]
        try:  # a later turn, built on longer answers than checked before the sweep, may not fit
            ids = prompts.ids(sample, talk.history(sample))
        except AccbenchError as e:
            if not catch:
                raise
            for s in sides:
                yield "failed", failure(s.method, sid, DECODE, e.message)
            continue
        measure_together(sides, ids, budget, stopper, repeats=cfg.repeats, seed=sample_seed(cfg.seed, sid),
                         device=device, beacon=beacon, catch=catch)
        beacon[PHASE] = SCORE
        meta = {**group.as_dict(), "sample_id": sid, "dtype": dtype, "prompt_tokens": len(ids),
                "prompt_truncated_from": prompts.truncated.get(sid),
                "prompt_format": prompts.format, "pairing": "lockstep" if len(sides) > 1 else "alone",
                "peak_mem_scope": memory_scope(device),
                **{k: (sample.meta or {}).get(k) for k in ROW_FIELDS}}
        for s in sides:
            beacon[METHOD] = s.slot
            if s.failure is not None:
                yield "failed", failure(s.method, sid, DECODE, s.failure.error, s.failure.traceback)
                continue
            try:
                row = _row(s, sample, suite, stopper, meta, device)
            except Exception as e:
                if not catch:
                    raise
                yield "failed", failure(s.method, sid, SCORE, error_text(e), traceback.format_exc())
                continue
            talk.answered(sid, s.method, row["output_text"])
            yield "row", row


def _opening(sample, by_id):
    """A conversation's first turn in place of a later one (whose prompt needs earlier answers)."""
    meta = sample.meta or {}
    if len(meta.get("turns") or []) > 1:
        return by_id.get(f"{meta.get('question')}/t1", sample)
    return sample


class Conversations:
    """Earlier turns' answers for multi-turn samples (``meta["turns"]``, ids ``<q>/t<k>``).

    A later turn is built on the answers of the group's baseline (the sweep's first method, AR
    when it runs), so every method gets the same prompt for it; answers come from the results
    folder (the driver's ``answers``: final, whichever method this group measures the turn
    again with), from this group's rows (the most preferred method's), or, when neither has
    one (the turn was measured before but its row is not in the folder, or the baseline failed
    on it), from an untimed generation with the most preferred decoder this group has."""

    def __init__(self, known: dict[str, str], by_id, prompts, decoders, cfg: SweepConfig, work: Work, budget, stopper):
        from accbench.engine.config import ordered_methods

        self.answers = dict(known)
        self.by_id, self.prompts, self.decoders, self.budget, self.stopper = by_id, prompts, decoders, budget, stopper
        self.first = ordered_methods(cfg.methods)[0]
        self.order = [self.first] + [m for m in work.methods if m != self.first]
        self.given_by: dict[str, int] = {sid: -1 for sid in self.answers}  # -1: from the results folder
        self.seed = cfg.seed

    def history(self, sample) -> list[str]:
        turns = (sample.meta or {}).get("turns") or []
        q = sample.meta.get("question")
        return [self._answer(f"{q}/t{k}") for k in range(1, len(turns))]

    def answered(self, sid: str, method: str, text: str) -> None:
        """A row's output; kept when it comes from the most preferred method so far."""
        rank = self.order.index(method) if method in self.order else len(self.order)
        if (self.by_id[sid].meta or {}).get("turns") and rank < self.given_by.get(sid, len(self.order) + 1):
            self.answers[sid], self.given_by[sid] = text, rank

    def _answer(self, sid: str) -> str:
        if sid not in self.answers:
            dec = next((self.decoders[m] for m in self.order if m in self.decoders), None)
            if dec is None:
                raise AccbenchError(f"no decoder to answer {sid}, which a later turn builds on")
            sample = self.by_id[sid]
            ids = self.prompts.ids(sample, self.history(sample))
            dec.reseed(sample_seed(self.seed, sid))  # as when measured: the same answer under sampling too
            rec = dec.generate(ids, self.budget, self.stopper)  # untimed: its answer only
            self.answers[sid], self.given_by[sid] = self.stopper.text(rec.tokens), -1
        return self.answers[sid]


def _ready(method: str, work: Work, loaded, cfg: SweepConfig, device: str, ids: list[int], budget: int,
           stopper, beacon: MutableSequence[int], catch: bool):
    """Build and warm up one method's decoder (a generator returning it, or None after
    yielding the failure of all the method's samples)."""
    slot = work.methods.index(method)
    beacon[PHASE], beacon[SAMPLE], beacon[METHOD] = BUILD, -1, slot
    try:
        dec = build_decoder(method, loaded, cfg, device)
        beacon[PHASE] = WARMUP
        for _ in range(cfg.warmup):  # not recorded
            dec.generate(ids, budget, stopper)
        return dec
    except Exception as e:
        if not catch:
            raise
        yield "failed", failure(method, None, beacon[PHASE], error_text(e), traceback.format_exc(),
                                sample_ids=work.samples_of(method))
        return None


def _row(side: Side, sample, suite, stopper, meta: dict[str, Any], device) -> dict[str, Any]:
    """One samples.jsonl row (before the driver's exact-match-vs-AR fields)."""
    row = record_fields(side.records, side.peak_mb)
    text = stopper.text(row["new_token_ids"])
    quality = suite.score(sample, text) if sample.reference is not None else {}
    row.update(meta)
    row.update({"method": side.method, "output_text": text, "quality": quality, "host": _hostname(),
                "device_name": _device_name(device), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return row


def _where(device) -> dict[str, Any]:
    where = {"host": _hostname(), "pid": os.getpid(), "device": str(device)}
    if device.type == "cuda":
        where["device_name"] = _device_name(device)
    return where


@functools.lru_cache(maxsize=None)
def _hostname() -> str:
    return socket.gethostname()


@functools.lru_cache(maxsize=None)
def _device_name(device) -> str:
    """What the rows' device actually is: the GPU's name, or the CPU model."""
    if getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return measure._cpu_model()
