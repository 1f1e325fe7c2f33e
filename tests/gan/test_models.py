"""Generator, discriminator and frozen backbone: exact sizes, shapes, freezing, seeding and weight loading.

Parameter counts are the reference's (animegan.md §1.2-1.4, §2, §4.2); inputs stay at 32-64 px, batch 1-2.
"""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VGG19_Weights

from ablation.config import BackboneConfig
from ablation.errors import UserError
from ablation.gan.backbone import build_backbone
from ablation.gan.discriminator import build_discriminator
from ablation.gan.generator import build_generator

# random weights: the default (imagenet) needs a download the tests cannot make
VGG = BackboneConfig(weights="random")
MOBILENET = BackboneConfig(arch="mobilenet_v2", width=1.3, weights="random")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def images(size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1  # [B, 3, S, S] in [-1, 1]


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(("version", "expected"), [("v1", 3_956_096), ("v2", 2_143_552)])
@pytest.mark.parametrize("sn", [False, True])
def test_generator_parameter_count(version: str, expected: int, sn: bool) -> None:
    # Spectral norm moves each weight to `parametrizations.weight.original` and adds u/v buffers only.
    assert n_params(build_generator(version, spectral_norm=sn)) == expected


@pytest.mark.parametrize("sn", [False, True])
def test_discriminator_parameter_count(sn: bool) -> None:
    # 1,127,520 conv weights + 1,280 affine IN gamma/beta (128 + 256 + 256 channels).
    assert n_params(build_discriminator(64, 3, spectral_norm=sn)) == 1_128_800


def test_vgg19_trunk_parameter_count() -> None:
    assert n_params(build_backbone(VGG, seed=0)) == 10_585_152


def test_mobilenet_trunk_parameter_count() -> None:
    # The reference's 98,256 holds: it counts convs plus BN gamma/beta of features[:7] and the 40->240 expand
    # conv (9,600), and excludes the BN running_mean/var buffers. Hand sum: 1,160 + 1,448 + 10,000 + 14,848
    # + 16,400 + 22,400 + 22,400 + 9,600.
    assert n_params(build_backbone(MOBILENET, seed=0)) == 98_256


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("size", [32, 48, 64, 50])
def test_generator_keeps_size(version: str, size: int) -> None:
    torch.manual_seed(0)
    gen = build_generator(version)
    with torch.no_grad():
        fake = gen(images(size))
    assert fake.shape == (1, 3, size, size)
    assert fake.abs().max() <= 1.0  # tanh output


def test_generator_rectangular_odd_size() -> None:
    with torch.no_grad():
        fake = build_generator("v1")(images(45)[..., :33])  # [1, 3, 45, 33]
    assert fake.shape == (1, 3, 45, 33)


def test_unknown_generator_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="v1, v2"):
        build_generator("v3")


@pytest.mark.parametrize("size", [32, 64])
def test_discriminator_patch_map(size: int) -> None:
    disc = build_discriminator(dropout=0.2)
    assert any(isinstance(m, nn.Dropout2d) for m in disc.modules())
    assert disc(images(size, batch=2)).shape == (2, 1, size // 4, size // 4)


def test_discriminator_n_layers_sets_depth() -> None:
    # n_layers - 1 stride-2 convs: 2 -> H/2, 4 -> H/8.
    assert build_discriminator(32, 2)(images(32)).shape == (1, 1, 16, 16)
    assert build_discriminator(32, 4)(images(32)).shape == (1, 1, 4, 4)


def test_backbone_feature_shapes() -> None:
    vgg = build_backbone(VGG, seed=0)
    mobilenet = build_backbone(MOBILENET, seed=0)
    assert (vgg.out_channels, mobilenet.out_channels) == (512, 240)
    with torch.no_grad():
        assert vgg(images(64)).shape == (1, 512, 8, 8)
        assert mobilenet(images(64)).shape == (1, 240, 8, 8)


# ---------------------------------------------------------------- freezing


def test_backbone_is_frozen_but_passes_input_gradients() -> None:
    backbone = build_backbone(MOBILENET, seed=0)
    backbone.train()  # a trainer calling .train() on everything must not wake BN up
    assert not backbone.training and not any(m.training for m in backbone.modules())
    assert all(not p.requires_grad for p in backbone.parameters())
    running_mean = backbone.trunk[0][1].running_mean.clone()
    photo = images(32).requires_grad_(True)
    backbone(photo).square().mean().backward()
    assert photo.grad is not None and photo.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())
    torch.testing.assert_close(backbone.trunk[0][1].running_mean, running_mean)


