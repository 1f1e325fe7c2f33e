"""ablation.report.stats against values worked out by hand."""

from __future__ import annotations

import math
import warnings

import pytest
from scipy import stats as sps
from scipy.optimize import brentq
from statsmodels.stats.power import TTestPower

from ablation.report.stats import (
    Effect,
    holm,
    holm_first_alpha,
    mean_ci,
    min_detectable_effect,
    paired_effect,
    pareto_front,
    pooled_sd,
    sd_interval,
    turning_point,
)

T_975_DF2 = 4.302653  # t(0.975, df=2), from a table
T_975_DF1 = 12.706205


def test_paired_effect_diffs_1_2_3() -> None:
    baseline = {0: 10.0, 1: 20.0, 2: 30.0}
    level = {0: 11.0, 1: 22.0, 2: 33.0}  # differences 1, 2, 3: mean 2, sd 1
    effect = paired_effect(baseline, level)
    half = T_975_DF2 * 1.0 / math.sqrt(3)
    assert effect.n == 3
    assert effect.mean == pytest.approx(2.0)
    assert effect.sd == pytest.approx(1.0)
    assert effect.lo == pytest.approx(2.0 - half, abs=1e-5)
    assert effect.hi == pytest.approx(2.0 + half, abs=1e-5)
    # t = 2 / (1/sqrt 3) = 3.4641 on 2 df: two-sided p = 0.07418
    assert effect.p == pytest.approx(0.07418, abs=1e-4)
    assert not effect.single_seed and effect.has_interval and effect.tested
    assert effect.diffs == (1.0, 2.0, 3.0)


def test_paired_effect_uses_only_shared_finite_seeds() -> None:
    baseline = {0: 1.0, 1: 1.0, 2: 1.0, 3: float("nan")}
    level = {0: 2.0, 1: 4.0, 3: 9.0, 4: 9.0}  # only seeds 0 and 1 pair up: diffs 1 and 3
    effect = paired_effect(baseline, level)
    assert effect.n == 2
    assert effect.mean == pytest.approx(2.0)
    assert effect.sd == pytest.approx(math.sqrt(2))
    assert effect.hi - effect.mean == pytest.approx(T_975_DF1 * math.sqrt(2) / math.sqrt(2), abs=1e-5)
    # 2 seeds: an interval, but no test (1 df) and so never a verdict
    assert math.isnan(effect.p) and effect.untested == "2 paired seeds, fewer than 3"


def test_single_seed_marker() -> None:
    effect = paired_effect({0: 1.0}, {0: 1.5})
    assert effect.single_seed and not effect.has_interval
    assert effect.n == 1 and effect.mean == pytest.approx(0.5)
    assert math.isnan(effect.lo) and math.isnan(effect.p)
    empty = paired_effect({0: 1.0}, {1: 2.0})
    assert empty.n == 0 and math.isnan(empty.mean)


