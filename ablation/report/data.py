"""Everything the report reads from MLflow, gathered once into pandas frames.

One row per trial key: a crashed attempt that was re-run leaves a FAILED and a FINISHED run with the same
key, and only the newest FINISHED one (or the newest at all) counts. Curves come from one
`get_metric_history` call per (run, key), run on a small thread pool and cached, since MLflow has no
bulk history call in its client. Artifacts are downloaded into a temporary folder the caller owns.
"""

from __future__ import annotations

import difflib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pandas as pd
import yaml

from ablation.errors import UserError, problem
from ablation.evaluation import registry
from ablation.outcomes import Outcome
from ablation.report import stale
from ablation.study.spec.schema import StudySpec
from ablation.study.spec.study import Study, format_value, short_name
from ablation.study.tracking.client import (
    TAG_ARRAY,
    TAG_CELL,
    TAG_INIT_REUSED,
    TAG_KEY,
    TAG_LABEL,
    TAG_MODEL_URI,
    TAG_OPTUNA,
    TAG_OUTCOME,
    TAG_SEED,
    TAG_STEP,
    Tracker,
)

P, M = "params.", "metrics."  # column prefixes of the trials frame, as in mlflow.search_runs
MAX_GIF_BYTES = 6_000_000  # a 101-epoch GIF at 256 px is tens of MB; the page must stay openable
GAP_TAG = "eval/gap/"
EVAL_N_TAG = "eval/n/"
# Params every trial logs that are not study axes: how the run computed (fp32/bf16), and the seed itself.
# Inferring axes from params must skip them, or a study that mixed precisions would grow a "precision" axis.
RUN_PARAMS = (P + "seed", P + "precision")


@dataclass(frozen=True)
class Axis:
    name: str  # dotted config path, or "arm"
    short: str  # column title: style_weight
    levels: list[str]  # as logged in the MLflow params, in study order
    baseline: str


@dataclass
class ReportData:
    name: str
    spec: StudySpec | None
    study_yaml: str
    parent_tags: dict[str, str]
    trials: pd.DataFrame  # one row per trial key, ordered by cell then seed
    attempts: pd.DataFrame  # every child run, superseded attempts included (for the cost)
    curves: pd.DataFrame  # run_id, cell, seed, key, step, value
    axes: list[Axis]
    config: dict[str, Any]  # one trial's resolved training config
    workdir: Path
    params: list[str] = field(default_factory=list)  # varied param names, in axis order
    merged: dict[str, str] = field(default_factory=dict)  # arm label -> the cell label it equals in this run
    stale: list[dict[str, Any]] = field(default_factory=list)  # trials of cells the study file no longer has
    mixed: list[str] = field(default_factory=list)  # without a study file: labels run under several configs

    @property
    def cells(self) -> list[str]:
        return list(dict.fromkeys(self.trials["cell"]))

    def label(self, cell: str) -> str:
        return str(self.trials.loc[self.trials["cell"] == cell, "label"].iloc[0])

    def has_metric(self, key: str) -> bool:
        return M + key in self.trials and bool(self.trials[M + key].notna().any())


def collect(name: str, tracker: Tracker, study: Study | None, workdir: Path) -> ReportData:
    parent = tracker.parent_run_of(name)
    runs = tracker.trial_runs(name)
    if parent is None and not runs:
        raise UserError(problem(tracker.shown_uri, "study", f"an MLflow experiment named {name} with runs "
                                "(run it with `ablate run`, or pass --tracking-uri)", _not_found(name, tracker)))
    study_yaml = study_yaml_text(tracker, parent, study, workdir)
    spec = study.spec if study is not None else parse_spec(study_yaml)
    attempts = pd.DataFrame([run_row(run) for run in runs], columns=None if runs else list(_row_columns()))
    for column in ("seed", "diverged_step", "optuna", "steps"):  # nullable ints, not floats with nan
        if column in attempts:
            attempts[column] = attempts[column].astype("Int64")
    trials = newest_per_key(attempts) if runs else attempts
    # trials of cells the study file no longer has count nowhere but in their own list (report/stale.py)
    current = stale.current_cells(study)
    old = stale.is_stale(trials, current)
    stale_rows = stale.stale_rows(tracker, study, trials[old], workdir) if study is not None and old.any() else []
    trials, attempts = trials[~old], attempts[~stale.is_stale(attempts, current)]
    axes = _axes(spec, trials)
    trials = _order(trials, axes)
    params = [a.name for a in axes] or sorted(c[len(P):] for c in trials if c.startswith(P) and c not in RUN_PARAMS)
    return ReportData(name, spec, study_yaml, dict(parent.data.tags) if parent else {}, trials, attempts,
                      fetch_curves(tracker, trials), axes, _config(tracker, trials, workdir), workdir, params,
                      dict(study.merged) if study is not None else {}, stale_rows,
                      stale.mixed_labels(trials) if current is None else [])


