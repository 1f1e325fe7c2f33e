"""A report of a study whose file was edited after some trials ran (issue 23): only the trials of the file's
current cells count; the others are listed as stale with their first differing field.

Real MLflow (SQLite + local artifacts) filled through the Tracker as trials fill it, with each trial's resolved
config.yaml; nothing is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from test_report import tables_of

from ablation.config import to_yaml
from ablation.outcomes import Outcome
from ablation.report.build import build_report
from ablation.study.spec.study import Study, load_study
from ablation.study.tracking.client import Tracker

OBJECTIVES = [{"metric": "eval/style/kid_rand", "direction": "minimize"},
              {"metric": "eval/content/ssim_luma_blur", "direction": "maximize"}]


def study_file(path: Path, content_weight: float, levels: list[float]) -> Study:
    path.write_text(yaml.safe_dump({
        "name": "edited", "base": {"backbone": {"weights": "random"}, "loss": {"content_weight": content_weight}},
        "axes": {"loss.style_weight": levels}, "seeds": [0, 1, 2], "objectives": OBJECTIVES}))
    return load_study(path)


def log_trials(tracker: Tracker, study: Study, tmp: Path, kid: Any) -> None:
    exp = tracker.experiment_id(study.spec.name)
    parent = tracker.parent_run(exp, study.spec.name, study.path, {})
    for trial in study.trials:
        folder = tmp / "runs" / trial.key
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(to_yaml(trial.config))
        varied = dict(trial.cell.varied)
        run_id = tracker.start_trial_run(exp, parent, study=study.spec.name, run_name=trial.run_name,
                                         cell=trial.cell.key, seed=trial.seed, key=trial.key, label=trial.cell.label,
                                         params=varied, optuna_number=None, config_yaml=folder / "config.yaml")
        logger = tracker.metric_logger(run_id)
        logger.log({"eval/style/kid_rand": kid(varied["loss.style_weight"], trial.seed),
                    "eval/content/ssim_luma_blur": 0.5 + 0.01 * trial.seed}, 100)
        logger.close()
        tracker.finish_run(run_id, Outcome.FINISHED, {"ablate.steps": "100"})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tracker, Path, Study]:
    tmp = tmp_path_factory.mktemp("stale")
    tracker = Tracker(uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_root=tmp / "mlartifacts")
    path = tmp / "study.yaml"
    # first version: content weight 1.5, three style weights; its style-weight effect is 5 on every seed
    log_trials(tracker, study_file(path, 1.5, [3.0, 10.0, 30.0]), tmp, lambda style, seed: 5.0 + 5.0 * (style > 3))
    # the file as it is now: content weight 2.5, style 30 removed; the effect is 1 + seed
    current = study_file(path, 2.5, [3.0, 10.0])
    log_trials(tracker, current, tmp, lambda style, seed: 1.0 + (style == 10.0) * (1.0 + seed))
    return tracker, tmp, current


@pytest.fixture(scope="module")
def page(store: tuple[Tracker, Path, Study]) -> str:
    tracker, tmp, current = store
    return build_report(current.spec.name, tracker, f"sqlite:///{tmp / 'optuna.db'}", tmp / "reports",
                        current).read_text()


def test_only_the_current_cells_trials_count(page: str) -> None:
    tables = tables_of(page)
    rows = tables["trial-table"]
    assert len(rows) == 6  # 2 current cells x 3 seeds, not the 9 earlier trials
    assert {r[0] for r in rows} == {"style_weight=3", "style_weight=10"}
    effect = next(r for r in tables["effects-table"] if r[3] == "eval/style/kid_rand")
    assert effect[5:7] == ["3", "2"] and effect[8] == "1, 2, 3"  # per-seed Δ 1 + seed: the earlier 5s are out


def test_stale_trials_are_listed_with_their_differing_field(page: str) -> None:
    rows = tables_of(page)["stale-table"]
    assert len(rows) == 9
    assert sorted({tuple(r[:1] + r[3:]) for r in rows}) == [
        ("style_weight=10", "loss.content_weight", "1.5", "2.5"),
        ("style_weight=3", "loss.content_weight", "1.5", "2.5"),
        ("style_weight=30", "cell", "style_weight=30", "<no such cell>")]
    assert all(r[2] == "finished" for r in rows)
    assert "9 trial(s) ran a config this study file no longer has" in page


def test_without_the_study_file_the_report_names_the_labels_that_pool_configs(
        store: tuple[Tracker, Path, Study]) -> None:
    tracker, tmp, current = store  # `ablate report NAME`: the current cells are unknown
    html = build_report(current.spec.name, tracker, f"sqlite:///{tmp / 'optuna.db'}", tmp / "by-name").read_text()
    assert ("style_weight=3, style_weight=10: each holds trials of more than one config (the study file was edited "
            "between runs), pooled here; pass the study YAML to `ablate report`") in html
    assert "stale-table" not in html
