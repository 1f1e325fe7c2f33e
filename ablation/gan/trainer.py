"""The AnimeGAN training loop: plain torch, a `log(metrics, step)` callback, no tracking library.

    result = train(config, out_dir, log=print)   # runs in a notebook as well as under `ablate`

Order per batch (official v1): init epochs run only the content step; afterwards one D step on a
detached G(p) (every `g_steps_per_d` batches), then one G step on a fresh G(p).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ablation.config import TrainConfig, cell_hash, to_yaml
from ablation.data.images import to_signed, to_uint8
from ablation.data.streams import DataStreams, Domains, load_domains, val_photos
from ablation.evaluation.protocol import TrialEvaluator
from ablation.files import atomic_write_text
from ablation.gan import samples
from ablation.gan.backbone import build_backbone
from ablation.gan.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from ablation.gan.device import (
    autocast,
    configure_threads,
    maybe_compile,
    prepare_module,
    resolve_device,
    synchronize,
    to_device_layout,
)
from ablation.gan.discriminator import build_discriminator
from ablation.gan.generator import build_generator
from ablation.gan.steps import TrialModels, build_optimizers, compute_targets, d_step, g_step, init_step
from ablation.outcomes import Outcome

EVAL_INFO = "eval_info.json"
BACKBONE_INFO = "backbone.json"
LogFn = Callable[[dict[str, float], int], None]
# called after each evaluation with (metrics, step); returning True stops the run (pruned)
EvalHook = Callable[[dict[str, float], int], bool]


@dataclass
class TrainResult:
    status: Outcome  # one of TRAIN_STATUSES
    step: int  # steps completed
    total_steps: int
    diverged_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # last logged value of every key
    out_dir: Path = Path(".")
    artifacts: dict[str, Path] = field(default_factory=dict)
    backbone_info: dict[str, str] = field(default_factory=dict)  # FrozenBackbone.describe(), as in backbone.json

    @property
    def status_text(self) -> str:
        if self.status is Outcome.DIVERGED:
            return f"diverged at step {self.diverged_step}"
        return self.status


class StopFlag:
    """Set by SIGINT/SIGTERM (or by a caller) to end the run after the current step with a checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only live in the main thread
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, _frame: flag.set(signum))
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def build_models(config: TrainConfig, device: torch.device) -> TrialModels:
    torch.manual_seed(config.seed)  # G and D init are drawn from the trial seed
    generator = prepare_module(build_generator(config.model.generator, config.model.generator_sn), device,
                               config.runtime)
    discriminator = prepare_module(build_discriminator(config.model.d_ch, config.model.d_layers,
                                                       config.model.d_sn, config.model.d_dropout),
                                   device, config.runtime)
    opt_init, opt_g, opt_d = build_optimizers(generator, discriminator, config)
    return TrialModels(generator, discriminator, opt_init, opt_g, opt_d)


