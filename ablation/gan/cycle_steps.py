"""One GAN step of an array of trials trained for a cycle objective (`model.objective`):

- "animegan+cycle": the AnimeGAN losses on photo -> anime (gan/steps.py), plus an anime -> photo generator F of
  G's architecture, a photo discriminator of D's, F's adversarial term (weight `g_adv_weight`, the photo D's
  terms `d_adv_weight`), the cycle L1 in both directions (`cycle_weight`) and the identity L1
  (`identity_weight`).
- "cyclegan": Zhu et al. 2017's objective on the same networks: each generator's adversarial term (weight 1),
  each discriminator's (real + fake) / 2 on a fake drawn from its image pool, cycle and identity L1.

Per GAN step G(p) and F(a) run once each: detached (through the member's image pools when `optim.pool_size`
> 0) they feed the D step, with their graphs the G step. As in gan/array_steps.py, members share no parameter,
one backward of the summed totals gives each member exactly its own gradients, and each member's forward runs
its own kernels ("looped") or the grouped ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ablation.data.streams import Batch
from ablation.gan import losses, steps
from ablation.gan.array_steps import (
    FusedModels,
    StepMember,
    Values,
    d_values,
    discriminate,
    fake_features,
    generate,
    penalties_of,
    update,
)
from ablation.gan.device import frozen
from ablation.gan.fused import FusedNet
from ablation.gan.steps import Targets


class ImagePool:
    """CycleGAN's history of generated images: until `size` are stored each new image is stored and returned;
    after that, with probability 1/2 a stored image is returned and the new one takes its place, else the new
    one is returned. Draws come from the member's own CPU generator (no device sync; part of its checkpoint)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.images: list[Tensor] = []  # each [1, 3, H, W], detached

    def query(self, images: Tensor, rng: torch.Generator) -> Tensor:
        """[N, 3, H, W] new fakes -> [N, 3, H, W] fakes for the discriminator."""
        if self.size == 0:
            return images
        out = []
        for image in images.detach().split(1):
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif torch.rand((), generator=rng).item() > 0.5:
                index = int(torch.randint(self.size, (), generator=rng))
                out.append(self.images[index])
                self.images[index] = image
            else:
                out.append(image)
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "images": list(self.images)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.size = state["size"]
        self.images = [image.to(device) for image in state["images"]]


class CycleMember(StepMember, Protocol):
    """What a cycle step needs of one member besides a fused step's."""

    cpu_rng: torch.Generator  # its image pools' draws
    pools: dict[str, ImagePool]  # "anime", "photo"; empty without a pool


def run_generators(fused: FusedNet, nets: Sequence[nn.Module], inputs: Sequence[Tensor]) -> list[Tensor]:
    """Networks of G's architecture, one input [B, 3, H, W] each: each member's own module when looped."""
    if fused.mode == "looped" or len(nets) == 1:
        return [net(x) for net, x in zip(nets, inputs, strict=True)]
    return fused(nets, inputs)


def _back(members: Sequence[CycleMember]) -> list[nn.Module]:
    return [m.models.generator_back for m in members]  # type: ignore[misc]  # set for every cycle objective


def _photo_d(members: Sequence[CycleMember]) -> list[nn.Module]:
    return [m.models.discriminator_photo for m in members]  # type: ignore[misc]


def gan_step(models: FusedModels, members: Sequence[CycleMember], batches: Sequence[Batch],
             targets: Sequence[Targets | None], d_due: Sequence[bool]) -> list[Values]:
    """One D step (both discriminators) for the members whose D is due, then one G step (both generators)."""
    fake_anime = generate(models, members, batches)  # K x G(p) [B, 3, H, W], with graph
    fake_photo = run_generators(models.generator, _back(members), [b.anime for b in batches])  # K x F(a)
    out: list[Values] = [{} for _ in members]
    rows = [i for i, due in enumerate(d_due) if due]
    if rows:
        d_values = _d_step(models, [members[i] for i in rows], [batches[i] for i in rows],
                           [fake_anime[i].detach() for i in rows], [fake_photo[i].detach() for i in rows])
        for i, values in zip(rows, d_values, strict=True):
            out[i].update(values)
    for i, values in enumerate(_g_step(models, members, batches, targets, fake_anime, fake_photo)):
        out[i].update(values)
    return out


def _pair(models: FusedModels, members: Sequence[CycleMember], reals: Sequence[Tensor], fakes: Sequence[Tensor],
          nets: Sequence[nn.Module] | None, scale: float, weights: Sequence[float]) -> list[dict[str, Tensor]]:
    """A discriminator's terms on (real, fake) for each member: one pass over both, then its penalty;
    total = weight · scale · (real + fake) + penalty."""
    n = fakes[0].shape[0]
    logits = discriminate(models, members, [torch.cat([r, f]) for r, f in zip(reals, fakes, strict=True)], nets)
    terms = [losses.discriminator_pair_losses(m.config.loss.gan_type, *logit.split(n))
             for m, logit in zip(members, logits, strict=True)]
    penalties = penalties_of(models, members, reals, fakes, nets)
    return [{**t, "gp": gp, "total": weight * scale * (t["real"] + t["fake"]) + gp}
            for t, gp, weight in zip(terms, penalties, weights, strict=True)]