def _not_found(name: str, tracker: Tracker) -> str:
    """'<not found>', with the study a user most likely meant: the demo variant is the common case."""
    names = tracker.study_names()
    close = [n for n in names if n == f"{name}-demo"] or difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if not close:
        return "<not found>"
    hint = " (use --demo)" if close[0] == f"{name}-demo" else ""
    return f"<not found>; found: {close[0]}{hint}"


def run_row(run: Any) -> dict[str, Any]:
    tags, info = run.data.tags, run.info
    end = info.end_time or None
    row: dict[str, Any] = {
        "run_id": info.run_id, "key": tags.get(TAG_KEY, info.run_id), "cell": tags.get(TAG_CELL, ""),
        "label": tags.get(TAG_LABEL, tags.get("mlflow.runName", "")), "seed": _int(tags.get(TAG_SEED)),
        "outcome": tags.get(TAG_OUTCOME, "unknown"), "status": info.status,
        "diverged_step": _int(tags.get(TAG_STEP)), "optuna": _int(tags.get(TAG_OPTUNA)),
        "steps": _int(tags.get("ablate.steps")), "start_ms": info.start_time,
        "end_ms": end, "duration_s": (end - info.start_time) / 1000 if end and info.start_time else math.nan,
        "metric_keys": sorted(run.data.metrics), "array": tags.get(TAG_ARRAY, ""),
        "init_reused_s": float(tags[TAG_INIT_REUSED]) if TAG_INIT_REUSED in tags else math.nan,
        "model_uri": tags.get(TAG_MODEL_URI, ""),  # its generator as an MLflow model (finished trials)
        # why a gap closure is undefined, as the evaluator decided it (tag eval/gap/style/kid_rand -> style/kid_rand)
        "gap_tags": {k[len(GAP_TAG):]: v for k, v in tags.items() if k.startswith(GAP_TAG)},
        # the evaluator's set sizes (eval/n/outputs -> outputs) and split rule, for the setup's n per metric
        "eval_n": {k[len(EVAL_N_TAG):]: v for k, v in tags.items() if k.startswith(EVAL_N_TAG)},
        "eval_split": tags.get("eval/op/split", ""),
    }
    row.update({P + k: v for k, v in run.data.params.items()})
    row.update({M + k: v for k, v in run.data.metrics.items()})
    return row


def _row_columns() -> tuple[str, ...]:
    """The columns of a trials frame with no runs yet, so every section can still filter it."""
    return ("run_id", "key", "cell", "label", "seed", "outcome", "status", "diverged_step", "optuna", "steps",
            "start_ms", "end_ms", "duration_s", "metric_keys", "gap_tags", "array", "init_reused_s", "model_uri",
            "eval_n", "eval_split")


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def retried_after_divergence(attempts: pd.DataFrame) -> dict[str, str]:
    """key -> 'diverged on attempt 1, finished on attempt 2' for each trial that a re-run finished after it
    diverged: the newest attempt is what the tables use, and this keeps the earlier outcome visible."""
    notes: dict[str, str] = {}
    if attempts.empty:
        return notes
    for key, group in attempts.sort_values("start_ms").groupby("key", sort=False):
        outcomes = [str(o) for o in group["outcome"]]
        if "diverged" in outcomes[:-1] and outcomes[-1] != "diverged":
            notes[str(key)] = (f"diverged on attempt {outcomes.index('diverged') + 1}, {outcomes[-1]} on attempt "
                               f"{len(outcomes)}")
    return notes


def newest_per_key(attempts: pd.DataFrame) -> pd.DataFrame:
    """A re-run supersedes an abandoned attempt: newest FINISHED run per key, else the newest of any."""
    ranked = attempts.assign(_done=attempts["status"].eq("FINISHED")).sort_values(["_done", "start_ms"])
    return ranked.groupby("key", sort=False).tail(1).drop(columns="_done")


def study_yaml_text(tracker: Tracker, parent: Any, study: Study | None, workdir: Path) -> str:
    """The file just run wins: the parent run is reused across edits and keeps the first YAML it saw."""
    if study is not None and study.path.exists():
        return study.path.read_text()
    if parent is not None:
        folder = tracker.download(parent.info.run_id, "study", workdir / "parent")
        files = sorted(folder.glob("*.y*ml")) if folder is not None and folder.is_dir() else []
        if files:
            return files[0].read_text()
    return ""


def parse_spec(text: str) -> StudySpec | None:
    """`ablate report NAME` has no Study object: rebuild the spec from the YAML the parent run kept."""
    try:
        return StudySpec.model_validate(yaml.safe_load(text) or {})
    except Exception:  # an older schema or no YAML: the report still renders, inferring axes from params
        return None


