"""What the report concludes: seed-paired effects of each level against its baseline, their verdicts, the summary.

A verdict carries its own evidence, so no line of the page overstates it: how many seeds it rests on, how many
diverged (a level that "wins" on the seeds that survived is not simply better), and, when no difference is
detected, the minimum detectable effect says how large a difference those seeds could have missed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ablation.outcomes import Outcome
from ablation.report.data import Axis, M, P, ReportData
from ablation.report.stats import (
    ALPHA,
    POWER,
    Effect,
    holm,
    holm_first_alpha,
    min_detectable_effect,
    paired_effect,
    pooled_sd,
    sd_interval,
)
from ablation.report.text import diverged_note, fmt


@dataclass(frozen=True)
class Runs:
    """The trials behind one comparison, all outcomes: what the finished-only statistics cannot see."""

    unit: str  # "seeds" when one trial per seed and level (one axis), else "trials" (seeds x other-axis cells)
    seeds: int  # distinct seeds at the level or the baseline
    level: int  # trials at the level
    level_diverged: int
    baseline: int  # trials at the baseline
    baseline_diverged: int

    def notes(self) -> list[str]:
        notes = [diverged_note(self.level_diverged, self.level, self.unit)]
        if self.baseline_diverged:
            notes.append("baseline: " + diverged_note(self.baseline_diverged, self.baseline, self.unit))
        return [n for n in notes if n]


def effect_rows(data: ReportData, metrics: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Each level vs its axis's baseline, paired by seed, averaged over the other axes' matching cells."""
    done = data.trials[data.trials["outcome"] == Outcome.FINISHED] if not data.trials.empty else data.trials
    rows = []
    for axis in data.axes:
        others = [a for a in data.axes if a is not axis]
        for level in (lv for lv in axis.levels if lv != axis.baseline):
            runs = _runs(data.trials, axis, level, bool(others))
            for metric, direction in metrics:
                base, other = _per_seed(done, axis.name, axis.baseline, level, [a.name for a in others], metric)
                rows.append({"axis": axis.short, "level": level, "baseline": axis.baseline, "metric": metric,
                             "direction": direction, "effect": paired_effect(base, other), "runs": runs})
    family = sum(1 for r in rows if r["effect"].tested)
    first_alpha = holm_first_alpha(family)  # what the smallest p must beat for any verdict at all
    pooled = {m: pooled_sd([r["effect"] for r in rows if r["metric"] == m]) for m, _ in metrics}
    for row, p_holm in zip(rows, holm([r["effect"].p for r in rows]), strict=True):
        effect: Effect = row["effect"]
        row["p_holm"], row["family"] = p_holm, family
        row["significant"] = math.isfinite(p_holm) and p_holm < ALPHA
        same_as = data.merged.get(row["level"], "") if row["axis"] == "arm" else ""
        row["tone"], row["verdict"] = verdict(effect, row["significant"], row["direction"], row["runs"], same_as)
        row["mde"] = _mde(effect, *pooled[row["metric"]], first_alpha)
        better = sum(1 for d in effect.diffs if (d < 0) == (row["direction"] == "minimize") and d != 0)
        row["text"] = {"n": effect.n, "mean": fmt(effect.mean), "p": fmt(effect.p, 3), "p_holm": fmt(p_holm, 3),
                       "mde": _mde_text(row["mde"]), "diverged": "; ".join(row["runs"].notes()),
                       "improve": f"{better} of {effect.n}" if effect.n else "–",
                       "seeds": ", ".join(fmt(d) for d in effect.diffs),
                       "ci": (f"[{fmt(effect.lo)}, {fmt(effect.hi)}]" if effect.has_interval else
                              "1 seed: no interval" if effect.n == 1 else
                              "zero variance: no interval" if effect.n and effect.sd == 0 else "no paired seeds")}
    return rows


def _mde(effect: Effect, sd: float, df: int, alpha: float) -> tuple[float, float, float]:
    """(MDE, low, high) at Holm's first-step alpha on this comparison's seeds, from the metric's pooled sd and
    the ends of that sd's 95 % interval; nan for a comparison that is not tested."""
    if not effect.tested:
        return math.nan, math.nan, math.nan
    low, high = sd_interval(sd, df)
    return tuple(min_detectable_effect(effect.n, s, alpha) for s in (sd, low, high))  # type: ignore[return-value]


def _mde_text(mde: tuple[float, float, float]) -> str:
    return f"{fmt(mde[0], 3)} ({fmt(mde[1], 3)}–{fmt(mde[2], 3)})" if math.isfinite(mde[0]) else "–"