def _d_step(models: FusedModels, members: Sequence[CycleMember], batches: Sequence[Batch],
            fake_anime: Sequence[Tensor], fake_photo: Sequence[Tensor]) -> list[Values]:
    """One update of both discriminators of each member, on its detached (pooled) fakes."""
    fake_anime = [m.pools["anime"].query(f, m.cpu_rng) if m.pools else f
                  for m, f in zip(members, fake_anime, strict=True)]
    fake_photo = [m.pools["photo"].query(f, m.cpu_rng) if m.pools else f
                  for m, f in zip(members, fake_photo, strict=True)]
    if members[0].config.model.objective == "cyclegan":  # the objective is shared by an array (model.*)
        anime_values = _pair(models, members, [b.anime for b in batches], fake_anime, None, 0.5,
                             [1.0] * len(members))
        photo_values = _pair(models, members, [b.real_photo for b in batches], fake_photo, _photo_d(members), 0.5,
                             [1.0] * len(members))
    else:  # AnimeGAN's D on its four inputs, as gan/array_steps.py
        anime_values = d_values(models, members, batches, fake_anime)
        photo_values = _pair(models, members, [b.real_photo for b in batches], fake_photo, _photo_d(members), 1.0,
                             [m.config.loss.d_adv_weight for m in members])
    update(members, "opt_d", [{"total": a["total"] + p["total"]} for a, p in zip(anime_values, photo_values,
                                                                                 strict=True)])
    return [{**steps.logged("d", a), **steps.logged("d_photo", p)}
            for a, p in zip(anime_values, photo_values, strict=True)]


def _g_step(models: FusedModels, members: Sequence[CycleMember], batches: Sequence[Batch],
            targets: Sequence[Targets | None], fake_anime: Sequence[Tensor], fake_photo: Sequence[Tensor]
            ) -> list[Values]:
    """One update of both generators of each member; the discriminators get no gradients."""
    cyclegan = members[0].config.model.objective == "cyclegan"
    real_photo, anime = [b.real_photo for b in batches], [b.anime for b in batches]
    backs = _back(members)
    rec_photo = run_generators(models.generator, backs, fake_anime)  # F(G(p))
    rec_anime = run_generators(models.generator, [m.models.generator for m in members], fake_photo)  # G(F(a))
    # identity terms only for the members that weigh them (identity_weight may be a study axis)
    same = [i for i, m in enumerate(members) if m.config.loss.identity_weight > 0]
    same_anime = dict(zip(same, run_generators(models.generator, [members[i].models.generator for i in same],
                                               [anime[i] for i in same]), strict=True)) if same else {}
    same_photo = dict(zip(same, run_generators(models.generator, [backs[i] for i in same],
                                               [real_photo[i] for i in same]), strict=True)) if same else {}
    feat_fake = None if cyclegan else fake_features(models, members, fake_anime)
    with contextlib.ExitStack() as stack:
        for m in members:
            stack.enter_context(frozen(m.models.discriminator))
            stack.enter_context(frozen(m.models.discriminator_photo))  # type: ignore[arg-type]
        d_fake = discriminate(models, members, fake_anime)
        d_fake_photo = discriminate(models, members, fake_photo, _photo_d(members))
    values = []
    for i, m in enumerate(members):
        lc = m.config.loss
        cycle = losses.cycle_loss(real_photo[i], rec_photo[i], anime[i], rec_anime[i])
        identity = (losses.identity_loss(anime[i], same_anime[i], real_photo[i], same_photo[i]) if i in same_anime
                    else torch.zeros((), device=cycle.device))
        adv_photo = losses.generator_adv_loss(lc.gan_type, d_fake_photo[i])
        extra = {"adv_photo": adv_photo, "cycle": cycle, "identity": identity}
        if cyclegan:
            adv = losses.generator_adv_loss(lc.gan_type, d_fake[i])
            total = adv + adv_photo + lc.cycle_weight * cycle + lc.identity_weight * identity
            values.append({"adv": adv, **extra, "total": total})
        else:
            terms = steps.g_terms(m.config, real_photo[i], fake_anime[i], targets[i], feat_fake[i])  # type: ignore[arg-type,index]
            anime_values = steps.g_losses(m.config, terms, d_fake[i])
            total = (anime_values["total"] + lc.g_adv_weight * adv_photo + lc.cycle_weight * cycle
                     + lc.identity_weight * identity)
            values.append({**anime_values, **extra, "total": total})
    update(members, "opt_g", values)
    return [steps.logged("g", v) for v in values]
