"""The sample sheet as a grid a reader scans across: the validation photos once as a header row, then one row
per cell and seed (the baseline cell first) with that run's output under each photo, and the cell's GIF beside
its rows.

Each run logs `samples/final.png`, one row per validation photo of [photo | output] (gan/samples.py
`write_side_by_side`); the sheet cuts it into its tiles, so runs logged before this layout still show.
"""

from __future__ import annotations

from typing import Any

import imageio.v3 as iio
import numpy as np
import pandas as pd

from ablation.report import plots
from ablation.report.data import P, ReportData, artifact_bytes, sample_run
from ablation.study.tracking.client import Tracker


def split_final(png: bytes) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """([photo tile], [output tile]) of a final.png: [N*H, 2W, 3], N square tiles (one tall one when not)."""
    image = iio.imread(png)[..., :3]
    width = image.shape[1] // 2
    count = image.shape[0] // width if width and image.shape[0] % width == 0 else 1
    height = image.shape[0] // count
    rows = [image[i * height:(i + 1) * height] for i in range(count)]
    return [r[:, :width] for r in rows], [r[:, width:2 * width] for r in rows]


def _uri(tile: np.ndarray) -> str:
    return plots.data_uri(iio.imwrite("<bytes>", np.ascontiguousarray(tile), extension=".png"), "image/png")


def _baseline_first(data: ReportData) -> list[str]:
    """The study's cells with the one at every axis's baseline first (the row the others are read against)."""
    cells = data.cells
    if not data.axes or data.trials.empty:
        return cells
    first = data.trials.drop_duplicates("cell")
    at_base = first[np.logical_and.reduce([first.get(P + a.name, pd.Series(dtype=str)).astype(str) == a.baseline
                                           for a in data.axes])]
    base = [c for c in at_base["cell"] if c in cells][:1]
    return base + [c for c in cells if c not in base]


def sample_grid(data: ReportData, tracker: Tracker) -> dict[str, Any]:
    """{"photos": [tile uri], "cells": [{"label", "gif", "rows": [{"seed", "outcome", "tiles": [uri]}]}]}."""
    photos: list[str] = []
    cells = []
    for cell in _baseline_first(data):
        rows = []
        for run in data.trials[data.trials["cell"] == cell].sort_values("seed").to_dict("records"):
            png = artifact_bytes(tracker, run["run_id"], "samples/final.png", data.workdir)
            inputs, outputs = split_final(png) if png else ([], [])
            if inputs and not photos:  # every run samples the same fixed validation photos
                photos = [_uri(t) for t in inputs]
            rows.append({"seed": run["seed"], "outcome": run["outcome"], "tiles": [_uri(t) for t in outputs]})
        shown = sample_run(data.trials, cell)
        gif = artifact_bytes(tracker, shown["run_id"], "samples/evolution.gif", data.workdir) \
            if shown is not None else None
        cells.append({"label": data.label(cell), "rows": rows, "gif_seed": None if shown is None else shown["seed"],
                      "gif": plots.data_uri(gif, "image/gif") if gif else None})
    return {"photos": photos, "cells": cells}
