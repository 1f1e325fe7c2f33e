"""The report's setup section and the warnings that qualify every number below it.

Each warning names a condition that makes the effects harder to read than the tables suggest: a study that
mixes numeric precisions, KID on too few images, a gap closure missing because its anchors do not define it.
The metric glossary says what each metric shown responds to and what it is blind to (from the registry).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from ablation.evaluation import registry
from ablation.evaluation.gaps import gap_closure_reason
from ablation.outcomes import Outcome
from ablation.report.data import M, P, ReportData
from ablation.report.sizes import n_per_metric, resolution_sentence
from ablation.report.text import duration, fmt
from ablation.study.tracking.client import TAG_DEMO

KID_MIN_IMAGES = 100  # below this KID's estimate is noisy (reference §4.5); the registry's N_IMAGES says so too
UNKNOWN = "unknown"  # runs logged before the `precision` param existed


def setup_section(data: ReportData) -> dict[str, Any]:
    spec, cfg, tags = data.spec, data.config, data.parent_tags
    outcomes = data.trials["outcome"].value_counts().to_dict() if not data.trials.empty else {}
    spent = float(data.attempts["duration_s"].sum()) if not data.attempts.empty else math.nan
    span = ((data.attempts["end_ms"].max() - data.attempts["start_ms"].min()) / 1000
            if not data.attempts.empty and data.attempts["end_ms"].notna().any() else math.nan)

    def section(name: str) -> dict[str, Any]:  # a config.yaml from an older schema may lack a section
        return cfg[name] if isinstance(cfg.get(name), dict) else {}

    precision, precision_warning = precision_summary(data.trials)
    images, images_warning = kid_images(data.trials, section("eval").get("max_images"))
    return {
        "question": spec.question if spec else "", "description": spec.description if spec else "",
        "method": spec.method if spec else "unknown", "seeds": list(spec.seeds) if spec else [],
        "objectives": [(o.metric, o.direction) for o in spec.objectives] if spec else [],
        "yaml": data.study_yaml, "data": section("data"), "schedule": section("schedule"),
        "eval": section("eval"), "steps": sorted({int(s) for s in data.trials.get("steps", []) if pd.notna(s)}),
        "commit": tags.get("ablate.git_commit", "unknown"), "version": tags.get("ablate.version", "unknown"),
        "outcomes": sorted(outcomes.items()), "n_trials": len(data.trials), "n_runs": len(data.attempts),
        "wall": duration(spent), "span": duration(span),
        "parallel": fmt(spent / span, 2) if span and math.isfinite(span) and span > 0 else "–",
        "precision": precision, "images": images, "arrays": trained_together(data.trials),
        "init_saved": init_saved(data.attempts),
        "demo": json.loads(tags.get(TAG_DEMO, "[]")),  # how a --demo run deviates from the faithful config
        "warnings": [w for w in (stale_warning(data), precision_warning, images_warning) if w],
        "eval_n": n_per_metric(data.trials), "resolution": resolution_sentence(cfg),
    }


def stale_warning(data: ReportData) -> str:
    """Trials left out because their cells are no longer the study file's, or, without the file, labels that
    pool several configs (report/stale.py); empty when neither."""
    if data.stale:
        cells = ", ".join(sorted({row["label"] for row in data.stale}))
        return (f"{len(data.stale)} trial(s) ran a config this study file no longer has ({cells}): they are left out "
                "of every table, effect and plot on this page; \"Stale trials\" (section 2) says how each differs.")
    if data.mixed:
        return (f"{', '.join(data.mixed)}: each holds trials of more than one config (the study file was edited "
                "between runs), pooled here; pass the study YAML to `ablate report` to keep only the current "
                "config's trials.")
    return ""


def trained_together(trials: pd.DataFrame) -> list[str]:
    """One line per trial array that produced a result (one fused model), e.g. "style_weight=3 seed=0 + ...";
    empty when every trial trained alone."""
    if trials.empty or "array" not in trials:
        return []
    lines = []
    for _, group in trials[trials["array"].fillna("").astype(bool)].groupby("array", sort=False):
        lines.append(" + ".join(f"{row.label} seed={row.seed}" for row in group.itertuples()))
    return lines


def init_saved(attempts: pd.DataFrame) -> str:
    """'3 of 9 trials continued a stored init phase, saving ≈ 2.1 min of compute' (gan/init_cache.py); empty when
    none did."""
    if attempts.empty or "init_reused_s" not in attempts:
        return ""
    reused = attempts["init_reused_s"].dropna()
    if reused.empty:
        return ""
    return (f"{len(reused)} of {len(attempts)} trial runs continued a stored init phase instead of computing it, "
            f"saving ≈ {duration(float(reused.sum()))} of compute")


def precision_summary(trials: pd.DataFrame) -> tuple[str, str]:
    """('fp32 (4 trials), bf16 (4 trials)', warning): bf16 autocast changes what the losses see, so a study
    whose cells ran under different precisions confounds precision with its axes."""
    if trials.empty:
        return "–", ""
    logged = trials[P + "precision"] if P + "precision" in trials else pd.Series([None] * len(trials))
    values = logged.where(logged.notna(), UNKNOWN).astype(str)
    counts = values.value_counts()
    order = sorted(counts.index, key=lambda v: (v == UNKNOWN, v))
    text = ", ".join(f"{v} ({counts[v]} trial{'s' if counts[v] != 1 else ''})" for v in order)
    if UNKNOWN in counts:
        text += "; unknown = logged before runs recorded their precision"
    known = [v for v in order if v != UNKNOWN]
    if len(known) < 2:
        return text, ""
    cells = {v: sorted(set(trials.loc[values == v, "label"].astype(str))) for v in known}
    where = "; ".join(f"{v}: {', '.join(labels)}" for v, labels in cells.items())
    return text, (f"This study mixes precisions ({text}). bf16 autocast changes what the losses see, so a "
                  f"difference between cells may come from the precision rather than from the study's axes ({where}).")


def kid_images(trials: pd.DataFrame, config_max: Any) -> tuple[str, str]:
    """(images per scored set, warning when KID used fewer than KID_MIN_IMAGES).

    The evaluator logs `eval/n_images` per trial; older runs did not, and then the cap `eval.max_images` (a
    varied param, else the config's) is the best available bound.
    """
    kid_columns = [c for c in trials if c.startswith(M) and "/kid_" in c and registry.find(c[len(M):]) is not None]
    scored = trials[trials[kid_columns].notna().any(axis=1)] if kid_columns and not trials.empty else trials.iloc[0:0]
    if scored.empty:
        return "–", ""
    counted, capped = [], []
    for row in scored.to_dict("records"):
        logged = _number(row.get(M + registry.N_IMAGES))
        if logged is not None:
            counted.append(int(logged))
        elif (cap := _number(row.get(P + "eval.max_images"), config_max)) is not None:
            capped.append(int(cap))
    sizes = counted + capped
    if not sizes:
        return "unknown", ""
    low, high = min(sizes), max(sizes)
    text = f"{low}" if low == high else f"{low}–{high}"
    if capped:  # a cap, not a count: the evaluator may have scored fewer (as many as there are val photos)
        text += f" (for {len(capped)} trial(s) the cap eval.max_images: they did not log {registry.N_IMAGES})"
    if low >= KID_MIN_IMAGES:
        return text, ""
    return text, (f"KID is computed on {low} images per set in at least one trial (fewer than {KID_MIN_IMAGES}): "
                  "at this size its estimate is noisy, so small KID differences are not reliable. Raise "
                  "eval.max_images (and the validation photos) before drawing conclusions from KID.")


def _number(*candidates: Any) -> float | None:
    """The first candidate that reads as a finite number (params are logged as text)."""
    for value in candidates:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            return number
    return None


def _gap_reason(noop: float, ref: float, floor: float) -> str:
    """Why `<metric>_gap` is undefined for these anchors, in the evaluator's own words (the torch-free
    `ablation.evaluation.gaps`, which decided it); empty when it is defined."""
    return gap_closure_reason(noop, ref, noop, floor)[1]


def gap_notes(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Per gap metric and reason: on how many scored trials the gap is missing, and why.

    A trial counts when it scored the metric itself but logged no gap. The reason is the evaluator's own
    (tag `eval/gap/<metric>`) when present, else worked out from the logged anchors.
    """
    found: dict[tuple[str, str], list[str]] = {}
    totals: dict[str, int] = {}
    for key, metric in registry.METRICS.items():
        if metric.gap_floor is None or M + key not in trials:
            continue
        gap = registry.gap_key(key)
        scored = trials[pd.to_numeric(trials[M + key], errors="coerce").notna()]
        totals[gap] = len(scored)
        for row in scored.to_dict("records"):
            if _number(row.get(M + gap)) is not None:
                continue
            reason = (row.get("gap_tags") or {}).get(key.removeprefix("eval/"), "")
            noop = _number(row.get(M + registry.anchor_key("noop", key)))
            ref = _number(row.get(M + registry.anchor_key("ref", key)))
            if not reason and noop is not None and ref is not None:
                reason = _gap_reason(noop, ref, metric.gap_floor)
            if reason:
                found.setdefault((gap, reason), []).append(str(row["label"]))
    return [{"metric": gap, "reason": reason, "missing": len(labels), "scored": totals[gap],
             "cells": sorted(set(labels))} for (gap, reason), labels in found.items()]


def glossary(keys: Iterable[str]) -> list[dict[str, str]]:
    """Description and what it responds to, for each registered metric shown on the page, in registry order
    (style, then content, then losses: the order the registry groups them in)."""
    order = {key: i for i, key in enumerate(registry.METRICS)}
    registered = [k for k in dict.fromkeys(keys) if registry.find(k) is not None]
    rows = []
    for key in sorted(registered, key=lambda k: order[registry.resolve(k)]):
        metric = registry.lookup(key)
        rows.append({"key": key, "goal": metric.direction or "–", "description": metric.description,
                     "responds_to": metric.responds_to or "–"})
    return rows


def shown_eval_keys(trials: pd.DataFrame) -> list[str]:
    """Every evaluation metric some finished trial logged (curves, tables): the glossary's candidates."""
    done = trials[trials["outcome"] == Outcome.FINISHED] if not trials.empty else trials
    return [c[len(M):] for c in done if c.startswith(M + "eval/") and done[c].notna().any()
            and registry.plotted(c[len(M):])]
