"""One training step's parts: the backbone targets, each trial's losses, and one trial's update.

`compute_targets` depends only on the batch and the frozen backbone (shared by every trial that uses the
same batch and backbone); `init_losses`, `d_losses` and `g_losses` are one trial's loss formulas on given
tensors, used both by the one-trial steps below and by the fused array steps (gan/array_steps.py).
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
    # [B, C, H/8, W/8] features of the style target (gray or colour anime); None in the init phase, whose
    # content-only loss never reads it
    feat_style: torch.Tensor | None


@dataclass
class TrialModels:
    generator: nn.Module  # photo -> anime
    discriminator: nn.Module  # anime domain
    opt_init: torch.optim.Optimizer
    opt_g: torch.optim.Optimizer  # G's parameters (and generator_back's)
    opt_d: torch.optim.Optimizer  # D's parameters (and discriminator_photo's)
    # the cycle objectives' anime -> photo generator and photo-domain discriminator; None for "animegan"
    generator_back: nn.Module | None = None
    discriminator_photo: nn.Module | None = None


def build_optimizers(generator: nn.Module, discriminator: nn.Module, config: TrainConfig,
                     generator_back: nn.Module | None = None, discriminator_photo: nn.Module | None = None
                     ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, torch.optim.Optimizer]:
    """Three Adams as the original: init (content only) and G share G's params but not moments. The cycle
    objectives' second generator and discriminator join G's and D's Adam, as CycleGAN's one Adam over both
    generators (Adam is per parameter: the same as one Adam each)."""
    betas = (config.optim.beta1, config.optim.beta2)
    g_params = [*generator.parameters(), *(generator_back.parameters() if generator_back is not None else [])]
    d_params = [*discriminator.parameters(),
                *(discriminator_photo.parameters() if discriminator_photo is not None else [])]
    opt_init = torch.optim.Adam(generator.parameters(), lr=config.optim.init_lr, betas=betas)
    opt_g = torch.optim.Adam(g_params, lr=config.optim.g_lr, betas=betas)
    opt_d = torch.optim.Adam(d_params, lr=config.optim.d_lr, betas=betas)
    return opt_init, opt_g, opt_d


def decay_factor(config: TrainConfig, gan_step: int, gan_steps: int) -> float:
    """G's and D's learning-rate factor at 0-based GAN step `gan_step` of `gan_steps`: 1, or with
    `optim.lr_decay: linear` CycleGAN's schedule per step: constant over the first half, then falling linearly
    to 1/(n+1) of the rate at the last of the n decaying steps."""
    if config.optim.lr_decay == "none":
        return 1.0
    constant = gan_steps // 2
    return 1.0 - max(0, gan_step - constant + 1) / (gan_steps - constant + 1)


def set_gan_lr(models: TrialModels, config: TrainConfig, gan_step: int, gan_steps: int) -> None:
    """Set G's and D's rates for this step from the step alone, so a resumed run sets what it would have."""
    factor = decay_factor(config, gan_step, gan_steps)
    for opt, base in ((models.opt_g, config.optim.g_lr), (models.opt_d, config.optim.d_lr)):
        for group in opt.param_groups:
            group["lr"] = base * factor


@torch.no_grad()
def compute_targets(backbone: nn.Module, batch: Batch, style_target: str, *, need_style: bool = True) -> Targets:
    """The real images' features. `need_style=False` (the init phase) skips the style pass: the init step
    needs two backbone passes (photo, fake), not three."""
    feat_photo = backbone(batch.real_photo)
    if not need_style:
        return Targets(feat_photo=feat_photo, feat_style=None)
    style_image = batch.anime_gray if style_target == "gray" else batch.anime
    return Targets(feat_photo=feat_photo, feat_style=backbone(style_image))


def init_losses(config: TrainConfig, real_photo: torch.Tensor, fake_anime: torch.Tensor, feat_photo: torch.Tensor,
                feat_fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """The init phase's content loss of one trial (+ the colour loss when `loss.init_color_weight` > 0, a demo
    deviation); "total" is what it backpropagates."""
    lc = config.loss
    content = losses.content_loss(feat_photo, feat_fake)
    if lc.init_color_weight == 0:
        return {"content": content, "total": lc.content_weight * content}
    color = losses.color_loss(real_photo, fake_anime, "unit")
    return {"content": content, "color": color,
            "total": lc.content_weight * content + lc.init_color_weight * color}


# The loss formulas below are split where the one-trial step runs D: each trial's graph is then built in the
# one-trial order (D's terms before its penalty; G's backbone terms before D(G(p))), so its gradients are summed
# in the same order and a trial trained in an array is bit for bit the trial trained alone (gan/fused.py).


def d_terms(config: TrainConfig, d_out: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """D's four raw terms from its logits [4B, 1, h, w] on (anime, G(p), gray anime, smooth anime)."""
    d_real, d_fake, d_gray, d_smooth = d_out.split(n)  # the order of `d_step`'s input
    return losses.discriminator_adv_losses(config.loss.gan_type, d_real, d_gray, d_fake, d_smooth)


