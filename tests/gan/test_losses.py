"""Hand-computed checks for ablation.gan.losses (arithmetic in the comments, not re-derived in code)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ablation.config import GAN_TYPES
from ablation.gan import losses as L


def t(values: list, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    x = torch.tensor(values, dtype=torch.float32)
    return x.reshape(shape) if shape else x


def close(x: torch.Tensor, expected: float, tol: float = 1e-6) -> None:
    assert x.shape == ()
    assert x.dtype == torch.float32
    assert x.item() == pytest.approx(expected, abs=tol, rel=tol)


# ---------------------------------------------------------------- gram / content / style

FEAT = t([1.0, 2.0, 3.0, 4.0], (1, 2, 1, 2))  # channel 0 = [1, 2], channel 1 = [3, 4]
# c0·c0 = 1+4 = 5, c0·c1 = 3+8 = 11, c1·c1 = 9+16 = 25; ÷ C·H·W = 2·1·2 = 4
GRAM = [[1.25, 2.75], [2.75, 6.25]]


def test_gram_by_hand() -> None:
    g = L.gram(FEAT)
    assert g.shape == (1, 2, 2)
    torch.testing.assert_close(g, t(GRAM, (1, 2, 2)))


def test_gram_is_per_sample() -> None:
    # Second sample is 2·FEAT, so its Gram is 4·GRAM; no mixing across the batch.
    g = L.gram(torch.cat([FEAT, 2 * FEAT]))
    torch.testing.assert_close(g[1], 4 * t(GRAM))
    torch.testing.assert_close(g[0], t(GRAM))


def test_content_loss_by_hand() -> None:
    real = t([0.0, 1.0, 2.0, 3.0], (1, 1, 2, 2))
    fake = t([1.0, 1.0, 0.0, 3.0], (1, 1, 2, 2))
    close(L.content_loss(real, fake), 0.75)  # |diffs| = 1, 0, 2, 0 -> 3/4


def test_content_loss_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        L.content_loss(torch.zeros(1, 1, 2, 2), torch.zeros(2, 1, 2, 2))


def test_style_loss_by_hand() -> None:
    # style Gram = 0, so loss = mean|GRAM| = (1.25 + 2.75 + 2.75 + 6.25) / 4 = 13/4
    close(L.style_loss(torch.zeros_like(FEAT), FEAT), 3.25)
    close(L.style_loss(FEAT, FEAT), 0.0)


def test_style_loss_batch_mismatch_wraps_by_index() -> None:
    zero = torch.zeros_like(FEAT)
    # fake batch 2 vs style batch 1: both fakes compare with style[0] = FEAT.
    # sample 0 (FEAT) -> 0, sample 1 (zeros) -> 3.25; mean = 1.625
    close(L.style_loss(FEAT, torch.cat([FEAT, zero])), 1.625)
    # fake batch 3 vs style batch 2 [FEAT, 0]: fake 2 pairs with style 2 mod 2 = 0 (FEAT).
    # fakes [FEAT, 0, 0]: diffs 0, 0, 3.25 -> mean 3.25/3
    close(L.style_loss(torch.cat([FEAT, zero]), torch.cat([FEAT, zero, zero])), 3.25 / 3)


# ---------------------------------------------------------------- YUV / colour

def solid(r: float, g: float, b: float, h: int = 2, w: int = 2) -> torch.Tensor:
    """A [1,3,h,w] image of one colour, given in [-1, 1]."""
    return t([r, g, b], (1, 3, 1, 1)).expand(1, 3, h, w).clone()


def test_rgb_to_yuv_unit_rows() -> None:
    m = L.YUV_MATRIX
    for i, img in enumerate([solid(1, -1, -1), solid(-1, 1, -1), solid(-1, -1, 1)]):
        # a pure primary at unit scale is the one-hot vector, so YUV = that row of M
        yuv = L.rgb_to_yuv(img)
        assert yuv.shape == (1, 3, 2, 2)
        torch.testing.assert_close(yuv[0, :, 0, 0], t(list(m[i])))
    # white: Y = 0.299+0.587+0.114 = 1; U = -0.14714119-0.28886916+0.43601035 = 0;
    # V = 0.61497538-0.51496512-0.10001026 = 0
    torch.testing.assert_close(L.rgb_to_yuv(solid(1, 1, 1))[0, :, 0, 0], t([1.0, 0.0, 0.0]))
    torch.testing.assert_close(L.rgb_to_yuv(solid(-1, -1, -1)), torch.zeros(1, 3, 2, 2))


def test_rgb_to_yuv_255_scale() -> None:
    # x·127.5 + 127.5: white -> 255 on each channel, so Y = 255, U = V = 0; black -> 0; 0 -> 127.5
    torch.testing.assert_close(L.rgb_to_yuv(solid(1, 1, 1), "255")[0, :, 0, 0], t([255.0, 0.0, 0.0]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(L.rgb_to_yuv(solid(-1, -1, -1), "255"), torch.zeros(1, 3, 2, 2))
    torch.testing.assert_close(L.rgb_to_yuv(solid(0, 0, 0), "255")[0, 0, 0, 0], torch.tensor(127.5))
    with pytest.raises(ValueError, match="unit, 255"):
        L.rgb_to_yuv(solid(0, 0, 0), "0-255")


# real = black, fake = black with blue at 0.2 on [0,1] (x = -0.6): fake YUV = 0.2·row B of M
BLACK, BLUEISH = solid(-1, -1, -1), solid(-1, -1, -0.6)


def test_color_loss_quadratic_branch_unit() -> None:
    # Y = 0.2·0.114 = 0.0228, U = 0.2·0.43601035 = 0.08720207, V = 0.2·(-0.10001026) = -0.020002052
    # |ΔU|, |ΔV| < 1 -> Huber = 0.5e²: 0.5·0.0076042010 = 0.0038021005, 0.5·0.0004000821 = 0.0002000410
    # col = 0.0228 + 0.0038021005 + 0.0002000410 = 0.0268021415
    close(L.color_loss(BLACK, BLUEISH), 0.0268021415)
    close(L.color_loss(BLUEISH, BLUEISH), 0.0)


def test_color_loss_linear_branch_255() -> None:
    # blue = 0.2·255 = 51: Y = 51·0.114 = 5.814, U = 51·0.43601035 = 22.23652785,
    # V = 51·(-0.10001026) = -5.10052326. |ΔU|, |ΔV| > 1 -> Huber = |e| - 0.5:
    # col = 5.814 + 21.73652785 + 4.60052326 = 32.15105111
    close(L.color_loss(BLACK, BLUEISH, "255"), 32.15105111, tol=1e-5)
    # 32.15 / 0.0268 ≈ 1200×: the write-up's scale swamps the term
    assert L.color_loss(BLACK, BLUEISH, "255") > 1000 * L.color_loss(BLACK, BLUEISH)


def test_color_loss_255_is_orders_of_magnitude_larger_on_random_images() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    fake = (real + 0.1 * torch.randn(2, 3, 8, 8, generator=g)).clamp(-1, 1)
    assert L.color_loss(real, fake, "255") > 100 * L.color_loss(real, fake, "unit")


# ---------------------------------------------------------------- TV

def test_tv_loss_by_hand() -> None:
    img = t([1.0, 2.0, 4.0, 8.0], (1, 1, 2, 2))  # rows [1, 2] and [4, 8]
    # dh = 4-1, 8-2 = 3, 6 -> mean(9, 36) = 22.5; dw = 2-1, 8-4 = 1, 4 -> mean(1, 16) = 8.5
    # tv = 0.5·22.5 + 0.5·8.5 = 15.5
    close(L.tv_loss(img), 15.5)
    close(L.tv_loss(torch.ones(2, 3, 4, 4)), 0.0)


# ---------------------------------------------------------------- adversarial terms

LN2 = math.log(2.0)
SP_M2 = 0.1269280110  # softplus(-2) = ln(1 + e^-2) = BCE(2, target 1)
SP_05 = 0.9740769842  # softplus(0.5) = ln(1 + e^0.5) = BCE(0.5, target 0)
SP_M1 = 0.3132616875  # softplus(-1) = ln(1 + e^-1) = BCE(-1, target 0)

# d_real = 2, d_gray = 0.5, d_fake = -1, d_smooth = 0; G term uses d_fake = 2
EXPECTED = {
    # real (2-1)² = 1; gray 0.5² = 0.25; fake (-1)² = 1; smooth 0; G (2-1)² = 1
    "lsgan": ({"real": 1.0, "gray": 0.25, "fake": 1.0, "smooth": 0.0}, 1.0),
    # real softplus(-2); others softplus(d); G softplus(-2)
    "gan": ({"real": SP_M2, "gray": SP_05, "fake": SP_M1, "smooth": LN2}, SP_M2),
    "dragan": ({"real": SP_M2, "gray": SP_05, "fake": SP_M1, "smooth": LN2}, SP_M2),
    # real relu(1-2) = 0; gray relu(1.5); fake relu(0); smooth relu(1); G -2
    "hinge": ({"real": 0.0, "gray": 1.5, "fake": 0.0, "smooth": 1.0}, -2.0),
    # real -2; others the mean itself; G -2
    "wgan-gp": ({"real": -2.0, "gray": 0.5, "fake": -1.0, "smooth": 0.0}, -2.0),
    "wgan-lp": ({"real": -2.0, "gray": 0.5, "fake": -1.0, "smooth": 0.0}, -2.0),
}


def test_registry_covers_config_gan_types() -> None:
    assert tuple(L.GAN_LOSSES) == GAN_TYPES  # same order, so error messages match the config's
    assert set(EXPECTED) == set(GAN_TYPES)


@pytest.mark.parametrize("gan_type", list(EXPECTED))
def test_adv_terms_on_constant_logits(gan_type: str) -> None:
    d_terms, g_term = EXPECTED[gan_type]
    const = lambda v: torch.full((2, 1, 4, 4), v)  # noqa: E731
    got = L.discriminator_adv_losses(gan_type, const(2.0), const(0.5), const(-1.0), const(0.0))
    assert set(got) == {"real", "gray", "fake", "smooth"}
    for name, value in d_terms.items():
        close(got[name], value)
    close(L.generator_adv_loss(gan_type, const(2.0)), g_term)


def test_hinge_real_term_active_below_margin() -> None:
    close(L.discriminator_adv_losses("hinge", *[torch.full((1, 1, 2, 2), 0.25)] * 4)["real"], 0.75)


def test_unknown_gan_type_lists_valid_names() -> None:
    for call in (
        lambda: L.generator_adv_loss("wgan", torch.zeros(1)),
        lambda: L.discriminator_adv_losses("wgan", *[torch.zeros(1)] * 4),
        lambda: L.gradient_penalty(lambda x: x, torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), "wgan", 1.0),
    ):
        with pytest.raises(ValueError) as err:
            call()
        for name in GAN_TYPES:
            assert name in str(err.value)
        assert "'wgan'" in str(err.value)


# ---------------------------------------------------------------- gradient penalty

class LinearD(nn.Module):
    """D(x) = w ⊙ x as a logit map; its summed gradient w.r.t. x is w for every sample."""

    def __init__(self, value: float, shape: tuple[int, ...] = (1, 1, 2, 2)) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full(shape, value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


def _pair(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(batch, 1, 2, 2, generator=g), torch.rand(batch, 1, 2, 2, generator=g)


@pytest.mark.parametrize("gan_type", ["lsgan", "gan", "hinge"])
def test_penalty_is_zero_without_gp(gan_type: str) -> None:
    real, fake = _pair()
    close(L.gradient_penalty(LinearD(1.0), real, fake, gan_type, 10.0), 0.0)


@pytest.mark.parametrize("gan_type", ["wgan-gp", "dragan"])
def test_two_sided_penalty_linear_d(gan_type: str) -> None:
    real, fake = _pair()
    # w = 1 on 4 elements: ‖w‖ = 2 -> 10·(2-1)² = 10
    close(L.gradient_penalty(LinearD(1.0), real, fake, gan_type, 10.0), 10.0, tol=1e-5)
    # w = 0.25: ‖w‖ = 0.5 -> 10·(0.5-1)² = 2.5 (two-sided penalises small gradients too)
    close(L.gradient_penalty(LinearD(0.25), real, fake, gan_type, 10.0), 2.5, tol=1e-5)


def test_one_sided_penalty_linear_d() -> None:
    real, fake = _pair()
    close(L.gradient_penalty(LinearD(1.0), real, fake, "wgan-lp", 10.0), 10.0, tol=1e-5)  # ‖w‖=2
    close(L.gradient_penalty(LinearD(0.25), real, fake, "wgan-lp", 10.0), 0.0)  # ‖w‖=0.5 < 1


def test_penalty_trains_d_parameters() -> None:
    d = LinearD(1.0)
    real, fake = _pair()
    L.gradient_penalty(d, real, fake, "wgan-gp", 10.0).backward()
    # GP = λ(‖w‖-1)², dGP/dw = λ·2(‖w‖-1)·w/‖w‖ = 10·2·1·1/2 = 10 per element
    torch.testing.assert_close(d.w.grad, torch.full((1, 1, 2, 2), 10.0))


def test_penalty_does_not_reach_inputs() -> None:
    real, fake = _pair()
    fake.requires_grad_(True)
    L.gradient_penalty(LinearD(1.0), real, fake, "wgan-gp", 10.0).backward()
    assert fake.grad is None  # the penalty trains D only, never G


class HalfSquareD(nn.Module):
    """D(x) = 0.5·x² as a logit map: the summed gradient is x̂ itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * x


