"""One training step of an array of K trials: G and D through the array's FusedNets, the frozen backbone once
per distinct backbone over every member's images, each member's own losses (its gan_type, weights and
targets) on its own outputs, one backward, then each member's own Adam.

Members share no parameter and the summed loss has ∂total/∂total_k = 1, so each member's parameters receive
exactly its own loss's gradient. How G and D run (one grouped network, or each member's own kernels in turn)
is the FusedNet's mode: the step code below sees one tensor per member either way. Members that drew the same
images (same seed, same step) share the no-grad backbone features of their photo and style target. Per GAN
step G runs once: its output, detached, feeds the D step and, with its graph, the G step (G's weights do not
change in between).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from ablation.config import TrainConfig
from ablation.data.streams import Batch
from ablation.gan import losses, steps
from ablation.gan.device import frozen
from ablation.gan.fused import FusedNet
from ablation.gan.steps import Targets, TrialModels

Values = dict[str, Tensor]


class StepMember(Protocol):
    """What a fused step needs of one member."""

    config: TrainConfig
    models: TrialModels
    generator_forward: nn.Module  # models.generator, or its torch.compile'd wrapper (runs when K = 1)
    rng: torch.Generator  # its penalty and dropout draws, on the training device
    backbone_key: str  # which of the array's frozen backbones computes its content and style losses


@dataclass
class FusedModels:
    generator: FusedNet
    discriminator: FusedNet
    backbones: dict[str, nn.Module]  # backbone key -> frozen backbone


def _batch_cat(tensors: Sequence[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))


def targets_for(models: FusedModels, members: Sequence[StepMember], batches: Sequence[Batch],
                need_style: bool) -> list[Targets]:
    """Each member's `Targets`: one no-grad pass per backbone over the distinct photos and style targets.
    `need_style=False` (the init phase) leaves the style target out."""
    images: dict[tuple, Tensor] = {}  # (backbone key, what, which images) -> [B, 3, H, W]
    wanted: list[tuple[tuple, tuple | None]] = []
    for member, batch in zip(members, batches, strict=True):
        photo_key = (member.backbone_key, "photo", batch.photo_ids or id(batch.real_photo))
        images.setdefault(photo_key, batch.real_photo)
        style_key = None
        if need_style:
            target = member.config.loss.style_target
            style_image = batch.anime_gray if target == "gray" else batch.anime
            style_key = (member.backbone_key, "style", target, batch.anime_ids or id(style_image))
            images.setdefault(style_key, style_image)
        wanted.append((photo_key, style_key))
    features: dict[tuple, Tensor] = {}
    with torch.no_grad():
        for backbone_key, backbone in models.backbones.items():
            keys = [k for k in images if k[0] == backbone_key]
            if keys:
                out = backbone(_batch_cat([images[k] for k in keys]))  # [n·B, C, H/8, W/8]
                features.update(zip(keys, out.chunk(len(keys)), strict=True))
    return [Targets(feat_photo=features[p], feat_style=features[s] if s is not None else None) for p, s in wanted]


def generate(models: FusedModels, members: Sequence[StepMember], batches: Sequence[Batch]) -> list[Tensor]:
    """Every member's G(p) [B, 3, H, W], with its graph."""
    if models.generator.mode == "looped" or len(members) == 1:  # own modules: torch.compile where configured
        return [m.generator_forward(b.real_photo) for m, b in zip(members, batches, strict=True)]
    return models.generator([m.models.generator for m in members], [b.real_photo for b in batches])


def fake_features(models: FusedModels, members: Sequence[StepMember], fakes: Sequence[Tensor]) -> list[Tensor]:
    """Backbone features of each member's G(p) (with graph), one pass per backbone."""
    out: list[Tensor | None] = [None] * len(members)
    for backbone_key, backbone in models.backbones.items():
        rows = [i for i, m in enumerate(members) if m.backbone_key == backbone_key]
        if rows:
            feats = backbone(_batch_cat([fakes[i] for i in rows]))  # [n·B, C, H/8, W/8]
            for i, feat in zip(rows, feats.chunk(len(rows)), strict=True):
                out[i] = feat
    return out  # type: ignore[return-value]  # every member has a backbone in `models.backbones`


def update(members: Sequence[StepMember], optimizer: str, values: Sequence[Values]) -> None:
    """One backward of the summed totals, then each member's own optimiser steps."""
    optimizers = [getattr(m.models, optimizer) for m in members]
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    torch.stack([v["total"] for v in values]).sum().backward()
    for opt in optimizers:
        opt.step()


def init_step(models: FusedModels, members: Sequence[StepMember], batches: Sequence[Batch],
              targets: Sequence[Targets]) -> list[Values]:
    """Content pre-training of every member's G (the original's init phase)."""
    fakes = generate(models, members, batches)
    feat_fake = fake_features(models, members, fakes)
    values = [steps.init_losses(m.config, b.real_photo, fake, t.feat_photo, f)
              for m, b, fake, t, f in zip(members, batches, fakes, targets, feat_fake, strict=True)]
    update(members, "opt_init", values)
    return [steps.logged("init", v) for v in values]


