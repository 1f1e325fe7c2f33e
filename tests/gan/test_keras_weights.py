"""`ablate weights convert keras-mobilenet-v2`: Keras' h5 layout in, a backbone that computes what Keras computes out.

The h5 files are written here in Keras 2's `save_weights` layout with the real layer names and the shapes Keras'
own rules give at alpha 1.3 (random values): the converter's torchvision-derived shapes are checked against them.
The reference forward pass is written from the h5 arrays with functional ops and Keras' numerics (BN ε 1e-3,
`correct_pad` before stride-2 convs), independently of the converter and the backbone.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ablation.config import BackboneConfig
from ablation.errors import UserError
from ablation.gan.backbone import build_backbone
from ablation.gan.keras_weights import convert_weights

Arrays = dict[str, dict[str, np.ndarray]]
KERAS_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]  # (expansion, channels, repeats, first stride), Keras MobileNetV2
STRIDE_2_BLOCKS = (1, 3, 6, 13)
WEIGHTLESS = ("input_1", "Conv1_relu", "block_1_pad", "block_6_pad", "out_relu")  # listed in layer_names too


def make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def keras_layers(alpha: float) -> list[tuple[str, dict[str, tuple[int, ...]]]]:
    """Every weighted layer of Keras MobileNetV2(include_top=False, alpha) with its weight shapes, in model order."""
    def bn(name: str, ch: int) -> tuple[str, dict[str, tuple[int, ...]]]:
        return name, {w: (ch,) for w in ("gamma", "beta", "moving_mean", "moving_variance")}

    in_ch = make_divisible(32 * alpha)
    layers = [("Conv1", {"kernel": (3, 3, 3, in_ch)}), bn("bn_Conv1", in_ch)]
    block = 0
    for expansion, channels, repeats, _ in KERAS_BLOCKS:
        out_ch = make_divisible(int(channels * alpha))
        for _ in range(repeats):
            prefix, hidden = (f"block_{block}_" if block else "expanded_conv_"), in_ch * expansion
            if block:
                layers += [(prefix + "expand", {"kernel": (1, 1, in_ch, hidden)}), bn(prefix + "expand_BN", hidden)]
            layers += [(prefix + "depthwise", {"depthwise_kernel": (3, 3, hidden, 1)}),
                       bn(prefix + "depthwise_BN", hidden),
                       (prefix + "project", {"kernel": (1, 1, hidden, out_ch)}), bn(prefix + "project_BN", out_ch)]
            in_ch, block = out_ch, block + 1
    last = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    return layers + [("Conv_1", {"kernel": (1, 1, in_ch, last)}), bn("Conv_1_bn", last)]


def write_keras_h5(path: Path, alpha: float, seed: int = 0) -> Arrays:
    rng = np.random.default_rng(seed)
    arrays: Arrays = {}
    with h5py.File(path, "w") as f:
        layers = keras_layers(alpha)
        f.attrs["layer_names"] = np.array([n.encode() for n in (*WEIGHTLESS, *(name for name, _ in layers))])
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for name in WEIGHTLESS:
            f.create_group(name).attrs["weight_names"] = np.array([])  # what Keras writes for a layer without weights
        for name, weights in layers:
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/{w}:0".encode() for w in weights])
            arrays[name] = {}
            for weight, shape in weights.items():
                if weight in ("gamma", "moving_variance"):  # positive, near 1: activations stay O(1) over 7 blocks
                    value = rng.uniform(0.5, 1.5, shape)
                elif weight in ("beta", "moving_mean"):
                    value = rng.normal(0.0, 0.1, shape)
                else:  # He-like scale over the kernel's fan-in (a depthwise kernel's fan-in is kh·kw)
                    fan_in = shape[0] * shape[1] * (1 if weight == "depthwise_kernel" else shape[2])
                    value = rng.normal(0.0, (2.0 / fan_in) ** 0.5, shape)
                arrays[name][weight] = value.astype(np.float32)
                group.create_dataset(f"{name}/{weight}:0", data=arrays[name][weight])  # nests Conv1/kernel:0
    return arrays


def ablate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Arrays]:
    folder = tmp_path_factory.mktemp("keras")
    h5 = folder / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.3_224_no_top.h5"
    arrays = write_keras_h5(h5, alpha=1.3)
    out = folder / "keras_mnv2_1.3.pt"
    result = ablate("weights", "convert", "keras-mobilenet-v2", str(h5), str(out), cwd=folder)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    return h5, out, arrays


def keras_reference(w: Arrays, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keras MobileNetV2 from the h5 arrays: (Conv1 → bn_Conv1 → ReLU6, block_6_expand before its BN)."""
    def pad_for_stride_2(t: torch.Tensor) -> torch.Tensor:  # imagenet_utils.correct_pad for a 3×3 kernel
        return F.pad(t, (t.shape[-1] % 2, 1, t.shape[-2] % 2, 1))  # even side: 0 before, 1 after; odd: 1 and 1

    def conv(t: torch.Tensor, kernel: np.ndarray, stride: int = 1, depthwise: bool = False) -> torch.Tensor:
        # Keras [kh, kw, in, out] (depthwise: [kh, kw, in, 1]) -> torch [out, in, kh, kw] ([in, 1, kh, kw])
        weight = torch.from_numpy(kernel).permute((2, 3, 0, 1) if depthwise else (3, 2, 0, 1))
        groups = t.shape[1] if depthwise else 1
        if stride == 2:
            return F.conv2d(pad_for_stride_2(t), weight, stride=2, groups=groups)
        return F.conv2d(t, weight, padding=kernel.shape[0] // 2, groups=groups)  # 'same' at stride 1

    def bn(t: torch.Tensor, layer: str) -> torch.Tensor:
        p = {k: torch.from_numpy(v) for k, v in w[layer].items()}
        return F.batch_norm(t, p["moving_mean"], p["moving_variance"], p["gamma"], p["beta"], training=False, eps=1e-3)

    first = x = bn(conv(x, w["Conv1"]["kernel"], stride=2), "bn_Conv1").clamp(0, 6)
    for block in range(7):
        prefix, inputs = (f"block_{block}_" if block else "expanded_conv_"), x
        if block:
            x = conv(x, w[prefix + "expand"]["kernel"])
            if block == 6:
                return first, x
            x = bn(x, prefix + "expand_BN").clamp(0, 6)
        stride = 2 if block in STRIDE_2_BLOCKS else 1
        x = bn(conv(x, w[prefix + "depthwise"]["depthwise_kernel"], stride, depthwise=True), prefix + "depthwise_BN")
        x = bn(conv(x.clamp(0, 6), w[prefix + "project"]["kernel"]), prefix + "project_BN")
        if x.shape == inputs.shape:  # Keras adds the shortcut when stride is 1 and the channels match
            x = x + inputs
    raise AssertionError("unreachable")


def test_every_converted_tensor_is_the_transposed_h5_value(converted: tuple[Path, Path, Arrays]) -> None:
    h5, out, arrays = converted
    payload = torch.load(out, weights_only=True)
    assert {k: payload[k] for k in ("format", "arch", "width", "bn_eps", "padding", "source")} == {
        "format": "ablate/keras-mobilenet-v2", "arch": "mobilenet_v2", "width": 1.3, "bn_eps": 1e-3,
        "padding": "tf_same", "source": h5.name}
    state = payload["state_dict"]
    features = torchvision.models.mobilenet_v2(width_mult=1.3).features
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=True)  # all 19
    # Pair by model order (Keras' layer order = torchvision's module order), not by the converter's name table.
    modules = [(n, m) for n, m in features.named_modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    layers = keras_layers(1.3)
    assert len(modules) == len(layers) == 104
    for (name, module), (layer, _) in zip(modules, layers, strict=True):
        got = {k: state[f"features.{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")
               if f"features.{name}.{k}" in state}
        w = arrays[layer]
        if isinstance(module, nn.BatchNorm2d):
            want = {"weight": w["gamma"], "bias": w["beta"], "running_mean": w["moving_mean"],
                    "running_var": w["moving_variance"]}
        elif "depthwise_kernel" in w:
            want = {"weight": w["depthwise_kernel"].transpose(2, 3, 0, 1)}
        else:
            want = {"weight": w["kernel"].transpose(3, 2, 0, 1)}
        assert got.keys() == want.keys(), layer
        for key, value in want.items():
            assert torch.equal(got[key], torch.from_numpy(np.ascontiguousarray(value))), f"{layer} -> {name}.{key}"


@pytest.mark.parametrize("size", [32, 35])  # even sides pad bottom/right only; odd sides pad both
def test_converted_trunk_computes_what_keras_computes(converted: tuple[Path, Path, Arrays], size: int) -> None:
    h5, out, arrays = converted
    backbone = build_backbone(BackboneConfig(arch="mobilenet_v2", width=1.3, weights=str(out)), 0)
    assert {m.eps for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    first, cut = keras_reference(arrays, image)
    with torch.no_grad():
        torch.testing.assert_close(backbone.trunk[0](image), first, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(backbone(image), cut, rtol=1e-4, atol=1e-4)  # "signed": the image as is
    assert cut.shape[1:] == (240, -(-size // 8), -(-size // 8))
    info = backbone.describe()
    assert info["weights"] == str(out) and info["hash"] == backbone.weights_hash
    assert info["numerics"] == "keras (bn_eps 0.001, padding tf_same)" and len(info["source_sha256"]) == 12


def test_plain_state_dict_keeps_torchvision_numerics(converted: tuple[Path, Path, Arrays], tmp_path: Path) -> None:
    _, out, arrays = converted
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(out, weights_only=True)["state_dict"], plain)
    backbone = build_backbone(BackboneConfig(arch="mobilenet_v2", width=1.3, weights=str(plain)), 0)
    keras = build_backbone(BackboneConfig(arch="mobilenet_v2", width=1.3, weights=str(out)), 0)
    assert {m.eps for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}
    assert backbone.weights_hash == keras.weights_hash and "numerics" not in backbone.describe()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():  # the numeric test above would notice a missing padding or ε switch
        assert not torch.allclose(backbone(image), keras_reference(arrays, image)[1], rtol=1e-3, atol=1e-3)


def test_converted_file_for_another_width_is_refused(converted: tuple[Path, Path, Arrays]) -> None:
    out = converted[1]
    with pytest.raises(UserError, match="converted for mobilenet_v2 at width 1.3") as info:
        build_backbone(BackboneConfig(arch="mobilenet_v2", width=1.4, weights=str(out)), 0)
    assert str(out) in str(info.value) and "backbone.weights" in str(info.value)


def test_wrong_alpha_is_one_clear_line(tmp_path: Path) -> None:
    h5 = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    write_keras_h5(h5, alpha=1.0)
    result = ablate("weights", "convert", "keras-mobilenet-v2", str(h5), str(tmp_path / "w.pt"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"error: {h5}: Conv1/kernel: expected shape (3, 3, 3, 40) (Keras MobileNetV2 alpha 1.3; "
                    "another alpha? pass --width), got <shape (3, 3, 3, 32)>")
    assert not (tmp_path / "w.pt").exists()


def test_missing_layer_or_not_keras_is_refused(converted: tuple[Path, Path, Arrays], tmp_path: Path) -> None:
    h5 = tmp_path / "partial.h5"
    shutil.copy(converted[0], h5)
    with h5py.File(h5, "r+") as f:
        del f["block_3_depthwise_BN"]
        f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n != b"block_3_depthwise_BN"])
    with pytest.raises(UserError, match=r"partial.h5: block_3_depthwise_BN: expected a layer of Keras MobileNetV2"):
        convert_weights("keras-mobilenet-v2", h5, tmp_path / "w.pt", 1.3)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(UserError, match="expected a Keras weights file"):
        convert_weights("keras-mobilenet-v2", other, tmp_path / "w.pt", 1.3)
    assert not (tmp_path / "w.pt").exists()