def verdict(effect: Effect, significant: bool, direction: str, runs: Runs, same_as: str = "") -> tuple[str, str]:
    """(css tone, text): 'better (3 of 4 seeds; 1 of 4 seeds diverged)', 'no difference detected (n = 3 seeds)'.

    'No difference detected', not 'does not differ': with 3 seeds only large effects are detectable (the MDE
    column says how large), so absence of evidence is all a null result shows. Fewer than 3 paired seeds or
    identical differences on every seed give no test and no verdict, only the reason.
    """
    if same_as:
        return "", f"identical to {same_as} in this run (no ImageNet file)"
    if not effect.tested:
        tone, head = "", f"not tested: {effect.untested}" if effect.untested else "not tested"
    elif significant:
        tone = "better" if (effect.mean < 0) == (direction == "minimize") else "worse"
        head = tone
    else:
        tone, head = "", "no difference detected"
    notes = runs.notes()
    if notes or effect.n < runs.seeds:
        count = f"{effect.n} of {runs.seeds} seeds"
    else:
        count = f"n = {effect.n} seed{'s' if effect.n != 1 else ''}"
    return tone, f"{head} ({'; '.join([count, *notes])})"


def _runs(trials: pd.DataFrame, axis: Axis, level: str, other_axes: bool) -> Runs:
    if trials.empty or P + axis.name not in trials:
        return Runs("seeds", 0, 0, 0, 0, 0)
    values = trials[P + axis.name].astype(str)
    at_level, at_base = trials[values == level], trials[values == axis.baseline]
    seeds = pd.concat([at_level["seed"], at_base["seed"]]).dropna().nunique()

    def diverged(frame: pd.DataFrame) -> int:
        return int((frame["outcome"] == Outcome.DIVERGED).sum())

    return Runs("trials" if other_axes else "seeds", int(seeds), len(at_level), diverged(at_level), len(at_base),
                diverged(at_base))


def _per_seed(done: pd.DataFrame, axis: str, baseline: str, level: str, others: list[str], metric: str
              ) -> tuple[dict[int, float], dict[int, float]]:
    """Per seed: the mean over the other-axis contexts in which both the baseline and the level ran."""
    if done.empty or M + metric not in done or P + axis not in done:
        return {}, {}
    context = done[[P + o for o in others]].astype(str).agg("|".join, axis=1) if others else ""
    frame = pd.DataFrame({"ctx": context, "seed": done["seed"], "level": done[P + axis],
                          "value": pd.to_numeric(done[M + metric], errors="coerce")})
    frame = frame[np.isfinite(frame["value"])]
    wide = frame.pivot_table(index=["ctx", "seed"], columns="level", values="value", aggfunc="mean")
    if baseline not in wide or level not in wide:
        return {}, {}
    both = wide[[baseline, level]].dropna().groupby(level="seed").mean()
    return both[baseline].to_dict(), both[level].to_dict()


def cell_divergence(trials: pd.DataFrame, cell: str) -> str:
    """'1 of 3 seeds diverged' for a cell (a Pareto point is the mean of its survivors), else empty."""
    group = trials[trials["cell"] == cell]
    return diverged_note(int((group["outcome"] == Outcome.DIVERGED).sum()), len(group))


def summary_lines(data: ReportData, effects: list[dict[str, Any]], metrics: list[tuple[str, str]],
                  scatter: dict[str, Any]) -> list[str]:
    lines = []
    for row in (r for r in effects if r["significant"]):
        e, t = row["effect"], row["text"]
        lines.append(f"{row['axis']}={row['level']} vs {row['baseline']}: {row['metric']} is "
                     f"{'higher' if e.mean > 0 else 'lower'} by {fmt(abs(e.mean))} (unadjusted 95% CI {t['ci']}, "
                     f"Holm p = {t['p_holm']}): {row['verdict']}.")
    tested = [r for r in effects if r["effect"].tested]
    if effects and not tested:
        lines.append("No comparison has three or more paired finished seeds with differing differences: nothing "
                     "can be tested.")
    elif effects and not lines:
        sizes = sorted({r["effect"].n for r in tested})
        n = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
        lines.append(f"No difference detected between any level and its baseline at Holm-adjusted p < {ALPHA} on "
                     f"{', '.join(m for m, _ in metrics)} (n = {n} seeds; {len(tested)} of {len(effects)} "
                     f"comparisons testable). With so few seeds only large effects are detectable: the MDE column "
                     f"gives the smallest |Δ| these seeds detect with {POWER:.0%} power at Holm's first step.")
    if any(r["text"]["ci"] == "1 seed: no interval" for r in effects):
        lines.append("Some comparisons rest on a single seed: they show a difference but no interval or test.")
    diverged = int((data.trials["outcome"] == Outcome.DIVERGED).sum()) if not data.trials.empty else 0
    if diverged:
        verdicts = ", and each verdict says how many of its seeds diverged" if effects else ""
        lines.append(f"{diverged} of {len(data.trials)} trials diverged; they are left out of effects and "
                     f"curves{verdicts} (rates per cell below).")
    if scatter.get("front"):
        lines.append(f"Pareto front ({scatter['x']} vs {scatter['y']}): {', '.join(scatter['front'])}.")
    return lines
