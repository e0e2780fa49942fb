"""The CI regression gate (``accbench check``) and its baseline file.

Two kinds of rule, so the gate is trustworthy on a noisy shared machine:

Exact, hardware-independent (greedy decoding makes these deterministic: any change is real):

* ``lossless``: every lossless method's tokens equal AR's tokens of the same run, per sample.
* ``tau``: tokens per decode step per method x suite does not drop below the baseline
  (``--tau-tolerance``, default 0).
* ``forwards/token``: target forward passes per generated token does not rise above the baseline.
* ``quality``: per metric (pass@1, ROUGE-1/2/L), the paired per-sample change against the
  baseline: flagged when the mean drop exceeds ``--quality-tolerance`` percentage points
  (default 0.5; pass@1 counts as 0-100) and its BCa 95% interval lies wholly below zero
  (below stats.MIN_N samples, on the drop alone).

A baseline must exercise what it gates: one whose outputs are all at most one token long in a
suite, or whose quality scores are all zero in a suite, is refused (``degenerate``).

Timing (never absolute seconds):

* ``speedup``: per method x suite, per sample, speedup vs AR in the same run divided by the
  baseline's speedup on the same sample; flagged only when the median change is a drop larger
  than ``--max-slowdown`` AND the 95% paired bootstrap interval of that median lies wholly below
  zero change.

The run must have been made with the baseline's settings (budget, sampling, dtype, method
options) and cover its samples; otherwise the input is bad (exit 2).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from accbench.errors import AccbenchError
from accbench.reports.runsets import (
    BASELINE,
    RunSet,
    ar_index,
    ar_of,
    finite,
    quality_scale,
    sample_speedup,
    sample_tau,
    tokens_digest,
)
from accbench.reports.stats import bootstrap_mean, bootstrap_stat

FORMAT = "accbench-baseline/1"
#: run settings that must equal the baseline's for its numbers to be comparable
SETTINGS = ("max_new_tokens", "seed", "temperature", "top_p", "prompt_format", "method_options", "repeats")


def _gkey(model, suite, plen, method) -> str:
    return f"{model} | {suite} | {plen if plen is not None else '-'} | {method}"


def _groups(rs: RunSet) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rs.rows:
        out[(r["model"], r["suite"], r.get("prompt_length"), r["method"])].append(r)
    return out


def _single_run(rs: RunSet) -> dict[str, Any]:
    if len(rs.runs) != 1:
        raise AccbenchError("check takes exactly one results folder")
    cfg = rs.runs[0].config
    if cfg.get("status") not in (None, "complete"):
        raise AccbenchError(f"{rs.runs[0].path} is an unfinished run (status {cfg.get('status')!r}); "
                            "rerun the same `accbench run` command to complete it")
    devices = {r["device"] for r in rs.rows}
    if len(devices) > 1:
        raise AccbenchError(f"{rs.runs[0].path} holds several devices ({', '.join(sorted(devices))}); "
                            "check one device at a time")
    return cfg


def _quality_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    vals: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for m, v in (r.get("quality") or {}).items():
            if finite(v):
                vals[m].append(float(v))
    return {m: float(np.mean(v)) for m, v in sorted(vals.items())}


def _fpt(rows) -> float:
    n = sum(r["n_new"] for r in rows)
    return float(sum(r["forward_passes"] for r in rows) / n) if n else float("nan")


def _tau(rows) -> float:
    toks = sum(sum(r["tokens_per_step"][1:]) for r in rows)
    steps = sum(max(len(r["tokens_per_step"]) - 1, 0) for r in rows)
    return toks / steps if steps else float("nan")


# ---------------------------------------------------------------------------------------
# baseline
# ---------------------------------------------------------------------------------------


def degenerate(groups: list[dict[str, Any]]) -> str | None:
    """Why a baseline (its ``groups``) gates nothing real, or None: in some suite every output is at
    most one token long, or every quality score is zero."""
    by_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in groups:
        by_suite[g["suite"]].extend(g["samples"].values())
    for suite, samples in sorted(by_suite.items()):
        if samples and all(s["n_new"] <= 1 for s in samples):
            return (f"every {suite} output in it is at most one token long (a prompt format the model "
                    "stops on at once?)")
        scores = [v for s in samples for v in (s.get("quality") or {}).values() if finite(v)]
        if scores and all(v == 0 for v in scores):
            return f"every {suite} quality score in it is zero, so its quality rule can never fire"
    return None


def make_baseline(rs: RunSet) -> tuple[dict[str, Any], list[str]]:
    """The baseline of one complete run, and warnings (e.g. a lossless method that already
    differs from AR: the gate will fail on it until fixed)."""
    cfg = _single_run(rs)
    idx = ar_index(rs.rows)
    warnings = []
    groups = []
    for (model, suite, plen, method), rows in sorted(_groups(rs).items(), key=lambda kv: tuple(map(str, kv[0]))):
        samples = {}
        for r in sorted(rows, key=lambda r: str(r["sample_id"])):
            a = ar_of(r, idx)
            steps = r["tokens_per_step"]
            samples[str(r["sample_id"])] = {
                "n_new": r["n_new"], "forward_passes": r["forward_passes"],
                "decode_tokens": sum(steps[1:]), "decode_steps": max(len(steps) - 1, 0),
                "tokens": tokens_digest(r["new_token_ids"]),
                "speedup": sample_speedup(r, a) if method != BASELINE else 1.0,
                "quality": r.get("quality") or {},
            }
            if method != BASELINE and r.get("lossless") and a is not None and a["new_token_ids"] != r["new_token_ids"]:
                warnings.append(f"{method} on {suite} sample {r['sample_id']} already differs from AR")
        sp = [s["speedup"] for s in samples.values()]
        med, lo, hi = bootstrap_stat(sp, np.median)
        groups.append({
            "model": model, "suite": suite, "prompt_length": plen, "method": method,
            "lossless": bool(all(r.get("lossless") for r in rows)), "n": len(rows),
            "tau": _tau(rows), "forwards_per_token": _fpt(rows), "quality": _quality_means(rows),
            "speedup": med, "speedup_lo": lo, "speedup_hi": hi, "samples": samples,
        })
    env = cfg.get("environment") or {}
    base = {
        "format": FORMAT,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(rs.runs[0].path),
        "device": rs.rows[0]["device"],
        "dtype": rs.rows[0].get("dtype"),
        "git_sha": env.get("git_sha"),
        "packages": {k: (env.get("packages") or {}).get(k) for k in ("torch", "transformers")},
        "settings": {k: (cfg.get("settings") or {}).get(k) for k in SETTINGS},
        "groups": groups,
    }
    why = degenerate(groups)
    if why:
        raise AccbenchError(f"refusing to write this baseline: {why}")
    return base, warnings


def write_baseline(base: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    tmp.write_text(json.dumps(clean(base), indent=1) + "\n")
    tmp.replace(path)


def load_baseline(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        base = json.loads(p.read_text())
    except FileNotFoundError:
        raise AccbenchError(f"baseline {p} does not exist (write one with `accbench check RUN --write-baseline "
                            f"--baseline {p}`)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise AccbenchError(f"baseline {p} is not valid JSON: {e}") from None
    if not isinstance(base, dict) or base.get("format") != FORMAT or not isinstance(base.get("groups"), list):
        raise AccbenchError(f"{p} is not an accbench baseline (expected format {FORMAT})")
    return base


# ---------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------


@dataclass
class Finding:
    rule: str
    model: str
    suite: str
    method: str
    baseline: str
    now: str
    limit: str
    ok: bool
    detail: str = ""


@dataclass
class CheckResult:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]


def _settings_diff(base: dict[str, Any], cfg: dict[str, Any], rs: RunSet) -> list[str]:
    diff = []
    now = cfg.get("settings") or {}
    for k, v in (base.get("settings") or {}).items():
        if now.get(k) != v:
            diff.append(f"{k}: baseline {v!r}, run {now.get(k)!r}")
    dtypes = {r.get("dtype") for r in rs.rows}
    if base.get("dtype") and dtypes != {base["dtype"]}:
        diff.append(f"dtype: baseline {base['dtype']}, run {', '.join(sorted(map(str, dtypes)))}")
    return diff


def check(rs: RunSet, base: dict[str, Any], *, max_slowdown: float = 0.05, quality_tolerance: float = 0.5,
          tau_tolerance: float = 0.0, level: float = 0.95) -> CheckResult:
    cfg = _single_run(rs)
    why = degenerate(base.get("groups") or [])
    if why:
        raise AccbenchError(f"the baseline checks nothing real: {why}; re-record it with the suites' own "
                            "prompt formats and a budget that gives real outputs (accbench check --write-baseline)")
    diff = _settings_diff(base, cfg, rs)
    if diff:
        raise AccbenchError("the run was made with other settings than the baseline (" + "; ".join(diff) +
                            "): rerun with the baseline's settings")
    groups = _groups(rs)
    idx = ar_index(rs.rows)
    res = CheckResult()
    eps = 1e-9
    base_keys = set()
    for g in base["groups"]:
        key = (g["model"], g["suite"], g.get("prompt_length"), g["method"])
        base_keys.add(key)
        rows_all = groups.get(key)
        if not rows_all:
            raise AccbenchError(f"the run has no rows for {_gkey(*key)}, which the baseline covers; run the "
                                "baseline's methods, models and suites")
        by_id = {str(r["sample_id"]): r for r in rows_all}
        missing = [s for s in g["samples"] if s not in by_id]
        if missing:
            raise AccbenchError(f"the run lacks {len(missing)} of the baseline's samples for {_gkey(*key)} "
                                f"(e.g. {missing[0]}); use the baseline's --limit")
        ids = list(g["samples"])
        rows = [by_id[s] for s in ids]
        model, suite, _, method = key

        def add(rule, b, n, limit, ok, detail="", _m=model, _s=suite, _me=method):
            res.findings.append(Finding(rule, _m, _s, _me, b, n, limit, ok, detail))

        # -- exact: lossless methods equal AR token for token -------------------------------
        if method != BASELINE and (g.get("lossless") or any(r.get("lossless") for r in rows)):
            bad = []
            for r in rows:
                a = ar_of(r, idx)
                if a is None:
                    raise AccbenchError(f"the run has no AR row for {suite} sample {r['sample_id']}: the "
                                        "lossless check needs AR in the same run")
                at, mt = a["new_token_ids"], r["new_token_ids"]
                if at != mt:
                    pos = next((i for i, (x, y) in enumerate(zip(at, mt)) if x != y), min(len(at), len(mt)))
                    got = mt[pos] if pos < len(mt) else "end"
                    want = at[pos] if pos < len(at) else "end"
                    bad.append(f"sample {r['sample_id']}: token {pos} is {got}, AR has {want}")
            add("lossless = AR tokens", "100%", f"{len(rows) - len(bad)}/{len(rows)} samples",
                "every sample", not bad, "; ".join(bad[:3]) + (f"; +{len(bad) - 3} more" if len(bad) > 3 else ""))

        # -- exact: tau ---------------------------------------------------------------------------
        if method != BASELINE:
            bt, nt = g["tau"], _tau(rows)
            if finite(bt) and finite(nt):
                lower = []
                for s, r in zip(ids, rows):
                    bs = g["samples"][s]
                    btau = bs["decode_tokens"] / bs["decode_steps"] if bs["decode_steps"] else float("nan")
                    if finite(btau) and sample_tau(r) < btau - eps:
                        lower.append(f"{s}: {btau:.3f}->{sample_tau(r):.3f}")
                ok = nt >= bt - tau_tolerance - eps
                add("tau (tokens/step)", f"{bt:.4f}", f"{nt:.4f}", f">= {bt - tau_tolerance:.4f}", ok,
                    ("lower on " + ", ".join(lower[:3])) if lower and not ok else "")
                if nt > bt + eps:
                    res.notes.append(f"tau of {method} on {suite} rose {bt:.4f} -> {nt:.4f}: consider --write-baseline")

        # -- exact: forward passes per token --------------------------------------------------
        bf, nf = g["forwards_per_token"], _fpt(rows)
        if finite(bf) and finite(nf):
            add("forwards/token", f"{bf:.4f}", f"{nf:.4f}", f"<= {bf:.4f}", nf <= bf + eps)

        # -- exact: quality ---------------------------------------------------------------------------
        nq = _quality_means(rows)
        for metric, bv in sorted((g.get("quality") or {}).items()):
            if bv is None:
                continue
            scale = quality_scale(metric)
            tol = quality_tolerance / scale
            nv = nq.get(metric)
            if nv is None:
                add(f"quality {metric}", f"{bv:.4g}", "missing", f">= {bv - tol:.4g}", False,
                    "the run has no scores for this metric")
                continue
            diffs = [scale * (r["quality"][metric] - g["samples"][s]["quality"][metric]) for s, r in zip(ids, rows)
                     if finite((r.get("quality") or {}).get(metric))
                     and finite((g["samples"][s]["quality"] or {}).get(metric))]
            iv = bootstrap_mean(diffs, level=level)
            drop = -iv.value if finite(iv.value) else scale * (bv - nv)
            # a loss: the drop exceeds the tolerance and its paired interval excludes no change
            # (below stats.MIN_N samples there is no interval: greedy outputs are deterministic,
            # so the drop alone decides)
            ok = not (drop > quality_tolerance + eps and (iv.hi < 0 if iv.has_interval else True))
            worse = [s for s, r in zip(ids, rows)
                     if finite((r.get("quality") or {}).get(metric))
                     and (g["samples"][s]["quality"] or {}).get(metric) is not None
                     and r["quality"][metric] < g["samples"][s]["quality"][metric] - eps]
            detail = f"change {iv.fmt(2, ' pp', signed=True)} paired over {iv.n} samples"
            add(f"quality {metric}", f"{bv:.4g}", f"{nv:.4g}", f"drop <= {quality_tolerance:g} pp or CI spans 0", ok,
                detail + ((" ; lower on samples " + ", ".join(worse[:5])) if worse and not ok else ""))
            if nv > bv + tol:
                res.notes.append(f"{metric} of {method} on {suite} rose {bv:.4g} -> {nv:.4g}")

        # -- timing: paired speedup change ----------------------------------------------------
        if method != BASELINE:
            logs = []
            for s, r in zip(ids, rows):
                now = sample_speedup(r, ar_of(r, idx))
                was = g["samples"][s].get("speedup")
                if finite(now) and finite(was) and now > 0 and was > 0:
                    logs.append(math.log(now / was))
            if logs:
                med, lo, hi = bootstrap_stat(logs, np.median, level=level)
                change, c_lo, c_hi = math.expm1(med), math.expm1(lo), math.expm1(hi)
                now_sp = float(np.median([sample_speedup(r, ar_of(r, idx)) for r in rows]))
                flagged = change < -max_slowdown and c_hi < 0
                add("speedup vs AR (timing)", f"{g['speedup']:.3f}x", f"{now_sp:.3f}x",
                    f"drop <= {max_slowdown:.0%} or CI spans 0", not flagged,
                    f"change {change:+.1%} [95% CI {c_lo:+.1%}, {c_hi:+.1%}], paired over {len(logs)} samples")
                if change > max_slowdown and c_lo > 0:
                    res.notes.append(f"{method} on {suite} is faster than the baseline ({change:+.1%}, "
                                     f"CI {c_lo:+.1%} to {c_hi:+.1%})")
    for key in sorted(set(groups) - base_keys, key=lambda k: tuple(map(str, k))):
        res.notes.append(f"not in the baseline, not gated: {_gkey(*key)}")
    # AR's own tokens: informative (a different CPU may legitimately round differently)
    for g in base["groups"]:
        if g["method"] != BASELINE:
            continue
        rows = {str(r["sample_id"]): r for r in groups.get((g["model"], g["suite"], g.get("prompt_length"), BASELINE), [])}
        changed = [s for s, b in g["samples"].items() if s in rows and tokens_digest(rows[s]["new_token_ids"]) != b["tokens"]]
        if changed:
            res.notes.append(f"AR output on {g['suite']} differs from the baseline's on samples "
                             f"{', '.join(changed[:5])} (the exact rules above still compare like with like)")
    return res


# ---------------------------------------------------------------------------------------
# github-action-benchmark export
# ---------------------------------------------------------------------------------------


def github_benchmark(rs: RunSet) -> list[dict[str, Any]]:
    """Entries for github-action-benchmark's ``customBiggerIsBetter`` tool: every value is
    one where bigger is better (speedup, tau, tokens per forward, tokens/s, quality)."""
    out = []
    f = rs.frame
    for _, line in f.iterrows():
        name = f"{line['method']} · {line['suite']} · {line['model']} · {line['device']}"
        if line.get("prompt_length") is not None and finite(line.get("prompt_length")):
            name += f" · prompt {int(line['prompt_length'])}"
        extra = f"n={int(line['n'])}, dtype={line['dtype']}"
        if line["method"] != BASELINE and finite(line["speedup"]):
            out.append({"name": f"{name} · speedup vs AR", "unit": "x", "value": round(float(line["speedup"]), 4),
                        "range": f"95% CI {line['speedup_lo']:.3f} to {line['speedup_hi']:.3f}", "extra": extra})
        if line["method"] != BASELINE and finite(line["tau"]):
            out.append({"name": f"{name} · tau", "unit": "tokens/step", "value": round(float(line["tau"]), 4),
                        "extra": extra})
        if finite(line["tokens_per_forward"]):
            out.append({"name": f"{name} · tokens per forward", "unit": "tokens",
                        "value": round(float(line["tokens_per_forward"]), 4), "extra": extra})
        if finite(line["tokens_per_s"]):
            out.append({"name": f"{name} · tokens/s", "unit": "tokens/s", "value": round(float(line["tokens_per_s"]), 3),
                        "extra": extra})
        for c in f.columns:
            if c.startswith("q_") and finite(line[c]):
                out.append({"name": f"{name} · {c[2:]}", "unit": "score", "value": round(float(line[c]), 4),
                            "extra": extra})
    return out
