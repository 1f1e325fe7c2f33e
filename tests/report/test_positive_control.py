"""The positive control (study file `positive_control:`): validated with the study, tested alone in the report,
its result stated whatever it is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from ablation.errors import UserError
from ablation.report.control import control_line
from ablation.report.data import Axis, ReportData
from ablation.study.spec.schema import StudySpec
from ablation.study.spec.study import load_study

CONTROL = {"level": {"loss.style_weight": 0.0}, "metric": "eval/style/gram_rand", "expect": "lower",
           "why": "the style term is off"}


def _data(base: list[float], off: list[float]) -> ReportData:
    rows = [{"outcome": "finished", "seed": s, "params.loss.style_weight": level, "metrics.eval/style/gram_rand": v,
             "cell": level, "label": level}
            for level, values in (("3", base), ("0", off)) for s, v in enumerate(values)]
    spec = StudySpec(name="s", axes={"loss.style_weight": [3.0, 0.0]}, positive_control=CONTROL)
    return ReportData("s", spec, "", {}, pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame(),
                      [Axis("loss.style_weight", "style_weight", ["3", "0"], "3")], {}, Path("."))


def test_a_control_that_shows_its_effect_is_met() -> None:
    line = control_line(_data([0.50, 0.52, 0.55], [0.40, 0.43, 0.44]))
    assert line is not None and line["met"]
    assert line["text"].startswith("Positive control (stated in the study file before it ran): loss.style_weight=0 "
                                   "vs loss.style_weight=3 should make eval/style/gram_rand lower, because the style "
                                   "term is off. Result: Δ -0.1 [")
    assert line["text"].endswith(": met.")


def test_a_control_that_shows_nothing_says_so() -> None:
    line = control_line(_data([0.50, 0.52, 0.55], [0.56, 0.49, 0.55]))
    assert line is not None and not line["met"]
    assert "NOT met: the study could not detect the effect it was built to detect" in line["text"]
    wrong_way = control_line(_data([0.50, 0.52, 0.55], [0.60, 0.63, 0.64]))  # detected, but the other way
    assert wrong_way is not None and not wrong_way["met"]


def test_the_control_is_checked_with_the_study(tmp_path: Path) -> None:
    doc = {"name": "s", "base": {"backbone": {"weights": "random"}}, "axes": {"loss.style_weight": [3.0, 1.0]},
           "positive_control": CONTROL}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError) as bad_level:
        load_study(path)
    assert str(bad_level.value) == (f"{path}: positive_control.level.loss.style_weight: expected an axis and one of "
                                    "its levels (arm, loss.style_weight), got 0.0")
    doc["positive_control"] = {**CONTROL, "level": {"loss.style_weight": 1.0}, "metric": "eval/style/gram_rnd"}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError) as bad_metric:
        load_study(path)
    assert "positive_control.metric" in str(bad_metric.value) and "did you mean eval/style/gram_rand?" in str(
        bad_metric.value)
