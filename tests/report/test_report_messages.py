"""Messages a new user meets when asking for a report."""

from pathlib import Path

import pytest

from ablation.errors import UserError
from ablation.report.build import build_report
from ablation.study.tracking.client import Tracker


def test_report_of_a_demo_study_by_its_plain_name_points_to_demo(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "mlartifacts")
    study_yaml = tmp_path / "style_weight.yaml"
    study_yaml.write_text("name: style_weight\n")
    tracker.parent_run(tracker.experiment_id("style_weight-demo"), "style_weight-demo", study_yaml, {})
    with pytest.raises(UserError) as caught:
        build_report("style_weight", tracker, f"sqlite:///{tmp_path}/optuna.db", tmp_path / "reports", None)
    (line,) = caught.value.lines
    assert line.endswith("got <not found>; found: style_weight-demo (use --demo)"), line
    assert "an MLflow experiment named style_weight " in line
    with pytest.raises(UserError) as caught:  # nothing close: no hint
        build_report("fake_weight_xyz", tracker, f"sqlite:///{tmp_path}/optuna.db", tmp_path / "reports", None)
    assert caught.value.lines[0].endswith("got <not found>")
