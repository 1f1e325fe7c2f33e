"""Study files: validation before training (one line per error), expansion into cells, dry-run counts."""

from pathlib import Path

import pytest

from ablation.errors import UserError
from ablation.study.spec.dry_run import dry_run_lines
from ablation.study.spec.study import load_study

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_grid_expands_cells_times_seeds(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, """
name: g
base: {schedule: {epochs: 3, init_epochs: 1}}
axes:
  loss.style_weight: [1.0, 3.0]
  loss.style_target: [gray, color]
seeds: [0, 1]
"""))
    assert len(study.cells) == 4 and len(study.trials) == 8
    assert len({t.key for t in study.trials}) == 8
    labels = sorted(c.label for c in study.cells)
    assert labels == ["style_weight=1 style_target=color", "style_weight=1 style_target=gray",
                      "style_weight=3 style_target=color", "style_weight=3 style_target=gray"]
    trial = study.trials[0]
    assert trial.config.seed == 0 and trial.config.schedule.epochs == 3
    assert trial.run_name.endswith("seed=0")
    lines = dry_run_lines(study)
    assert lines[0] == "study g: 4 cells x 2 seeds = 8 trials" and len(lines) == 8
    # neither the style weight nor the style target is read by the init phase: one per seed, shared by 4
    assert lines[5:] == ["init phases: 2 distinct for 8 trials; 6 trials continue a shared one instead of "
                         "computing it (stored under <trials dir>/_init)",
                         "  shared: " + ", ".join(t.run_name for t in study.trials if t.seed == 0),
                         "  shared: " + ", ".join(t.run_name for t in study.trials if t.seed == 1)]


def test_cell_identity_survives_extending_the_grid(tmp_path: Path) -> None:
    small = load_study(write(tmp_path, "name: g\naxes: {loss.style_weight: [1.0, 3.0]}\nseeds: [0]\n"))
    big = load_study(write(tmp_path, "name: g\naxes: {loss.style_weight: [3.0, 1.0, 9.0]}\nseeds: [0]\n"))
    assert {c.key for c in small.cells} < {c.key for c in big.cells}


def test_arms_are_cells_and_duplicates_are_rejected(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, """
name: arms
arms:
  faithful: {}
  yuv255: {loss.color_scale: "255"}
baseline: {arm: faithful}
seeds: [0]
"""))
    assert [c.label for c in study.cells] == ["faithful", "yuv255"]
    with pytest.raises(UserError) as err:
        load_study(write(tmp_path, "name: d\narms: {a: {}, b: {loss.style_weight: 3.0}}\nseeds: [0]\n"))
    assert "cell [arm=b]: expected a distinct configuration, got <the same config as cell [a]>" in err.value.lines[0]


def test_bad_study_file_gives_one_line_per_error(tmp_path: Path) -> None:
    path = write(tmp_path, """
name: bad
axes:
  loss.style_wieght: [1.0]
  loss.gan_type: [lsgan, wgan]
  loss.style_weight: [1.0, lots]
seeds: [0]
""")
    with pytest.raises(UserError) as err:
        load_study(path)
    lines = err.value.lines
    assert (f"{path}: axes.loss.style_wieght: expected a config field path such as loss.style_weight, "
            "got <unknown>") in lines
    assert any(line.startswith(f"{path}: axes.loss.gan_type[1]: loss.gan_type: expected one of 'lsgan'")
               and line.endswith("got 'wgan'") for line in lines)
    assert f"{path}: axes.loss.style_weight[1]: loss.style_weight: expected a number, got 'lots'" in lines
    assert len(lines) == 3


def test_study_schema_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_study(write(tmp_path, "name: x\nmethod: grid\nseeds: []\nobjectives: [{metric: accuracy}]\n"))
    text = "\n".join(err.value.lines)
    assert "seeds: expected" in text and "objectives.0.metric: expected a logged metric key" in text


def test_misspelt_objective_is_one_line_listing_the_valid_names(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\naxes: {loss.style_weight: [1.0]}\nobjectives: [{metric: eval/style/kid_rnd}]\n")
    with pytest.raises(UserError) as err:
        load_study(path)
    (line,) = err.value.lines
    assert line.startswith(f"{path}: objectives.0.metric: expected a logged metric key that can be an objective")
    assert line.endswith("got 'eval/style/kid_rnd'") and "did you mean eval/style/kid_rand?" in line
    assert "eval/style/kid_rand, " in line and "eval/content/ssim_luma_blur, " in line


def test_diagnostic_objective_and_contradicting_direction_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """
name: x
axes: {loss.style_weight: [1.0, 3.0]}
objectives:
  - {metric: eval/style/kid_rand_1001}
  - {metric: eval/content/ssim_luma_blur, direction: minimize}
  - {metric: eval/style/kid_rand_gap}
""")
    with pytest.raises(UserError) as err:
        load_study(path)
    first, second = err.value.lines
    assert first.startswith(f"{path}: objectives.0.metric: expected a logged metric key that can be an objective "
                            "(eval/style/kid_rand_{seed} is logged, but as a diagnostic), one of eval/style/kid_eff")
    assert second == (f"{path}: objectives.1.direction: expected maximize, the registered direction of "
                      "eval/content/ssim_luma_blur, got 'minimize'")


def test_omitted_direction_is_the_registered_one(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, """
name: x
axes: {loss.style_weight: [1.0, 3.0]}
objectives: [{metric: eval/style/kid_rand_gap}, {metric: perf/step_s}, {metric: eval/style/kid_rand}]
"""))
    assert [o.direction for o in study.spec.objectives] == ["maximize", "minimize", "minimize"]


def test_impossible_combination_is_caught_before_training(tmp_path: Path) -> None:
    path = write(tmp_path, """
name: mb
base: {backbone: {arch: mobilenet_v2, width: 1.3, weights: random}}
axes: {backbone.weights: [random, imagenet]}
seeds: [0]
""")
    with pytest.raises(UserError) as err:
        load_study(path)
    assert err.value.lines == [f"{path}: axes.backbone.weights[1]: backbone.weights: expected random or a local "
                               "weights file for mobilenet_v2 at width 1.3 (torchvision has ImageNet weights only "
                               "at width 1.0; convert Keras' with `ablate weights convert keras-mobilenet-v2`), "
                               "got 'imagenet'"]


@pytest.mark.parametrize("name,trials", [("style_weight", 9), ("fake_weight", 9), ("backbone_init", 6),
                                         ("style_target", 6), ("writeup", 27)])
def test_shipped_grid_studies_validate(name: str, trials: int) -> None:
    study = load_study(STUDIES / f"{name}.yaml")
    assert len(study.trials) == trials and study.spec.seeds == [0, 1, 2]


def test_shipped_search_study_is_two_objective_optuna() -> None:
    study = load_study(STUDIES / "search.yaml")
    assert study.spec.method == "search" and len(study.spec.objectives) == 2
    assert study.spec.search is not None and study.spec.search.sampler == "tpe"
