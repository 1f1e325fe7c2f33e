"""The feature extractors: EfficientNet-Lite0's preprocessing against its own classifier, and evaluator weights
that no training seed rebuilds (reference §3, §4.2)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from ablation.config import BackboneConfig
from ablation.evaluation.evaluator import prepare
from ablation.evaluation.features import EfficientNetEvaluator, RandomVGGEvaluator, effnet_input
from ablation.evaluation.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from ablation.evaluation.seeds import evaluator_seed_collisions, evaluator_stream_seed
from ablation.gan.backbone import build_backbone

EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO = 285, 281, 282, 967


def _imagenet_input(images_u8: torch.Tensor) -> torch.Tensor:
    """The alternative the package's README example uses: ImageNet mean/std on [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
    x = torch.nn.functional.interpolate(images_u8.float(), size=(224, 224), mode="bilinear", antialias=True)
    return (x / 255.0 - mean) / std


def test_efficientnet_preprocessing_is_the_one_its_classifier_expects() -> None:
    """The evaluator's own path (prepare + effnet_input) classifies the two ImageNet-like photos correctly and
    more confidently than ImageNet mean/std would: (x - 127) / 128 is the Lite models' convention."""
    effnet = EfficientNetEvaluator()
    images = torch.cat([prepare(getattr(skimage.data, name)()[None], 224) for name in ("chelsea", "coffee")])
    ours = effnet.logits(images).softmax(-1)
    imagenet = effnet.logits(images, preprocess=_imagenet_input).softmax(-1)
    cat, coffee = ours
    assert int(cat.argmax()) == EGYPTIAN_CAT and set(cat.topk(3).indices.tolist()) == {EGYPTIAN_CAT, TABBY, TIGER_CAT}
    assert float(cat[[EGYPTIAN_CAT, TABBY, TIGER_CAT]].sum()) > 0.85  # measured 0.89
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.9  # measured 0.94
    assert float(cat[EGYPTIAN_CAT]) > float(imagenet[0, EGYPTIAN_CAT])  # 0.40 vs 0.36
    assert float(coffee[ESPRESSO]) > float(imagenet[1, ESPRESSO]) + 0.05  # 0.94 vs 0.82
    # the features the KID uses come through the very same preprocessing
    assert torch.equal(effnet_input(images), (images.float() - 127.0) / 128.0)  # already 224²: no resampling
    assert effnet.pooled(images).shape == (2, 1280)


@pytest.mark.parametrize("trial_seed, backbone_seed", [(1001, None), (0, 1001)])
def test_training_seed_1001_does_not_rebuild_evaluator_1001(trial_seed: int, backbone_seed: int | None) -> None:
    """Training seeds torch with the plain number; the evaluator's stream is salted, so no layer coincides
    (before: torch.manual_seed(1001) in both, and the first 7 convs were identical bit for bit)."""
    trained = build_backbone(BackboneConfig(weights="random", seed=backbone_seed), trial_seed).trunk.state_dict()
    evaluator = RandomVGGEvaluator(1001).state_dict()
    weights = [k for k in evaluator if k.endswith("weight")]
    assert len(weights) == 7 and all(trained[k].shape == evaluator[k].shape for k in weights)
    assert not any(torch.equal(trained[k], evaluator[k]) for k in weights)
    assert RandomVGGEvaluator(1001).weights_hash == RandomVGGEvaluator(1001).weights_hash  # stable across builds


def test_only_the_salted_stream_seed_reaches_an_evaluator() -> None:
    """What `evaluator_seed_collisions` flags is exactly what can rebuild an evaluator: its 64-bit stream seed."""
    stream = evaluator_stream_seed(1001)
    assert stream == evaluator_stream_seed(1001) and stream != evaluator_stream_seed(1002) and stream >= 2 ** 32
    trained = build_backbone(BackboneConfig(weights="random", seed=stream), 0).trunk.state_dict()
    assert torch.equal(trained["0.weight"], RandomVGGEvaluator(1001).state_dict()["0.weight"])
    wrapped = evaluator_stream_seed(1003) - 2 ** 64  # torch reduces seeds modulo 2^64
    collisions = evaluator_seed_collisions([0, 1, 2, 1002, stream, wrapped, 1001, 5], [1001, 1002, 1003])
    assert collisions == sorted([1001, 1002, stream, wrapped])
    assert evaluator_seed_collisions(range(1000), [1001, 1002, 1003]) == []
    assert evaluator_seed_collisions([1001], []) == []


def test_random_evaluator_leaves_global_rng_alone() -> None:
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    RandomVGGEvaluator(1002)
    assert torch.equal(torch.rand(4), expected)
    assert np.isfinite(RandomVGGEvaluator(1002).pooled(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))).all()
