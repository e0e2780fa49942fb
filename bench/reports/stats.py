"""Every interval, test and verdict accbench prints, in one place (on scipy.stats).

* Intervals are BCa bootstrap intervals (``scipy.stats.bootstrap``, 95%, fixed seed) over
  *paired* per-sample values: a speedup is the median of per-sample AR/method ratios, a
  quality delta the mean of per-sample (method - AR) differences.
* Below :data:`MIN_N` values there is no interval: the value is shown with "n too small".
  A bootstrap over one to four values only resamples those values; it is not an interval.
* pass@1 against AR: the paired 2x2 table (both pass, only AR, only the method, neither),
  the exact McNemar test (a two-sided binomial test on the discordant pairs) and a BCa
  interval on the mean per-sample difference.
* A quality verdict: "too few samples" below MIN_N pairs; "loss" / "gain" when the interval of
  the delta lies wholly below / above zero (for pass@1 the McNemar test must agree, p < 0.05);
  "no measurable loss" otherwise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
from scipy import stats as sps

#: fewest paired values an interval is computed from
MIN_N = 5
LEVEL = 0.95
RESAMPLES = 2000
TOO_FEW = "too few samples"
NO_LOSS = "no measurable loss"


@dataclass
class Interval:
    value: float
    lo: float
    hi: float
    n: int

    @property
    def has_interval(self) -> bool:
        return self.n >= MIN_N and math.isfinite(self.lo) and math.isfinite(self.hi)

    def fmt(self, digits: int = 2, suffix: str = "x", signed: bool = False) -> str:
        if self.n == 0 or not math.isfinite(self.value):
            return "-"
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        v = f.format(self.value) + suffix
        if not self.has_interval:
            return f"{v} (n too small: {self.n})" if self.n < MIN_N else v
        return f"{v} [{f.format(self.lo)}, {f.format(self.hi)}]"


def finite_values(values: Iterable[Any]) -> np.ndarray:
    out = []
    for v in values:
        if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)):
            out.append(float(v))
    return np.asarray(out, dtype=float)


def bootstrap(values: Iterable[Any], stat: Callable = np.median, *, level: float = LEVEL, seed: int = 0,
              n_resamples: int = RESAMPLES) -> Interval:
    """``stat`` of the finite ``values`` with a BCa bootstrap interval (none below MIN_N)."""
    x = finite_values(values)
    n = int(x.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    value = float(stat(x))
    if n < MIN_N:
        return Interval(value, float("nan"), float("nan"), n)
    if np.ptp(x) == 0:  # every value the same: nothing to resample
        return Interval(value, value, value, n)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa warns (and gives NaN) on degenerate resamples
        res = sps.bootstrap((x,), lambda s, axis=-1: stat(s, axis=axis), method="BCa", confidence_level=level,
                            n_resamples=n_resamples, random_state=rng, vectorized=True)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isfinite(lo) and math.isfinite(hi)):  # e.g. a median whose jackknife is constant
            res = sps.bootstrap((x,), lambda s, axis=-1: stat(s, axis=axis), method="percentile",
                                confidence_level=level, n_resamples=n_resamples, random_state=rng, vectorized=True)
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(value, min(lo, value), max(hi, value), n)


def bootstrap_median(values, **kw) -> Interval:
    return bootstrap(values, np.median, **kw)


def bootstrap_mean(values, **kw) -> Interval:
    return bootstrap(values, np.mean, **kw)


def bootstrap_stat(values, stat=np.mean, *, level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """(statistic, lo, hi) of :func:`bootstrap`; lo/hi NaN below MIN_N."""
    iv = bootstrap(values, stat, level=level, seed=seed)
    return iv.value, iv.lo, iv.hi


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return float(sps.binomtest(only_b, n, 0.5).pvalue)


@dataclass
class PassTable:
    """Paired pass/fail of a method against AR on the same problems."""

    both: int
    only_ar: int
    only_method: int
    neither: int
    p_value: float
    delta: Interval  # mean per-problem difference (method - AR), in points (0-100)

    @property
    def n(self) -> int:
        return self.both + self.only_ar + self.only_method + self.neither


def pass_table(pairs: Iterable[tuple[float, float]]) -> PassTable:
    """``pairs``: (AR passed, method passed) per problem, as 0/1."""
    pairs = [(bool(a), bool(m)) for a, m in pairs]
    both = sum(a and m for a, m in pairs)
    only_ar = sum(a and not m for a, m in pairs)
    only_m = sum(m and not a for a, m in pairs)
    neither = len(pairs) - both - only_ar - only_m
    delta = bootstrap_mean([100.0 * (int(m) - int(a)) for a, m in pairs])
    return PassTable(both, only_ar, only_m, neither, mcnemar_exact(only_ar, only_m), delta)


def quality_verdict(delta: Interval, p_value: float | None = None, alpha: float = 0.05) -> str:
    """What a paired quality delta (method - AR, higher is better) says."""
    if delta.n < MIN_N:
        return TOO_FEW
    if not delta.has_interval:
        return NO_LOSS
    test_agrees = p_value is None or p_value < alpha
    if delta.hi < 0 and test_agrees:
        return "loss"
    if delta.lo > 0 and test_agrees:
        return "gain"
    return NO_LOSS


def paired_ratio(ar_time: float, ar_n: int, m_time: float, m_n: int) -> float:
    """Speedup of a method over AR on one prompt: AR time / method time when both produced
    the same number of tokens, else the ratio of their tokens/s."""
    if m_time <= 0 or ar_time <= 0 or m_n <= 0 or ar_n <= 0:
        return float("nan")
    if ar_n == m_n:
        return ar_time / m_time
    return (m_n / m_time) / (ar_n / ar_time)


def percentiles(values: Iterable[Any], qs=(50, 90, 99)) -> list[float]:
    """Percentiles (linear interpolation) of the finite values; NaN when there are none."""
    x = finite_values(values)
    if x.size == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(x, qs)]


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """First index where two token lists differ (length mismatch counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    if len(a) != len(b):
        return min(len(a), len(b))
    return None