def _axes(spec: StudySpec | None, trials: pd.DataFrame) -> list[Axis]:
    if spec is not None and spec.method == "search":
        return []  # search points are continuous: no levels and no baseline to pair against
    if spec is not None:
        base = spec.baseline or {}
        arms = list(spec.arms)
        axes = [Axis("arm", "arm", arms, str(base.get("arm", arms[0])))] if arms else []
        for path, values in spec.axes.items():
            levels = [format_value(v) for v in values]
            axes.append(Axis(path, short_name(path), levels, format_value(base[path]) if path in base else levels[0]))
        return axes
    axes = []
    for column in (c for c in trials if c.startswith(P) and c not in RUN_PARAMS):
        levels = sorted(trials[column].dropna().unique(), key=_level_key)
        if len(levels) > 1:
            axes.append(Axis(column[len(P):], short_name(column[len(P):]), levels, levels[0]))
    return axes


def _level_key(text: str) -> tuple[int, float, str]:
    try:
        return 0, float(text), ""
    except ValueError:
        return 1, 0.0, text


def _order(trials: pd.DataFrame, axes: list[Axis]) -> pd.DataFrame:
    """Cells in study order (axis level positions), then seeds ascending."""
    if trials.empty:
        return trials
    keys = []
    for _, row in trials.iterrows():
        position = [a.levels.index(row.get(P + a.name)) if row.get(P + a.name) in a.levels else len(a.levels)
                    for a in axes]
        number = -1 if pd.isna(row["optuna"]) else int(row["optuna"])  # search points: in sampling order
        keys.append((tuple(position), number if not axes else 0, str(row["label"]),
                     -1 if pd.isna(row["seed"]) else int(row["seed"])))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return trials.iloc[order].reset_index(drop=True)


def fetch_curves(tracker: Tracker, trials: pd.DataFrame, workers: int = 8) -> pd.DataFrame:
    """Every curve the metric registry marks as plotted, of the counted runs, fetched in parallel, cached per
    (run, key). Per-seed parts and spreads (kid_rand_1001, kid_rand_seed_sd) are not plotted: tables hold them."""
    jobs = [(row.run_id, key, row.cell, row.seed) for row in trials.itertuples()
            for key in row.metric_keys if registry.plotted(key)]
    cache: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def fetch(job: tuple[str, str, str, int]) -> None:
        if (job[0], job[1]) not in cache:
            cache[(job[0], job[1])] = tracker.history(job[0], job[1])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fetch, jobs))
    rows = [(run_id, cell, seed, key, step, value) for run_id, key, cell, seed in jobs
            for step, value in cache[(run_id, key)]]
    frame = pd.DataFrame(rows, columns=["run_id", "cell", "seed", "key", "step", "value"])
    return frame.astype({"step": "int64", "value": "float64"})  # typed even when empty


def _config(tracker: Tracker, trials: pd.DataFrame, workdir: Path) -> dict[str, Any]:
    """One trial's config.yaml, for the dataset and schedule lines (they are the same in every cell)."""
    for row in _preferred(trials).itertuples():
        path = tracker.download(row.run_id, "config/config.yaml", workdir / "config" / row.run_id)
        if path is not None and path.is_file():
            return yaml.safe_load(path.read_text()) or {}
    return {}


def _preferred(trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty:
        return trials
    return trials.assign(_rank=trials["outcome"].ne(Outcome.FINISHED)).sort_values(["_rank", "seed"], kind="stable")


def sample_run(trials: pd.DataFrame, cell: str) -> pd.Series | None:
    """The run whose samples represent a cell: the smallest finished seed, else the smallest seed run."""
    rows = _preferred(trials[trials["cell"] == cell])
    return None if rows.empty else rows.iloc[0]


def artifact_bytes(tracker: Tracker, run_id: str, path: str, workdir: Path) -> bytes | None:
    local = tracker.download(run_id, path, workdir / "artifacts" / run_id)
    if local is None or not local.is_file():
        return None
    data = local.read_bytes()
    return shrink_gif(data) if path.endswith(".gif") and len(data) > MAX_GIF_BYTES else data


def shrink_gif(data: bytes, max_bytes: int = MAX_GIF_BYTES) -> bytes:
    """Keep every k-th frame (and the last) and subsample pixels until the GIF fits the page budget."""
    frames = np.asarray(iio.imread(data, index=None))
    for every, stride in ((2, 1), (4, 1), (4, 2), (8, 2), (8, 4)):
        keep = sorted({*range(0, frames.shape[0], every), frames.shape[0] - 1})
        data = iio.imwrite("<bytes>", frames[keep, ::stride, ::stride], extension=".gif", duration=400, loop=0)
        if len(data) <= max_bytes:
            break
    return data
