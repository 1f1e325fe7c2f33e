"""`ablate weights convert caffe-vgg19 vgg19.npy OUT.pt`: the original AnimeGAN's VGG19 as `backbone.weights`.

AnimeGAN feeds the caffe VGG19 of `vgg19.npy` (the machrisaa/tensorflow-vgg layout: a pickled dict from layer
name to [kernel (kh, kw, in, out), bias (out,)]) with 0-255 BGR inputs minus the BGR mean. Its loss weights (adv
300, content 1.5, style 3, colour 10) balance the terms at that scale; torchvision's ImageNet VGG19 under ImageNet
mean/std gives conv4_4 features about 58x smaller (reference loss_balance.md), so a "faithful" run on it trains
another balance of terms. The converted file records `preprocess: caffe`, which `backbone.preprocess: auto` then
uses. Trust: the .npy holds a pickle (numpy's allow_pickle): convert only the published file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ablation.errors import UserError, problem

CAFFE_FORMAT = "ablate/caffe-vgg19"
# caffe layer name -> torchvision vgg19().features index; the trunk (to conv4_4) needs the first twelve
VGG19_CONVS: dict[str, int] = {
    "conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10, "conv3_2": 12, "conv3_3": 14,
    "conv3_4": 16, "conv4_1": 19, "conv4_2": 21, "conv4_3": 23, "conv4_4": 25,
    "conv5_1": 28, "conv5_2": 30, "conv5_3": 32, "conv5_4": 34,
}
TRUNK_LAST = "conv4_4"
VGG19_CHANNELS = {"conv1": (64, 64), "conv2": (128, 128), "conv3": (256, 256), "conv4": (512, 512),
                  "conv5": (512, 512)}


def _expected_shape(layer: str) -> tuple[int, int, int, int]:
    """(kh, kw, in, out) of a VGG19 conv layer as the .npy stores it."""
    names = list(VGG19_CONVS)
    index = names.index(layer)
    out = VGG19_CHANNELS[layer.split("_")[0]][1]
    cin = 3 if index == 0 else VGG19_CHANNELS[names[index - 1].split("_")[0]][1]
    return (3, 3, cin, out)


def read_npy(source: Path) -> dict[str, Any]:
    if not source.is_file():
        raise UserError(problem(source, "source", "the published vgg19.npy (ablate data fetch vgg19 DEST)",
                                "<missing>"))
    try:  # a pickled dict written under Python 2: latin1 reads its byte strings
        layers = np.load(source, allow_pickle=True, encoding="latin1").item()
    except Exception as exc:  # not an .npy, or not a pickled object array: the file is not the published one
        raise UserError(problem(source, "source", "an .npy holding a dict of layer -> [kernel, bias]",
                                f"<unreadable: {type(exc).__name__}: {exc}>")) from None
    if not isinstance(layers, dict):
        raise UserError(problem(source, "source", "a dict of layer -> [kernel, bias]", f"<{type(layers).__name__}>"))
    return layers


def convert_caffe_vgg19(source: Path, width: float = 1.0) -> dict[str, Any]:
    """Every conv layer up to conv4_4 (and conv5_* when present), HWIO -> OIHW, under torchvision's keys."""
    layers = read_npy(source)
    state: dict[str, torch.Tensor] = {}
    for layer, index in VGG19_CONVS.items():
        if layer not in layers:
            if list(VGG19_CONVS).index(layer) <= list(VGG19_CONVS).index(TRUNK_LAST):
                raise UserError(problem(source, layer, "a VGG19 conv layer [kernel, bias] (the trunk reads conv1_1 "
                                        "to conv4_4)", "<missing>"))
            continue
        kernel, bias = (np.asarray(a, dtype=np.float32) for a in layers[layer][:2])
        want = _expected_shape(layer)
        if kernel.shape != want or bias.shape != (want[3],):
            raise UserError(problem(source, layer, f"kernel {want} and bias ({want[3]},)",
                                    f"<kernel {kernel.shape}, bias {bias.shape}>"))
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(bias.copy())
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    return {"format": CAFFE_FORMAT, "arch": "vgg19", "preprocess": "caffe", "source": source.name,
            "source_sha256": digest, "state_dict": state}
