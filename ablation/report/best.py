"""`ablate best STUDY`: the finished trials ranked by a metric, cells by their mean over seeds with a t-interval,
each trial with its run id and where its generator's weights are."""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ablation.errors import UserError, problem
from ablation.evaluation import registry
from ablation.report.data import M, newest_per_key, parse_spec, run_row, study_yaml_text
from ablation.report.stats import mean_ci
from ablation.study.spec import StudySpec
from ablation.study.tracking import TAG_MODEL_URI, Tracker

WEIGHTS = "model/generator.pt"  # the artifact every finished trial logs (study/trial.py)


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
    trials = newest_per_key(pd.DataFrame([run_row(run) for run in runs]))
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
        cells.append((sign * mean, str(cell), str(group["label"].iloc[0]), mean, low, high, members))
    cells.sort(key=lambda c: (c[0], c[2]))
    ranked = [RankedCell(i + 1, cell, label, mean, low, high, members)
              for i, (_, cell, label, mean, low, high, members) in enumerate(cells)]
    return metric, direction, ranked[:top] if top else ranked


def as_json(metric: str, direction: str, cells: list[RankedCell]) -> dict[str, Any]:
    return {"metric": metric, "direction": direction, "cells": [asdict(cell) for cell in cells]}


def table_lines(metric: str, direction: str, cells: list[RankedCell]) -> list[str]:
    """One line per trial, grouped by cell (best cell first); the cell's mean and 95% interval on its first."""
    header = ("rank", "cell", "seeds", f"mean {metric} [95% CI]", "seed", "value", "run id", "weights")
    rows = []
    for cell in cells:
        interval = (f"{cell.mean:.4g} [{cell.ci_low:.4g}, {cell.ci_high:.4g}]" if len(cell.trials) > 1
                    else f"{cell.mean:.4g} (one seed)")
        for i, trial in enumerate(cell.trials):
            first = i == 0
            rows.append((str(cell.rank) if first else "", cell.label if first else "",
                         str(len(cell.trials)) if first else "", interval if first else "",
                         "" if trial.seed is None else str(trial.seed), f"{trial.value:.4g}", trial.run_id,
                         trial.weights))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [f"{metric} ({direction}; cells by their mean over seeds)", line(header), *(line(r) for r in rows)]


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
                  metric: str | None = None) -> tuple[RankedCell, int, str]:
    """Register the best trial's generator as `register_as`, alias `champion`, tagged with the study, cell, seed,
    the trial's objective values and the report's path. The trial logged its MLflow model when it finished
    (tag ablate.model_uri); a run from before that, or whose model failed to log, gets one logged now."""
    from ablation.report.build import report_path
    from ablation.study.models import log_generator, trial_files

    metric, _, cells = rank(tracker, name, spec, metric, top=1)
    best, trial = cells[0], cells[0].trials[0]
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
