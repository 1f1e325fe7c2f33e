"""Trials that ran a config the study file no longer has (issue 23): left out of every table, effect and plot.

A study's base or an arm edited after some trials ran gives its cells new keys (`config.cell_hash`), while the
MLflow runs of the earlier trials keep the old ones under the same labels; pooled, the report would average two
configs under one name. With the study file at hand (`ablate run`, `ablate report STUDY.yaml`), a trial is
current when its cell key (tag `ablate.cell`) is a key of the file's cells, and stale otherwise; each stale cell
is listed with its first differing field, read from one of its runs' config.yaml against the file's cell of the
same label. Without the file (`ablate report NAME`) the current cells are unknown: labels that hold more than
one cell key are named instead.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from ablation.config import TrainConfig
from ablation.report.text import fmt
from ablation.study.spec.queued import NO_CELL, first_difference
from ablation.study.spec.study import Cell, Study, TrialSpec
from ablation.study.tracking.client import Tracker


def current_cells(study: Study | None) -> set[str] | None:
    """The cell keys a trial must have to count; None when that cannot be known (no study file, a search)."""
    if study is None or study.spec.method != "grid" or not study.cells:
        return None
    return {cell.key for cell in study.cells}


def is_stale(frame: pd.DataFrame, current: set[str] | None) -> pd.Series:
    """Rows whose cell key is not one of `current` (a run without the tag cannot be judged and counts)."""
    if current is None or frame.empty:
        return pd.Series(False, index=frame.index)
    return frame["cell"].astype(str).ne("") & ~frame["cell"].isin(current)


def stale_rows(tracker: Tracker, study: Study, trials: pd.DataFrame, workdir: Path) -> list[dict[str, Any]]:
    """One row per stale trial: its cell, seed and outcome, and how its cell differs from the study file's."""
    by_label = {cell.label: cell for cell in study.cells}
    differences: dict[str, tuple[str, Any, Any]] = {}  # per stale cell key: one config.yaml read each
    rows = []
    for row in trials.itertuples():
        if row.cell not in differences:
            differences[row.cell] = _difference(tracker, row, by_label.get(str(row.label)), workdir)
        field, stored, now = differences[row.cell]
        rows.append({"label": str(row.label), "seed": fmt(row.seed), "outcome": str(row.outcome), "key": row.key,
                     "field": field, "stored": _shown(stored), "current": _shown(now)})
    return rows


def _difference(tracker: Tracker, row: Any, cell: Cell | None, workdir: Path) -> tuple[str, Any, Any]:
    """(field, the trial's value, the study file's value) for one stale trial."""
    if cell is None:
        return "cell", str(row.label), NO_CELL
    path = tracker.download(row.run_id, "config/config.yaml", workdir / "stale" / row.run_id)
    if path is None or not path.is_file():
        return "config", "<not logged>", f"cell key {cell.key}"
    stored = yaml.safe_load(path.read_text()) or {}
    # as the trial's code validated it (defaults filled in, so only real differences show); a config.yaml of an
    # older schema does not validate and is compared as logged
    with contextlib.suppress(ValidationError):
        stored = TrainConfig.model_validate(stored).model_dump(mode="json")
    seed = int(row.seed) if pd.notna(row.seed) else int(stored.get("seed", 0))
    found = first_difference(stored, TrialSpec.of(cell, seed).config.model_dump(mode="json"))
    # equal fields under another key: the key was computed by other code (another hash of the same config)
    return found if found is not None else ("cell key", row.cell, cell.key)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else fmt(value) if isinstance(value, (int, float)) else repr(value)


def mixed_labels(trials: pd.DataFrame) -> list[str]:
    """Labels whose trials ran more than one cell key: what a report without the study file can only name."""
    if trials.empty:
        return []
    keys = trials[trials["cell"].astype(str).ne("")].groupby("label", sort=False)["cell"].nunique()
    return [str(label) for label, count in keys.items() if count > 1]
