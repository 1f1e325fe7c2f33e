"""One training step, split so that what cells sharing a seed have in common is computed once.

`compute_targets` depends only on the batch and the frozen backbone (shared by every cell that uses the
same seed and backbone); `init_step`, `d_step` and `g_step` are the per-trial update. A later batched
ensemble can call `compute_targets` once and the per-trial steps once per cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ablation.config import TrainConfig
from ablation.data.streams import Batch
from ablation.gan import losses
from ablation.gan.device import frozen


@dataclass
class Targets:
    """Backbone features of the real images, computed without autograd."""

    feat_photo: torch.Tensor  # [B, C, H/8, W/8] features of real_photo (content target)
    feat_style: torch.Tensor  # [B, C, H/8, W/8] features of the style target (gray or colour anime)


@dataclass
class TrialModels:
    generator: nn.Module
    discriminator: nn.Module
    opt_init: torch.optim.Optimizer
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def build_optimizers(generator: nn.Module, discriminator: nn.Module, config: TrainConfig) -> tuple[
    torch.optim.Optimizer, torch.optim.Optimizer, torch.optim.Optimizer
]:
    """Three Adams as the original: init (content only) and G share G's params but not moments."""
    betas = (config.optim.beta1, config.optim.beta2)
    opt_init = torch.optim.Adam(generator.parameters(), lr=config.optim.init_lr, betas=betas)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.optim.g_lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.optim.d_lr, betas=betas)
    return opt_init, opt_g, opt_d


@torch.no_grad()
def compute_targets(backbone: nn.Module, batch: Batch, style_target: str) -> Targets:
    style_image = batch.anime_gray if style_target == "gray" else batch.anime
    return Targets(feat_photo=backbone(batch.real_photo), feat_style=backbone(style_image))


def init_step(models: TrialModels, backbone: nn.Module, batch: Batch, targets: Targets,
              config: TrainConfig) -> dict[str, torch.Tensor]:
    """Content-only pre-training of G (the original's init phase)."""
    fake_anime = models.generator(batch.real_photo)
    content = losses.content_loss(targets.feat_photo, backbone(fake_anime))
    total = config.loss.content_weight * content
    models.opt_init.zero_grad(set_to_none=True)
    total.backward()
    models.opt_init.step()
    return {"loss/init/content": content.detach(), "loss/init/total": total.detach()}


def d_step(models: TrialModels, batch: Batch, config: TrainConfig) -> dict[str, torch.Tensor]:
    """One D update on a detached G(p): no graph through G, so no wasted G backward."""
    lc = config.loss
    with torch.no_grad():
        fake_anime = models.generator(batch.real_photo)
    n = batch.real_photo.shape[0]
    # one D forward over the four inputs: instance norm and patch logits are per sample, so this equals
    # four separate calls while running one kernel chain
    d_in = torch.cat([batch.anime, fake_anime, batch.anime_gray, batch.anime_smooth])  # [4B, 3, H, W]
    d_out = models.discriminator(d_in)  # [4B, 1, H/4, W/4]
    d_real, d_fake, d_gray, d_smooth = torch.split(d_out, [batch.anime.shape[0], n, batch.anime_gray.shape[0],
                                                           batch.anime_smooth.shape[0]])
    terms = losses.discriminator_adv_losses(lc.gan_type, d_real, d_gray, d_fake, d_smooth)
    gp = losses.gradient_penalty(models.discriminator, batch.anime, fake_anime, lc.gan_type, lc.gp_weight)
    weights = lc.d_weights
    adv = (weights.real * terms["real"] + weights.fake * terms["fake"] + weights.gray * terms["gray"]
           + weights.smooth * terms["smooth"])
    total = lc.d_adv_weight * adv + gp  # the original does not scale GP by d_adv
    models.opt_d.zero_grad(set_to_none=True)
    total.backward()
    models.opt_d.step()
    out = {f"loss/d/{name}": value.detach() for name, value in terms.items()}
    out["loss/d/gp"] = gp.detach()
    out["loss/d/total"] = total.detach()
    return out


def g_step(models: TrialModels, backbone: nn.Module, batch: Batch, targets: Targets,
           config: TrainConfig) -> dict[str, torch.Tensor]:
    """One G update on a fresh G(p); D's weights get no gradients (they would be discarded)."""
    lc = config.loss
    fake_anime = models.generator(batch.real_photo)
    feat_fake = backbone(fake_anime)
    content = losses.content_loss(targets.feat_photo, feat_fake)
    style = losses.style_loss(targets.feat_style, feat_fake)
    color = losses.color_loss(batch.real_photo, fake_anime, lc.color_scale)
    tv = losses.tv_loss(fake_anime) if lc.tv_weight > 0 else torch.zeros((), device=fake_anime.device)
    with frozen(models.discriminator):
        adv = losses.generator_adv_loss(lc.gan_type, models.discriminator(fake_anime))
    # color_count=2 reproduces the write-up's `col + con + sty + col + adv`
    total = (lc.g_adv_weight * adv + lc.content_weight * content + lc.style_weight * style
             + lc.color_count * lc.color_weight * color + lc.tv_weight * tv)
    models.opt_g.zero_grad(set_to_none=True)
    total.backward()
    models.opt_g.step()
    return {
        "loss/g/adv": adv.detach(), "loss/g/content": content.detach(), "loss/g/style": style.detach(),
        "loss/g/color": color.detach(), "loss/g/tv": tv.detach(), "loss/g/total": total.detach(),
    }
