"""Random backbones (backbone.init) and preprocessing that follows the weights: the keras init builds what Keras'
own MobileNetV2(weights=None) builds (compared on Keras 3 itself, torch backend), every backbone records its
feature scale, and MobileNetV2 is fed what its weights were trained on."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from torchvision.models import MobileNet_V2_Weights

from ablation.config import BackboneConfig
from ablation.gan.backbone import build_backbone, scale_probe_image

ROOT = Path(__file__).resolve().parents[2]
KERAS_RMS = """
import json, os, sys
import numpy as np, keras
from ablation.gan.backbone import scale_probe_image
x = scale_probe_image(64).permute(0, 2, 3, 1).numpy()  # NHWC in [-1, 1], Keras' MobileNetV2 convention
out = []
for seed in range(int(sys.argv[1])):
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(weights=None, alpha=1.3, include_top=False, input_shape=(64, 64, 3))
    cut = keras.Model(model.input, model.get_layer("block_6_expand").output)
    out.append(float(np.sqrt((np.asarray(keras.ops.convert_to_numpy(cut(x)), dtype=np.float64) ** 2).mean())))
print(json.dumps(out))
"""


def _rms(cfg: BackboneConfig, seed: int) -> float:
    return float(build_backbone(cfg, seed).describe()["feature_rms"])


def test_keras_init_reproduces_keras_own_mobilenet_v2_statistics() -> None:
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", KERAS_RMS, "4"], capture_output=True, text=True, env=env,
                         timeout=300, check=True)
    keras_rms = statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))
    keras_cfg = BackboneConfig(arch="mobilenet_v2", weights="random", init="keras")
    ours = statistics.median(_rms(keras_cfg, seed) for seed in range(4))
    assert 0.5 < ours / keras_rms < 2.0, (ours, keras_rms)  # seeds differ; the scale is the init's
    torchvision = statistics.median(_rms(BackboneConfig(arch="mobilenet_v2", weights="random"), s) for s in range(4))
    assert torchvision < 1e-3 and ours < 1e-4  # both random MobileNetV2s are silent: reference loss_balance.md
    described = build_backbone(keras_cfg, 0).describe()
    assert described["init"] == "keras" and described["preprocess"] == "signed"
    assert described["numerics"] == "keras (bn_eps 0.001, padding tf_same)"


def test_every_backbone_records_its_feature_scale() -> None:
    vgg = build_backbone(BackboneConfig(arch="vgg19", weights="random"), 0).describe()
    assert vgg["preprocess"] == "caffe" and 1.0 < float(vgg["feature_rms"]) < 20.0 and float(vgg["gram_rms"]) > 1e-3
    assert scale_probe_image().shape == (1, 3, 64, 64)


def test_mobilenet_v2_is_fed_what_its_weights_were_trained_on() -> None:
    torchvision_cfg = BackboneConfig(arch="mobilenet_v2", width=1.0, weights="random")  # torchvision's init
    backbone = build_backbone(torchvision_cfg, 0)
    assert backbone.describe()["preprocess"] == "imagenet"
    # torchvision's own transform for its MobileNetV2 weights, on the [0, 1] image, into the raw trunk
    normalise = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    photo_signed = scale_probe_image(64)
    photo_unit = (photo_signed + 1) / 2
    mean = torch.tensor(normalise.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalise.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = backbone.trunk((photo_unit - mean) / std)
        torch.testing.assert_close(backbone(photo_signed), expected, rtol=1e-4, atol=1e-6)
    keras_file = build_backbone(BackboneConfig(arch="mobilenet_v2", weights="random", init="keras"), 0)
    assert keras_file.describe()["preprocess"] == "signed"
