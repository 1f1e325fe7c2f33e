"""`ablate best STUDY`: the finished trials ranked by a metric, cells by their mean over seeds with a t-interval,
each trial with its run id and where its generator's weights are."""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ablation.errors import UserError, problem
from ablation.evaluation import registry
from ablation.report.data import M, newest_per_key, parse_spec, retried_after_divergence, run_row, study_yaml_text
from ablation.report.stats import mean_ci, paired_effect
from ablation.study.spec.schema import StudySpec
from ablation.study.tracking.client import TAG_MODEL_URI, Tracker
from ablation.study.tracking.logged_models import log_generator, trial_files

WEIGHTS = "model/generator.pt"  # the artifact every finished trial logs (study/work/trial.py)


@dataclass(frozen=True)
class RankedTrial:
    seed: int | None
    value: float
    run_id: str
    weights: str  # runs:/<run id>/model/generator.pt
    model: str | None  # its logged MLflow model (models:/<id>), None for a run from before trials logged one


@dataclass(frozen=True)
class RankedCell:
    rank: int
    cell: str
    label: str
    mean: float
    ci_low: float
    ci_high: float
    trials: list[RankedTrial]  # best first
    seeds: int = 0  # the cell's trials, any outcome
    diverged: int = 0  # of them, those whose newest attempt diverged
    # seeds that diverged before a re-run finished them ("seed 1 diverged on attempt 1, finished on attempt 2"):
    # a cell that wins on its retried seeds was selected by retrying, so it counts as diverged for `champion`
    retried: list[str] = field(default_factory=list)
    versus_first: str = ""  # how it compares with rank 1, paired by seed ("" for rank 1 itself)

    @property
    def eligible(self) -> bool:
        """May be registered as `champion` without --allow-diverged: no seed ever diverged."""
        return self.diverged == 0 and not self.retried

    def divergence(self) -> str:
        parts = [f"{self.diverged} of {self.seeds} seeds diverged"] if self.diverged else []
        return "; ".join(parts + self.retried)


def ranking_metric(spec: StudySpec | None, metric: str | None, source: str) -> tuple[str, str]:
    """(metric, direction): the study's first objective, or a registry metric named by --metric."""
    if metric is None:
        if spec is None or not spec.objectives:
            raise UserError(problem(source, "--metric", "a metric key (the study's objectives are unknown)", "none"))
        return spec.objectives[0].metric, spec.objectives[0].direction
    for objective in spec.objectives if spec is not None else []:
        if objective.metric == metric:
            return metric, objective.direction
    known = registry.find(metric)
    if known is None or known.direction is None:
        raise UserError(problem(source, "--metric", "a metric with a direction, e.g. one of: "
                                + ", ".join(registry.objective_names()), metric))
    return metric, known.direction


def rank(tracker: Tracker, name: str, spec: StudySpec | None = None, metric: str | None = None,
         top: int | None = None) -> tuple[str, str, list[RankedCell]]:
    """(metric, direction, cells best first) over the study's finished trials (newest attempt per trial)."""
    runs = tracker.trial_runs(name)
    if not runs:
        raise UserError(problem(tracker.shown_uri, "study", f"an MLflow experiment named {name} with finished trials "
                                "(run it with `ablate run`, or pass --tracking-uri / --demo)", "<no trial runs>"))
    if spec is None:  # the study file the parent run kept
        with tempfile.TemporaryDirectory(prefix="ablate-best-") as tmp:
            spec = parse_spec(study_yaml_text(tracker, tracker.parent_run_of(name), None, Path(tmp)))
    metric, direction = ranking_metric(spec, metric, f"study {name}")
    attempts = pd.DataFrame([run_row(run) for run in runs])
    trials = newest_per_key(attempts)
    column = M + metric
    finished = trials[trials["outcome"].eq("finished")]
    if column not in finished or not finished[column].notna().any():
        raise UserError(problem(f"study {name}", "--metric", "a metric its finished trials logged",
                                f"{metric} (logged: {', '.join(_logged(finished)) or 'none'})"))
    sign = 1.0 if direction == "minimize" else -1.0
    cells = []
    for cell, group in finished.groupby("cell", sort=False):
        values = [float(v) for v in group[column] if _finite(v)]
        if not values:
            continue
        mean, low, high = mean_ci(values)
        members = sorted((RankedTrial(_seed(row["seed"]), float(row[column]), row["run_id"],
                                      f"runs:/{row['run_id']}/{WEIGHTS}", row.get("model_uri") or None)
                          for _, row in group.iterrows() if _finite(row[column])), key=lambda t: sign * t.value)
        everyone = trials[trials["cell"] == cell]
        cells.append((sign * mean, str(cell), str(group["label"].iloc[0]), mean, low, high, members, len(everyone),
                      int(everyone["outcome"].eq("diverged").sum()), _retried(attempts[attempts["cell"] == cell])))
    cells.sort(key=lambda c: (c[0], c[2]))
    ranked = [RankedCell(i + 1, *c[1:]) for i, c in enumerate(cells)]
    ranked = [ranked[0], *(_with_comparison(c, ranked[0], sign) for c in ranked[1:])] if ranked else ranked
    return metric, direction, ranked[:top] if top else ranked


def _retried(attempts: pd.DataFrame) -> list[str]:
    """'seed 1 diverged on attempt 1, finished on attempt 2' per trial whose earlier attempt diverged."""
    seeds = dict(zip(attempts["key"], attempts["seed"], strict=True))
    return [f"seed {_seed(seeds[key])} {note}" for key, note in retried_after_divergence(attempts).items()]