def gan_step(models: FusedModels, members: Sequence[StepMember], batches: Sequence[Batch],
             targets: Sequence[Targets], d_due: Sequence[bool]) -> list[Values]:
    """One D step for the members whose D is due (every `g_steps_per_d` GAN steps), then one G step for all."""
    fakes = generate(models, members, batches)  # K x [B, 3, H, W], with G's graph
    out: list[Values] = [{} for _ in members]
    rows = [i for i, due in enumerate(d_due) if due]
    if rows:
        d_values = _d_step(models, [members[i] for i in rows], [batches[i] for i in rows],
                           [fakes[i].detach() for i in rows])
        for i, values in zip(rows, d_values, strict=True):
            out[i].update(values)
    for i, values in enumerate(_g_step(models, members, batches, targets, fakes)):
        out[i].update(values)
    return out


def discriminate(models: FusedModels, members: Sequence[StepMember], images: Sequence[Tensor],
                 nets: Sequence[nn.Module] | None = None) -> list[Tensor]:
    """K inputs [N, 3, H, W] -> K logit maps [N, 1, h, w], each member's own D (its dropout from its generator);
    `nets`: other discriminators of D's architecture, one per member (the cycle objectives' photo D)."""
    nets = nets if nets is not None else [m.models.discriminator for m in members]
    return models.discriminator(nets, images, [m.rng for m in members])


def d_values(models: FusedModels, members: Sequence[StepMember], batches: Sequence[Batch],
             fakes: Sequence[Tensor]) -> list[dict[str, Tensor]]:
    """Each member's D terms, penalty and "total" on its detached G(p) and its real images."""
    n = fakes[0].shape[0]
    # one D pass over the four inputs, as the one-trial step: each [4B, 3, H, W]
    d_in = [torch.cat([b.anime, f, b.anime_gray, b.anime_smooth]) for b, f in zip(batches, fakes, strict=True)]
    d_outs = discriminate(models, members, d_in)  # K x [4B, 1, h, w]
    terms = [steps.d_terms(m.config, d_out, n) for m, d_out in zip(members, d_outs, strict=True)]
    # after the terms, as in the one-trial step
    penalties = penalties_of(models, members, [b.anime for b in batches], fakes)
    return [steps.d_losses(m.config, t, gp) for m, t, gp in zip(members, terms, penalties, strict=True)]


def _d_step(models: FusedModels, members: Sequence[StepMember], batches: Sequence[Batch],
            fakes: Sequence[Tensor]) -> list[Values]:
    """One D update of each member on its detached G(p) and its real images."""
    values = d_values(models, members, batches, fakes)
    update(members, "opt_d", values)
    return [steps.logged("d", v) for v in values]


def penalties_of(models: FusedModels, members: Sequence[StepMember], reals: Sequence[Tensor],
                 fakes: Sequence[Tensor], nets: Sequence[nn.Module] | None = None) -> list[Tensor]:
    """Each member's gradient penalty (zero for gan types without one), one D pass over those that have one
    (`nets`: as in `discriminate`). Each member draws its interpolation from its own generator, as
    `losses.gradient_penalty` would."""
    points = [losses.penalty_points(real, f, m.config.loss.gan_type, m.rng)
              for m, real, f in zip(members, reals, fakes, strict=True)]
    out = [torch.zeros((), device=fakes[0].device, dtype=torch.float32) for _ in members]
    rows = [i for i, p in enumerate(points) if p is not None]
    if not rows:
        return out
    x_hat = [points[i] for i in rows]  # each [B, 3, H, W], requiring grad
    logits = discriminate(models, [members[i] for i in rows], x_hat,
                          [nets[i] for i in rows] if nets is not None else None)
    # members are independent: the gradient of the summed logits w.r.t. member k's x̂ is that of its own D
    grads = torch.autograd.grad(torch.stack([lg.float().sum() for lg in logits]).sum(), x_hat, create_graph=True)
    for i, grad in zip(rows, grads, strict=True):
        cfg = members[i].config.loss
        out[i] = losses.penalty_from_gradient(grad, cfg.gan_type, cfg.gp_weight)
    return out


def _g_step(models: FusedModels, members: Sequence[StepMember], batches: Sequence[Batch],
            targets: Sequence[Targets], fakes: Sequence[Tensor]) -> list[Values]:
    """One G update of each member; D's weights get no gradients (they would be discarded)."""
    feat_fake = fake_features(models, members, fakes)
    # D(G(p)) after the backbone terms, as in the one-trial step
    terms = [steps.g_terms(m.config, b.real_photo, fake, t, feat)
             for m, b, fake, t, feat in zip(members, batches, fakes, targets, feat_fake, strict=True)]
    with contextlib.ExitStack() as stack:
        for m in members:
            stack.enter_context(frozen(m.models.discriminator))
        d_fakes = discriminate(models, members, fakes)
    values = [steps.g_losses(m.config, t, d_fake) for m, t, d_fake in zip(members, terms, d_fakes, strict=True)]
    update(members, "opt_g", values)
    return [steps.logged("g", v) for v in values]
