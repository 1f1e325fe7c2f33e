"""The metric registry, and that its readers take from it: the report (curves, directions, tooltips).

The evaluator's keys are checked against it in test_evaluate.py (on a real evaluation), study objectives in
tests/study/test_study.py and tests/test_cli.py.
"""

from __future__ import annotations

import dataclasses
import html
import re
from pathlib import Path
from typing import get_args

import pandas as pd
import pytest

from ablation.evaluation import registry
from ablation.report import build
from ablation.report.data import Axis, M, P, ReportData, fetch_curves
from ablation.study.spec.schema import StudySpec

PLOTTED = ["loss/g/adv", "loss/init/content", "eval/style/kid_rand", "eval/style/kid_rand_gap",
           "eval/style/stats_flat", "eval/content/ssim_luma_blur"]
DIAGNOSTICS = ["eval/style/kid_rand_1001", "eval/style/kid_rand_seed_sd", "eval/style/kid_rand_subset_sd",
               "eval/stats/flat", "lr/g"]
NOT_PLOTTED = [*DIAGNOSTICS, "perf/step_s",  # an objective (cost), but no curve, as before the registry
               "eval/style/kid_rnd", "loss/g/styel"]  # unregistered keys (typos): no curve, whatever the prefix


def test_every_entry_is_complete() -> None:
    for key, metric in registry.METRICS.items():
        assert metric.group in get_args(registry.Group), key
        assert metric.direction in (*get_args(registry.Direction), None), key
        assert metric.description.strip() and "\n" not in metric.description, key
        if metric.objective:  # a study must be able to tell better from worse
            assert metric.direction is not None, key
        if metric.direction is None:  # nothing to optimise: a statistic, a spread, an anchor, a schedule
            assert not metric.objective and not metric.plotted, key
    with pytest.raises(ValueError, match="needs a direction"):
        registry.Metric(None, "style", "a statistic offered as an objective")


def test_every_style_and_content_objective_says_what_it_responds_to() -> None:
    """The report's per-metric note (reference §6): what moves the metric and what it is blind to."""
    documented = {key: metric.responds_to for key, metric in registry.METRICS.items()
                  if metric.objective and metric.group in ("style", "content")}
    assert len(documented) == 19  # 7 distances + 7 gaps + 5 content metrics
    for key, note in documented.items():
        assert note.strip() and "\n" not in note and "blind" in note, key
    assert "blur" in documented["eval/style/kid_rand"] and "ImageNet" in documented["eval/style/kid_eff"]
    assert not any("optional" in m.description + m.responds_to for m in registry.METRICS.values())


def test_n_images_is_a_registered_diagnostic() -> None:
    metric = registry.lookup("eval/n_images")
    assert not metric.objective and not metric.plotted and metric.direction is None


def test_gaps_exist_exactly_for_metrics_with_a_floor() -> None:
    floors = {key for key, metric in registry.METRICS.items() if metric.gap_floor is not None}
    gaps = {key for key in registry.METRICS if key.endswith("_gap")}
    assert gaps == {registry.gap_key(key) for key in floors}
    assert all(registry.METRICS[key].direction == "minimize" for key in floors)  # gap closure is defined on distances
    assert all(registry.METRICS[key].direction == "maximize" for key in gaps)  # 1.0 = like the style set


def test_lookup_resolves_families_and_a_miss_lists_the_valid_names() -> None:
    assert registry.lookup("eval/style/kid_rand").direction == "minimize"
    assert registry.resolve("eval/style/kid_rand_1001") == registry.KID_RAND_PER_SEED
    assert registry.resolve("eval/anchor/ref/stats/flat") == registry.ANCHOR
    assert registry.anchor_key("noop", "eval/style/kid_rand_1002") == "eval/anchor/noop/style/kid_rand_1002"
    assert registry.resolve(registry.anchor_key("noop", "eval/style/kid_rand_1002")) == registry.ANCHOR
    # an anchor exists only for a registered metric; a family slot takes only its own kind of value
    for key in ("eval/anchor/noop/style/kid_rnd", "eval/anchor/other/style/kid_rand", "eval/style/kid_rand_x",
                "eval/style/kid_rnd"):
        with pytest.raises(registry.UnknownMetric) as err:
            registry.lookup(key)
        assert key in str(err.value) and "eval/style/kid_rand," in str(err.value)


