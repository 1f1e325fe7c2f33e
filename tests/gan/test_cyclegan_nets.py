"""CycleGAN's ResnetGenerator and 70×70 PatchGAN: exact sizes, shapes, init, the build switches, and fusion.

The AnimeGAN counts stay pinned in test_models.py; here only that the default D is still the AnimeGAN one.
Inputs stay at 32-64 px (one 256 px D forward for the 30×30 map), batch 1-2.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ablation.gan.cyclegan_nets import PatchDiscriminator, ResnetGenerator
from ablation.gan.discriminator import Discriminator, build_discriminator
from ablation.gan.fused import FusedNet
from ablation.gan.generator import build_generator


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def images(size: int, batch: int = 2, seed: int = 0, width: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, width or size, generator=gen) * 2 - 1  # [B, 3, H, W] in [-1, 1]


def seeded(cls: type[nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("sn", [False, True])
def test_resnet9_parameter_count(sn: bool) -> None:
    # stem 9,472; down 73,856 + 295,168; 9 blocks × 1,180,160; up 295,040 + 73,792; out 9,411
    assert n_params(build_generator("resnet9", spectral_norm=sn)) == 11_378_179


def test_patchgan_parameter_count() -> None:
    # 3,136 + 131,200 + 524,544 + 2,097,664 + 8,193 (every conv has a bias: IN is not affine)
    assert n_params(PatchDiscriminator(64, 3)) == 2_764_737


# ---------------------------------------------------------------- shapes, init


@pytest.mark.parametrize("size", [32, 64])
def test_resnet9_keeps_size(size: int) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        fake = ResnetGenerator()(images(size))
    assert fake.shape == (2, 3, size, size)
    assert fake.abs().max() <= 1.0  # tanh output


def test_resnet9_rejects_a_size_not_a_multiple_of_4() -> None:
    with pytest.raises(ValueError, match="32x30"):
        ResnetGenerator()(images(32, batch=1, width=30))


@pytest.mark.parametrize(("size", "patch"), [(32, 2), (64, 6), (256, 30)])
def test_patchgan_map(size: int, patch: int) -> None:
    torch.manual_seed(0)
    batch = 1 if size == 256 else 2
    with torch.no_grad():
        assert PatchDiscriminator()(images(size, batch)).shape == (batch, 1, patch, patch)


@pytest.mark.parametrize("cls", [ResnetGenerator, PatchDiscriminator])
def test_init_is_normal_002_from_the_global_rng(cls: type[nn.Module]) -> None:
    model = seeded(cls, 0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    weights = torch.cat([c.weight.detach().flatten() for c in convs])
    assert abs(weights.std().item() - 0.02) < 2e-4 and abs(weights.mean().item()) < 2e-4
    assert all(c.bias is not None and not c.bias.any() for c in convs)
    assert not any(m.affine or m.track_running_stats for m in model.modules() if isinstance(m, nn.InstanceNorm2d))
    again = seeded(cls, 0).state_dict()
    assert all(torch.equal(t, again[k]) for k, t in model.state_dict().items())


# ---------------------------------------------------------------- build switches


def test_build_generator_resnet9() -> None:
    sn = build_generator("resnet9", spectral_norm=True, resize="half_pixel")  # resize is accepted and ignored
    assert isinstance(sn, ResnetGenerator)
    # spectral norm wraps the Conv2d layers only (the transposed convs are no Conv2d)
    assert sum(hasattr(m, "parametrizations") for m in sn.modules()) == 1 + 2 + 18 + 1
    with torch.no_grad():
        assert sn(images(32, batch=1)).shape == (1, 3, 32, 32)


def test_build_discriminator_patchgan_and_default() -> None:
    assert isinstance(build_discriminator(64, 3, False, 0.0, arch="patchgan"), PatchDiscriminator)
    torch.manual_seed(0)
    default = build_discriminator(32, 3, True, 0.2)  # positional, as existing callers pass it
    torch.manual_seed(0)
    named = build_discriminator(32, 3, True, 0.2, arch="animegan")
    assert type(default) is Discriminator and type(named) is Discriminator
    assert all(torch.equal(t, named.state_dict()[k]) for k, t in default.state_dict().items())


def test_patchgan_refuses_dropout_and_takes_spectral_norm_on_request() -> None:
    with pytest.raises(ValueError, match="patchgan.*has no dropout"):
        build_discriminator(64, 3, False, 0.3, arch="patchgan")
    sn = build_discriminator(64, 3, True, 0.0, arch="patchgan")  # an SN-PatchGAN: buffers only, same count
    assert n_params(sn) == 2_764_737
    assert sum(1 for m in sn.modules() if hasattr(m, "parametrizations")) == 5


def test_unknown_discriminator_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="'stylegan'; valid: animegan, patchgan"):
        build_discriminator(arch="stylegan")


# ---------------------------------------------------------------- fusion


@pytest.mark.slow  # two 11M-parameter generators forward and backward, three times: about 15 s
@pytest.mark.parametrize("cls", [ResnetGenerator, PatchDiscriminator])
def test_fused_pair_is_each_members_own(cls: type[nn.Module]) -> None:
    """Outputs and parameter gradients of each member's own module: looped bit for bit, grouped to 1e-5."""
    own = [seeded(cls, s) for s in (0, 1)]
    inputs = [images(32, seed=10 + k) for k in range(2)]
    gen = torch.Generator().manual_seed(3)
    shape = (2, 3, 32, 32) if cls is ResnetGenerator else (2, 1, 2, 2)
    probes = [torch.randn(shape, generator=gen) for _ in own]  # a generic linear read-out of each output
    members = {mode: copy.deepcopy(own) for mode in ("looped", "grouped")}  # before any backward: no grads
    want, want_grad = [], []
    for module, x, probe in zip(own, inputs, probes, strict=True):
        out = module(x)
        (out * probe).sum().backward()
        want.append(out.detach())
        want_grad.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
        assert want_grad[-1].norm() > 0

    for mode in ("looped", "grouped"):
        outs = FusedNet(members[mode][0], mode)(members[mode], inputs)
        torch.stack([(o * p).sum() for o, p in zip(outs, probes, strict=True)]).sum().backward()
        for k in range(2):
            got_grad = torch.cat([p.grad.flatten() for p in members[mode][k].parameters()])
            if mode == "looped":
                assert torch.equal(outs[k], want[k])
                assert torch.equal(got_grad, want_grad[k])
            else:
                assert (outs[k] - want[k]).abs().max() <= 1e-5
                # in norm over all parameters: the biases ahead of an instance norm have an exact gradient of 0,
                # so theirs are rounding noise in both runs and a per-tensor relative check would compare noise
                assert (got_grad - want_grad[k]).norm() <= 1e-5 * want_grad[k].norm()
