"""Keras MobileNetV2 ImageNet weights for the `mobilenet_v2` backbone (reference §4.2, §7).

The write-up used `tf.keras.applications.MobileNetV2(alpha=1.3, weights='imagenet')`; torchvision ships no ImageNet
weights at width 1.3. `ablate weights convert keras-mobilenet-v2 FILE.h5 OUT.pt` turns Keras' published
`mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.3_224_no_top.h5` into a file `backbone.weights` loads.

Same weights are not same numbers: Keras' BN uses ε = 1e-3 (torchvision 1e-5), and its stride-2 convs pad like TF
"same" (`Conv1`, padding='same') or `ZeroPadding2D(correct_pad)` (the stride-2 depthwise convs): both put the odd
padding pixel bottom/right, so an even input is padded (top 0, bottom 1, left 0, right 1) where torchvision pads 1
everywhere. A converted file therefore carries this metadata next to its state dict, and `use_keras_numerics`
makes the trunk compute what Keras computes:

    {"format": KERAS_FORMAT, "arch": "mobilenet_v2", "width": 1.3, "bn_eps": 1e-3, "padding": "tf_same",
     "source": file name, "source_sha256": ..., "state_dict": {"features.0.0.weight": ..., ...}}
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ablation.errors import UserError, problem
from ablation.files import atomic_write
from ablation.gan.caffe_weights import convert_caffe_vgg19

KERAS_FORMAT = "ablate/keras-mobilenet-v2"
KERAS_BN_EPS = 1e-3
TF_SAME = "tf_same"
BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
KERNEL_NAMES = {"conv": "kernel", "depthwise": "depthwise_kernel"}


# ---------------------------------------------------------------- runtime: what a converted file needs


class TFSameConv2d(nn.Conv2d):
    """A Conv2d (built with padding=0) that zero-pads its input like TF "same": the odd pixel goes after.

    Computed per call from the input size, since the backbone sees any image size.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        for dim in (-1, -2):  # F.pad lists the last dimension first: (left, right, top, bottom)
            size, kernel, stride = x.shape[dim], self.kernel_size[dim], self.stride[dim]
            reach = (kernel - 1) * self.dilation[dim] + 1
            total = max((math.ceil(size / stride) - 1) * stride + reach - size, 0)
            pad += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pad))


def use_keras_numerics(trunk: nn.Module, bn_eps: float, padding: str) -> None:
    """Switch a torchvision MobileNetV2 trunk, in place, to Keras' BN ε and stride-2 padding.

    Key paths stay the same (the state dict still loads); stride-1 convs already agree (3×3 pads 1, 1×1 pads 0).
    """
    if padding != TF_SAME:
        raise ValueError(f"unknown padding {padding!r}")
    for module in trunk.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = bn_eps
    strided = [(name, m) for name, m in trunk.named_modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    for name, conv in strided:
        parent_name, _, child = name.rpartition(".")
        # On the meta device: no RNG draw, no memory; the conv's own parameters are moved over below.
        with torch.device("meta"):
            same = TFSameConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding=0,
                                dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None)
        same.weight = conv.weight
        if conv.bias is not None:
            same.bias = conv.bias
        setattr(trunk.get_submodule(parent_name) if parent_name else trunk, child, same)


def keras_init(trunk: nn.Module) -> None:
    """Re-draw a trunk's weights as Keras draws a model built with `weights=None`, from the global RNG.

    Keras' glorot-uniform limit is sqrt(6 / (fan_in + fan_out)) with fans from its kernel layout (kh, kw, in,
    out) (keras/src/initializers/random_initializers.py `compute_fans`): a depthwise kernel (kh, kw, C, 1) has
    fan_in C·kh·kw and fan_out kh·kw, so its kernels are as small as torchvision's fan_out ones. Biases 0; BN
    gamma 1, beta 0, moving mean 0, variance 1 (torchvision's defaults too).
    """
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            depthwise = module.groups > 1 and module.groups == module.in_channels
            fan_in = module.in_channels * kh * kw
            fan_out = (module.out_channels // module.in_channels if depthwise else module.out_channels) * kh * kw
            limit = (6.0 / (fan_in + fan_out)) ** 0.5
            with torch.no_grad():
                module.weight.uniform_(-limit, limit)
                if module.bias is not None:
                    module.bias.zero_()
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.reset_running_stats()


# ---------------------------------------------------------------- the converter


def keras_layer_map() -> list[tuple[str, str, str]]:
    """(Keras layer, torchvision key prefix, kind) for every weighted layer of MobileNetV2 without its top.

    Keras block_k = torchvision features[k+1]; `expanded_conv` (block 0) has no expand conv.
    """
    rows = [("Conv1", "features.0.0", "conv"), ("bn_Conv1", "features.0.1", "bn")]
    rows += [("expanded_conv_depthwise", "features.1.conv.0.0", "depthwise"),
             ("expanded_conv_depthwise_BN", "features.1.conv.0.1", "bn"),
             ("expanded_conv_project", "features.1.conv.1", "conv"),
             ("expanded_conv_project_BN", "features.1.conv.2", "bn")]
    for block in range(1, 17):
        keras, torch_prefix = f"block_{block}_", f"features.{block + 1}.conv."
        rows += [(keras + "expand", torch_prefix + "0.0", "conv"), (keras + "expand_BN", torch_prefix + "0.1", "bn"),
                 (keras + "depthwise", torch_prefix + "1.0", "depthwise"),
                 (keras + "depthwise_BN", torch_prefix + "1.1", "bn"),
                 (keras + "project", torch_prefix + "2", "conv"), (keras + "project_BN", torch_prefix + "3", "bn")]
    return rows + [("Conv_1", "features.18.0", "conv"), ("Conv_1_bn", "features.18.1", "bn")]


def _attr_names(attrs: Any, key: str) -> list[str]:
    # Keras splits an attribute over 64 KB into key0, key1, ... (HDF5's attribute size limit)
    chunks = [attrs[key]] if key in attrs else []
    while f"{key}{len(chunks)}" in attrs:
        chunks.append(attrs[f"{key}{len(chunks)}"])
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for chunk in chunks for n in chunk]


