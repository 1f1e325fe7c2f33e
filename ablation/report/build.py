"""`ablate report STUDY`: one self-contained HTML page that answers the study's question.

    build_report(name, tracker, storage_url, Path("reports"), study)  ->  reports/<name>/index.html

Reads MLflow (and, for searches, the Optuna storage); computes seed-paired effects with t-intervals and
Holm-adjusted p-values; embeds every figure, final frame and GIF as a data URI. Never writes to either store.
The sections are built by role: notes.py (setup, warnings, metric glossary), verdicts.py (effects and the
summary), search.py (Optuna), and this module (tables, curves, scatter, samples, rendering).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from ablation.evaluation import registry
from ablation.outcomes import Outcome
from ablation.report import plots
from ablation.report.balance import balance_section
from ablation.report.control import control_line
from ablation.report.data import M, P, ReportData, collect, retried_after_divergence
from ablation.report.notes import gap_notes, glossary, setup_section, shown_eval_keys
from ablation.report.samples import sample_grid
from ablation.report.search import search_section
from ablation.report.stats import mean_ci, pareto_front, turning_point
from ablation.report.text import duration, fmt
from ablation.report.verdicts import cell_divergence, effect_rows, summary_lines
from ablation.study.spec.study import Study
from ablation.study.tracking.client import Tracker

# Trial-table columns shown whenever logged (tests check them against the metric registry).
MAIN_EVAL = ("eval/style/kid_rand", "eval/style/gram_rand", "eval/content/ssim_luma_blur", "eval/content/edge_f1",
             "eval/content/pgt_psnr")
# What "better" means when the objectives were not logged (evaluation off): the directions are the registry's.
FALLBACK = tuple((k, registry.lookup(k).direction) for k in ("eval/style/kid_rand", "eval/content/ssim_luma_blur",
                                                             "loss/g/style", "loss/g/content"))
CURVE_RUNS = (Outcome.FINISHED, Outcome.PRUNED)  # diverged runs blow up the y axis; their rate has its own table
TEMPLATES = Path(__file__).parent / "templates"
# Stands in for the script hashes in the rendered page's CSP until the scripts' final text is known. No escaping
# touches it (letters, digits, dashes) and the first occurrence is always the CSP, which precedes all page text.
SCRIPT_SRC_SLOT = "ablate-script-src-slot-7f3c"
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def build_report(study_name: str, tracker: Tracker, storage_url: str, reports_dir: Path,
                 study: Study | None = None) -> Path:
    with tempfile.TemporaryDirectory(prefix="ablate-report-") as tmp:
        data = collect(study_name, tracker, study, Path(tmp))                 # 1. MLflow -> frames
        metrics, metric_note = objective_metrics(data)                         # 2. what "better" means
        colors = plots.cell_colors(data.cells)
        effects = effect_rows(data, metrics)                                   # 3. paired stats
        table = trial_table(data, metrics)
        gaps = gap_notes(data.trials)
        page = {
            "name": study_name, "setup": setup_section(data), "note": metric_note,
            "legend": [(data.label(c), colors[c]) for c in data.cells],
            "table": table, "gaps": gaps, "stale": data.stale, "effects": effects, "axes": data.axes,
            "effects_plot": plots.effects_plot(effects) if any(r["effect"].n for r in effects) else None,
            "cells": cell_rows(data), "curves": curve_section(data, colors),
            "scatter": scatter_section(data, colors, metrics), "samples": sample_grid(data, tracker),
            "search": search_section(data, storage_url) if _is_search(data) else None,
            "balance": balance_section(data, tracker, colors),
            "generated": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        }
        control = control_line(data)
        page["summary"] = [*(f"Vacuous axis: {line}" for line in page["balance"]["flags"]),
                           *([control["text"]] if control else []),
                           *summary_lines(data, effects, metrics, page["scatter"])]
        page["glossary"] = glossary([*(m for m, _ in page["setup"]["objectives"]), *table["metrics"],
                                     *(r["metric"] for r in effects), *(g["metric"] for g in gaps),
                                     *shown_eval_keys(data.trials)])
    out = report_path(reports_dir, study_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(page), encoding="utf-8")
    return out


def render(page: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)  # a typo in the template fails the test, not the page
    env.globals["tip"] = registry.tooltip  # every metric name on the page explains itself from the registry
    html = env.get_template("report.html.j2").render(**page, script_src=SCRIPT_SRC_SLOT)
    return with_script_hashes(html)


def with_script_hashes(html: str) -> str:
    """Fill the CSP's script-src with the sha256 of each inline script's exact text, instead of 'unsafe-inline':
    the browser runs a script only if its text hashes to a listed value, so a script that reached the page any
    other way (an escaping bug) does not run. The hash is over the text between <script> and </script> as
    rendered (UTF-8, as the page is written); the HTML parser turns CRLF into LF, as Jinja already emits."""
    sources = sorted({"'sha256-" + base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode() + "'"
                      for body in INLINE_SCRIPT.findall(html)})
    head, slot, rest = html.partition(SCRIPT_SRC_SLOT)
    if not slot:
        raise ValueError(f"report template lost its CSP script-src slot {SCRIPT_SRC_SLOT!r}")
    return head + (" ".join(sources) or "'none'") + rest


def report_path(reports_dir: Path, study_name: str) -> Path:
    return reports_dir / _folder_name(study_name) / "index.html"


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "study"


def _is_search(data: ReportData) -> bool:
    return data.spec is not None and data.spec.method == "search"


# ---- (1) question and setup --------------------------------------------------------------------------
def objective_metrics(data: ReportData) -> tuple[list[tuple[str, str]], str]:
    """The objectives that were logged; without them (evaluation off) the main losses, with a note."""
    wanted = [(o.metric, o.direction) for o in data.spec.objectives] if data.spec else []
    present = [m for m in wanted if data.has_metric(m[0])]
    if present or data.trials.empty:
        return present or wanted, ""
    fallback = [m for m in FALLBACK if data.has_metric(m[0])][:2]
    missing = ", ".join(m for m, _ in wanted) or "no objectives"
    if not fallback:
        return wanted, f"No trial has logged the objectives ({missing}) yet."
    return fallback, f"The objectives ({missing}) were not logged; using {', '.join(m for m, _ in fallback)}."


# ---- (2) trial table -----------------------------------------------------------------------------------
def trial_table(data: ReportData, metrics: list[tuple[str, str]]) -> dict[str, Any]:
    shown = list(dict.fromkeys([m for m, _ in metrics] + [k for k in MAIN_EVAL if data.has_metric(k)]))
    head = ["cell", "seed", "outcome", *(p.rsplit(".", 1)[-1] for p in data.params), *shown, "run time"]
    rows, retried = [], retried_after_divergence(data.attempts)
    for row in data.trials.to_dict("records"):
        outcome = (f"diverged at step {fmt(row['diverged_step'])}" if row["outcome"] == Outcome.DIVERGED
                   and pd.notna(row.get("diverged_step")) else row["outcome"])
        outcome = f"{outcome} ({retried[row['key']]})" if row["key"] in retried else outcome
        cells = [(row["label"], row["label"]), (fmt(row["seed"]), row["seed"]), (outcome, outcome)]
        cells += [(fmt(row.get(P + p)), _sort_key(row.get(P + p))) for p in data.params]
        cells += [(fmt(row.get(M + k)), _sort_key(row.get(M + k))) for k in shown]
        cells.append((duration(row["duration_s"]), _sort_key(row["duration_s"])))
        rows.append({"outcome": row["outcome"], "cells": cells})
    return {"head": head, "rows": rows, "metrics": shown}


def _sort_key(value: Any) -> str:
    try:
        number = float(value)
        return repr(number) if math.isfinite(number) else ""
    except (TypeError, ValueError):
        return "" if value is None else str(value)


# ---- (3) effects and per-cell outcome rates ------------------------------------------------------------
def cell_rows(data: ReportData) -> list[dict[str, Any]]:
    rows = []
    for cell, group in data.trials.groupby("cell", sort=False):
        counts = group["outcome"].value_counts()
        finished, diverged = int(counts.get(Outcome.FINISHED, 0)), int(counts.get(Outcome.DIVERGED, 0))
        ran = finished + diverged + int(counts.get(Outcome.PRUNED, 0))  # the divergence rate's base: trained trials
        steps = sorted(int(s) for s in group["diverged_step"].dropna())
        rows.append({"label": data.label(cell), "trials": len(group), "finished": finished, "diverged": diverged,
                     "other": len(group) - finished - diverged, "rate": f"{diverged / ran:.0%}" if ran else "–",
                     "steps": ", ".join(map(str, steps)), "time": duration(float(group["duration_s"].mean())),
                     "models": _models(group)})
    return rows


def _models(group: pd.DataFrame) -> list[tuple[str, str]]:
    """(seed, model URI) of a cell's finished trials that logged their generator, by seed: what
    `mlflow.pyfunc.load_model` or `ablate stylize --model` takes."""
    if "model_uri" not in group:  # a frame gathered without the column (older callers, hand-built data)
        return []
    done = group[group["outcome"].eq(Outcome.FINISHED) & group["model_uri"].fillna("").ne("")]
    return [(fmt(row.seed), str(row.model_uri)) for row in done.sort_values("seed").itertuples()]


# ---- (4) curves -----------------------------------------------------------------------------------------
def curve_section(data: ReportData, colors: dict[str, str]) -> dict[str, Any]:
    runs = set(data.trials.loc[data.trials["outcome"].isin(CURVE_RUNS), "run_id"]) if not data.trials.empty else set()
    curves = data.curves[data.curves["run_id"].isin(runs) & np.isfinite(data.curves["value"])]
    keys = sorted(curves["key"].unique(), key=lambda k: (not k.startswith("loss/init"), k.startswith("eval/"), k))
    figures, single, turns = [], [], {}
    for key in keys:
        subset = curves[curves["key"] == key]
        if subset.groupby("run_id")["step"].nunique().max() < 2:
            single.append(key)  # evaluated once at the end: the tables hold it
            continue
        bands = {cell: _band(g) for cell, g in sorted(subset.groupby("cell"), key=lambda x: data.cells.index(x[0]))}
        marks = {}
        if key == "loss/g/adv":
            marks = {c: s for c, b in bands.items() if (s := turning_point(b["step"], b["mean"])) is not None}
            turns = {data.label(c): marks.get(c) for c in bands}
        figures.append({"key": key, "uri": plots.curve_plot(key, bands, colors, marks)})
    return {"figures": figures, "single": single, "turns": sorted(turns.items(), key=lambda x: x[0])}


def _band(group: pd.DataFrame) -> pd.DataFrame:
    rows = [(step, *mean_ci(g["value"].tolist()), g["value"].size) for step, g in group.groupby("step")]
    band = pd.DataFrame(rows, columns=["step", "mean", "lo", "hi", "n"])
    band.loc[band["n"] < 2, ["lo", "hi"]] = math.nan  # one seed at a step: no band rather than a flat one
    return band


# ---- (5) style vs content --------------------------------------------------------------------------------
def scatter_section(data: ReportData, colors: dict[str, str], metrics: list[tuple[str, str]]) -> dict[str, Any]:
    pair = metrics[:2] if len(metrics) >= 2 else [m for m in FALLBACK if data.has_metric(m[0])][:2]
    if len(pair) < 2:
        return {"uri": None, "note": "Needs two logged metrics (e.g. eval/style/kid_rand and "
                                     "eval/content/ssim_luma_blur); fewer were logged.", "front": []}
    (x, dx), (y, dy) = pair
    done = data.trials[data.trials["outcome"] == Outcome.FINISHED]
    points = pd.DataFrame({"cell": done["cell"], "x": pd.to_numeric(done.get(M + x), errors="coerce"),
                           "y": pd.to_numeric(done.get(M + y), errors="coerce")}).dropna()
    if points.empty:
        return {"uri": None, "note": "No finished trial logged both metrics.", "front": []}
    means = points.groupby("cell", sort=False)[["x", "y"]].mean().reset_index()
    means["front"] = pareto_front(means[["x", "y"]].to_numpy().tolist(), [dx, dy])
    # a point is the mean of the seeds that survived: a cell that diverged on some says so wherever it appears
    diverged = {c: cell_divergence(data.trials, c) for c in means["cell"]}
    labels = {c: data.label(c) + (f" ({diverged[c]})" if diverged[c] else "") for c in means["cell"]}
    uri = plots.scatter_plot(points, means, colors, x, y, labels, [dx, dy])
    sizes = points.groupby("cell", sort=False).size()
    rows = [{"label": data.label(r.cell), "n": int(sizes[r.cell]), "x": fmt(r.x), "y": fmt(r.y), "front": r.front,
             "diverged": diverged[r.cell]} for r in means.itertuples()]
    return {"uri": uri, "note": "", "x": x, "y": y, "points": rows,
            "front": [labels[c] for c in means.loc[means["front"], "cell"]]}


# ---- (6) sample sheet --------------------------------------------------------------------------------------
