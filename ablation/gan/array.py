"""Train K compatible trials as one fused model on one device; each member stays a trial of its own.

    results = train_array(configs, out_dirs, logs, domains=domains)   # one TrainResult per config

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
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ablation.config import RuntimeConfig, TrainConfig
from ablation.data.streams import Batch, Domains, load_domains
from ablation.evaluation.protocol import TrialEvaluator
from ablation.gan.array_steps import FusedModels, gan_step, init_step, targets_for
from ablation.gan.backbone import build_backbone
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
from ablation.gan.member import Member, build_evaluator, generate_u8, open_member
from ablation.gan.run import EvalHook, LogFn, ProgressFn, StopFlag, TrainResult, stop_on_signals
from ablation.gan.steps import learning_rates
from ablation.outcomes import Outcome

# What members of one array must share (dotted config paths); every other field may differ per member.
ARRAY_FIELDS: tuple[str, ...] = (
    "model", "backbone", "data.root", "data.style", "data.image_size", "schedule.epochs", "schedule.init_epochs",
    "schedule.batch_size", "schedule.steps_per_epoch", "runtime",
)


def _field(dump: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        dump = dump[part]
    return dump


def array_key(config: TrainConfig) -> str:
    """Two configs can train fused in one array iff their keys are equal: a hash of the `ARRAY_FIELDS`."""
    dump = config.model_dump(mode="json")
    payload = json.dumps({path: _field(dump, path) for path in ARRAY_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _leaves(value: Any, path: str) -> dict[str, Any]:
    """{"model": {"d_ch": 8}} at "model" -> {"model.d_ch": 8}: the dotted paths a user writes."""
    if not isinstance(value, dict):
        return {path: value}
    return {leaf: v for key, item in value.items() for leaf, v in _leaves(item, f"{path}.{key}").items()}


def check_compatible(configs: Sequence[TrainConfig]) -> None:
    """Raise ValueError naming the fields in which the configs cannot be fused."""
    shared = [{leaf: v for path in ARRAY_FIELDS for leaf, v in _leaves(_field(c.model_dump(mode="json"), path),
                                                                      path).items()} for c in configs]
    differ = [path for path in shared[0] if any(other[path] != shared[0][path] for other in shared[1:])]
    if differ:
        raise ValueError(f"train_array: the configs differ in {', '.join(differ)}; only configs with equal "
                         "array_key() train as one array")


def backbone_key(config: TrainConfig) -> str:
    """Which frozen backbone a trial's losses use: random weights are drawn from its seed unless backbone.seed
    fixes them; loaded weights do not depend on the seed."""
    bb = config.backbone
    seed = (bb.seed if bb.seed is not None else config.seed) if bb.weights == "random" else None
    return json.dumps({**bb.model_dump(mode="json"), "seed": seed}, sort_keys=True)


@dataclass
class Array:
    """The members of one array and the fused networks and backbones they share."""

    members: list[Member]
    fused: FusedModels
    device: torch.device
    runtime: RuntimeConfig  # shared by every member (array_key)


def train_array(configs: Sequence[TrainConfig], out_dirs: Sequence[Path], logs: Sequence[LogFn], *,
                domains: Domains | None = None, resume: bool = False, stop: StopFlag | None = None,
                evaluator: TrialEvaluator | None = None, progress: Sequence[ProgressFn | None] | None = None,
                on_eval: Sequence[EvalHook | None] | None = None, fuse: FuseMode | None = None) -> list[TrainResult]:
    """Train every config into its out_dir as one array; `logs`, `progress`, `on_eval` are per member.
    `domains` and `evaluator` (shared by all members) may be passed in to decode the data and compute the
    evaluation references once; without an evaluator each distinct `eval` section builds its own. `fuse`: how
    G and D run (gan/fused.py): "looped" (bit for bit each trial's own run) or "grouped"; by default
    `default_mode(device)`."""
    if not configs:
        raise ValueError("train_array: no configs")
    domains = domains if domains is not None else load_domains(configs[0].data)
    array = open_array(configs, out_dirs, logs, domains=domains, resume=resume, evaluator=evaluator,
                       progress=progress, on_eval=on_eval, fuse=fuse)
    stop = stop if stop is not None else StopFlag()
    active = []
    for member in array.members:
        if member.step >= member.total_steps:  # resumed from its last checkpoint: nothing left to train
            member.status = Outcome.FINISHED
        else:
            active.append(member)
    started = time.perf_counter()
    for member in active:
        member.window.started = started  # step time excludes set-up
    with stop_on_signals(stop):
        while active:
            step_array(array, active)
            active = [m for m in active if not _after_step(m, domains)]
            if stop:
                for member in active:
                    member.checkpoint()
                    member.status = Outcome.INTERRUPTED
                active = []
    synchronize(array.device)
    return [m.result(domains) for m in array.members]


def open_array(configs: Sequence[TrainConfig], out_dirs: Sequence[Path], logs: Sequence[LogFn], *, domains: Domains,
               resume: bool = False, evaluator: TrialEvaluator | None = None,
               progress: Sequence[ProgressFn | None] | None = None, on_eval: Sequence[EvalHook | None] | None = None,
               fuse: FuseMode | None = None) -> Array:
    """Set up (or resume) every member in its out_dir, its backbone and the fused networks; no step yet."""
    count = len(configs)
    if count == 0 or len(out_dirs) != count or len(logs) != count:
        raise ValueError(f"train_array: {count} configs, {len(out_dirs)} out_dirs, {len(logs)} logs")
    if len({Path(d).resolve() for d in out_dirs}) != count:
        raise ValueError("train_array: every member needs its own out_dir")
    check_compatible(configs)
    runtime = configs[0].runtime
    configure_threads(runtime)
    device = resolve_device(runtime)
    precision = effective_precision(runtime, device)  # the same function `autocast` decides by
    backbones, infos = {}, {}
    for config in configs:  # one frozen backbone per distinct weights, shared by the members that use them
        if (key := backbone_key(config)) not in backbones:
            frozen_backbone = build_backbone(config.backbone, config.seed)
            infos[key] = frozen_backbone.describe()
            backbones[key] = prepare_module(frozen_backbone, device, runtime)
    evaluators: dict[str, TrialEvaluator | None] = {}
    members = []
    for i, config in enumerate(configs):
        eval_key = json.dumps(config.eval.model_dump(mode="json"), sort_keys=True)
        if evaluator is None and eval_key not in evaluators:
            evaluators[eval_key] = build_evaluator(config, domains, device)
        members.append(open_member(
            config, Path(out_dirs[i]), logs[i], domains=domains, device=device, precision=precision,
            backbone_key=backbone_key(config), backbone_info=infos[backbone_key(config)],
            evaluator=evaluator if evaluator is not None else evaluators[eval_key], resume=resume,
            on_eval=on_eval[i] if on_eval is not None else None,
            progress=progress[i] if progress is not None else None))
    mode = fuse if fuse is not None else default_mode(device)
    fused = FusedModels(FusedNet(members[0].models.generator, mode), FusedNet(members[0].models.discriminator, mode),
                        backbones)
    return Array(members, fused, device, runtime)


def _on_device(batch: Batch, member: Member) -> Batch:
    runtime = member.config.runtime
    return dataclasses.replace(batch, **{name: to_device_layout(getattr(batch, name), member.device, runtime)
                                         for name in ("real_photo", "anime", "anime_gray", "anime_smooth")})


def step_array(array: Array, active: Sequence[Member]) -> None:
    """One step of every active member: those in their init phase fused together, the others together."""
    fused = array.fused
    batches = [_on_device(m.streams.next(), m) for m in active]
    values: list[dict[str, torch.Tensor]] = [{} for _ in active]
    with autocast(array.device, array.runtime):
        for in_init in (True, False):
            rows = [i for i, m in enumerate(active) if m.in_init == in_init]
            if not rows:
                continue
            group, group_batches = [active[i] for i in rows], [batches[i] for i in rows]
            # the init phase's content-only loss needs no style features: one backbone pass fewer
            targets = targets_for(fused, group, group_batches, need_style=not in_init)
            if in_init:
                out = init_step(fused, group, group_batches, targets)
            else:
                out = gan_step(fused, group, group_batches, targets, [m.d_due for m in group])
            for i, member_values in zip(rows, out, strict=True):
                values[i] = member_values
    for member, member_values, batch in zip(active, values, batches, strict=True):
        member.record(member_values, batch.real_photo.shape[0])


def _after_step(member: Member, domains: Domains) -> bool:
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
        member.emit(metrics, step)
        if (bad_step := int(member.first_bad.item())) >= 0:
            member.status, member.bad_step = Outcome.DIVERGED, bad_step
            return True
    if epoch_end:
        epoch = step // member.steps_per_epoch
        member.write_samples(epoch, domains)
        every = config.schedule.eval_every
        if member.evaluator is not None and (step == member.total_steps or (every > 0 and epoch % every == 0)):
            # G sees the held-out photos at the training size; the evaluator resizes its outputs
            eval_photos = domains.val[:config.eval.max_images]
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