def test_dragan_perturbation_vanishes_for_constant_real() -> None:
    # std(real) = 0 -> perturbed fake = real -> x̂ = real = 1 everywhere; ∇ = x̂, ‖∇‖ = √4 = 2
    # GP = 10·(2-1)² = 10, whatever α and u are drawn
    real = torch.ones(2, 1, 2, 2)
    close(L.gradient_penalty(HalfSquareD(), real, torch.zeros_like(real), "dragan", 10.0), 10.0, tol=1e-5)


def test_penalty_alpha_is_per_sample_and_seedable() -> None:
    # real = 0, fake = 1 (one element): x̂_b = α_b, ∇ = α_b, GP = λ·mean((α_b-1)²) ∈ [0, λ]
    real, fake = torch.zeros(64, 1, 1, 1), torch.ones(64, 1, 1, 1)

    def gp(seed: int) -> torch.Tensor:
        return L.gradient_penalty(HalfSquareD(), real, fake, "wgan-gp", 1.0, torch.Generator().manual_seed(seed))

    assert gp(3).item() == gp(3).item()
    assert gp(3).item() != gp(4).item()
    # α ~ U[0,1] per sample: E[(α-1)²] = 1/3; with 64 samples the mean stays well inside (0.15, 0.55)
    assert 0.15 < gp(3).item() < 0.55


# ---------------------------------------------------------------- autocast

def test_gram_float32_under_autocast() -> None:
    feat = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0)) * 300
    ref = L.gram(feat)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = L.gram(feat)
        got_bf16_in = L.gram(feat.bfloat16())
    assert got.dtype == got_bf16_in.dtype == torch.float32
    torch.testing.assert_close(got, ref)  # a bf16 bmm is off by ~3e-3 of the largest entry here
    torch.testing.assert_close(got_bf16_in, L.gram(feat.bfloat16().float()))


def test_all_losses_float32_under_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1).bfloat16(), (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1)
    conv = nn.Conv2d(3, 1, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = [L.content_loss(a, b), L.style_loss(a, b), L.color_loss(a, b), L.color_loss(a, b, "255"),
               L.tv_loss(a), L.generator_adv_loss("gan", conv(b)),
               *L.discriminator_adv_losses("lsgan", a, a, b, b).values(),
               L.gradient_penalty(conv, a, b, "wgan-gp", 10.0)]
    for x in out:
        assert x.dtype == torch.float32 and x.shape == () and torch.isfinite(x)
    out[-1].backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
