"""AnimeGAN losses (reference §1.5, §1.6, §2 TV, §4.3) on NCHW tensors, images in [-1, 1].

Every function returns a float32 scalar even when called under `torch.autocast`: inputs in half
precision are upcast and matmuls run with autocast disabled, because Gram entries and 0-255 YUV
differences are squared and lose too much (fp16 overflows, bf16 keeps ~3 significant digits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# tf.image.rgb_to_yuv: YUV = RGB @ M (rows R, G, B in; columns Y, U, V out), no offset.
YUV_MATRIX: tuple[tuple[float, float, float], ...] = (
    (0.299, -0.14714119, 0.61497538),
    (0.587, -0.28886916, -0.51496512),
    (0.114, 0.43601035, -0.10001026),
)
COLOR_SCALES: tuple[str, ...] = ("unit", "255")


def _f32(x: Tensor) -> Tensor:
    # Keep float64 (gradcheck, hand tests); lift fp16/bf16 so reductions do not lose precision.
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _no_autocast(x: Tensor) -> torch.autocast:
    # Autocast would push matmul/bmm back down to half precision even on float32 inputs.
    return torch.autocast(device_type=x.device.type, enabled=False)


def _check_4d(name: str, x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected an NCHW tensor, got shape {tuple(x.shape)}")


def gram(feat: Tensor) -> Tensor:
    """Per-sample Gram matrix: G[b] = X_b X_bᵀ / (C·H·W) with X_b = feat[b] viewed as [C, H·W].

    [B, C, H, W] -> [B, C, C], always computed in float32 (TF: XᵀX / (H·W·C) on [HW, C]).
    """
    _check_4d("gram", feat)
    b, c, h, w = feat.shape
    with _no_autocast(feat):
        x = _f32(feat).reshape(b, c, h * w)
        return torch.bmm(x, x.transpose(1, 2)) / (c * h * w)


def content_loss(feat_real: Tensor, feat_fake: Tensor) -> Tensor:
    """con = mean|F(p) − F(G(p))| (L1, mean over all elements)."""
    if feat_real.shape != feat_fake.shape:  # F.l1_loss would silently broadcast
        raise ValueError(f"content_loss: shapes differ {tuple(feat_real.shape)} vs {tuple(feat_fake.shape)}")
    return F.l1_loss(_f32(feat_fake), _f32(feat_real))


def style_loss(feat_style: Tensor, feat_fake: Tensor) -> Tensor:
    """sty = mean|gram(F(g)) − gram(F(G(p)))| (L1 between per-sample Grams).

    Anime and photo batches come from independent streams, so their sizes may differ (e.g. the last
    batch of the shorter stream). Fake sample i is then compared with style sample i mod B_style;
    with equal batch sizes this is the plain element-wise pairing.
    """
    g_style, g_fake = gram(feat_style), gram(feat_fake)
    if g_style.shape[1:] != g_fake.shape[1:]:
        raise ValueError(f"style_loss: channel counts differ {g_style.shape[1]} vs {g_fake.shape[1]}")
    if g_style.shape[0] != g_fake.shape[0]:
        idx = torch.arange(g_fake.shape[0], device=g_fake.device) % g_style.shape[0]
        g_style = g_style[idx]
    return F.l1_loss(g_fake, g_style)


def rgb_to_yuv(img: Tensor, scale: str = "unit") -> Tensor:
    """YUV = RGB' · M per pixel, [B, 3, H, W] -> [B, 3, H, W] with channels (Y, U, V).

    scale "unit": RGB' = (x + 1) / 2 ∈ [0, 1] (official).
    scale "255":  RGB' = x·127.5 + 127.5 ∈ [0, 255] (the write-up's defect, §4.3).
    """
    _check_4d("rgb_to_yuv", img)
    if img.shape[1] != 3:
        raise ValueError(f"rgb_to_yuv: expected 3 channels, got {img.shape[1]}")
    if scale == "unit":
        rgb = (_f32(img) + 1.0) / 2.0
    elif scale == "255":
        rgb = _f32(img) * 127.5 + 127.5
    else:
        raise ValueError(f"rgb_to_yuv: unknown scale {scale!r}; valid: {', '.join(COLOR_SCALES)}")
    m = torch.tensor(YUV_MATRIX, dtype=rgb.dtype, device=rgb.device)
    with _no_autocast(img):
        # out[b, j] = Σ_i rgb[b, i] · M[i, j]
        return torch.einsum("bihw,ij->bjhw", rgb, m)


def color_loss(real: Tensor, fake: Tensor, scale: str = "unit") -> Tensor:
    """col = mean|Y_p − Y_G| + Huber₁(U_p, U_G) + Huber₁(V_p, V_G).

    Huber_δ(e) = 0.5e² if |e| ≤ δ else δ(|e| − 0.5δ), δ = 1, mean reduction (tf.losses.huber_loss).
    """
    yuv_r, yuv_f = rgb_to_yuv(real, scale), rgb_to_yuv(fake, scale)
    y = F.l1_loss(yuv_f[:, 0], yuv_r[:, 0])
    u = F.huber_loss(yuv_f[:, 1], yuv_r[:, 1], delta=1.0)
    v = F.huber_loss(yuv_f[:, 2], yuv_r[:, 2], delta=1.0)
    return y + u + v


def tv_loss(img: Tensor) -> Tensor:
    """tv = 0.5·mean(dh²) + 0.5·mean(dw²), dh/dw = neighbour differences along H/W (AnimeGANv2).

    The 0.5 comes from TF's l2_loss(x) = Σx²/2, divided by each difference tensor's size.
    """
    _check_4d("tv_loss", img)
    if img.shape[2] < 2 or img.shape[3] < 2:
        raise ValueError(f"tv_loss: needs H, W >= 2, got shape {tuple(img.shape)}")
    x = _f32(img)
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    return 0.5 * dh.pow(2).mean() + 0.5 * dw.pow(2).mean()


class AdvLoss(NamedTuple):
    """One gan_type: G's term, D's real term, D's term for fake/gray/smooth, and its penalty."""

    generator: Callable[[Tensor], Tensor]  # on D(G(p))
    real: Callable[[Tensor], Tensor]  # on D(a)
    other: Callable[[Tensor], Tensor]  # on D(x), x ∈ {G(p), gray, smooth}
    penalty: str | None  # None, "two-sided" (‖∇‖−1)² or "one-sided" max(0, ‖∇‖−1)²
    perturb_real: bool  # dragan: interpolate towards a perturbed real instead of the fake


