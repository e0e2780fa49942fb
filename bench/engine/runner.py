"""The sweep: methods x models x suites (x devices), one row per sample per method.

Order of work: for each model (loaded once), each suite, each sample, every method in turn
(AR first), so a method and its AR baseline are measured on the same prompt minutes apart
under the same machine conditions. Rows are appended as soon as a sample is scored; a rerun
skips every row already present.
"""

from __future__ import annotations

import functools
import socket
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from accbench.engine import measure
from accbench.errors import AccbenchError, NeedsTraining
from accbench.engine.results import ResultsDir, row_key
from accbench.reports.stats import first_divergence

BASELINE = "ar"


@dataclass
class SweepConfig:
    methods: list[str]
    models: list[str]
    suites: list[str]
    out: Path
    limit: int | None = None
    max_new_tokens: int | None = None  # None: each suite's own budget
    seed: int = 0
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    device: str | None = None  # None: cpu
    repeats: int = 1
    warmup: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    prompt_format: str = "auto"  # "auto" (the suite's preference) | "raw" | "chat"
    data_dir: str | None = None
    data_file: str | None = None
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompt_lengths: list[int] | None = None  # sweep axis: cut/pack every prompt to these token counts
    train_missing: bool = False  # train a method's missing artifacts instead of stopping
    # How the cells (method x model x suite x prompt length) run; none of these is a setting
    # (they do not change what a row means). See accbench.engine.executors.
    executor: str = "inline"  # "inline" (this process) | "local" (a worker process per cell) | "ray"
    address: str | None = None  # ray: "auto", "local" or HOST:PORT (None: an initialized ray, else auto)
    ray_resources: dict[str, float] = field(default_factory=dict)  # extra resources per cell, e.g. {"H100": 1}
    ray_cpus: float | None = None  # CPUs per cell on ray (default 1)
    retries: int | None = None  # re-runs of a failed cell (default: 0 local, 1 ray)
    device_label: str | None = None  # the rows' `device` (default: the torch device, e.g. cuda:0)
    device_map: str | None = None  # "auto": shard a model too large for one GPU over the node's GPUs

    def settings(self) -> dict[str, Any]:
        """What changes the meaning of a row: resuming with other values is refused."""
        return {
            "max_new_tokens": self.max_new_tokens, "seed": self.seed, "dtype": self.dtype,
            "repeats": self.repeats, "temperature": self.temperature, "top_p": self.top_p,
            "prompt_format": self.prompt_format, "data_file": self.data_file,
            "method_options": self.method_options,
        }


class NullProgress:
    """The interface the runner reports through (the CLI passes a rich implementation)."""

    def message(self, text: str) -> None: ...
    def start(self, total_rows: int, done_rows: int) -> None: ...
    def cell(self, model: str, suite: str, n_rows: int) -> None: ...
    def row_done(self, row: dict[str, Any]) -> None: ...
    def cells(self, queued: int, running: dict[str, str], done: int, failed: int) -> None: ...
    def stop(self) -> None: ...


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def validate(cfg: SweepConfig) -> None:
    """Fail early, before any model loads, on names that do not exist."""
    from accbench import methods as method_registry
    from accbench import suites as suite_registry
    from accbench.models import resolve_spec

    known = method_registry.available()
    for m in cfg.methods:
        if m not in known:
            raise AccbenchError(f"unknown method {m!r}; valid: {', '.join(known)}")
    known_suites = suite_registry.available()
    for s in cfg.suites:
        if s not in known_suites:
            raise AccbenchError(f"unknown suite {s!r}; valid: {', '.join(known_suites)}")
    for name in cfg.models:
        resolve_spec(name)
    if cfg.limit is not None and cfg.limit <= 0:
        raise AccbenchError(f"--limit must be a positive number of samples, got {cfg.limit}")
    if cfg.max_new_tokens is not None and cfg.max_new_tokens <= 0:
        raise AccbenchError(f"--max-new-tokens must be positive, got {cfg.max_new_tokens}")
    if cfg.repeats <= 0:
        raise AccbenchError(f"--repeats must be positive, got {cfg.repeats}")
    if cfg.warmup < 0:
        raise AccbenchError(f"--warmup cannot be negative, got {cfg.warmup}")
    for n in cfg.prompt_lengths or []:
        if n < 8:
            raise AccbenchError(f"--prompt-lengths must be at least 8 tokens each, got {n}")
    if cfg.prompt_format not in ("auto", "raw", "chat"):
        raise AccbenchError(f"--prompt-format must be auto, raw or chat, got {cfg.prompt_format!r}")


def suite_format(cfg_format: str, suite) -> str:
    """``auto`` resolves to the suite's preference: raw for MBPP (lm-eval's few-shot format),
    chat for instruction-style suites (an instruction-tuned model given a bare instruction
    often answers with an end-of-turn token straight away)."""
    if cfg_format != "auto":
        return cfg_format
    return getattr(suite, "prompt_format", "chat")


def encode_prompt(tokenizer, text: str, prompt_format: str) -> list[int]:
    if prompt_format == "chat" and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(text).input_ids]


