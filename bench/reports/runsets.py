"""Results folders loaded for reports, comparisons and the CI gate.

A :class:`RunSet` holds the rows of one or more results folders (``samples.jsonl``) plus their
``config.json``. Runs from different machines are merged with the machine as an axis: each
row's ``device`` becomes a label such as ``cpu · AMD EPYC`` or ``cuda · NVIDIA H100 80GB HBM3``
(the raw device stays in ``device_type``), so ``summarize`` keeps them apart and pairs every
method with the AR rows of its own machine.

Every figure and table is computed from these rows (and :func:`accbench.reports.summary.summarize`),
so every number can be traced back to ``samples.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from accbench.engine.results import ResultsDir
from accbench.errors import AccbenchError
from accbench.reports.stats import paired_ratio

BASELINE = "ar"
#: per suite, the quality metric a figure shows (the first one present)
PRIMARY_QUALITY = ("pass@1", "rougeL", "rouge-l", "rouge_l", "rouge1", "rouge2")


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    n_rows: int

    @property
    def hardware(self) -> str:
        env = self.config.get("environment") or {}
        dev = str(self.config.get("device", "cpu"))
        if dev.startswith("cuda") and env.get("gpus"):
            idx = int(dev.split(":")[1]) if ":" in dev else 0
            gpus = env["gpus"]
            return str(gpus[idx] if idx < len(gpus) else gpus[0])
        return str(env.get("cpu") or "unknown CPU")

    @property
    def date(self) -> str:
        return str(self.config.get("finished") or self.config.get("started") or "")[:10]


@dataclass
class RunSet:
    runs: list[Run]
    rows: list[dict[str, Any]]
    _frame: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            from accbench.reports.summary import summarize

            self._frame = summarize(self.rows)
        return self._frame

    def pairing_notes(self) -> dict[tuple, str]:
        return pairing_notes(self.rows)

    # -- meta for captions -----------------------------------------------------------------
    def select(self, **eq: Any) -> list[dict[str, Any]]:
        return [r for r in self.rows if all(r.get(k) == v for k, v in eq.items())]

    def caption(self, rows: Iterable[dict[str, Any]] | None = None) -> str:
        """``model · device · dtype · suites (n per suite) · dates`` for the given rows."""
        return caption(list(self.rows if rows is None else rows))


def device_label(device: str, hardware: str) -> str:
    hw = (hardware or "").strip()
    return f"{device} · {hw}" if hw and hw != "unknown CPU" else str(device)


def load_runs(paths: Iterable[str | Path]) -> RunSet:
    """Load results folders (bad input -> AccbenchError). Rows get a ``device`` label that
    names the machine and a ``run`` field naming their folder."""
    runs: list[Run] = []
    rows: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        rd = ResultsDir(path)
        if not path.is_dir():
            raise AccbenchError(f"{path} is not a results folder (no such directory)")
        if not rd.samples_path.exists():
            raise AccbenchError(f"{path} has no samples.jsonl: not an accbench results folder")
        try:
            config = json.loads(rd.config_path.read_text()) if rd.config_path.exists() else {}
        except (OSError, json.JSONDecodeError):
            raise AccbenchError(f"{rd.config_path} is not valid JSON") from None
        run_rows = rd.load_rows(repair=False)
        if not run_rows:
            raise AccbenchError(f"{rd.samples_path} holds no rows")
        run = Run(path=path, config=config, n_rows=len(run_rows))
        sig = settings_signature(config)
        for r in run_rows:
            missing = [k for k in ("model", "suite", "method", "sample_id", "n_new", "total_s", "ttft_s",
                                   "forward_passes", "tokens_per_step") if k not in r]
            if missing:
                raise AccbenchError(f"{rd.samples_path}: a row lacks {', '.join(missing)}: not accbench rows")
            r = dict(r)
            r["device_type"] = r.get("device") or config.get("device") or "cpu"
            r["device"] = device_label(r["device_type"], run.hardware)
            r["run"] = str(path)
            r["pair_settings"] = sig
            rows.append(r)
        runs.append(run)
    if not runs:
        raise AccbenchError("no results folders given")
    return RunSet(runs=runs, rows=rows)


def caption(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    models = sorted({str(r["model"]) for r in rows})
    devices = sorted({str(r["device"]) for r in rows})
    dtypes = sorted({str(r.get("dtype")) for r in rows})
    n_per_suite: dict[str, set] = defaultdict(set)
    for r in rows:
        n_per_suite[r["suite"]].add((r.get("prompt_length"), r["sample_id"]))
    suites = ", ".join(f"{s} (n={len(v)})" for s, v in sorted(n_per_suite.items()))
    dates = sorted({str(r.get("time", ""))[:10] for r in rows if r.get("time")})
    date = (dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}") if dates else "date unknown"
    return (f"model: {', '.join(models)} · device: {', '.join(devices)} · dtype: {', '.join(dtypes)} · "
            f"suite: {suites} · {date}")


# ---------------------------------------------------------------------------------------
# per-sample figures (for paired comparisons and the gate)
# ---------------------------------------------------------------------------------------


def sample_tau(row: dict[str, Any]) -> float:
    steps = row.get("tokens_per_step") or []
    return float(sum(steps[1:]) / (len(steps) - 1)) if len(steps) > 1 else float("nan")


def tokens_digest(tokens: list[int]) -> str:
    return hashlib.sha256(json.dumps([int(t) for t in tokens]).encode()).hexdigest()[:16]


def group_key(row: dict[str, Any], with_device: bool = False) -> tuple:
    k = (row["model"], row["suite"], row.get("prompt_length"), row["method"])
    return ((row["device"],) + k) if with_device else k


#: run settings an AR row must share with a method's row to be its pair (the device is in the key)
PAIR_SETTINGS = ("max_new_tokens", "temperature", "top_p", "seed", "prompt_format", "dtype", "data_file")


def settings_signature(config: dict[str, Any]) -> str:
    s = config.get("settings") or {}
    return json.dumps({k: s.get(k, config.get(k)) for k in PAIR_SETTINGS}, sort_keys=True, default=str)


def pair_key(r: dict[str, Any]) -> tuple:
    """What pairs a row with its AR row: model, device, suite, prompt length, sample and the
    run settings (rows merged from several folders pair only under identical settings)."""
    return (r["model"], r["device"], r["suite"], r.get("prompt_length"), r["sample_id"], r.get("pair_settings"))


def ar_index(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {pair_key(r): r for r in rows if r["method"] == BASELINE}


def ar_of(row: dict[str, Any], index: dict[tuple, dict[str, Any]]) -> dict[str, Any] | None:
    return index.get(pair_key(row))


def pairing_notes(rows: list[dict[str, Any]]) -> dict[tuple, str]:
    """Per (model, device, suite): a sentence when a method's speedups pair with AR rows of
    another results folder, or have no AR with the same settings and device to pair with."""
    idx = ar_index(rows)
    used: dict[tuple, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for r in rows:
        if r["method"] == BASELINE:
            continue
        a = idx.get(pair_key(r))
        used[(r["model"], r["device"], r["suite"])][r["method"]].add(
            "none" if a is None else ("same" if a.get("run") == r.get("run") else a.get("run")))
    notes = {}
    for key, by_method in used.items():
        parts = []
        for m, srcs in sorted(by_method.items()):
            other = sorted(s for s in srcs if s not in ("same", "none"))
            if other:
                parts.append(f"{m}'s speedups pair with AR rows of {', '.join(other)} (same settings, same device)")
            if "none" in srcs:
                parts.append(f"{m} has samples without an AR row of the same settings and device: no speedup there")
        if parts:
            notes[key] = "; ".join(parts) + "."
    return notes


def sample_speedup(row: dict[str, Any], ar: dict[str, Any] | None) -> float:
    if ar is None:
        return float("nan")
    return paired_ratio(ar["total_s"], ar["n_new"], row["total_s"], row["n_new"])


def sample_decode_speedup(row: dict[str, Any], ar: dict[str, Any] | None) -> float:
    """AR TPOT / method TPOT: the decode phase only (prefill excluded)."""
    if ar is None or not row.get("tpot_s") or not ar.get("tpot_s"):
        return float("nan")
    return float(ar["tpot_s"] / row["tpot_s"])


def primary_quality(rows: list[dict[str, Any]]) -> str | None:
    keys = {k for r in rows for k in (r.get("quality") or {})}
    for k in PRIMARY_QUALITY:
        if k in keys:
            return k
    return sorted(keys)[0] if keys else None


def quality_scale(metric: str) -> float:
    """Multiplier to percentage points: pass@1 is 0-1, ROUGE is already 0-100."""
    return 100.0 if metric.startswith("pass@") or metric in ("exact_match", "accuracy") else 1.0


def finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating)) and math.isfinite(float(x))


