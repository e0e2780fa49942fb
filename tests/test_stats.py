"""Statistics that know their sample size: BCa intervals, McNemar, quality verdicts, summaries."""

import math

import numpy as np
import pytest
from accbench.reports import stats
from accbench.reports.summary import summarize
from scipy.stats import binom


@pytest.mark.parametrize("n", [1, 2, 4])
def test_no_interval_below_min_n(n):
    iv = stats.bootstrap_median([1.7, 1.9, 1.2, 1.4][:n])
    assert math.isnan(iv.lo) and math.isnan(iv.hi) and not iv.has_interval
    assert iv.fmt().endswith(f"n too small (n={n})") and "[" not in iv.fmt()


def test_interval_from_min_n_on():
    rng = np.random.default_rng(1)
    iv = stats.bootstrap_median(rng.normal(1.5, 0.2, size=20))
    assert iv.has_interval and iv.lo < iv.value < iv.hi and "[" in iv.fmt()
    same = stats.bootstrap_median([2.0] * 8)
    assert (same.lo, same.value, same.hi) == (2.0, 2.0, 2.0)


def test_bca_interval_covers_the_true_median():
    rng = np.random.default_rng(0)
    covered = 0
    for i in range(60):
        x = rng.lognormal(0.0, 0.5, size=30)  # true median 1.0
        iv = stats.bootstrap_median(x, seed=i)
        covered += iv.lo <= 1.0 <= iv.hi
    assert 0.83 <= covered / 60 <= 1.0  # nominal 95%


def test_mcnemar_exact_against_the_binomial():
    # 9 discordant pairs, 2 one way: p = 2 * P(X <= 2), X ~ Bin(9, 1/2)
    assert stats.mcnemar_exact(7, 2) == pytest.approx(2 * binom.cdf(2, 9, 0.5))
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_pass_table_and_verdicts():
    pairs = [(1, 1)] * 3 + [(1, 0)] * 9 + [(0, 0)] * 8
    t = stats.pass_table(pairs)
    assert (t.both, t.only_ar, t.only_method, t.neither) == (3, 9, 0, 8)
    assert t.p_value == pytest.approx(2 * 0.5 ** 9)
    assert t.delta.value == pytest.approx(-45.0) and t.delta.hi < 0
    assert stats.quality_verdict(t.delta, t.p_value) == "loss"
    same = stats.pass_table([(1, 1)] * 2 + [(0, 0)] * 18)
    assert stats.quality_verdict(same.delta, same.p_value) == stats.NO_LOSS
    few = stats.pass_table([(1, 0)] * 3)
    assert stats.quality_verdict(few.delta, few.p_value) == stats.TOO_FEW
    gain = stats.bootstrap_mean([2.0, 3.0, 2.5, 1.5, 2.2, 3.1])
    assert stats.quality_verdict(gain) == "gain"


def _row(sid, method, total, q, category=None, steps=None):
    steps = steps or [0.1, 0.2, 0.3, 0.45]
    r = {"model": "m", "device": "cpu", "suite": "s", "prompt_length": None, "sample_id": str(sid), "method": method,
         "dtype": "float32", "n_new": 4, "total_s": total, "ttft_s": steps[0], "tpot_s": (total - steps[0]) / 3,
         "tokens_per_step": [1, 1, 1, 1], "forward_passes": 4, "drafted": [3, 2], "accepted": [2, 1],
         "reached": [3, 1], "quality": {"rougeL": q}, "step_times_s": steps, "exact_match_ar": None}
    if category:
        r["category"] = category
    return r


def test_summary_deltas_latency_acceptance_and_categories():
    rows = []
    for i in range(20):
        cat = "ab"[i % 2]
        rows.append(_row(i, "ar", 1.0, 30.0 + i % 3, cat))
        rows.append(_row(i, "x", 0.5, 25.0 + i % 3, cat))  # 5 points worse on every sample
    f = summarize(rows).set_index(["method", "category"])
    x = f.loc[("x", "all")]
    assert x["speedup"] == pytest.approx(2.0) and x["n_pairs"] == 20
    assert x["d_rougeL"] == pytest.approx(-5.0) and x["d_rougeL_hi"] == pytest.approx(-5.0)
    assert x["quality_verdict"] == "loss" and f.loc[("ar", "all")].get("quality_verdict") != "loss"
    assert f.loc[("x", "a"), "n"] == 10 and f.loc[("x", "b"), "n"] == 10
    assert x["itl_p50"] == pytest.approx(0.1) and x["itl_p99"] == pytest.approx(0.15, rel=0.01)
    assert x["ttft_p90"] == pytest.approx(0.1)
    assert x["acceptance"] == "0.667;0.500" and x["acceptance_cond"] == "0.667;1.000"
    few = summarize([r for r in rows if int(r["sample_id"]) < 2]).set_index(["method", "category"])
    assert few.loc[("x", "all"), "quality_verdict"] == stats.TOO_FEW
    assert math.isnan(few.loc[("x", "all"), "speedup_lo"])
