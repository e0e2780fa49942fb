"""Statistics used in summaries: paired speedups with bootstrap intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Interval:
    value: float
    lo: float
    hi: float
    n: int

    def fmt(self, digits: int = 2, suffix: str = "x") -> str:
        if self.n == 0 or not np.isfinite(self.value):
            return "-"
        return f"{self.value:.{digits}f}{suffix} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def bootstrap_median(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Median of ``values`` with a percentile-bootstrap interval (resampling the values)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    med = float(np.median(x))
    if x.size == 1:
        return Interval(med, med, med, 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = np.median(x[idx], axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(boots, [a, 1.0 - a])
    return Interval(med, float(lo), float(hi), int(x.size))


def paired_ratio(ar_time: float, ar_n: int, m_time: float, m_n: int) -> float:
    """Speedup of a method over AR on one prompt: AR time / method time when both produced
    the same number of tokens, else the ratio of their tokens/s."""
    if m_time <= 0 or ar_time <= 0 or m_n <= 0 or ar_n <= 0:
        return float("nan")
    if ar_n == m_n:
        return ar_time / m_time
    return (m_n / m_time) / (ar_n / ar_time)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """First index where two token lists differ (length mismatch counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    if len(a) != len(b):
        return min(len(a), len(b))
    return None
