"""The `ablate` command line: user errors are one line and exit 2; --print-config shows the defaults."""

import subprocess
import sys
from pathlib import Path

import yaml

STUDIES = Path(__file__).resolve().parent.parent / "studies"


def ablate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_print_config_shows_resolved_defaults_with_overrides(tmp_path: Path) -> None:
    out = ablate("train", "--print-config", "--set", "loss.style_weight=6", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    assert config["loss"]["style_weight"] == 6.0 and config["optim"]["d_lr"] == 1.6e-4
    assert config["schedule"] == {"epochs": 101, "init_epochs": 5, "batch_size": 6, "steps_per_epoch": None,
                                  "log_every": 10, "eval_every": 0, "balance_every": 1}


def test_bad_config_key_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  style_weight: heavy\n")
    out = ablate("train", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {bad}: loss.style_weight: expected a number, got 'heavy'"


def test_missing_data_folder_says_how_to_get_data(tmp_path: Path) -> None:
    out = ablate("train", "--set", "data.root=nowhere", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = out.stderr.strip()
    assert line.startswith("error: nowhere: data.root: expected") and "ablate data fetch animegan" in line
    assert "--demo" in line and len(out.stderr.strip().splitlines()) == 1


def test_run_without_data_names_the_expected_folder(tmp_path: Path) -> None:
    out = ablate("run", str(STUDIES / "fake_weight.yaml"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "base.data.root: expected a dataset folder dataset/train_photo" in out.stderr
    assert "ablate data fetch animegan" in out.stderr and "--demo" in out.stderr


def test_bad_study_exit_2_and_dry_run_counts(tmp_path: Path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text("name: s\naxes: {loss.stlye_weight: [1, 2]}\n")
    out = ablate("run", str(study), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: {study}: axes.loss.stlye_weight: expected a config field path such as "
                                  "loss.style_weight, got <unknown>")
    out = ablate("run", str(STUDIES / "writeup.yaml"), "--dry-run", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.splitlines()[0] == "study writeup: 9 cells x 3 seeds = 27 trials"


def test_misspelt_objective_fails_the_dry_run_in_one_line(tmp_path: Path) -> None:
    study = tmp_path / "typo.yaml"
    study.write_text("name: typo\naxes: {loss.style_weight: [1, 2]}\nobjectives: [{metric: eval/style/kid_rnd}]\n")
    out = ablate("run", str(study), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: {study}: objectives.0.metric: expected a logged metric key")
    assert "eval/style/kid_rand," in line and line.endswith("got 'eval/style/kid_rnd'")


def test_weights_convert_unknown_converter_lists_valid_names(tmp_path: Path) -> None:
    out = ablate("weights", "convert", "keras-mobilenet-v3", "w.h5", "w.pt", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line == ("error: weights convert: expected a converter, one of caffe-vgg19, keras-mobilenet-v2, got "
                    "'keras-mobilenet-v3'")
