"""The report's "Loss balance" section: how much of each network's gradient each weighted term sends.

A loss weight acts only through its term's share of the gradient (gan/balance.py logs `balance/<phase>/grad/
<term>` at the first step of each phase, at each evaluation and at a cadence). Per cell, the mean over seeds of
G's shares over training (init phase, then GAN phase) as stacked areas, and a table of G's and D's shares at the
first and the last GAN step. The vacuous-axis probe's flags (study/balance_probe.py) head the section.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from ablation.outcomes import Outcome
from ablation.report import plots
from ablation.report.data import ReportData
from ablation.study.tracking.client import TAG_PROBE, Tracker

GRAD_PREFIXES = ("balance/init/grad/", "balance/g/grad/", "balance/d/grad/")
COUNTED = (Outcome.FINISHED, Outcome.PRUNED, Outcome.DIVERGED)  # a diverged run's shares before it blew up count


def probe_flags(parent_tags: dict[str, str]) -> list[str]:
    """The probe's flag lines as the launcher stored them (none when the study ran without the probe)."""
    tag = parent_tags.get(TAG_PROBE)
    return list(json.loads(tag).get("flags", [])) if tag else []


def fetch_shares(data: ReportData, tracker: Tracker, workers: int = 8) -> pd.DataFrame:
    """cell, seed, phase, term, step, share: every logged gradient share of the counted runs."""
    trials = data.trials[data.trials["outcome"].isin(COUNTED)] if not data.trials.empty else data.trials
    jobs = [(row.run_id, row.cell, row.seed, key) for row in trials.itertuples()
            for key in row.metric_keys if key.startswith(GRAD_PREFIXES)]

    def fetch(job: tuple[str, str, int, str]) -> list[tuple[Any, ...]]:
        run_id, cell, seed, key = job
        _, phase, _, term = key.split("/")
        return [(cell, seed, phase, term, step, value) for step, value in tracker.history(run_id, key)]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = [row for part in pool.map(fetch, jobs) for row in part]
    frame = pd.DataFrame(rows, columns=["cell", "seed", "phase", "term", "step", "share"])
    return frame.astype({"step": "int64", "share": "float64"})


def share_table(shares: pd.DataFrame, cells: list[str], labels: dict[str, str]) -> dict[str, Any]:
    """Mean over seeds of each network's shares at its first and last GAN-phase measurement, per cell."""
    gan = shares[shares["phase"].isin(("g", "d"))]
    columns = [(phase, term) for phase in ("g", "d")
               for term in dict.fromkeys(gan.loc[gan["phase"] == phase, "term"])]
    rows = []
    for cell in cells:
        mine = gan[gan["cell"] == cell]
        if mine.empty:
            continue
        for when, pick in (("first", "min"), ("last", "max")):
            values: dict[str, str] = {}
            for phase, term in columns:
                part = mine[(mine["phase"] == phase) & (mine["term"] == term)]
                if part.empty:
                    values[f"{phase}/{term}"] = "–"
                    continue
                at = part.groupby("seed")["step"].transform(pick) == part["step"]  # each seed's first or last
                values[f"{phase}/{term}"] = share_text(float(part.loc[at, "share"].mean()))
            rows.append({"label": labels[cell], "when": f"{when} GAN step", "values": values})
    return {"columns": [f"{phase}/{term}" for phase, term in columns], "rows": rows}


def share_text(share: float) -> str:
    """0.3412 -> '34.1%'; tiny shares in scientific notation, so 1e-12 is never shown as 0.0%."""
    if share != share:  # nan
        return "–"
    return f"{100 * share:.1f}%" if share >= 1e-3 else f"{share:.1e}"


def balance_section(data: ReportData, tracker: Tracker, colors: dict[str, str]) -> dict[str, Any]:
    shares = fetch_shares(data, tracker)
    flags = probe_flags(data.parent_tags)
    if shares.empty:
        return {"flags": flags, "figures": [], "table": {"columns": [], "rows": []}}
    labels = {cell: data.label(cell) for cell in data.cells}
    figures = []
    for cell in data.cells:
        mine = shares[(shares["cell"] == cell) & shares["phase"].isin(("init", "g"))]
        if mine.empty:
            continue
        mean = mine.groupby(["step", "phase", "term"], as_index=False)["share"].mean()
        figures.append({"label": labels[cell], "uri": plots.share_plot(labels[cell], mean)})
    return {"flags": flags, "figures": figures, "table": share_table(shares, data.cells, labels)}
