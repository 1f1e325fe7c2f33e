"""What an array member does after each step, as its schedule says: log its metrics (and its loss balance at the
start of each phase), leave on a NaN/inf loss, write samples, evaluate and checkpoint at epoch ends, finish at
its last step (gan/array.py calls it for every member after every step)."""

from __future__ import annotations

import torch

from ablation.data.streams import Domains, evaluation_photos
from ablation.gan import balance
from ablation.gan.device import autocast
from ablation.gan.member import Member, generate_u8
from ablation.gan.steps import learning_rates
from ablation.outcomes import Outcome


def after_step(member: Member, domains: Domains, backbone: torch.nn.Module) -> bool:
    """Log, sample, evaluate and checkpoint as due; True when the member leaves the array (finished,
    diverged or pruned)."""
    step, config = member.step, member.config
    epoch_end = step % member.steps_per_epoch == 0
    # also right after the first step of each phase: the raw term scales at the start are what tells whether
    # the weights fit this backbone (and expose the write-up's colour defect)
    first_of_phase = step == 1 or step == member.init_steps + 1
    if step % config.schedule.log_every == 0 or epoch_end or step == member.total_steps or first_of_phase:
        metrics = member.window.flush()
        metrics.update(learning_rates(member.models, step <= member.init_steps))
        metrics.update(balance.value_metrics(config, metrics))
        if first_of_phase:
            metrics.update(_grad_shares(member, backbone))
        member.emit(metrics, step)
        if (bad_step := int(member.first_bad.item())) >= 0:
            member.status, member.bad_step = Outcome.DIVERGED, bad_step
            return True
    if epoch_end:
        epoch = step // member.steps_per_epoch
        member.write_samples(epoch, domains)
        every = config.schedule.eval_every
        evaluates = member.evaluator is not None and (step == member.total_steps or (every > 0 and epoch % every == 0))
        cadence = config.schedule.balance_every > 0 and epoch % config.schedule.balance_every == 0
        if (evaluates or cadence) and not first_of_phase and (shares := _grad_shares(member, backbone)):
            member.emit(shares, step)
        if evaluates:
            # G sees the held-out photos at the training size; the evaluator resizes its outputs
            eval_photos = evaluation_photos(domains)[:config.eval.max_images]
            metrics = member.evaluator.evaluate(generate_u8(member.models.generator, eval_photos, member))
            member.emit(metrics, step)
            if member.on_eval is not None and member.on_eval(metrics, step):
                member.status = Outcome.PRUNED
                return True
        member.checkpoint()
    if step >= member.total_steps:
        member.status = Outcome.FINISHED
        return True
    return False


def _grad_shares(member: Member, backbone: torch.nn.Module) -> dict[str, float]:
    """The loss balance of the phase of the step just taken, on that step's batch (gan/balance.py)."""
    if member.last_batch is None:
        return {}
    with autocast(member.device, member.config.runtime):
        return balance.measure(member.config, member.models, backbone, member.last_batch,
                               in_init=member.step <= member.init_steps)
