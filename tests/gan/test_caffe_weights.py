"""The original AnimeGAN's caffe VGG19 (`ablate weights convert caffe-vgg19`): a generated vgg19.npy of the
published layout converts into a trunk that computes what the .npy's kernels compute on caffe-preprocessed
input (checked against an independent NumPy convolution), with `preprocess: caffe` taken from the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ablation.config import BackboneConfig
from ablation.errors import UserError
from ablation.gan.backbone import CAFFE_MEAN_BGR, build_backbone
from ablation.gan.caffe_weights import VGG19_CONVS, _expected_shape, convert_caffe_vgg19


def _write_npy(path: Path, skip: str | None = None, bad: str | None = None) -> dict[str, list[np.ndarray]]:
    """The published layout: a pickled dict layer -> [kernel (kh, kw, in, out), bias], up to conv4_4."""
    rng = np.random.default_rng(0)
    layers = {}
    for layer in list(VGG19_CONVS)[:12]:
        kh, kw, cin, out = _expected_shape(layer)
        if layer == bad:
            cin += 1
        kernel = rng.normal(0, (2 / (kh * kw * cin)) ** 0.5, (kh, kw, cin, out)).astype(np.float32)
        layers[layer] = [kernel, rng.normal(0, 0.1, out).astype(np.float32)]
    layers["fc8"] = [np.zeros((4, 2), np.float32), np.zeros(2, np.float32)]  # ignored, as the trunk ends at conv4_4
    layers.pop(skip, None)
    np.save(path, np.array(layers, dtype=object), allow_pickle=True)
    return layers


def _conv_same(images_nhwc: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """TF-style 3x3 stride-1 'same' correlation, written with NumPy alone."""
    padded = np.pad(images_nhwc, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # [N, H, W, C, 3, 3]
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel, dtype=np.float64) + bias


def test_converted_npy_computes_what_its_kernels_compute(tmp_path: Path) -> None:
    layers = _write_npy(tmp_path / "vgg19.npy")
    out = subprocess.run([sys.executable, "-m", "ablation.cli", "weights", "convert", "caffe-vgg19",
                          str(tmp_path / "vgg19.npy"), str(tmp_path / "vgg19_caffe.pt")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    backbone = build_backbone(BackboneConfig(arch="vgg19", weights=str(tmp_path / "vgg19_caffe.pt")), seed=0)
    assert backbone.describe()["preprocess"] == "caffe"  # from the file, under preprocess: auto
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1  # RGB in [-1, 1]
    seen: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        seen["conv1_2"] = output.clone()  # at once: the ReLU after conv1_2 works in place

    hook = backbone.trunk[2].register_forward_hook(keep)
    with torch.no_grad():
        backbone(image)
    hook.remove()
    # the original's preprocessing, then conv1_1 -> ReLU -> conv1_2, in NumPy
    bgr = ((image.numpy() + 1) * 127.5)[:, ::-1].transpose(0, 2, 3, 1) - np.array(CAFFE_MEAN_BGR)
    hidden = np.maximum(_conv_same(bgr, *layers["conv1_1"]), 0)
    expected = _conv_same(hidden, *layers["conv1_2"]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(seen["conv1_2"].numpy(), expected, rtol=1e-4, atol=1e-3)


def test_a_wrong_or_missing_layer_is_one_line(tmp_path: Path) -> None:
    _write_npy(tmp_path / "missing.npy", skip="conv3_2")
    with pytest.raises(UserError) as missing:
        convert_caffe_vgg19(tmp_path / "missing.npy")
    assert str(missing.value).startswith(f"{tmp_path / 'missing.npy'}: conv3_2: expected a VGG19 conv layer")
    _write_npy(tmp_path / "bad.npy", bad="conv2_1")
    with pytest.raises(UserError) as bad:
        convert_caffe_vgg19(tmp_path / "bad.npy")
    assert "conv2_1: expected kernel (3, 3, 64, 128) and bias (128,), got <kernel (3, 3, 65, 128)" in str(bad.value)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError) as junk:
        convert_caffe_vgg19(tmp_path / "junk.npy")
    assert len(junk.value.lines) == 1 and "unreadable" in str(junk.value)
