"""Small, pure statistics for the report: seed-paired effects, Holm, t-intervals, Pareto, turning points.

Every interval is t-based: with 3 seeds the 97.5 % t quantile is 4.30, not 1.96, and a z-band would be
about 2.2x too narrow. Nothing here touches MLflow, pandas or plotting, so it is tested by hand values.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Effect:
    """level - baseline, paired by seed (or by any block key shared by both sides)."""

    n: int  # paired blocks (seeds) present on both sides with finite values
    mean: float  # mean of the paired differences (nan when n == 0)
    sd: float  # sample sd of the differences (nan when n < 2)
    lo: float  # t-based confidence interval (nan when n < 2)
    hi: float
    p: float  # two-sided paired t-test p-value (nan when n < 2 or sd == 0 with mean == 0)

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
    """Mean of level[s] - baseline[s] over the seeds s both sides have, with a t-CI and paired t-test."""
    keys = [k for k in level if k in baseline and _finite(level[k]) and _finite(baseline[k])]
    diffs = np.array([level[k] - baseline[k] for k in keys], dtype=float)
    n = len(diffs)
    if n == 0:
        return Effect(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = float(diffs.mean())
    if n < 2:
        return Effect(1, mean, math.nan, math.nan, math.nan, math.nan)
    sd = float(diffs.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, df=n - 1)) * sd / math.sqrt(n)
    # identical differences: the t statistic is undefined; p is 0 unless there is no effect
    p = (1.0 if mean == 0.0 else 0.0) if sd == 0.0 else float(2 * sps.t.sf(abs(mean) / (sd / math.sqrt(n)), df=n - 1))
    return Effect(n, mean, sd, mean - half, mean + half, p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order; nan stays nan and is not counted."""
    indexed = [(p, i) for i, p in enumerate(pvalues) if _finite(p)]
    m = len(indexed)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(indexed)):
        running = max(running, min(1.0, (m - rank) * p))  # monotone: never below an earlier step
        adjusted[i] = running
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
