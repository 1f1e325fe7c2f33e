"""The vacuous-axis probe (study/balance_probe.py): which terms an axis varies, the flag rule, and a real probe
that flags a style axis on a backbone whose features are ~1e-4 (torchvision's random MobileNetV2) and refuses
it under --strict, while the same axis on the pretrained EfficientNet-Lite1 (the demo's loss network) passes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from scale_helpers import OBJECTIVES, TINY_BASE, local_options

from ablation.errors import UserError
from ablation.study.balance_probe import VACUOUS_SHARE, Level, flag_lines, probe_levels, terms_of
from ablation.study.runner import run_study
from ablation.study.spec.study import load_study
from ablation.study.tracking.client import TAG_PROBE, Tracker


def _study(path: Path, data_root: Path, axes: dict, arms: dict | None = None, backbone: dict | None = None,
           name: str = "probe") -> Path:
    base = json.loads(json.dumps(TINY_BASE))
    base["data"]["root"] = str(data_root)
    base["backbone"].update(backbone or {})
    doc = {"name": name, "base": base, "axes": axes, "seeds": [0, 1], "objectives": OBJECTIVES}
    if arms:
        doc["arms"] = arms
    path.write_text(yaml.safe_dump(doc))
    return path


def test_terms_of_maps_fields_to_the_terms_they_weigh() -> None:
    assert terms_of(["loss.style_weight"]) == (("g", "style"),)
    assert terms_of(["backbone.arch", "loss.color_scale"]) == (("g", "content"), ("g", "style"), ("g", "color"))
    assert terms_of(["loss.d_weights.fake"]) == (("d", "fake"),)
    assert terms_of(["optim.g_lr"]) is None  # acts through every term: not checked


def test_levels_hold_the_other_axes_at_their_baseline(tmp_path: Path, data_root: Path) -> None:
    path = _study(tmp_path / "s.yaml", data_root, {"loss.style_weight": [1.0, 3.0, 10.0], "optim.g_lr": [1e-4, 2e-4]},
                  arms={"a": {}, "b": {"loss.color_weight": 5.0}})
    levels, unchecked = probe_levels(load_study(path))
    assert [(lv.axis, lv.label) for lv in levels] == [  # an arm against the baseline arm: both are its levels
        ("arm b", "a"), ("arm b", "b"), ("loss.style_weight", "1"), ("loss.style_weight", "3"),
        ("loss.style_weight", "10")]
    assert all(lv.config.optim.g_lr == 1e-4 for lv in levels)  # the other axis at its first level
    assert levels[1].config.loss.color_weight == 5.0 and levels[1].terms == (("g", "color"),)
    assert levels[0].config.loss.color_weight == levels[2].config.loss.color_weight != 5.0
    assert unchecked == ["optim.g_lr"]  # the lr acts through every term


def _level(axis: str, label: str, terms: tuple) -> Level:
    return Level(axis, label, None, terms)  # type: ignore[arg-type]  # the flag rule never reads the config


def test_an_axis_is_flagged_only_when_every_level_is_under_the_line() -> None:
    levels = [_level("loss.style_weight", v, (("g", "style"),)) for v in ("1", "3", "10")]
    tiny = {f"loss.style_weight={v}": {"balance/g/grad/style": s} for v, s in (("1", 4e-13), ("3", 1.3e-12),
                                                                               ("10", 4.2e-12))}
    assert flag_lines(levels, tiny) == [
        "loss.style_weight: the style term is 4.2e-12 of G's gradient at every level (probe, first GAN step); "
        "this axis cannot change the outcome"]
    tiny["loss.style_weight=10"]["balance/g/grad/style"] = VACUOUS_SHARE  # one level reaches the line
    assert flag_lines(levels, tiny) == []
    arm = [_level("arm x", label, (("g", "content"), ("g", "style"))) for label in ("base", "x")]
    shares = {"arm x=x": {"balance/g/grad/content": 2e-4, "balance/g/grad/style": 5e-5},
              "arm x=base": {"balance/g/grad/content": 1e-4, "balance/g/grad/style": 7e-5}}
    assert flag_lines(arm, shares) == [
        "arm x: the content term is 0.0002 of G's gradient and the style term is 7e-05 of G's gradient at every "
        "level (probe, first GAN step); this arm cannot change the outcome"]
    shares["arm x=base"]["balance/g/grad/style"] = 0.02  # the arm silences a term the baseline uses: it acts
    assert flag_lines(arm, shares) == []


@pytest.mark.slow
def test_probe_flags_a_silent_backbone_refuses_it_under_strict_and_passes_a_pretrained_one(
        tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    silent = {"arch": "mobilenet_v2", "width": 1.3, "weights": "random"}
    path = _study(tmp_path / "silent.yaml", data_root, {"loss.style_weight": [1.0, 10.0]}, backbone=silent,
                  name="silent")
    strict = dataclasses.replace(local_options(tmp_path, probe=True), strict=True)
    with pytest.raises(UserError) as refused:
        run_study(path, strict)
    assert "loss.style_weight: the style term is" in str(refused.value) and "(--strict)" in str(refused.value)
    assert Tracker(f"sqlite:///{tmp_path}/mlflow.db").trial_runs("silent") == []  # nothing trained

    assert run_study(path, local_options(tmp_path, probe=True), dry_run=True) == 0
    assert "warning: loss.style_weight: the style term is" in capsys.readouterr().err

    loud = _study(tmp_path / "loud.yaml", data_root, {"loss.style_weight": [1.0, 10.0]},
                  backbone={"arch": "efficientnet_lite1", "weights": "imagenet"}, name="loud")
    assert run_study(loud, dataclasses.replace(local_options(tmp_path, probe=True), strict=True)) == 0
    parent = Tracker(f"sqlite:///{tmp_path}/mlflow.db").parent_run_of("loud")
    probe = json.loads(parent.data.tags[TAG_PROBE])
    assert probe["flags"] == []
    style = [s["g/style"] for s in probe["shares"].values()]
    assert len(style) == 2 and min(style) >= VACUOUS_SHARE
    assert all(abs(sum(v for k, v in s.items() if k.startswith("g/")) - 1) < 0.01 for s in probe["shares"].values())