class MetricWindow:
    """Sums loss tensors between log points without a device sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.images = 0
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums[key] + value.float() if key in self.sums else value.float()
            self.counts[key] = self.counts.get(key, 0) + 1

    def flush(self) -> dict[str, float]:
        keys = list(self.sums)
        means = torch.stack([self.sums[k] / self.counts[k] for k in keys]).tolist() if keys else []
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        out = dict(zip(keys, means, strict=True))
        out["perf/step_s"] = elapsed / max(self.steps, 1)
        out["perf/images_per_s"] = self.images / elapsed
        self.sums, self.counts, self.images, self.steps = {}, {}, 0, 0
        self.started = time.perf_counter()
        return out

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "counts": dict(self.counts),
                "images": self.images, "steps": self.steps}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.counts, self.images, self.steps = dict(state["counts"]), state["images"], state["steps"]


def train(config: TrainConfig, out_dir: Path, log: LogFn, *, domains: Domains | None = None,
          resume: bool = False, stop: StopFlag | None = None, on_eval: EvalHook | None = None,
          progress: Callable[[int, int], None] | None = None,
          evaluator: TrialEvaluator | None = None) -> TrainResult:
    """Train one run into `out_dir`. `domains` and `evaluator` may be passed in so that a worker decodes
    the data and computes the evaluation references once for many trials."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(to_yaml(config))
    configure_threads(config.runtime)
    device = resolve_device(config.runtime)
    stop = stop if stop is not None else StopFlag()

    domains = domains if domains is not None else load_domains(config.data)
    streams = DataStreams(domains, config.schedule.batch_size, config.seed, config.loss.smooth_target, device)
    steps_per_epoch = config.schedule.steps_per_epoch or streams.steps_per_epoch(config.schedule.batch_size)
    total_steps = config.schedule.epochs * steps_per_epoch
    init_steps = config.schedule.init_epochs * steps_per_epoch

    frozen_backbone = build_backbone(config.backbone, config.seed)
    # which weights the content and style losses saw: their scales differ between weights and preprocessings
    backbone_info = frozen_backbone.describe()
    atomic_write_text(out_dir / BACKBONE_INFO, json.dumps(backbone_info))
    backbone = prepare_module(frozen_backbone, device, config.runtime)
    models = build_models(config, device)
    generator_fast = maybe_compile(models.generator, device, config.runtime)
    run_models = TrialModels(generator_fast, models.discriminator, models.opt_init, models.opt_g, models.opt_d)

    val_real = val_photos(domains, config.data.val_count)  # uint8 [V, 3, S, S], fixed order
    val_real_hwc = val_real.permute(0, 2, 3, 1).numpy()
    sample_dir = out_dir / "samples"
    if evaluator is None:
        evaluator = build_evaluator(config, domains, device)

    if evaluator is not None:  # what produced the eval numbers, and the anchors that give the gaps meaning
        (out_dir / EVAL_INFO).write_text(json.dumps({"info": evaluator.info(), "anchors": evaluator.anchors()}))
    window, step, first_bad, last = MetricWindow(), 0, torch.full((), -1, device=device), {}
    ckpt_path = out_dir / CHECKPOINT_NAME
    if resume and (state := load_checkpoint(ckpt_path)) is not None:
        _check_same_config(state, config, ckpt_path)
        step, last = state["step"], state["last"]
        _restore(state, models, streams, window, device)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "config": config.model_dump(mode="json"), "cell": cell_hash(config), "step": step, "last": last,
            "generator": models.generator.state_dict(), "discriminator": models.discriminator.state_dict(),
            "opt_init": models.opt_init.state_dict(), "opt_g": models.opt_g.state_dict(),
            "opt_d": models.opt_d.state_dict(), "streams": streams.state_dict(), "window": window.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        })

    def emit(metrics: dict[str, float], at: int) -> None:
        last.update(metrics)
        log(metrics, at)

    status = Outcome.FINISHED
    window.started = time.perf_counter()  # step time excludes set-up
    with stop_on_signals(stop):
        while step < total_steps:
            batch = streams.next()
            batch = type(batch)(*(to_device_layout(t, device, config.runtime) for t in
                                  (batch.real_photo, batch.anime, batch.anime_gray, batch.anime_smooth)))
            with autocast(device, config.runtime):
                targets = compute_targets(backbone, batch, config.loss.style_target)
                if step < init_steps:
                    values = init_step(run_models, backbone, batch, targets, config)
                else:
                    values = {}
                    if (step - init_steps) % config.optim.g_steps_per_d == 0:
                        values.update(d_step(run_models, batch, config))
                    values.update(g_step(run_models, backbone, batch, targets, config))
            bad = torch.stack([~torch.isfinite(v).all() for v in values.values()]).any()
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
            window.add(values)
            window.images += batch.real_photo.shape[0]
            window.steps += 1
            step += 1
            if progress is not None:
                progress(step, total_steps)
            epoch_end = step % steps_per_epoch == 0
            # also right after the first step of each phase: the raw term scales at the start are what
            # tells whether the weights fit this backbone (and expose the write-up's colour defect)
            first_of_phase = step == 1 or step == init_steps + 1
            if step % config.schedule.log_every == 0 or epoch_end or step == total_steps or first_of_phase:
                metrics = window.flush()
                metrics.update(_learning_rates(models, step <= init_steps))
                emit(metrics, step)
                if (bad_step := int(first_bad.item())) >= 0:
                    status = Outcome.DIVERGED
                    break
            if epoch_end:
                epoch = step // steps_per_epoch
                _write_samples(models.generator, val_real, sample_dir, epoch, device, config)
                if evaluator is not None and _eval_due(config, epoch, step == total_steps):
                    # G sees the held-out photos at the training size; the evaluator resizes its outputs
                    eval_photos = domains.val[:config.eval.max_images]
                    metrics = evaluator.evaluate(_generate(models.generator, eval_photos, device, config))
                    emit(metrics, step)
                    if on_eval is not None and on_eval(metrics, step):
                        status = Outcome.PRUNED
                        break
                checkpoint()
            if stop:
                checkpoint()
                status = Outcome.INTERRUPTED
                break

    synchronize(device)
    result = TrainResult(status, step, total_steps, metrics=dict(last), out_dir=out_dir, backbone_info=backbone_info)
    if status is Outcome.DIVERGED:
        result.diverged_step = bad_step
    _finish_samples(result, models, val_real, val_real_hwc, sample_dir, device, config)
    return result