def _with_comparison(cell: RankedCell, first: RankedCell, sign: float) -> RankedCell:
    """The cell against rank 1, paired by seed: a tie, too few seeds, or whether the t-interval excludes 0."""
    if cell.mean == first.mean:
        text = "tied with rank 1"
    elif len(cell.trials) < 2 or len(first.trials) < 2:
        text = "one seed on one side: cannot be told apart from rank 1"
    else:
        effect = paired_effect({t.seed: t.value for t in first.trials}, {t.seed: t.value for t in cell.trials})
        if not effect.has_interval:
            text = (f"{effect.n} paired seed(s)" + (f", {effect.untested}" if effect.untested else "") +
                    ": cannot be told apart from rank 1")
        else:
            worse, better = (effect.lo > 0, effect.hi < 0) if sign > 0 else (effect.hi < 0, effect.lo > 0)
            text = (f"Δ vs rank 1 {effect.mean:+.4g} [{effect.lo:.4g}, {effect.hi:.4g}] (paired by seed, "
                    f"{effect.n} seeds, unadjusted 95% t-interval): "
                    + ("worse than rank 1" if worse else "better than rank 1 on the paired seeds" if better
                       else "not distinguishable from rank 1"))
    return replace(cell, versus_first=text)


def as_json(metric: str, direction: str, cells: list[RankedCell]) -> dict[str, Any]:
    return {"metric": metric, "direction": direction, "cells": [asdict(cell) for cell in cells]}


def table_lines(metric: str, direction: str, cells: list[RankedCell]) -> list[str]:
    """One line per trial, grouped by cell (best cell first); the cell's mean and 95% interval on its first."""
    header = ("rank", "cell", "seeds", f"mean {metric} [95% CI]", "seed", "value", "run id", "weights", "note")
    rows = []
    for cell in cells:
        interval = (f"{cell.mean:.4g} [{cell.ci_low:.4g}, {cell.ci_high:.4g}]" if len(cell.trials) > 1
                    else f"{cell.mean:.4g} (one seed)")
        for i, trial in enumerate(cell.trials):
            first = i == 0
            rows.append((str(cell.rank) if first else "", cell.label if first else "",
                         str(len(cell.trials)) if first else "", interval if first else "",
                         "" if trial.seed is None else str(trial.seed), f"{trial.value:.4g}", trial.run_id,
                         trial.weights, "; ".join(x for x in (cell.divergence(), cell.versus_first) if x)
                         if first else ""))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [f"{metric} ({direction}; cells by their mean over seeds)", line(header), *(line(r) for r in rows),
            *_verdict_lines(cells)]


def _verdict_lines(cells: list[RankedCell]) -> list[str]:
    """Whether the order at the top means anything: rank 1 against rank 2, in words."""
    if len(cells) < 2:
        return []
    head = f"rank 1 ({cells[0].label}) vs rank 2 ({cells[1].label}): {cells[1].versus_first}"
    if "not distinguishable" in head or "cannot be told apart" in head or "tied" in head:
        head += " - the order at the top is within the seeds' noise"
    return [head]


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _seed(value: Any) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "<NA>" \
        else int(value)


def _logged(trials: Any) -> list[str]:
    return sorted(c[len(M):] for c in trials if c.startswith(M) and trials[c].notna().any())[:12]


def register_best(tracker: Tracker, name: str, spec: StudySpec | None, register_as: str, reports_dir: Path,
                  metric: str | None = None, allow_diverged: bool = False) -> tuple[RankedCell, int, str]:
    """Register the best eligible trial's generator as `register_as`, alias `champion`, tagged with the study,
    cell, seed, the trial's objective values and the report's path. A cell with a diverged seed (now or before a
    re-run) is passed over unless `allow_diverged`: its mean is over its survivors. The trial logged its MLflow
    model when it finished (tag ablate.model_uri); a run from before that gets one logged now."""
    from ablation.report.build import report_path

    metric, _, cells = rank(tracker, name, spec, metric)
    eligible = [c for c in cells if allow_diverged or c.eligible]
    if not eligible:
        raise UserError(problem(f"study {name}", "--register", "a ranked cell none of whose seeds diverged (or "
                                "--allow-diverged)", "; ".join(f"{c.label}: {c.divergence()}" for c in cells)))
    best, trial = eligible[0], eligible[0].trials[0]
    run = tracker.client.get_run(trial.run_id)
    model_uri = run.data.tags.get(TAG_MODEL_URI)
    if not model_uri:
        with tempfile.TemporaryDirectory(prefix="ablate-register-") as tmp:
            weights, _, config_file = trial_files(tracker, trial.run_id, Path(tmp))
            model_uri = log_generator(tracker, trial.run_id, weights, config_file)
    objectives = [o.metric for o in spec.objectives] if spec is not None else [metric]
    tags = {"ablate.study": name, "ablate.cell": best.cell, "ablate.cell_label": best.label,
            "ablate.seed": str(trial.seed), "ablate.run_id": trial.run_id, "ablate.ranked_by": metric,
            **{f"objective/{m}": f"{run.data.metrics[m]:.6g}" for m in objectives if m in run.data.metrics}}
    report = report_path(reports_dir, name)
    if report.exists():
        tags["ablate.report"] = str(report.resolve())
    version = tracker.register_model(model_uri, register_as, tags, "champion")
    return best, version, model_uri
