"""Report figures: matplotlib rendered to base64 PNG data URIs, so the page needs no other file.

Every figure is a `matplotlib.figure.Figure` drawn by the Agg canvas directly: no pyplot, so no backend is
selected and no GUI is needed (reports are built on servers and in CI), and the report's style applies
through `rc_context` inside each plot function, so importing or calling this module leaves the caller's
matplotlib settings as they were.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import ParamSpec

import matplotlib
import matplotlib.colors
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 96
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.spines.top": False, "axes.spines.right": False,
         "text.usetex": False, "axes.formatter.useoffset": False}

P = ParamSpec("P")


def styled(plot: Callable[P, str]) -> Callable[P, str]:
    """Draw and save the figure under the report style; the caller's rcParams are restored afterwards."""

    @functools.wraps(plot)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> str:
        with matplotlib.rc_context(STYLE):  # rcParams are read both when artists are made and when drawn
            return plot(*args, **kwargs)

    return wrapper


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)  # attaches itself to the figure: PNG without any backend or pyplot figure manager
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return data_uri(buffer.getvalue(), "image/png")


def plain(text: str) -> str:
    """Labels are user text: keep matplotlib from reading `$...$` in them as mathtext."""
    return text.replace("$", r"\$")


def cell_colors(cells: Sequence[str]) -> dict[str, str]:
    """One stable colour per cell: tab10 for up to 10 cells, tab20 up to 20, then an evenly spaced map."""
    n = len(cells)
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    positions = range(n) if n <= 20 else [i / max(n - 1, 1) for i in range(n)]
    return {cell: matplotlib.colors.to_hex(cmap(p)) for cell, p in zip(cells, positions, strict=True)}


@styled
def curve_plot(key: str, bands: Mapping[str, pd.DataFrame], colors: Mapping[str, str],
               marks: Mapping[str, int] | None = None) -> str:
    """Mean over seeds per cell with its t-band; `marks` draws a dashed line at a step per cell."""
    fig = Figure(figsize=(4.4, 2.7))
    ax = fig.subplots()
    for cell, band in bands.items():
        color = colors[cell]
        ax.plot(band["step"], band["mean"], color=color, lw=1.3, marker="o" if len(band) < 4 else None, ms=3)
        spread = band.dropna(subset=["lo", "hi"])
        if not spread.empty:
            ax.fill_between(spread["step"], spread["lo"], spread["hi"], color=color, alpha=0.12, lw=0)
        if marks and cell in marks:
            ax.axvline(marks[cell], color=color, ls="--", lw=1)
            at = band.loc[band["step"] == marks[cell], "mean"]
            if not at.empty:
                ax.plot([marks[cell]], [at.iloc[0]], marker="v", color=color, ms=7, mec="black", mew=0.6)
    ax.set_title(plain(key))
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.grid(alpha=0.25)
    return figure_uri(fig)


