"""Small, pure statistics for the report: seed-paired effects, Holm, t-intervals, power, Pareto, turning points.

Every interval is t-based: with 3 seeds the 97.5 % t quantile is 4.30, not 1.96, and a z-band would be
about 2.2x too narrow. The paired test and its interval are scipy's `ttest_rel`, the Holm step-down is
statsmodels' `multipletests`, and the power is the noncentral t's (scipy), solved by brentq: library code with
its own tests, wrapped only for the report's edge cases (missing seeds, one seed, identical differences).
Nothing here touches MLflow, pandas or plotting, so it is tested by hand values.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq
from statsmodels.stats.multitest import multipletests

CONFIDENCE = 0.95
ALPHA = 0.05  # two-sided family-wise level of the Holm step-down
POWER = 0.8
# A paired t-test on 2 seeds has 1 df: its sd is a guess from one number and its MDE 11.5 sd. A verdict needs 3.
MIN_SEEDS = 3


@dataclass(frozen=True)
class Effect:
    """level - baseline, paired by seed (or by any block key shared by both sides)."""

    n: int  # paired blocks (seeds) present on both sides with finite values
    mean: float  # mean of the paired differences (nan when n == 0)
    sd: float  # sample sd of the differences (nan when n < 2)
    lo: float  # t-based confidence interval (nan when n < 2)
    hi: float
    p: float  # two-sided paired t-test p-value (nan when not tested: see `untested`)
    diffs: tuple[float, ...] = ()  # the per-seed differences, in seed order: the page shows each one
    untested: str = ""  # why there is no test (too few seeds, zero variance); empty when p is a real test

    @property
    def tested(self) -> bool:
        return math.isfinite(self.p)

    @property
    def single_seed(self) -> bool:
        """One pair gives a difference but no interval: the report says so instead of a CI."""
        return self.n < 2

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo) and math.isfinite(self.hi)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def paired_effect(baseline: Mapping[Hashable, float], level: Mapping[Hashable, float],
                  confidence: float = CONFIDENCE) -> Effect:
    """Mean of level[s] - baseline[s] over the seeds s both sides have, with scipy's paired t-test and t-CI."""
    keys = [k for k in level if k in baseline and _finite(level[k]) and _finite(baseline[k])]
    after = np.array([level[k] for k in keys], dtype=float)
    before = np.array([baseline[k] for k in keys], dtype=float)
    n = len(keys)
    if n == 0:
        return Effect(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    diffs = after - before
    mean, shown = float(diffs.mean()), tuple(float(d) for d in diffs)
    if n < 2:
        return Effect(1, mean, math.nan, math.nan, math.nan, math.nan, shown,
                      f"1 paired seed, fewer than {MIN_SEEDS}")
    sd = float(diffs.std(ddof=1))
    if sd == 0.0:
        # identical differences: t is undefined and scipy's "interval" is the point; a p of 0 from seeds that
        # happen to agree (or a run compared with itself) is not evidence, so no test and no verdict
        return Effect(n, mean, 0.0, math.nan, math.nan, math.nan, shown,
                      "identical differences on every seed (zero variance)")
    with warnings.catch_warnings():  # nearly identical differences: scipy warns of precision loss, not an error
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sps.ttest_rel(after, before)
        interval = result.confidence_interval(confidence)
    if n < MIN_SEEDS:
        return Effect(n, mean, sd, float(interval.low), float(interval.high), math.nan, shown,
                      f"{n} paired seeds, fewer than {MIN_SEEDS}")
    return Effect(n, mean, sd, float(interval.low), float(interval.high), float(result.pvalue), shown)


def _power(d: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test on n pairs at standardised effect d: the noncentral t's tails."""
    crit, nc = float(sps.t.ppf(1 - alpha / 2, n - 1)), d * math.sqrt(n)
    lower = float(sps.nct.cdf(-crit, n - 1, nc))  # negligible, and nan from scipy on 1 df
    return float(sps.nct.sf(crit, n - 1, nc)) + (0.0 if math.isnan(lower) else lower)


@functools.lru_cache(maxsize=256)
def _standardised_mde(n: int, alpha: float, power: float) -> float:
    """Cohen's d the two-sided one-sample (paired) t-test on n pairs detects with `power` (a root search).

    Not statsmodels' TTestPower.solve_power: at Holm's small first-step alphas with 3 seeds the root lies above
    its search bound of 10 and it returns 10 (0.05/14 on 3 seeds needs 12.25). brentq on a widening bracket."""
    high = 1.0
    while _power(high, n, alpha) < power:
        high *= 2
        if high > 1e6:
            return math.nan
    return float(brentq(lambda d: _power(d, n, alpha) - power, 0.0, high, xtol=1e-10))


def min_detectable_effect(n: int, sd: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest |mean difference| the paired t-test at `alpha` detects with `power`, in the metric's units:
    standardised MDE x the sd of the differences. With 3 seeds at alpha 0.05 it is about 3.3 sd."""
    if n < 2 or not _finite(sd):
        return math.nan
    return _standardised_mde(n, alpha, power) * sd


def holm_first_alpha(tested: int) -> float:
    """The level Holm's step-down tests the smallest p against: ALPHA / m for m tested comparisons. A
    comparison must pass it to be declared at all, so the report's power statement uses it (nan when m = 0)."""
    return ALPHA / tested if tested > 0 else math.nan


def pooled_sd(effects: Sequence[Effect]) -> tuple[float, int]:
    """(sd, df) pooled over the effects that have a spread: sqrt(sum (n-1) s^2 / sum (n-1)). One comparison's sd
    on 2 df is off by a factor of 0.5-6 (95 %); pooling comparisons of the same metric steadies it."""
    usable = [e for e in effects if e.n >= 2 and _finite(e.sd) and e.sd > 0]
    df = sum(e.n - 1 for e in usable)
    if df == 0:
        return math.nan, 0
    return math.sqrt(sum((e.n - 1) * e.sd ** 2 for e in usable) / df), df


def sd_interval(sd: float, df: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The chi-square confidence interval of a population sd estimated as `sd` on `df` degrees of freedom."""
    if df < 1 or not _finite(sd):
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    return (sd * math.sqrt(df / float(sps.chi2.ppf(1 - tail, df))),
            sd * math.sqrt(df / float(sps.chi2.ppf(tail, df))))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (statsmodels), in the input order; nan stays nan and is not counted."""
    finite = [i for i, p in enumerate(pvalues) if _finite(p)]
    adjusted = [math.nan] * len(pvalues)
    if finite:
        _, corrected, _, _ = multipletests([pvalues[i] for i in finite], alpha=ALPHA, method="holm")
        for i, p in zip(finite, corrected, strict=True):
            adjusted[i] = float(p)
    return adjusted


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, lo, hi) of the finite values with a t-interval; lo = hi = mean for a single value."""
    data = np.array([v for v in values if _finite(v)], dtype=float)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if data.size < 2:
        return mean, mean, mean
    half = float(sps.t.ppf(0.5 + confidence / 2, df=data.size - 1)) * float(data.std(ddof=1)) / math.sqrt(data.size)
    return mean, mean - half, mean + half


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[bool]:
    """True for the points no other point dominates; directions are "minimize" / "maximize" per axis."""
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    scored = [np.asarray(p, dtype=float) * signs for p in points]  # now smaller is better on every axis
    mask = []
    for i, a in enumerate(scored):
        if not np.all(np.isfinite(a)):
            mask.append(False)
            continue
        dominated = any(j != i and np.all(np.isfinite(b)) and np.all(b <= a) and np.any(b < a)
                        for j, b in enumerate(scored))
        mask.append(not dominated)
    return mask


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average that shrinks at the ends (no padding artefacts)."""
    data = np.asarray(values, dtype=float)
    half = max(window, 1) // 2
    return np.array([np.nanmean(data[max(0, i - half):i + half + 1]) for i in range(data.size)])


def turning_point(steps: Sequence[int], values: Sequence[float], window: int | None = None) -> int | None:
    """The step where the smoothed curve stops falling and starts rising (its interior minimum).

    None when the smoothed minimum sits at either end, i.e. the curve only falls or only rises. Smoothing
    keeps single noisy log points from being reported as the turn.
    """
    pairs = [(s, v) for s, v in sorted(zip(steps, values, strict=False)) if _finite(v)]
    if len(pairs) < 3:
        return None
    window = window or max(1, (len(pairs) // 8) | 1)  # odd, about an eighth of the curve
    smoothed = smooth([v for _, v in pairs], window)
    i = int(np.argmin(smoothed))
    if i == 0 or i == len(pairs) - 1 or not smoothed[-1] > smoothed[i] or not smoothed[0] > smoothed[i]:
        return None
    return int(pairs[i][0])
