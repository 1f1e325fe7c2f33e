"""Loss balance: how much each weighted term weighs in its network's loss and moves its parameters.

A loss weight acts only through the gradient its term sends into the network; a term holding 1e-12 of the
gradient cannot change the outcome at any weight a study tries. Two measures per term i of a network's loss
Σ_j w_j·L_j (reference loss_balance.md):

- value share  |w_i·L_i| / Σ_j |w_j·L_j|, from the logged raw terms, free, at every logged step;
- gradient share  ‖∂(w_i·L_i)/∂θ‖ / Σ_j ‖∂(w_j·L_j)/∂θ‖ over the network's parameters θ: one backward per term,
  so measured at a cadence (the trainer: first step of each phase, each evaluation, every `balance_every`
  epochs). The denominator is the sum of the norms, not the norm of the sum, so shares add to 1 even where
  terms oppose.

Logged as `balance/<phase>/<kind>/<term>` (phase init | g | d, kind value | grad). A measurement never changes
training: no optimiser state, no data, RNG forked, buffers (spectral-norm vectors) restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from ablation.config import TrainConfig
from ablation.data.streams import Batch
from ablation.gan import losses, steps
from ablation.gan.device import frozen

PHASE_TERMS: dict[str, tuple[str, ...]] = {"init": ("content", "color"),
                                          "g": ("adv", "content", "style", "color", "tv"),
                                          "d": ("real", "fake", "gray", "smooth", "gp")}
KINDS = ("value", "grad")


def metric_name(phase: str, kind: str, term: str) -> str:
    """`balance/g/grad/style`: one name family for every share, in code, MLflow and the report."""
    return f"balance/{phase}/{kind}/{term}"


def term_weights(config: TrainConfig, phase: str) -> dict[str, float]:
    """Each term's effective weight in the phase's optimised total (steps.init_losses, g_losses, d_losses)."""
    lc = config.loss
    if phase == "init":  # the colour term only where the init phase has it (a demo deviation)
        return {"content": lc.content_weight, **({"color": lc.init_color_weight} if lc.init_color_weight else {})}
    if phase == "g":
        return {"adv": lc.g_adv_weight, "content": lc.content_weight, "style": lc.style_weight,
                "color": lc.color_count * lc.color_weight, "tv": lc.tv_weight}
    if phase == "d":  # gp already carries gp_weight and is not scaled by d_adv_weight (as the original)
        dw = lc.d_weights
        return {"real": lc.d_adv_weight * dw.real, "fake": lc.d_adv_weight * dw.fake,
                "gray": lc.d_adv_weight * dw.gray, "smooth": lc.d_adv_weight * dw.smooth, "gp": 1.0}
    raise ValueError(f"unknown phase {phase!r}; valid: {', '.join(PHASE_TERMS)}")


def _normalised(sizes: Mapping[str, float]) -> dict[str, float]:
    total = sum(sizes.values())
    return {term: (size / total if total > 0 else 0.0) for term, size in sizes.items()}


def value_shares(config: TrainConfig, phase: str, raw: Mapping[str, float]) -> dict[str, float]:
    """|w_i·L_i| / Σ_j |w_j·L_j| from the raw term values (terms missing from `raw` are left out)."""
    weights = term_weights(config, phase)
    return _normalised({t: abs(w * float(raw[t])) for t, w in weights.items() if t in raw})


def grad_shares(weighted: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor]) -> dict[str, float]:
    """‖∂(weighted_i)/∂params‖₂ / Σ_j ‖∂(weighted_j)/∂params‖₂, one autograd.grad per term (the graph is kept
    for the next); a term without a path to the parameters (or weight 0) gets 0."""
    norms: dict[str, float] = {}
    for term, value in weighted.items():
        if not value.requires_grad:
            norms[term] = 0.0
            continue
        grads = torch.autograd.grad(value, list(params), retain_graph=True, allow_unused=True)
        squares = [g.float().pow(2).sum() for g in grads if g is not None]
        norms[term] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    return _normalised(norms)


@contextlib.contextmanager
def untouched(*modules: nn.Module) -> Iterator[None]:
    """Run a measurement as if it never happened: the RNG streams forked, every buffer (spectral norm's power-
    iteration vectors advance in a train-mode forward) restored afterwards."""
    saved = [[b.detach().clone() for b in m.buffers()] for m in modules]
    devices = sorted({b.device.index or 0 for m in modules for b in m.buffers() if b.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for module, copies in zip(modules, saved, strict=True):
                    for buffer, copy in zip(module.buffers(), copies, strict=True):
                        buffer.copy_(copy)


def measure(config: TrainConfig, models: steps.TrialModels, backbone: nn.Module, batch: Batch,
            in_init: bool) -> dict[str, float]:
    """Gradient shares of the trial's current phase on `batch` (the step's own): the init phase's terms on G,
    or G's and D's terms in the GAN phase. Empty for the cycle objectives (their extra terms are not covered)."""
    if config.model.objective != "animegan":
        return {}
    generator, discriminator = models.generator, models.discriminator
    g_params = [p for p in generator.parameters() if p.requires_grad]
    with untouched(generator, discriminator):
        real_photo = batch.real_photo
        fake_anime = generator(real_photo)  # [B, 3, H, W] with its graph
        if in_init:
            targets = steps.compute_targets(backbone, batch, config.loss.style_target, need_style=False)
            values = steps.init_losses(config, real_photo, fake_anime, targets.feat_photo, backbone(fake_anime))
            weights = term_weights(config, "init")
            shares = grad_shares({t: w * values[t] for t, w in weights.items()}, g_params)
            return {metric_name("init", "grad", t): s for t, s in shares.items()}
        targets = steps.compute_targets(backbone, batch, config.loss.style_target)
        terms = steps.g_terms(config, real_photo, fake_anime, targets, backbone(fake_anime))
        with frozen(discriminator):
            values = steps.g_losses(config, terms, discriminator(fake_anime))
        weights = term_weights(config, "g")
        out = {metric_name("g", "grad", t): s
               for t, s in grad_shares({t: w * values[t] for t, w in weights.items()}, g_params).items()}
        out.update(_d_shares(config, discriminator, batch, fake_anime.detach()))
    return out


def _d_shares(config: TrainConfig, discriminator: nn.Module, batch: Batch,
              fake_anime: torch.Tensor) -> dict[str, float]:
    """D's terms as its step computes them (steps.d_step): one forward over the four inputs, then the penalty."""
    d_in = torch.cat([batch.anime, fake_anime, batch.anime_gray, batch.anime_smooth])  # [4B, 3, H, W]
    terms = steps.d_terms(config, discriminator(d_in), fake_anime.shape[0])
    gp = losses.gradient_penalty(discriminator, batch.anime, fake_anime, config.loss.gan_type,
                                 config.loss.gp_weight)
    values = {**terms, "gp": gp}
    weights = term_weights(config, "d")
    d_params = [p for p in discriminator.parameters() if p.requires_grad]
    shares = grad_shares({t: w * values[t] for t, w in weights.items()}, d_params)
    return {metric_name("d", "grad", t): s for t, s in shares.items()}


def value_metrics(config: TrainConfig, logged: Mapping[str, float]) -> dict[str, float]:
    """The value shares of every phase present in a logged row (`loss/<phase>/<term>` means). None for the cycle
    objectives: their extra terms are not in PHASE_TERMS, and shares of a partial sum would mislead."""
    if config.model.objective != "animegan":
        return {}
    out: dict[str, float] = {}
    for phase, terms in PHASE_TERMS.items():
        raw = {t: logged[f"loss/{phase}/{t}"] for t in terms if f"loss/{phase}/{t}" in logged}
        if raw:
            out.update({metric_name(phase, "value", t): s for t, s in value_shares(config, phase, raw).items()})
    return out