def test_diagnostics_are_neither_plotted_nor_objectives() -> None:
    names = registry.objective_names()
    # the independent pretrained evaluator first (the primary style objective), the random VGGs after it
    assert names[:2] == ["eval/style/kid_eff", "eval/style/kid_rand"]
    assert "loss/g/style" in names and "perf/images_per_s" in names
    for key in DIAGNOSTICS:
        assert registry.resolve(key) not in names and not registry.plotted(key), key
    assert all(registry.plotted(key) for key in PLOTTED)
    ssim = registry.METRICS["eval/content/ssim_luma_blur"]
    assert registry.tooltip("eval/content/ssim_luma_blur") == (f"{ssim.description} (higher is better). "
                                                               f"Responds to: {ssim.responds_to}")
    assert registry.tooltip("eval/stats/flat") == registry.METRICS["eval/stats/flat"].description
    assert registry.tooltip("style_weight") == ""  # a param column of the report: no tooltip


class StubTracker:
    """The two Tracker calls the report makes here: a metric's history, and an artifact that is missing."""

    def __init__(self) -> None:
        self.fetched: set[str] = set()

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        self.fetched.add(key)
        shift = 1.0 if run_id.startswith("c3") else 0.0
        return [(100, 2.0 + shift + int(run_id[-1])), (200, 1.0 + shift + int(run_id[-1]))]

    def download(self, run_id: str, path: str, dest: Path) -> Path | None:
        return None


def _trials() -> pd.DataFrame:
    """Two cells (style_weight 1 and 3) x seeds 0, 1; finished; every key above logged."""
    rows = [{"run_id": f"{cell}-{seed}", "key": f"{cell}-s{seed}", "cell": cell, "label": f"style_weight={w}",
             "seed": seed, "outcome": "finished", "status": "FINISHED", "diverged_step": None, "optuna": None,
             "steps": 200, "start_ms": 0, "end_ms": 60_000, "duration_s": 60.0, "metric_keys": PLOTTED + NOT_PLOTTED,
             P + "loss.style_weight": w, M + "eval/style/kid_rand": 1.0 + seed + (cell == "c3"),
             M + "eval/content/ssim_luma_blur": 0.8 - 0.1 * (cell == "c3") + 0.01 * seed}
            for cell, w in (("c1", "1"), ("c3", "3")) for seed in (0, 1)]
    return pd.DataFrame(rows).astype({c: "Int64" for c in ("seed", "diverged_step", "optuna", "steps")})


def test_report_plots_what_the_registry_marks_plotted(monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = StubTracker()
    assert set(fetch_curves(tracker, _trials())["key"]) == set(PLOTTED) == tracker.fetched
    unplotted = dataclasses.replace(registry.METRICS["eval/style/kid_rand"], plotted=False)
    monkeypatch.setitem(registry.METRICS, "eval/style/kid_rand", unplotted)
    assert set(fetch_curves(StubTracker(), _trials())["key"]) == set(PLOTTED) - {"eval/style/kid_rand"}


def test_report_directions_and_tooltips_come_from_the_registry(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(direction == registry.lookup(key).direction for key, direction in build.FALLBACK)
    assert all(registry.lookup(key).plotted for key in build.MAIN_EVAL)
    # no direction in the study: each objective gets the registry's (ssim is higher-is-better)
    spec = StudySpec.model_validate({"name": "t", "axes": {"loss.style_weight": [1.0, 3.0]}, "seeds": [0, 1],
                                     "objectives": [{"metric": "eval/style/kid_rand"},
                                                    {"metric": "eval/content/ssim_luma_blur"}]})
    tracker, trials = StubTracker(), _trials()
    data = ReportData("t", spec, "", {}, trials, trials, fetch_curves(tracker, trials),
                      [Axis("loss.style_weight", "style_weight", ["1", "3"], "1")], {}, tmp_path, ["loss.style_weight"])
    monkeypatch.setattr(build, "collect", lambda *args: data)
    page = build.build_report("t", tracker, f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "reports").read_text()
    assert re.search(r'<code title="[^"]+">eval/content/ssim_luma_blur</code></td><td>maximize</td>', page)
    for key in ("eval/style/kid_rand", "eval/content/ssim_luma_blur"):  # trial-table header and effects
        tip = html.escape(registry.tooltip(key))
        assert f'<th title="{tip}">{key}</th>' in page and f'<code title="{tip}">{key}</code>' in page
    assert f'<figure title="{html.escape(registry.tooltip("loss/g/adv"))}">' in page
    assert "<th>style_weight</th>" in page  # a param column has no tooltip