def fit_to_length(ids: list[int], length: int, filler: list[int], bos_id: int | None) -> list[int]:
    """Cut or pack a prompt to exactly ``length`` tokens.

    Longer prompts lose their middle (LongBench's truncation: the head, with the task
    instruction of most templates, and the tail, with the question, survive). Shorter prompts
    are packed: ``filler`` tokens (other samples' prompts) are put in front, after the BOS token,
    so the prompt's own instruction and question stay at its end."""
    if len(ids) >= length:
        head = length // 2
        return ids[:head] + ids[len(ids) - (length - head):]
    has_bos = bos_id is not None and ids and ids[0] == bos_id
    body = ids[1:] if has_bos else ids
    need = length - len(ids)
    if not filler:
        raise AccbenchError("cannot pack a prompt: no other samples to take filler text from")
    reps = -(-need // len(filler))
    pad = (filler * reps)[-need:]
    return ([bos_id] if has_bos else []) + pad + body


def ordered_methods(methods: list[str]) -> list[str]:
    """AR first, so every method's row can be compared with AR's tokens at once."""
    ms = list(dict.fromkeys(methods))
    return ([BASELINE] if BASELINE in ms else []) + [m for m in ms if m != BASELINE]


def _sample_seed(seed: int, sample_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(sample_id.encode())) % (2**31)


def build_decoder(method: str, loaded, cfg: SweepConfig, progress: NullProgress | None = None):
    from accbench import methods as method_registry
    from accbench.methods import SamplingConfig

    cls = method_registry.get(method)
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    opts = dict(cfg.method_options.get(method, {}))
    try:
        try:
            return cls(loaded.model, loaded.tokenizer, sampling=sampling, model_name=loaded.name, **opts)
        except NeedsTraining:
            if not cfg.train_missing:
                raise
            from rich.console import Console

            from accbench.training.train_data import TrainRequest

            if progress is not None:
                progress.stop()
            cls.train(TrainRequest(method=method, model=loaded.name, dtype=cfg.dtype, device=cfg.device,
                                   data_dir=cfg.data_dir), Console())
            return cls(loaded.model, loaded.tokenizer, sampling=sampling, model_name=loaded.name, **opts)
    except AccbenchError:
        raise
    except (ValueError, TypeError) as e:
        raise AccbenchError(f"method {method!r}: {e}") from None


# ---------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------


def run_sweep(cfg: SweepConfig, progress: NullProgress | None = None, overwrite: bool = False) -> ResultsDir:
    from accbench import suites as suite_registry
    from accbench.models import load_model, resolve_device, resolve_dtype

    progress = progress or NullProgress()
    if cfg.executor != "inline":  # one worker process (or ray task) per cell
        from accbench.engine.executors import run_cells

        return run_cells(cfg, progress, overwrite)
    validate(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)

    # Suites are cheap to build and tell us the amount of work before any model loads.
    suite_objs = {}
    suite_samples = {}
    for s in cfg.suites:
        suite = suite_registry.build(s, data_dir=cfg.data_dir, data_file=cfg.data_file)
        suite_objs[s] = suite
        suite_samples[s] = list(suite.samples(limit=cfg.limit))

    results = ResultsDir(cfg.out)
    config = {
        "command": "run",
        "methods": ordered_methods(cfg.methods), "models": cfg.models, "suites": cfg.suites,
        "limit": cfg.limit, "warmup": cfg.warmup, "data_dir": cfg.data_dir,
        "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": measure.environment(device),
    }
    results.prepare(config, cfg.settings(), overwrite=overwrite)
    rows = results.load_rows()
    done = {row_key(r) for r in rows}
    ar_tokens = {row_key({**r, "method": BASELINE}): r["new_token_ids"] for r in rows if r["method"] == BASELINE}

    methods = ordered_methods(cfg.methods)
    dev_name = str(device)

    lengths: list[int | None] = list(cfg.prompt_lengths) if cfg.prompt_lengths else [None]

    def key(model, suite, plen, sample_id, method):
        return row_key({"model": model, "device": dev_name, "suite": suite, "prompt_length": plen,
                        "sample_id": sample_id, "method": method})

    total = sum(len(suite_samples[s]) for s in cfg.suites) * len(methods) * len(cfg.models) * len(lengths)
    todo = {(mn, s): [(smp, plen, m) for smp in suite_samples[s] for plen in lengths for m in methods
                      if key(mn, s, plen, smp.id, m) not in done]
            for mn in cfg.models for s in cfg.suites}
    progress.start(total, total - sum(len(v) for v in todo.values()))

    try:
        for model_name in cfg.models:
            if not any(todo[(model_name, s)] for s in cfg.suites):
                continue
            progress.message(f"loading {model_name} ({dev_name}, {str(dtype).replace('torch.', '')})")
            loaded = load_model(model_name, dtype=cfg.dtype, device=cfg.device, progress=progress.message,
                                device_map=cfg.device_map)
            decoders = {m: build_decoder(m, loaded, cfg) for m in methods}  # may train (--train-missing)
            warmed: set[str] = set()
            for suite_name in cfg.suites:
                work = todo[(model_name, suite_name)]
                if not work:
                    continue
                suite = suite_objs[suite_name]
                budget = cfg.max_new_tokens or suite.max_new_tokens
                progress.cell(model_name, suite_name, len(work))
                from accbench.methods import StopChecker

                stopper = StopChecker(loaded.tokenizer, suite.stop, decoders[methods[0]].eos_ids)
                prompt_cache: dict[tuple, list[int]] = {}
                filler: list[int] = []
                if cfg.prompt_lengths:
                    for other in suite_samples[suite_name][:64]:
                        filler += encode_prompt(loaded.tokenizer, other.prompt, "raw")
                for sample, plen, method in work:
                    dec = decoders[method]
                    ids = prompt_cache.get((sample.id, plen))
                    if ids is None:
                        ids = encode_prompt(loaded.tokenizer, sample.prompt, suite_format(cfg.prompt_format, suite))
                        if plen is not None:
                            ids = fit_to_length(ids, plen, filler, loaded.tokenizer.bos_token_id)
                        prompt_cache[(sample.id, plen)] = ids
                    if method not in warmed:
                        for _ in range(cfg.warmup):  # not recorded
                            dec.generate(ids, min(budget, 32), stopper)
                        warmed.add(method)
                    row = sample_row(dec, ids, budget, stopper, cfg, device, suite, sample, model=model_name,
                                     device_key=dev_name, suite_name=suite_name, plen=plen, method=method,
                                     dtype=dtype)
                    pair = key(model_name, suite_name, plen, sample.id, BASELINE)
                    if method == BASELINE:
                        ar_tokens[pair] = row["new_token_ids"]
                        row["exact_match_ar"], row["first_divergence"] = None, None
                    elif pair in ar_tokens:
                        div = first_divergence(ar_tokens[pair], row["new_token_ids"])
                        row["exact_match_ar"], row["first_divergence"] = div is None, div
                    else:
                        row["exact_match_ar"], row["first_divergence"] = None, None
                    results.append(_ordered(row))
                    progress.row_done(row)
            del decoders, loaded
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results.set_status("complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    finally:
        results.close()
        progress.stop()
    return results


def sample_row(dec, ids: list[int], budget: int, stopper, cfg: SweepConfig, device, suite, sample, *,
               model: str, device_key: str, suite_name: str, plen: int | None, method: str, dtype) -> dict[str, Any]:
    """Measure one sample with one method and score it: a samples.jsonl row (before the
    exact-match-vs-AR fields, which need AR's row)."""
    row = measure_sample(dec, ids, budget, stopper, cfg, device, sample.id)
    text = stopper.text(row["new_token_ids"])
    quality = suite.score(sample, text) if sample.reference is not None else {}
    row.update({
        "model": model, "device": device_key, "suite": suite_name, "prompt_length": plen,
        "sample_id": sample.id, "method": method,
        "dtype": str(dtype).replace("torch.", ""), "prompt_tokens": len(ids),
        "prompt_format": suite_format(cfg.prompt_format, suite), "output_text": text, "quality": quality,
        "host": _hostname(), "device_name": _device_name(device),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return row


@functools.lru_cache(maxsize=None)
def _hostname() -> str:
    return socket.gethostname()


@functools.lru_cache(maxsize=None)
def _device_name(device) -> str:
    """What the rows' device actually is: the GPU's name, or the CPU model."""
    if getattr(device, "type", None) == "cuda":
        return torch.cuda.get_device_name(device)
    return measure._cpu_model()


def measure_sample(dec, ids: list[int], budget: int, stopper, cfg: SweepConfig, device, sample_id: str) -> dict[str, Any]:
    """Generate ``cfg.repeats`` times; timings are the median over repeats (all kept)."""
    records = []
    peak = 0.0
    for _ in range(cfg.repeats):
        dec.reseed(_sample_seed(cfg.seed, sample_id))
        measure.reset_peak_memory(device)
        rec = dec.generate(ids, budget, stopper)
        peak = max(peak, measure.peak_memory_mb(device))
        records.append(rec)
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
        "lossless": rec.lossless,
        "peak_mem_mb": peak,
        "repeat_total_s": [r.total_s for r in records],
        "repeat_ttft_s": [r.ttft_s for r in records],
        "extra": rec.extra,
    }


_FIRST = ("model", "device", "dtype", "suite", "prompt_length", "sample_id", "method", "prompt_tokens",
          "n_new", "finish_reason", "ttft_s", "total_s", "tpot_s", "tokens_per_s", "forward_passes", "tau",
          "quality", "exact_match_ar", "first_divergence", "lossless", "peak_mem_mb")


def _ordered(row: dict[str, Any]) -> dict[str, Any]:
    return {**{k: row[k] for k in _FIRST if k in row}, **{k: v for k, v in row.items() if k not in _FIRST}}


def config_dict(cfg: SweepConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["out"] = str(cfg.out)
    return d