def d_losses(config: TrainConfig, terms: dict[str, torch.Tensor], gp: torch.Tensor) -> dict[str, torch.Tensor]:
    """D's raw terms, its penalty and its weighted "total" for one trial."""
    lc = config.loss
    weights = lc.d_weights
    adv = (weights.real * terms["real"] + weights.fake * terms["fake"] + weights.gray * terms["gray"]
           + weights.smooth * terms["smooth"])
    return {**terms, "gp": gp, "total": lc.d_adv_weight * adv + gp}  # the original does not scale GP by d_adv


def g_terms(config: TrainConfig, real_photo: torch.Tensor, fake_anime: torch.Tensor, targets: Targets,
            feat_fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """G's raw terms that need no D: its photo, its G(p), the backbone features of both and of its style target."""
    lc = config.loss
    if targets.feat_style is None:
        raise ValueError("g_terms: targets have no style features; compute them with need_style=True")
    content = losses.content_loss(targets.feat_photo, feat_fake)
    style = losses.style_loss(targets.feat_style, feat_fake)
    color = losses.color_loss(real_photo, fake_anime, lc.color_scale)
    tv = losses.tv_loss(fake_anime) if lc.tv_weight > 0 else torch.zeros((), device=fake_anime.device)
    return {"content": content, "style": style, "color": color, "tv": tv}


def g_losses(config: TrainConfig, terms: dict[str, torch.Tensor], d_fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """G's adversarial term on D's logits on G(p), its `g_terms` and its weighted "total" for one trial."""
    lc = config.loss
    adv = losses.generator_adv_loss(lc.gan_type, d_fake)
    # color_count=2 reproduces the write-up's `col + con + sty + col + adv`
    total = (lc.g_adv_weight * adv + lc.content_weight * terms["content"] + lc.style_weight * terms["style"]
             + lc.color_count * lc.color_weight * terms["color"] + lc.tv_weight * terms["tv"])
    return {"adv": adv, **terms, "total": total}


def logged(prefix: str, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"content": t} -> {"loss/init/content": t.detach()}: what the metric window sums."""
    return {f"loss/{prefix}/{name}": value.detach() for name, value in values.items()}


def learning_rates(models: TrialModels, init_phase: bool) -> dict[str, float]:
    """The learning rates of the optimisers that step in this phase, for the log."""
    if init_phase:
        return {"lr/init": models.opt_init.param_groups[0]["lr"]}
    return {"lr/g": models.opt_g.param_groups[0]["lr"], "lr/d": models.opt_d.param_groups[0]["lr"]}


# One trial's steps on its own modules (benchmarks/train_step.py); training runs the fused steps of
# gan/array_steps.py, which compute the same losses above for any number of trials.


def init_step(models: TrialModels, backbone: nn.Module, batch: Batch, targets: Targets,
              config: TrainConfig) -> dict[str, torch.Tensor]:
    """Content pre-training of G (the original's init phase)."""
    fake_anime = models.generator(batch.real_photo)
    values = init_losses(config, batch.real_photo, fake_anime, targets.feat_photo, backbone(fake_anime))
    models.opt_init.zero_grad(set_to_none=True)
    values["total"].backward()
    models.opt_init.step()
    return logged("init", values)


def d_step(models: TrialModels, batch: Batch, config: TrainConfig,
           fake_anime: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One D update on a detached G(p): pass the step's `fake_anime` to reuse it, else G runs here."""
    if fake_anime is None:
        with torch.no_grad():
            fake_anime = models.generator(batch.real_photo)
    fake_anime = fake_anime.detach()
    # one D forward over the four inputs: instance norm and patch logits are per sample, so this equals
    # four separate calls while running one kernel chain
    d_in = torch.cat([batch.anime, fake_anime, batch.anime_gray, batch.anime_smooth])  # [4B, 3, H, W]
    terms = d_terms(config, models.discriminator(d_in), fake_anime.shape[0])  # D(d_in): [4B, 1, H/4, W/4]
    gp = losses.gradient_penalty(models.discriminator, batch.anime, fake_anime, config.loss.gan_type,
                                 config.loss.gp_weight)
    values = d_losses(config, terms, gp)
    models.opt_d.zero_grad(set_to_none=True)
    values["total"].backward()
    models.opt_d.step()
    return logged("d", values)


def g_step(models: TrialModels, backbone: nn.Module, batch: Batch, targets: Targets, config: TrainConfig,
           fake_anime: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One G update; D's weights get no gradients (they would be discarded). `fake_anime`: the step's G(p)
    with its graph, shared with the D step (G's weights do not change in between), else G runs here."""
    if fake_anime is None:
        fake_anime = models.generator(batch.real_photo)
    terms = g_terms(config, batch.real_photo, fake_anime, targets, backbone(fake_anime))
    with frozen(models.discriminator):
        d_fake = models.discriminator(fake_anime)
    values = g_losses(config, terms, d_fake)
    models.opt_g.zero_grad(set_to_none=True)
    values["total"].backward()
    models.opt_g.step()
    return logged("g", values)
