"""Train K compatible trials as one fused model on one device; each member stays a trial of its own.

    results = train_array([Joiner(config, out_dir, log), ...], domains=domains)   # one TrainResult each

Members must share `array_key(config)`: the generator and discriminator architecture, the backbone, the dataset
and image size, the batch size and the schedule lengths, and the runtime. They may differ in everything else:
every loss weight, gan_type, style/smooth targets, colour scale and count, learning rates and betas,
g_steps_per_d, the seed (own init, own data order, own penalty and dropout draws), logging and evaluation.
The frozen backbone is shared (one per distinct weights: random weights drawn from each trial's seed give one
per seed).

Each member computes what it would compute trained alone (gan/array_steps.py): bit for bit with the looped
fusion (the CPU default), to fp32 rounding per step with the grouped one (gan/fused.py). It logs through its
own callback and writes its own run folder in the one-trial format: it resumes alone (`train(resume=True)`)
or in another array, at any step (members of one array may be at different steps; each runs its own phase).
A member that diverges (NaN/inf) or is pruned (`on_eval` returns True) leaves the array: its parameters stop
updating and it is recorded with its step; the others go on as before. The stop flag (SIGINT/SIGTERM)
checkpoints every member still training. `train(config, ...)` is the array of one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ablation.config import RuntimeConfig, TrainConfig
from ablation.data.streams import Batch, Domains, load_domains
from ablation.evaluation.protocol import TrialEvaluator
from ablation.gan import cycle_steps
from ablation.gan.array_rules import backbone_key, check_compatible
from ablation.gan.array_steps import FusedModels, gan_step, init_step, targets_for
from ablation.gan.backbone import build_backbone
from ablation.gan.cadence import after_step
from ablation.gan.device import (
    autocast,
    configure_threads,
    effective_precision,
    prepare_module,
    resolve_device,
    synchronize,
    to_device_layout,
)
from ablation.gan.fused import FusedNet, FuseMode, default_mode
from ablation.gan.init_cache import REMOTE_POLL_S, InitSharing
from ablation.gan.member import Member, build_evaluator, open_member
from ablation.gan.run_contract import EvalHook, LogFn, ProgressFn, StopFlag, TrainResult, stop_on_signals
from ablation.gan.steps import Targets, set_gan_lr
from ablation.outcomes import Outcome

# one GAN step of an array, by model.objective (members of an array share it)
GAN_STEPS: dict[str, Callable[..., list[dict[str, torch.Tensor]]]] = {
    "animegan": gan_step, "animegan+cycle": cycle_steps.gan_step, "cyclegan": cycle_steps.gan_step,
}


EndHook = Callable[[TrainResult], None]  # a member left the array: its result, as soon as it is known


@dataclass(frozen=True)
class Joiner:
    """One trial for an array: at the start, or later in a slot that a member left (`train_array(refill=...)`)."""

    config: TrainConfig
    out_dir: Path
    log: LogFn
    on_eval: EvalHook | None = None
    progress: ProgressFn | None = None
    on_end: EndHook | None = None


# called with the number of free slots after members left; returns the trials that take them (maybe none)
Refill = Callable[[int], Sequence[Joiner]]


@dataclass
class Array:
    """The members of one array and the fused networks, backbones and evaluators they share."""

    members: list[Member]
    fused: FusedModels | None  # built with the first member
    device: torch.device
    runtime: RuntimeConfig  # shared by every member (array_key)
    domains: Domains
    resume: bool
    evaluator: TrialEvaluator | None  # shared by every member when given
    fuse: FuseMode
    evaluators: dict[str, TrialEvaluator | None] = field(default_factory=dict)  # per distinct `eval` section
    backbone_infos: dict[str, dict[str, str]] = field(default_factory=dict)


def train_array(joiners: Sequence[Joiner], *, domains: Domains | None = None, resume: bool = False,
                stop: StopFlag | None = None, evaluator: TrialEvaluator | None = None, refill: Refill | None = None,
                init_cache: Path | None = None, fuse: FuseMode | None = None) -> list[TrainResult]:
    """Train every joiner's config into its out_dir as one array, each with its own log, progress, `on_eval`
    and `on_end`. `domains` and `evaluator` (shared by all members) may be passed in to decode the data and
    compute the evaluation references once; without an evaluator each distinct `eval` section builds its own.
    `refill` fills the slots of members that left early (diverged, pruned, resumed near their end) with more
    trials of the same `array_key`. `init_cache`: a folder of stored init phases (gan/init_cache.py): members
    whose init phase is stored, or computed by another member of the array, continue from it. `fuse`: how G and
    D run (gan/fused.py): "looped" (bit for bit each trial's own run) or "grouped"; by default
    `default_mode(device)`. Returns one result per member, in the order they joined."""
    if not joiners:
        raise ValueError("train_array: no joiners")
    count = len(joiners)
    configs = [joiner.config for joiner in joiners]
    check_compatible(configs)
    domains = domains if domains is not None else load_domains(configs[0].data)
    array = new_array(configs[0].runtime, domains, resume=resume, evaluator=evaluator, fuse=fuse)
    stop = stop if stop is not None else StopFlag()
    run = _Run(array, domains, count, InitSharing(init_cache) if init_cache is not None else None)
    run.active = run.admit(joiners)
    with stop_on_signals(stop):
        if refill is not None and run.free() > 0:
            run.active += run.admit(refill(run.free()))
        while run.pending():
            run.step()
            if stop:
                run.interrupt()
            elif refill is not None and run.free() > 0:
                run.active += run.admit(refill(run.free()))
    synchronize(array.device)
    assert all(r is not None for r in run.results), "train_array: a member never left the array"
    return run.results  # type: ignore[return-value]  # every member has left, with its result


class _Run:
    """One `train_array` call: its members as they join, step and leave, and their results."""

    def __init__(self, array: Array, domains: Domains, count: int, sharing: InitSharing | None) -> None:
        self.array, self.domains, self.count, self.sharing = array, domains, count, sharing
        self.active: list[Member] = []  # members that step
        self.woken: list[Member] = []  # members that waited for another's init phase and step from now on
        # per member in the array (by id, popped as it leaves, so a later member reusing the id is a new entry):
        # its index in join order and its end hook
        self.slots: dict[int, tuple[int, EndHook | None]] = {}
        self.results: list[TrainResult | None] = []

    def leave(self, member: Member) -> None:
        array = self.array
        index, hook = self.slots.pop(id(member))
        self.results[index] = result = member.result(self.domains)
        array.members.remove(member)  # its models and optimisers are freed once the loop lets go of it
        if array.fused is not None and all(m.backbone_key != member.backbone_key for m in array.members):
            array.fused.backbones.pop(member.backbone_key, None)  # a random backbone of a seed no one trains now
            array.backbone_infos.pop(member.backbone_key, None)
        if self.sharing is not None:
            self.woken.extend(self.sharing.left(member))
        if hook is not None:
            hook(result)

    def admit(self, new: Sequence[Joiner]) -> list[Member]:
        started, admitted = time.perf_counter(), []
        for joiner in new:
            member = join(self.array, joiner)
            self.slots[id(member)] = (len(self.results), joiner.on_end)
            self.results.append(None)
            member.window.started = started  # step time excludes set-up
            if member.step >= member.total_steps:  # resumed from its last checkpoint: nothing left to train
                member.status = Outcome.FINISHED
                self.leave(member)
            elif self.sharing is None or self.sharing.admit(member):  # else it waits for another's init phase
                admitted.append(member)
        return admitted

    def free(self) -> int:
        """Slots neither stepping nor waiting for an init phase."""
        return self.count - len(self.active) - (len(self.sharing.all_waiting()) if self.sharing is not None else 0)

    def pending(self) -> bool:
        return bool(self.active) or (self.sharing is not None and self.sharing.remote_waiting())

    def step(self) -> None:
        """One step of every active member (those done leave), or a wait for another process's init phase."""
        sharing, array, still = self.sharing, self.array, []
        if self.active:
            took = time.perf_counter()
            step_array(array, self.active)
            share = (time.perf_counter() - took) / len(self.active)
            for member in self.active:
                member.compute_s += share
                if after_step(member, self.domains, array.fused.backbones[member.backbone_key]):
                    self.leave(member)
                else:
                    still.append(member)
                    still += sharing.init_done(member) if sharing is not None else []
        else:  # every member waits for an init phase another process computes
            time.sleep(REMOTE_POLL_S)
        self.active, self.woken[:] = still + self.woken + (sharing.poll() if sharing is not None else []), []

    def interrupt(self) -> None:
        """The stop flag is up: every member still in the array checkpoints and leaves, interrupted."""
        for member in self.active:
            member.checkpoint()
        for member in self.active + (self.sharing.all_waiting() if self.sharing is not None else []):
            member.status = Outcome.INTERRUPTED
            self.leave(member)
        self.active, self.woken[:] = [], []


def new_array(runtime: RuntimeConfig, domains: Domains, *, resume: bool = False,
              evaluator: TrialEvaluator | None = None, fuse: FuseMode | None = None) -> Array:
    """An empty array on the runtime's device; members come in with `join`."""
    configure_threads(runtime)
    device = resolve_device(runtime)
    return Array([], None, device, runtime, domains, resume, evaluator,
                 fuse if fuse is not None else default_mode(device))


def join(array: Array, joiner: Joiner) -> Member:
    """Set up (or resume) one trial in its out_dir and add it to the array; its backbone and evaluator are
    built only when no member has them yet."""
    config = joiner.config
    if array.members:
        check_compatible([array.members[0].config, config])
    if any(Path(m.out_dir).resolve() == Path(joiner.out_dir).resolve() for m in array.members):
        raise ValueError(f"train_array: every member needs its own out_dir ({joiner.out_dir} is taken)")
    key = backbone_key(config)
    backbone = None
    if key not in array.backbone_infos:  # one frozen backbone per distinct weights
        frozen_backbone = build_backbone(config.backbone, config.seed)
        array.backbone_infos[key] = frozen_backbone.describe()
        backbone = prepare_module(frozen_backbone, array.device, array.runtime)
    evaluator = array.evaluator
    if evaluator is None:
        eval_key = json.dumps(config.eval.model_dump(mode="json"), sort_keys=True)
        if eval_key not in array.evaluators:
            array.evaluators[eval_key] = build_evaluator(config, array.domains, array.device)
        evaluator = array.evaluators[eval_key]
    member = open_member(config, Path(joiner.out_dir), joiner.log, domains=array.domains, device=array.device,
                         precision=effective_precision(array.runtime, array.device),  # as `autocast` decides
                         backbone_key=key, backbone_info=array.backbone_infos[key], evaluator=evaluator,
                         resume=array.resume, on_eval=joiner.on_eval, progress=joiner.progress)
    if array.fused is None:
        array.fused = FusedModels(FusedNet(member.models.generator, array.fuse),
                                  FusedNet(member.models.discriminator, array.fuse), {})
    if backbone is not None:
        array.fused.backbones[key] = backbone
    array.members.append(member)
    return member


def open_array(joiners: Sequence[Joiner], *, domains: Domains, resume: bool = False,
               evaluator: TrialEvaluator | None = None, fuse: FuseMode | None = None) -> Array:
    """An array with every joiner joined (no step yet): for benchmarks and tests that drive `step_array`."""
    check_compatible([joiner.config for joiner in joiners])
    array = new_array(joiners[0].config.runtime, domains, resume=resume, evaluator=evaluator, fuse=fuse)
    for joiner in joiners:
        join(array, joiner)
    return array


def _on_device(batch: Batch, member: Member) -> Batch:
    runtime = member.config.runtime
    return dataclasses.replace(batch, **{name: to_device_layout(getattr(batch, name), member.device, runtime)
                                         for name in ("real_photo", "anime", "anime_gray", "anime_smooth")})


def step_array(array: Array, active: Sequence[Member]) -> None:
    """One step of every active member: those in their init phase fused together, the others together."""
    fused = array.fused
    assert fused is not None, "step_array: the array has no member"
    batches = [_on_device(m.streams.next(), m) for m in active]
    values: list[dict[str, torch.Tensor]] = [{} for _ in active]
    with autocast(array.device, array.runtime):
        for in_init in (True, False):
            rows = [i for i, m in enumerate(active) if m.in_init == in_init]
            if not rows:
                continue
            group, group_batches = [active[i] for i in rows], [batches[i] for i in rows]
            objective = group[0].config.model.objective  # shared by an array (model.*)
            # the init phase's content-only loss needs no style features: one backbone pass fewer; CycleGAN's
            # GAN phase reads no backbone at all
            targets: list[Targets | None] = (
                [None] * len(group) if objective == "cyclegan" and not in_init
                else list(targets_for(fused, group, group_batches, need_style=not in_init)))
            if in_init:
                out = init_step(fused, group, group_batches, targets)  # type: ignore[arg-type]  # all set
            else:
                for m in group:
                    set_gan_lr(m.models, m.config, m.step - m.init_steps, m.total_steps - m.init_steps)
                out = GAN_STEPS[objective](fused, group, group_batches, targets, [m.d_due for m in group])
            for i, member_values in zip(rows, out, strict=True):
                values[i] = member_values
    for member, member_values, batch in zip(active, values, batches, strict=True):
        member.record(member_values, batch.real_photo.shape[0])
        member.last_batch = batch