def test_identical_differences_give_a_point_interval_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's precision-loss warning must not reach the report's log
        shifted = paired_effect({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.5, 1: 2.5, 2: 3.5})
        same = paired_effect({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    # identical non-zero differences used to give p = 0, a zero-width CI and a "better" verdict: now flagged
    assert shifted.mean == 0.5 and shifted.sd == 0.0 and not shifted.tested and not shifted.has_interval
    assert shifted.untested == "identical differences on every seed (zero variance)"
    assert same.mean == 0.0 and not same.tested


def power_at(d: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at alpha, from the noncentral t (independent of statsmodels)."""
    crit = sps.t.ppf(1 - alpha / 2, n - 1)
    nc = d * math.sqrt(n)
    lower = float(sps.nct.cdf(-crit, n - 1, nc))  # about 1e-11 and below; scipy returns nan for df 1
    return float(sps.nct.sf(crit, n - 1, nc)) + (0.0 if math.isnan(lower) else lower)


def test_min_detectable_effect() -> None:
    # standardised MDEs for 80% power; the noncentral t confirms each one gives 80% power
    for n, d in ((2, 11.5499), (3, 3.26404), (5, 1.68200), (10, 0.99600)):
        assert min_detectable_effect(n, 1.0) == pytest.approx(d, abs=1e-4)
        assert power_at(d, n) == pytest.approx(0.8, abs=1e-4)
    # in the metric's units: proportional to the sd of the differences; undefined on one pair
    assert min_detectable_effect(3, 0.02) == pytest.approx(0.02 * 3.26404, rel=1e-4)
    assert math.isnan(min_detectable_effect(1, 1.0)) and math.isnan(min_detectable_effect(3, math.nan))
    # with many seeds it approaches the normal value (z_0.975 + z_0.8) sd / sqrt n = 2.8016 / 10 at n = 100
    assert min_detectable_effect(100, 1.0) == pytest.approx(0.2829, abs=2e-3)


def test_holm_hand_example() -> None:
    # sorted 0.01, 0.02, 0.03, 0.04 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06 (monotone), 0.06 (monotone)
    adjusted = holm([0.04, 0.01, 0.03, 0.02])
    assert adjusted == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    with_nan = holm([0.01, float("nan"), 0.04])
    assert with_nan[0] == pytest.approx(0.02) and math.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.04)
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == [] and all(math.isnan(p) for p in holm([float("nan")]))


def test_mean_ci() -> None:
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert (hi - mean) == pytest.approx(T_975_DF2 / math.sqrt(3), abs=1e-5)
    assert lo == pytest.approx(2 * mean - hi)
    assert mean_ci([5.0]) == (5.0, 5.0, 5.0)
    assert all(math.isnan(v) for v in mean_ci([]))


def test_pareto_front_hand_case() -> None:
    # minimise x (style distance), maximise y (content similarity)
    points = [(1.0, 0.5), (2.0, 0.9), (2.0, 0.4), (3.0, 0.9), (0.5, 0.1), (float("nan"), 1.0)]
    # (2, .4) is dominated by (1, .5); (3, .9) by (2, .9); nan never on the front
    assert pareto_front(points, ["minimize", "maximize"]) == [True, True, False, False, True, False]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)], ["minimize", "minimize"]) == [True, True]  # ties stay


def test_turning_point_v_shape() -> None:
    steps = list(range(0, 210, 10))
    values = [abs(s - 120) / 10.0 for s in steps]  # falls until step 120, then rises
    assert turning_point(steps, values) == 120
    assert turning_point(steps, values, window=1) == 120


def test_turning_point_monotone_and_short() -> None:
    steps = list(range(20))
    assert turning_point(steps, [10.0 - s for s in steps]) is None  # only falls
    assert turning_point(steps, [float(s) for s in steps]) is None  # only rises
    assert turning_point([0, 1], [1.0, 0.0]) is None


def test_turning_point_ignores_a_noisy_dip() -> None:
    steps = list(range(40))
    values = [40.0 - s for s in steps]
    values[5] = 0.0  # one bad log point early on, the curve still only falls
    assert turning_point(steps, values, window=9) is None


def test_mde_at_holms_first_step() -> None:
    # the write-up demo's 14 tested comparisons on 3 seeds: a verdict needs p < 0.05/14 first
    alpha = holm_first_alpha(14)
    assert alpha == pytest.approx(0.05 / 14) and math.isnan(holm_first_alpha(0))
    d = brentq(lambda x: power_at(x, 3, alpha) - 0.8, 0.5, 100.0)
    # statsmodels agrees where its search bound (d <= 10) holds, and returns the bound 10 at alpha/14
    for n in (3, 5):
        assert min_detectable_effect(n, 1.0) == pytest.approx(
            float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8)), rel=1e-4)
    assert min_detectable_effect(4, 1.0, 0.05 / 4) == pytest.approx(
        float(TTestPower().solve_power(effect_size=None, nobs=4, alpha=0.05 / 4, power=0.8)), rel=1e-4)
    assert min_detectable_effect(3, 1.0, alpha) == pytest.approx(d, rel=1e-4)
    # the figure: 3.75x the unadjusted MDE (and the unadjusted MDE has about 11% power at alpha/14)
    assert d / min_detectable_effect(3, 1.0) == pytest.approx(3.75, abs=0.01)
    assert power_at(3.26404, 3, alpha) == pytest.approx(0.11, abs=0.01)


def test_pooled_sd_and_its_interval() -> None:
    def with_sd(n: int, sd: float) -> Effect:
        return Effect(n, 0.0, sd, -1.0, 1.0, 0.5)

    sd, df = pooled_sd([with_sd(3, 1.0), with_sd(3, 2.0), with_sd(2, 3.0), with_sd(3, 0.0), with_sd(1, math.nan)])
    assert df == 5 and sd == pytest.approx(math.sqrt((2 * 1 + 2 * 4 + 1 * 9) / 5))
    low, high = sd_interval(1.0, 2)  # chi-square on 2 df: sigma / s in 0.52..6.3 (95 %)
    assert low == pytest.approx(math.sqrt(2 / sps.chi2.ppf(0.975, 2))) and low == pytest.approx(0.52, abs=0.01)
    assert high == pytest.approx(math.sqrt(2 / sps.chi2.ppf(0.025, 2))) and high == pytest.approx(6.28, abs=0.01)
    assert math.isnan(pooled_sd([])[0]) and pooled_sd([])[1] == 0