def _restore(state: dict, models: TrialModels, streams: DataStreams, window: MetricWindow,
             device: torch.device) -> None:
    """Everything that decides the next step: weights, optimiser moments, stream positions, RNGs."""
    models.generator.load_state_dict(state["generator"])
    models.discriminator.load_state_dict(state["discriminator"])
    for name in ("opt_init", "opt_g", "opt_d"):
        getattr(models, name).load_state_dict(state[name])
    streams.load_state_dict(state["streams"])
    window.load_state_dict(state["window"], device)
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _learning_rates(models: TrialModels, init_phase: bool) -> dict[str, float]:
    if init_phase:
        return {"lr/init": models.opt_init.param_groups[0]["lr"]}
    return {"lr/g": models.opt_g.param_groups[0]["lr"], "lr/d": models.opt_d.param_groups[0]["lr"]}


def _eval_due(config: TrainConfig, epoch: int, at_end: bool) -> bool:
    every = config.schedule.eval_every
    return at_end or (every > 0 and epoch % every == 0)


@torch.no_grad()
def _generate(generator: torch.nn.Module, photos_u8: torch.Tensor, device: torch.device,
              config: TrainConfig, chunk: int = 16) -> torch.Tensor:
    """uint8 [N, 3, H, W] photos -> uint8 [N, 3, H, W] generator outputs, in eval-free chunks."""
    outs = []
    for start in range(0, photos_u8.shape[0], chunk):
        real_photo = to_signed(photos_u8[start:start + chunk].to(device))
        with autocast(device, config.runtime):
            fake_anime = generator(to_device_layout(real_photo, device, config.runtime))
        outs.append(to_uint8(fake_anime).cpu())
    return torch.cat(outs)


def _write_samples(generator: torch.nn.Module, val_real: torch.Tensor, sample_dir: Path, epoch: int,
                   device: torch.device, config: TrainConfig) -> None:
    fake = _generate(generator, val_real, device, config)
    samples.write_epoch_frame(sample_dir, epoch, fake.permute(0, 2, 3, 1).numpy())


def _finish_samples(result: TrainResult, models: TrialModels, val_real: torch.Tensor, val_real_hwc,
                    sample_dir: Path, device: torch.device, config: TrainConfig) -> None:
    """GIF of the evolution and the final input | output sheet, also for diverged runs."""
    fake = _generate(models.generator, val_real, device, config).permute(0, 2, 3, 1).numpy()
    result.artifacts["side_by_side"] = samples.write_side_by_side(sample_dir, val_real_hwc, fake)
    gif = samples.write_gif(sample_dir, val_real_hwc)
    if gif is not None:
        result.artifacts["gif"] = gif
    if result.status is Outcome.FINISHED:
        weights = result.out_dir / "generator.pt"
        torch.save(models.generator.state_dict(), weights)
        result.artifacts["generator"] = weights


def build_evaluator(config: TrainConfig, domains: Domains, device: torch.device) -> TrialEvaluator | None:
    """Held-out photos (val/) against the held-out style split; None when evaluation is off."""
    if not config.eval.enabled:
        return None
    if domains.style_ref is None or domains.style_ref.shape[0] < 4:
        print("ablate: evaluation skipped: no held-out style split (add <style>/style_ref/ or more style images)",
              file=sys.stderr)
        return None
    from ablation.evaluation.evaluator import Evaluator  # evaluation is optional per config; keep import local

    return Evaluator(config.eval, style_ref=domains.style_ref, photos=domains.val,
                     pseudo_targets=domains.val_target, device=device)


def _check_same_config(state: dict, config: TrainConfig, path: Path) -> None:
    from ablation.errors import UserError, problem

    if state.get("cell") != cell_hash(config) or state["config"].get("seed") != config.seed:
        raise UserError(problem(path, "config", "the config this checkpoint was written with (same cell "
                                "and seed); use a new --out folder for a changed config", "<a different config>"))
