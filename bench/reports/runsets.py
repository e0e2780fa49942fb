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
from accbench.engine.results import ResultsDir, dedupe_rows
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

    def pairing(self) -> dict[tuple, dict[str, dict[str, Any]]]:
        return pairing(self.rows)

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
        if not isinstance(config, dict):
            raise AccbenchError(f"{rd.config_path} is not a JSON object")
        run_rows = dedupe_rows(rd.load_rows(repair=False), str(rd.samples_path))  # every row checked
        if not run_rows:
            raise AccbenchError(f"{rd.samples_path} holds no rows")
        run = Run(path=path, config=config, n_rows=len(run_rows))
        for r in run_rows:
            r = dict(r)
            r["device_type"] = r.get("device") or config.get("device") or "cpu"
            r["device"] = device_label(r["device_type"], run.hardware)
            r["run"] = str(path)
            r["pair_settings"] = settings_signature(config, r)
            rows.append(r)
        runs.append(run)
    if not runs:
        raise AccbenchError("no results folders given")
    _prefer_own_ar(rows)
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
#: of those, the ones a row records as resolved (``dtype`` "float32" where the settings say None = default)
ROW_SETTINGS = ("dtype", "prompt_format")
_OWN_AR = " own-ar:"


def settings_signature(config: dict[str, Any], row: dict[str, Any] | None = None) -> str:
    """The run settings that decide which AR rows a row may pair with, as a JSON string: the
    row's own resolved dtype and prompt format when it records them, else the run's settings,
    else the config's top level."""
    s = config.get("settings") or {}
    row = row or {}
    sig = {}
    for k in PAIR_SETTINGS:
        v = row.get(k) if k in ROW_SETTINGS else None
        if v is None:
            v = s.get(k)
        if v is None:
            v = config.get(k)
        sig[k] = v
    return json.dumps(sig, sort_keys=True, default=str)


def _settings_of(r: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(str(r.get("pair_settings") or "{}").split(_OWN_AR)[0])
    except json.JSONDecodeError:
        return {}


def _prefer_own_ar(rows: list[dict[str, Any]]) -> None:
    """A method pairs with the AR rows of its own results folder whenever that folder has them;
    only a folder without them borrows another folder's AR rows, of identical settings on the
    same device (the first such folder given). Done by making ``pair_settings`` of every folder
    with its own AR rows, except that first one, unique to the folder."""
    def base(r):
        return (r["model"], r["device"], r["suite"], r.get("prompt_length"), r["sample_id"], r.get("pair_settings"))

    donor: dict[tuple, str] = {}
    has_ar: set[tuple] = set()
    for r in rows:
        if r["method"] == BASELINE:
            donor.setdefault(base(r), r.get("run"))
            has_ar.add((base(r), r.get("run")))
    for r in rows:
        b = base(r)
        if (b, r.get("run")) in has_ar and donor[b] != r.get("run"):
            r["pair_settings"] = f"{r['pair_settings']}{_OWN_AR}{r.get('run')}"


def pair_key(r: dict[str, Any]) -> tuple:
    """What pairs a row with its AR row: model, device, suite, prompt length, sample and the
    run settings (rows merged from several folders pair only under identical settings)."""
    return (r["model"], r["device"], r["suite"], r.get("prompt_length"), r["sample_id"], r.get("pair_settings"))


def ar_index(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {pair_key(r): r for r in rows if r["method"] == BASELINE}


def ar_of(row: dict[str, Any], index: dict[tuple, dict[str, Any]]) -> dict[str, Any] | None:
    return index.get(pair_key(row))


def _why_unpaired(r: dict[str, Any], candidates: list[dict[str, Any]]) -> str:
    """Why no AR row pairs with ``r``: what the AR rows of the same sample differ in."""
    if not candidates:
        return "no folder given holds AR rows of these samples"
    mine, reasons = _settings_of(r), []
    for run, a in {a.get("run"): a for a in candidates}.items():
        theirs, diffs = _settings_of(a), []
        if a["device"] != r["device"]:
            diffs.append(f"device {a['device']} vs {r['device']}")
        diffs += [f"{k} {theirs.get(k)} vs {mine.get(k)}" for k in PAIR_SETTINGS if theirs.get(k) != mine.get(k)]
        reasons.append(f"the AR rows of {run} differ in " + ", ".join(diffs) if diffs else f"AR of {run}")
    return "; ".join(reasons)


def pairing(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """Per (model, device, suite, prompt length) and method: where its speedups' AR rows come
    from: ``runs`` (the method's folders), ``same`` (pairs within its folder), ``other``
    ({folder: pairs}), ``none`` (samples without a compatible AR row) and ``why`` (reasons)."""
    idx = ar_index(rows)
    by_sample: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["method"] == BASELINE:
            by_sample[(r["model"], r["suite"], r.get("prompt_length"), r["sample_id"])].append(r)
    out: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r["method"] == BASELINE:
            continue
        key = (r["model"], r["device"], r["suite"], r.get("prompt_length"))
        p = out[key].setdefault(r["method"], {"runs": set(), "same": 0, "other": defaultdict(int), "none": 0,
                                              "why": set()})
        p["runs"].add(r.get("run"))
        a = idx.get(pair_key(r))
        if a is None:
            p["none"] += 1
            p["why"].add(_why_unpaired(r, by_sample[(r["model"], r["suite"], r.get("prompt_length"), r["sample_id"])]))
        elif a.get("run") == r.get("run"):
            p["same"] += 1
        else:
            p["other"][a.get("run")] += 1
    return dict(out)


def pairing_notes(rows: list[dict[str, Any]]) -> dict[tuple, str]:
    """Per (model, device, suite, prompt length): a sentence when a method's speedups pair with
    AR rows of another results folder, or have no AR with the same settings and device to pair
    with (and what the AR rows there differ in)."""
    notes = {}
    for key, by_method in pairing(rows).items():
        parts = []
        for m, p in sorted(by_method.items()):
            runs = ", ".join(sorted(map(str, p["runs"])))
            if p["other"]:
                other = ", ".join(sorted(map(str, p["other"])))
                parts.append(f"{m} (run {runs}): speedups pair with AR rows of {other} (same settings, same device), "
                             "timed in a separate run rather than in lockstep")
            if p["none"]:
                n = p["none"] + p["same"] + sum(p["other"].values())
                parts.append(f"{m} (run {runs}): no speedup for {p['none']} of {n} samples: they have no AR row "
                             f"of the same settings and device ({'; '.join(sorted(p['why']))})")
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


