"""A --demo run downloads nothing: arms that ask for ImageNet weights not on disk run with random weights, and
a level that thereby equals another is not run twice (studies/backbone_init.yaml: imagenet = random offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from torchvision.models import MobileNet_V2_Weights

from ablation.study.spec.dry_run import offline_lines
from ablation.study.spec.study import load_study

WRITEUP = Path(__file__).resolve().parents[2] / "studies" / "writeup.yaml"


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_offline_arms_get_random_weights_and_equal_levels_merge(empty_torch_home: Path) -> None:
    study = load_study(WRITEUP, offline=True)  # the faithful MobileNetV2 base, offline
    labels = [cell.label for cell in study.cells]
    assert {cell.config.backbone.weights for cell in study.cells} == {"random"}
    # exp3 draws Keras' random init, exp4 offline torchvision's: no longer the same trunk, so both run
    assert len(labels) == 9 and study.merged == ()
    backbone_init = load_study(WRITEUP.parent / "backbone_init.yaml", offline=True)  # VGG19: imagenet vs random
    assert [c.label for c in backbone_init.cells] == ["weights=imagenet"]  # random weights now
    assert [c.config.backbone.weights for c in backbone_init.cells] == ["random"]
    assert backbone_init.merged == (("weights=random", "weights=imagenet"),)
    assert offline_lines(backbone_init) == [
        "backbone.weights random instead of imagenet: no ImageNet weights on disk and a demo downloads nothing, "
        "so pretrained vs random is not tested",
        "arm weights=random not run: without ImageNet weights it is weights=imagenet"]


def test_weights_on_disk_are_used_and_a_faithful_load_never_substitutes(empty_torch_home: Path) -> None:
    faithful = load_study(WRITEUP)
    assert len(faithful.cells) == 9 and not faithful.offline_random and faithful.merged == ()
    assert [c.config.backbone.weights for c in faithful.cells].count("imagenet") == 8
    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / MobileNet_V2_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]).write_bytes(b"weights")
    offline = load_study(WRITEUP, offline=True)  # the file is there: nothing to substitute
    assert len(offline.cells) == 9 and not offline.offline_random and offline_lines(offline) == []


def test_writeup_demo_tests_pretraining_without_downloads(tmp_path: Path, empty_torch_home: Path) -> None:
    """The demo's loss network is pretrained from a wheel: with an empty torch hub nothing is substituted, so
    exp4 (pretrained) runs beside exp3 (random)."""
    env = dict(os.environ, TORCH_HOME=str(empty_torch_home), ABLATE_DEMO_DIR=str(tmp_path / "demo"))
    out = subprocess.run([sys.executable, "-m", "ablation.cli", "run", str(WRITEUP), "--demo", "--dry-run",
                          "--no-probe", "--storage", f"sqlite:///{tmp_path}/o.db",
                          "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "study writeup-demo: 9 cells x 3 seeds = 27 trials" in out.stdout
    assert "not run" not in out.stdout and not list(empty_torch_home.rglob("*.pth"))  # nothing downloaded
    cell_lines = [line for line in out.stdout.splitlines() if "  cell=" in line]
    assert len(cell_lines) == 9
    assert sum("backbone=efficientnet_lite1 imagenet" in line for line in cell_lines) == 8
