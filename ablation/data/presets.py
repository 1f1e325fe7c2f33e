"""The `--demo` preset: embedded demo data, small images, a short schedule that finishes on a CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEMO_IMAGE_SIZE = 64
DEMO_EVAL_IMAGES = 32  # held-out photos per evaluation (the report warns below 100: a demo is a smoke run)

# Applied on top of a config or study base; every key is a dotted config path.
DEMO_OVERRIDES: dict[str, Any] = {
    "data.style": "demo",
    "data.image_size": DEMO_IMAGE_SIZE,
    "data.val_count": 6,
    "model.d_ch": 32,
    "backbone.weights": "random",  # nothing is downloaded on a demo run (a study axis may still ask for imagenet)
    "schedule.epochs": 3,
    "schedule.init_epochs": 1,
    "schedule.batch_size": 4,
    "schedule.steps_per_epoch": 6,
    "schedule.log_every": 2,
    "schedule.eval_every": 0,
    "eval.image_size": DEMO_IMAGE_SIZE,
    "eval.max_images": DEMO_EVAL_IMAGES,
    "eval.kid_subsets": 20,
    "eval.kid_subset_size": 16,
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