def read_keras_h5(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Keras 2 `save_weights` h5 -> {layer: {weight (`kernel`, `gamma`, ...): array}}, weightless layers left out."""
    import h5py  # only the converter reads h5; training never does

    if not path.is_file():
        raise UserError(problem(path, "weights convert", "an existing Keras .h5 weights file", "<missing>"))
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(problem(path, "weights convert", "a Keras .h5 weights file", f"<unreadable: {exc}>")) from None
    with handle:
        # a full `model.save` file keeps the same layout under model_weights/
        root = handle["model_weights"] if "layer_names" not in handle.attrs and "model_weights" in handle else handle
        if "layer_names" not in root.attrs:
            raise UserError(problem(path, "weights convert", "a Keras weights file (root attribute layer_names)",
                                    "<another kind of h5>"))
        layers: dict[str, dict[str, np.ndarray]] = {}
        for layer in _attr_names(root.attrs, "layer_names"):
            group = root[layer]
            # weight names look like `Conv1/kernel:0`; only the last part says which weight it is
            weights = {name.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[name])
                       for name in _attr_names(group.attrs, "weight_names")}
            if weights:
                layers[layer] = weights
        return layers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_torch(array: np.ndarray, kind: str) -> torch.Tensor:
    if kind == "conv":  # [kh, kw, in, out] -> [out, in, kh, kw]
        array = array.transpose(3, 2, 0, 1)
    elif kind == "depthwise":  # [kh, kw, in, multiplier 1] -> [in, 1, kh, kw]
        array = array.transpose(2, 3, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _keras_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """A torchvision shape written the Keras way, so that an error shows what the file should hold."""
    if kind == "conv":
        return (shape[2], shape[3], shape[1], shape[0])
    if kind == "depthwise":
        return (shape[2], shape[3], shape[0], shape[1])
    return shape


def convert_keras_mobilenet_v2(source: Path, width: float) -> dict[str, Any]:
    """Every weighted layer of the no-top model, checked against torchvision's shapes at `width` (= Keras alpha)."""
    layers = read_keras_h5(source)
    with torch.device("meta"):  # shapes only
        expected = torchvision.models.mobilenet_v2(weights=None, width_mult=width).state_dict()
    state: dict[str, torch.Tensor] = {}
    for layer, prefix, kind in keras_layer_map():
        if layer not in layers:
            raise UserError(problem(source, layer, "a layer of Keras MobileNetV2 (include_top=False); the published "
                                    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.3_224_no_top.h5 has it",
                                    "<missing>"))
        names = BN_NAMES if kind == "bn" else {KERNEL_NAMES[kind]: "weight"}
        for keras_name, torch_name in names.items():
            if keras_name not in layers[layer]:
                raise UserError(problem(source, f"{layer}/{keras_name}", "a weight of this layer", "<missing>"))
            tensor = _to_torch(layers[layer][keras_name], kind)
            want = tuple(expected[f"{prefix}.{torch_name}"].shape)
            if tuple(tensor.shape) != want:
                raise UserError(problem(source, f"{layer}/{keras_name}", f"shape {_keras_shape(want, kind)} "
                                        f"(Keras MobileNetV2 alpha {width:g}; another alpha? pass --width)",
                                        f"<shape {layers[layer][keras_name].shape}>"))
            state[f"{prefix}.{torch_name}"] = tensor
        if kind == "bn":  # torchvision's BN buffer; unused in eval mode
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return {"format": KERAS_FORMAT, "arch": "mobilenet_v2", "width": float(width), "bn_eps": KERAS_BN_EPS,
            "padding": TF_SAME, "source": source.name, "source_sha256": _sha256(source), "state_dict": state}


Converter = Callable[[Path, float], dict[str, Any]]
CONVERTERS: dict[str, Converter] = {
    "keras-mobilenet-v2": convert_keras_mobilenet_v2,
    "caffe-vgg19": convert_caffe_vgg19,  # the original AnimeGAN's vgg19.npy (gan/caffe_weights.py)
}


def convert_weights(name: str, source: Path, out: Path, width: float) -> str:
    """Run converter `name` on `source`, write its result to `out` atomically; returns a one-line summary."""
    try:
        converter = CONVERTERS[name]
    except KeyError:
        raise UserError(problem(None, "weights convert", f"a converter, one of {', '.join(sorted(CONVERTERS))}",
                                name)) from None
    payload = converter(Path(source), width)
    atomic_write(Path(out), lambda handle: torch.save(payload, handle))
    count = len(payload["state_dict"])
    return f"wrote {out}: {count} tensors from {Path(source).name} (use it as backbone.weights: {out})"
