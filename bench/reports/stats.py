"""Every interval, test and verdict accbench prints, in one place (on scipy.stats).

* Intervals are BCa bootstrap intervals (``scipy.stats.bootstrap``, 95%, fixed seed) over
  *paired* per-sample values: a speedup is the median of per-sample AR/method ratios, a
  quality delta the mean of per-sample (method - AR) differences.
* Below :data:`MIN_N` values there is no interval: the value is shown with "n too small (n=K)"
  (:meth:`Interval.fmt`, used by every table, ``compare`` and ``check``). A bootstrap over one to
  four values only resamples those values; it is not an interval. All-equal values (where BCa is
  undefined) give the value as both bounds.
* pass@1 against AR: the paired 2x2 table (both pass, only AR, only the method, neither),
  the exact McNemar test (a two-sided binomial test on the discordant pairs) and a BCa
  bootstrap interval on the mean per-sample difference (method - AR, each -1, 0 or +1; the
  paired analogue of a difference of proportions, resampling problems rather than using a
  Newcombe/Tango score interval).
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
LOSS = "loss"
GAIN = "gain"


def too_small(n: int) -> str:
    """Why a value has no interval: fewer than :data:`MIN_N` paired values."""
    return f"n too small (n={int(n)})"


@dataclass
class Interval:
    """A statistic of ``n`` paired values with its 95% interval (``lo``/``hi`` NaN: none)."""

    value: float
    lo: float
    hi: float
    n: int

    @property
    def has_interval(self) -> bool:
        return self.n >= MIN_N and math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def below_zero(self) -> bool:
        """The interval lies wholly below zero (never true without an interval)."""
        return self.has_interval and self.hi < 0

    @property
    def above_zero(self) -> bool:
        return self.has_interval and self.lo > 0

    def fmt(self, digits: int = 2, suffix: str = "x", signed: bool = False, spec: str | None = None,
            bound_spec: str | None = None, sep: str | None = None) -> str:
        """Every printed interval: "1.70x [1.52, 1.91]"; below MIN_N values "1.70x, n too small (n=2)";
        "-" without a value. ``spec`` (a format spec such as "+.1%") overrides ``digits``/``signed``;
        ``bound_spec`` formats the bounds (default: as the value); ``sep`` (e.g. a newline) goes
        between the value and its interval or note."""
        if self.n == 0 or not math.isfinite(self.value):
            return "-"
        spec = spec or f"{'+' if signed else ''}.{digits}f"
        b = bound_spec or spec
        v = format(self.value, spec) + suffix
        if self.has_interval:
            return f"{v}{' ' if sep is None else sep}[{format(self.lo, b)}, {format(self.hi, b)}]"
        return f"{v}{', ' if sep is None else sep}{too_small(self.n)}" if self.n < MIN_N else v

    def map(self, f: Callable[[float], float]) -> "Interval":
        """The interval of a monotone increasing transform (e.g. exp of a log ratio)."""
        def g(x):
            return f(x) if math.isfinite(x) else float("nan")

        return Interval(g(self.value), g(self.lo), g(self.hi), self.n)


def interval_of(value, lo, hi, n) -> Interval:
    """An :class:`Interval` from summary/compare columns (NaN or None where absent)."""
    def fl(x):
        try:
            x = float(x)
        except (TypeError, ValueError):
            return float("nan")
        return x

    n = fl(n)
    return Interval(fl(value), fl(lo), fl(hi), int(n) if math.isfinite(n) else MIN_N)


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
                            n_resamples=n_resamples, rng=rng, vectorized=True)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isfinite(lo) and math.isfinite(hi)):  # e.g. a median whose jackknife is constant
            res = sps.bootstrap((x,), lambda s, axis=-1: stat(s, axis=axis), method="percentile",
                                confidence_level=level, n_resamples=n_resamples, rng=rng, vectorized=True)
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(value, min(lo, value), max(hi, value), n)


def bootstrap_median(values, **kw) -> Interval:
    return bootstrap(values, np.median, **kw)


def bootstrap_mean(values, **kw) -> Interval:
    return bootstrap(values, np.mean, **kw)


def paired_difference(pairs: Iterable[tuple[Any, Any]], stat: Callable = np.mean, scale: float = 1.0,
                      **kw) -> Interval:
    """``stat`` of ``scale * (b - a)`` over the pairs (a, b) where both are finite, with its BCa interval."""
    diffs = [scale * (float(b) - float(a)) for a, b in pairs
             if len(finite_values([a, b])) == 2]
    return bootstrap(diffs, stat, **kw)


def bootstrap_stat(values, stat=np.mean, *, level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """(statistic, lo, hi) of :func:`bootstrap`; lo/hi NaN below MIN_N."""
    iv = bootstrap(values, stat, level=level, seed=seed)
    return iv.value, iv.lo, iv.hi


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: ``scipy.stats.binomtest`` of
    ``only_b`` successes in ``only_a + only_b`` trials at p = 1/2 (1.0 when there are none)."""
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

    def counts(self) -> str:
        """"both/only AR/only method/neither"."""
        return f"{self.both}/{self.only_ar}/{self.only_method}/{self.neither}"

    def fmt(self) -> str:
        """"+5.0 pp [-3, +13], McNemar p=0.62" (no interval below MIN_N problems)."""
        return f"{self.delta.fmt(1, ' pp', signed=True, bound_spec='+.0f')}, McNemar p={fmt_p(self.p_value)}"


def fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.2f}" if p >= 0.01 else f"{p:.3f}" if p >= 0.001 else "<0.001"


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
    """What a paired quality delta (method - AR, higher is better) says: "too few samples" below
    MIN_N pairs; "loss" ("gain") when its interval lies wholly below (above) zero and, where a
    ``p_value`` is given (pass@1's exact McNemar test), p < ``alpha``; "no measurable loss" otherwise."""
    if delta.n < MIN_N:
        return TOO_FEW
    test_agrees = p_value is None or p_value < alpha
    if delta.below_zero and test_agrees:
        return LOSS
    if delta.above_zero and test_agrees:
        return GAIN
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