def _bce(d: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(d, torch.full_like(d, target))


def _neg_mean(d: Tensor) -> Tensor:
    return -d.mean()


GAN_LOSSES: dict[str, AdvLoss] = {
    "lsgan": AdvLoss(lambda d: (d - 1).pow(2).mean(), lambda d: (d - 1).pow(2).mean(),
                     lambda d: d.pow(2).mean(), None, False),
    "gan": AdvLoss(lambda d: _bce(d, 1.0), lambda d: _bce(d, 1.0), lambda d: _bce(d, 0.0), None, False),
    "hinge": AdvLoss(_neg_mean, lambda d: F.relu(1 - d).mean(), lambda d: F.relu(1 + d).mean(), None, False),
    "wgan-gp": AdvLoss(_neg_mean, _neg_mean, lambda d: d.mean(), "two-sided", False),
    "wgan-lp": AdvLoss(_neg_mean, _neg_mean, lambda d: d.mean(), "one-sided", False),
    "dragan": AdvLoss(lambda d: _bce(d, 1.0), lambda d: _bce(d, 1.0), lambda d: _bce(d, 0.0), "two-sided", True),
}


def _lookup(gan_type: str) -> AdvLoss:
    try:
        return GAN_LOSSES[gan_type]
    except KeyError:
        raise ValueError(f"unknown gan_type {gan_type!r}; valid: {', '.join(GAN_LOSSES)}") from None


def generator_adv_loss(gan_type: str, d_fake: Tensor) -> Tensor:
    """G's adversarial term on D(G(p)): lsgan mean((d−1)²); gan/dragan BCE-with-logits(d, 1);
    hinge/wgan-gp/wgan-lp −mean(d)."""
    return _lookup(gan_type).generator(_f32(d_fake))


def discriminator_adv_losses(
    gan_type: str, d_real: Tensor, d_gray: Tensor, d_fake: Tensor, d_smooth: Tensor
) -> dict[str, Tensor]:
    """D's four unweighted terms {"real", "gray", "fake", "smooth"}.

    real: lsgan mean((d−1)²), gan/dragan BCE(d, 1), hinge mean(relu(1−d)), wgan-* −mean(d).
    others: lsgan mean(d²), gan/dragan BCE(d, 0), hinge mean(relu(1+d)), wgan-* mean(d).
    Weighting (v1 1/1/1/0.1, v2 1.7/1.7/1.7/1.0, ×d_adv) is the caller's job.
    """
    spec = _lookup(gan_type)
    return {
        "real": spec.real(_f32(d_real)),
        "gray": spec.other(_f32(d_gray)),
        "fake": spec.other(_f32(d_fake)),
        "smooth": spec.other(_f32(d_smooth)),
    }


def gradient_penalty(
    discriminator: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    gan_type: str,
    weight: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gradient penalty for D (not multiplied by d_adv).

    lsgan/gan/hinge: 0. wgan-gp, dragan: weight·mean((‖∇D(x̂)‖₂ − 1)²).
    wgan-lp: weight·mean(max(0, ‖∇D(x̂)‖₂ − 1)²).
    x̂ = real + α(fake − real), α ~ U[0,1] per sample. dragan first sets
    fake = real + 0.5·std(real)·u, u ~ U[0,1] elementwise, std (population) over the whole batch.
    ∇ is the gradient of the summed logit map (tf.gradients semantics), its norm per sample over
    the flattened gradient. create_graph=True, so backward() reaches D's parameters.
    Draws use `generator` (on real's device) when given. Under fp16 autocast the inner gradient is
    unscaled and may underflow; bf16 or float32 is safe.
    """
    x_hat = penalty_points(real, fake, gan_type, generator)
    if x_hat is None:
        return torch.zeros((), device=real.device, dtype=torch.float32)
    logits = discriminator(x_hat)
    (grad,) = torch.autograd.grad(_f32(logits).sum(), x_hat, create_graph=True)
    return penalty_from_gradient(grad, gan_type, weight)


def penalty_points(real: Tensor, fake: Tensor, gan_type: str,
                   generator: torch.Generator | None = None) -> Tensor | None:
    """The points x̂ [B, 3, H, W] (requiring grad) where `gradient_penalty` evaluates ∇D; None for the
    gan types without a penalty (no draws then). Split out so that a fused array of trials can run one D
    pass over every member's x̂ and hand each member's slice of the gradient to `penalty_from_gradient`."""
    spec = _lookup(gan_type)
    if spec.penalty is None:
        return None
    # The penalty trains D only: cut the graph back to G and the data pipeline.
    real = _f32(real.detach())
    fake = _f32(fake.detach())
    if spec.perturb_real:
        u = torch.rand(real.shape, generator=generator, device=real.device, dtype=real.dtype)
        fake = real + 0.5 * real.std(correction=0) * u  # tf.nn.moments variance is the population one
    if fake.shape != real.shape:
        raise ValueError(f"gradient_penalty: shapes differ {tuple(real.shape)} vs {tuple(fake.shape)}")
    alpha_shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    alpha = torch.rand(alpha_shape, generator=generator, device=real.device, dtype=real.dtype)
    return (real + alpha * (fake - real)).requires_grad_(True)


def penalty_from_gradient(grad: Tensor, gan_type: str, weight: float) -> Tensor:
    """weight·mean(excess²) of the per-sample gradient norms, grad [B, ...] = ∇D at `penalty_points`."""
    norm = _f32(grad).flatten(1).norm(dim=1)
    excess = norm - 1.0
    if _lookup(gan_type).penalty == "one-sided":
        excess = F.relu(excess)
    return weight * excess.pow(2).mean()


def discriminator_pair_losses(gan_type: str, d_real: Tensor, d_fake: Tensor) -> dict[str, Tensor]:
    """A discriminator's two unweighted terms {"real", "fake"} (the cycle objectives' photo discriminator, and
    CycleGAN's both): the same formulas as `discriminator_adv_losses`' real and fake terms."""
    spec = _lookup(gan_type)
    return {"real": spec.real(_f32(d_real)), "fake": spec.other(_f32(d_fake))}


def cycle_loss(real_photo: Tensor, rec_photo: Tensor, real_anime: Tensor, rec_anime: Tensor) -> Tensor:
    """CycleGAN's cycle-consistency term, both directions: mean|F(G(p)) − p| + mean|G(F(a)) − a|."""
    return (_f32(rec_photo) - _f32(real_photo)).abs().mean() + (_f32(rec_anime) - _f32(real_anime)).abs().mean()


def identity_loss(real_anime: Tensor, same_anime: Tensor, real_photo: Tensor, same_photo: Tensor) -> Tensor:
    """CycleGAN's identity term: each generator fed its own target domain changes nothing,
    mean|G(a) − a| + mean|F(p) − p|."""
    return (_f32(same_anime) - _f32(real_anime)).abs().mean() + (_f32(same_photo) - _f32(real_photo)).abs().mean()
