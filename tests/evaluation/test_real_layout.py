"""Real-data evaluation reaches n >= 100 (issue 23): on the public dataset's layout (train_photo/, val/,
test/test_photo/, Hayao/{style,smooth}/, no style_ref/), the evaluator scores val/ and the test photos against
every style image G trains on, with the held-out every-10th split as its reference anchor. Before, the held-out
split was halved (Hayao: 179 -> n <= 89) and only val/ was scored.

Generated 32 px images in that layout; the evaluator as a trial builds it (gan/member.build_evaluator).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ablation.config import TrainConfig, with_overrides
from ablation.data.demo import procedural_batch
from ablation.data.streams import evaluation_photos, load_domains
from ablation.evaluation.evaluator import ANCHOR_RULE
from ablation.evaluation.registry import N_IMAGES
from ablation.gan.member import build_evaluator

SIZE = 32
N_STYLE, N_VAL, N_TEST = 1000, 4, 100  # every 10th style image held out: 100, as many as val/ + test/ allow


def write(folder: Path, images: np.ndarray, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{prefix}{i:04d}.png"), np.ascontiguousarray(image[..., ::-1]))


@pytest.fixture(scope="module")
def hayao(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    photos, animes = procedural_batch(N_STYLE, SIZE, seed=1)
    write(root / "train_photo", photos[:8], "p")
    write(root / "val", photos[8:8 + N_VAL], "v")
    write(root / "test" / "test_photo", photos[8 + N_VAL:8 + N_VAL + N_TEST], "t")
    write(root / "Hayao" / "style", animes, "s")
    write(root / "Hayao" / "smooth", animes, "s")  # smooth/ mirrors style/ by name; its content is not read here
    return root


def test_real_layout_evaluates_at_least_100_images(hayao: Path) -> None:
    config = with_overrides(TrainConfig(), {
        "data.root": str(hayao), "data.image_size": SIZE, "backbone.weights": "random", "eval.image_size": SIZE,
        "eval.efficientnet": False, "eval.evaluator_seeds": (1001,), "eval.kid_subsets": 2,
        "eval.kid_subset_size": 50})
    domains = load_domains(config.data)
    assert domains.style_ref is not None and len(domains.style_ref) == N_STYLE // 10
    assert len(evaluation_photos(domains)) == N_VAL + N_TEST  # val/ first, then the test photos
    evaluator = build_evaluator(config, domains, torch.device("cpu"))
    assert evaluator is not None
    info = evaluator.info()
    assert info["eval/n/outputs"] == info["eval/n/photos"] == info["eval/n/style_anchor"] == "100"
    assert info["eval/n/style_ref"] == str(N_STYLE - N_STYLE // 10)  # every style image G trains on
    assert info["eval/op/split"] == ANCHOR_RULE and info["eval/n/size"] == str(SIZE)
    metrics = evaluator.evaluate(evaluation_photos(domains))  # identity outputs: any generator's shape
    assert metrics[N_IMAGES] == 100.0 and np.isfinite(metrics["eval/style/kid_rand"])