def test_preprocessing_auto_and_caffe_formula() -> None:
    assert build_backbone(VGG, seed=0).describe()["preprocess"] == "caffe"
    # torchvision's MobileNetV2 init and weights: ImageNet mean/std; Keras' init: [-1, 1] (test_backbone_init.py)
    assert build_backbone(MOBILENET, seed=0).describe()["preprocess"] == "imagenet"
    vgg = build_backbone(VGG.model_copy(update={"preprocess": "caffe"}), seed=0)
    photo = images(32)
    # Caffe by hand: [-1, 1] -> [0, 255], RGB -> BGR, minus the BGR mean.
    expected_input = (photo + 1) * 127.5
    expected_input = expected_input[:, [2, 1, 0]] - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(vgg(photo), vgg.trunk(expected_input), rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- random weights


def test_random_weights_are_seeded_and_leave_global_rng_alone() -> None:
    rng_before = torch.get_rng_state()
    first = build_backbone(MOBILENET, seed=1)
    again = build_backbone(MOBILENET, seed=1)
    other = build_backbone(MOBILENET, seed=2)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert first.weights_hash == again.weights_hash != other.weights_hash
    assert len(first.weights_hash) == 12
    photo = images(32)
    with torch.no_grad():
        torch.testing.assert_close(first(photo), again(photo), rtol=0, atol=0)
    described = first.describe()
    assert {k: v for k, v in described.items() if k not in ("feature_rms", "gram_rms")} == {
        "arch": "mobilenet_v2", "weights": "random", "seed": "1", "init": "torchvision", "width": "1.3",
        "preprocess": "imagenet", "hash": first.weights_hash}
    assert float(described["feature_rms"]) < 1e-3  # torchvision's random MobileNetV2 is silent


def test_config_seed_overrides_trial_seed() -> None:
    pinned = VGG.model_copy(update={"seed": 7})
    assert build_backbone(pinned, seed=1).weights_hash == build_backbone(pinned, seed=2).weights_hash
    assert build_backbone(pinned, seed=1).describe()["seed"] == "7"


# ---------------------------------------------------------------- weight files


def test_local_full_model_weights_load_exactly(tmp_path: Path) -> None:
    torch.manual_seed(123)
    full = torchvision.models.mobilenet_v2(width_mult=1.3).eval()
    path = tmp_path / "mobilenet_full.pt"
    torch.save(full.state_dict(), path)
    # fed as given ([-1, 1]): this checks the load, not the preprocessing (auto would be ImageNet mean/std)
    backbone = build_backbone(MOBILENET.model_copy(update={"weights": str(path), "preprocess": "signed"}), seed=0)
    photo = images(32)
    with torch.no_grad():
        # The cut by hand: features[:7], then features[7]'s expand conv (Keras block_6_expand), before its BN.
        expected = full.features[7].conv[0][0](full.features[:7](photo))
        torch.testing.assert_close(backbone(photo), expected, rtol=0, atol=0)
    assert backbone.describe()["weights"] == str(path) and backbone.describe()["seed"] == "n/a"


def test_local_trunk_weights_with_prefix_load(tmp_path: Path) -> None:
    source = build_backbone(MOBILENET, seed=5)
    path = tmp_path / "trunk.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)  # DDP-style keys
    loaded = build_backbone(MOBILENET.model_copy(update={"weights": str(path)}), seed=0)
    assert loaded.weights_hash == source.weights_hash


def test_mismatched_weights_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "width1.pt"
    torch.save(build_backbone(MOBILENET.model_copy(update={"width": 1.0}), seed=0).trunk.state_dict(), path)
    with pytest.raises(UserError, match="backbone.weights") as info:
        build_backbone(MOBILENET.model_copy(update={"weights": str(path)}), seed=0)
    assert str(path) in str(info.value) and "shape" in str(info.value)
    with pytest.raises(UserError, match="missing"):
        build_backbone(BackboneConfig(weights=str(path)), seed=0)  # mobilenet keys for a vgg19 trunk


def test_missing_weights_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(UserError, match="backbone.weights") as info:
        build_backbone(BackboneConfig(weights=str(path)), seed=0)
    assert str(path) in str(info.value)


def test_imagenet_at_width_13_is_a_user_error() -> None:
    with pytest.raises(UserError, match="backbone.weights") as info:
        build_backbone(MOBILENET.model_copy(update={"weights": "imagenet"}), seed=0)
    assert "1.3" in str(info.value) and "local weights file" in str(info.value)


def test_imagenet_download_failure_says_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", offline)
    with pytest.raises(UserError, match="backbone.weights") as info:
        build_backbone(BackboneConfig(weights="imagenet"), seed=0)
    assert "hub/checkpoints/vgg19-dcbb9e9d.pth" in str(info.value)