@styled
def scatter_plot(trials: pd.DataFrame, means: pd.DataFrame, colors: Mapping[str, str], x: str, y: str,
                 labels: Mapping[str, str], directions: Sequence[str]) -> str:
    """Trials as small dots, cell means with their label; the Pareto front (column `front`) outlined."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for row in trials.itertuples():
        ax.scatter(row.x, row.y, s=14, color=colors[row.cell], alpha=0.45, lw=0)
    front = means[means["front"]].sort_values("x")
    if len(front) > 1:
        ax.plot(front["x"], front["y"], color="black", lw=1, ls="--", zorder=1, label="Pareto front")
    for i, row in enumerate(means.itertuples()):
        ax.scatter(row.x, row.y, s=90 if row.front else 45, color=colors[row.cell], zorder=3,
                   edgecolor="black" if row.front else "white", linewidth=1.6 if row.front else 0.5)
        offset = (5, 4) if i % 2 == 0 else (5, -10)  # alternate sides so neighbouring labels overlap less
        ax.annotate(plain(labels[row.cell]), (row.x, row.y), textcoords="offset points", xytext=offset, fontsize=7)
    arrow = {"minimize": "lower is better", "maximize": "higher is better"}
    ax.set_xlabel(f"{plain(x)} ({arrow[directions[0]]})")
    ax.set_ylabel(f"{plain(y)} ({arrow[directions[1]]})")
    ax.grid(alpha=0.25)
    if len(front) > 1:
        ax.legend(loc="best", frameon=False)
    return figure_uri(fig)


@styled
def history_plot(numbers: Sequence[int], values: Mapping[str, Sequence[float]], best: Sequence[bool],
                 directions: Sequence[str]) -> str:
    """Objective value per Optuna trial; best-so-far for one objective, best trials ringed for several."""
    fig = Figure(figsize=(4.2 * len(values), 2.8), layout="constrained")
    axes = fig.subplots(1, len(values), squeeze=False)
    for ax, (name, series), direction in zip(axes[0], values.items(), directions, strict=True):
        finite = [(n, v, b) for n, v, b in zip(numbers, series, best, strict=True)
                  if v is not None and math.isfinite(v)]
        ax.scatter([n for n, _, _ in finite], [v for _, v, _ in finite], s=14, color="#1f77b4")
        ringed = [(n, v) for n, v, b in finite if b]
        ax.scatter([n for n, _ in ringed], [v for _, v in ringed], s=60, facecolor="none", edgecolor="#d62728",
                   label="best trials")
        if len(values) == 1 and finite:
            pick = min if direction == "minimize" else max
            running = [pick(v for _, v, _ in finite[:i + 1]) for i in range(len(finite))]
            ax.step([n for n, _, _ in finite], running, where="post", color="#d62728", lw=1, label="best so far")
        ax.set_title(plain(name))
        ax.set_xlabel("Optuna trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.25)
        ax.legend(frameon=False, fontsize=7)
    return figure_uri(fig)


@styled
def importance_plot(importances: Mapping[str, Mapping[str, float]]) -> str:
    """Horizontal bars per objective (Optuna's evaluator gives no uncertainty; the page says so)."""
    height = 1.7 + 0.35 * max(len(scores) for scores in importances.values())
    fig = Figure(figsize=(4.6 * len(importances), height), layout="constrained")
    axes = fig.subplots(1, len(importances), squeeze=False)
    for ax, (name, scores) in zip(axes[0], importances.items(), strict=True):
        params = list(scores)[::-1]
        ax.barh([plain(p) for p in params], [scores[p] for p in params], color="#2ca02c")
        ax.set_title(plain(name))
        ax.set_xlabel("importance (normalised)")
    return figure_uri(fig)


@styled
def effects_plot(rows: Sequence[Mapping[str, object]]) -> str:
    """Per metric, each comparison's Δ: every seed's difference as a dot, the mean and its unadjusted t-interval."""
    return figure_uri(effects_figure(rows))


def effects_figure(rows: Sequence[Mapping[str, object]]) -> Figure:
    """The effects plot's figure (its seed dots are one scatter collection per comparison, for the tests)."""
    metrics = list(dict.fromkeys(str(r["metric"]) for r in rows))
    per_metric = {m: [r for r in rows if r["metric"] == m] for m in metrics}
    height = max(len(v) for v in per_metric.values())
    fig = Figure(figsize=(3.4 * len(metrics), 0.9 + 0.32 * height))
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
        for y, row in enumerate(per_metric[metric]):
            effect = row["effect"]
            if getattr(effect, "has_interval", False):
                ax.plot([effect.lo, effect.hi], [y, y], color="#555", lw=1.2)
            if effect.diffs:  # one dot per seed: with 3 seeds the reader sees the spread the mean hides
                ax.scatter(effect.diffs, [y] * len(effect.diffs), s=16, facecolor="white", edgecolor="#1f77b4",
                           lw=1, zorder=3)
            if math.isfinite(effect.mean):
                ax.scatter([effect.mean], [y], s=30, marker="D", color="black" if row["significant"] else "#888",
                           zorder=4)
        ax.axvline(0, color="#c00", lw=0.8, ls=":")
        ax.set_yticks(range(len(per_metric[metric])),
                      [plain(f"{r['axis']}={r['level']}") for r in per_metric[metric]])
        ax.set_ylim(len(per_metric[metric]) - 0.5, -0.5)
        direction = "lower is better" if per_metric[metric][0]["direction"] == "minimize" else "higher is better"
        ax.set_xlabel(f"Δ {plain(metric)} ({direction})")
        ax.grid(axis="x", alpha=0.25)
    fig.tight_layout()
    return fig


@styled
def share_plot(label: str, shares: pd.DataFrame) -> str:
    """G's gradient shares over steps as stacked areas (columns step, phase, term, share; mean over seeds): the
    init phase's terms, then the GAN phase's, on one step axis."""
    fig = Figure(figsize=(4.4, 2.5))
    ax = fig.subplots()
    terms = list(dict.fromkeys(shares["term"]))
    cmap = matplotlib.colormaps["tab10"]
    for phase, hatch in (("init", "//"), ("g", None)):
        part = shares[shares["phase"] == phase].pivot_table(index="step", columns="term", values="share")
        if part.empty:
            continue
        part = part.reindex(columns=[t for t in terms if t in part.columns]).fillna(0.0)
        ax.stackplot(part.index, part.T.to_numpy(), colors=[cmap(terms.index(t) % 10) for t in part.columns],
                     hatch=hatch, alpha=0.85, lw=0, labels=[f"{t} ({phase})" for t in part.columns])
    ax.set_ylim(0, 1)
    ax.set_title(plain(f"{label}: G's gradient shares"))
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return figure_uri(fig)
