"""The MLflow UI opens a study's experiment on what a researcher compares: a real `mlflow server`, the
experiment as `ablate run` tags it, and headless Chromium reading the page."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from services import MlflowServer

from ablation.study.spec.study import load_study
from ablation.study.tracking.client import Tracker
from ablation.study.tracking.experiment_note import EXPERIMENT_KIND, experiment_note, runs_page

CHROMIUM = "/usr/bin/chromium"
STUDY = Path(__file__).resolve().parents[2] / "studies" / "style_weight.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def study_experiment(tracker: Tracker) -> tuple[str, str]:
    """The experiment as `ablate run` leaves it: kind and note, a parent run and two child trials."""
    study = load_study(STUDY)
    tags = {"mlflow.experimentKind": EXPERIMENT_KIND, "mlflow.note.content": experiment_note(study)}
    experiment_id = tracker.experiment_id(study.spec.name, tags)
    assert tracker.experiment_id(study.spec.name, tags) == experiment_id  # found again, tags set again
    client = tracker.client
    parent = client.create_run(experiment_id, run_name=study.spec.name, tags={"ablate.role": "parent"}).info.run_id
    for weight, kid in ((1.0, 2.5), (10.0, 3.1)):
        child = client.create_run(experiment_id, run_name=f"style_weight={weight:g} seed=0",
                                  tags={"mlflow.parentRunId": parent}).info.run_id
        client.log_param(child, "loss.style_weight", weight)
        client.log_metric(child, "eval/style/kid_eff", kid, step=150)
        client.set_terminated(child)
    client.set_terminated(parent)
    return experiment_id, study.spec.name


def test_the_experiment_carries_the_model_training_kind_and_the_study_note(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")
    experiment_id, _ = study_experiment(tracker)
    tags = tracker.client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    note = tags["mlflow.note.content"]
    assert note.startswith("**Question.** Does a larger Gram-style weight")
    assert "- `loss.style_weight`: 3.0, 1.0, 10.0" in note
    assert "add the objectives `eval/style/kid_eff` (minimize)" in note and "parallel-coordinates" in note
    assert runs_page("http://127.0.0.1:5000", experiment_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning")


def test_the_ui_lists_the_runs_with_their_metric_and_param_columns(
        mlflow_server: Callable[..., MlflowServer]) -> None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (apt-get install -y chromium); CI installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    server = mlflow_server()
    experiment_id, name = study_experiment(Tracker(server.url))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(runs_page(server.url, experiment_id))
            page.get_by_text("Run Name", exact=True).first.wait_for(timeout=60_000)  # the runs table, not traces
            page.get_by_text("3 matching runs").wait_for(timeout=30_000)  # the parent and its two trials
            body = page.inner_text("body")
            assert "workflowType=machine_learning" in page.url and "/runs" in page.url
            assert "Question. Does a larger Gram-style weight" in body  # the note, on the runs page
            assert name in body
            page.get_by_test_id("column-selection-dropdown").first.click()
            page.get_by_text("eval/style/kid_eff").first.wait_for(timeout=30_000)
            columns = page.inner_text("body")
            assert "eval/style/kid_eff" in columns and "loss.style_weight" in columns
        finally:
            browser.close()
