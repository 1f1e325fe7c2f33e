"""One trial inside an array: its own models, optimisers, data streams, generator, metric window, log and run
folder. Everything it writes (config.yaml, backbone.json, run.json, eval_info.json, samples, checkpoint.pt,
generator.pt) has the one-trial trainer's format, so a member resumes alone or inside any other array.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ablation.config import TrainConfig, cell_hash, to_yaml
from ablation.data.images import to_signed, to_uint8
from ablation.data.streams import Batch, DataStreams, Domains, evaluation_photos, val_photos
from ablation.evaluation.protocol import TrialEvaluator
from ablation.files import atomic_write_bytes, atomic_write_text
from ablation.gan import samples
from ablation.gan.checkpoint import CHECKPOINT_NAME, check_resumable, load_checkpoint, save_checkpoint
from ablation.gan.cycle_steps import ImagePool
from ablation.gan.device import Precision, autocast, maybe_compile, prepare_module, to_device_layout
from ablation.gan.discriminator import build_discriminator
from ablation.gan.generator import build_generator
from ablation.gan.init_cache import InitEntry
from ablation.gan.run_contract import (
    BACKBONE_INFO,
    EVAL_INFO,
    RUN_INFO,
    EvalHook,
    LogFn,
    MetricWindow,
    ProgressFn,
    TrainResult,
)
from ablation.gan.steps import TrialModels, build_optimizers
from ablation.outcomes import Outcome


def build_models(config: TrainConfig, device: torch.device) -> TrialModels:
    torch.manual_seed(config.seed)  # G and D init are drawn from the trial seed
    mc = config.model

    def generator() -> nn.Module:
        return prepare_module(build_generator(mc.generator, mc.generator_sn, mc.resize), device, config.runtime)

    def discriminator() -> nn.Module:
        return prepare_module(build_discriminator(mc.d_ch, mc.d_layers, mc.d_sn, mc.d_dropout, arch=mc.discriminator),
                              device, config.runtime)

    photo_to_anime, anime_d = generator(), discriminator()
    # the cycle objectives' second pair is drawn after G and D: those (and so a stored init phase) are the
    # "animegan" objective's, seed by seed
    back, photo_d = (generator(), discriminator()) if mc.objective != "animegan" else (None, None)
    opt_init, opt_g, opt_d = build_optimizers(photo_to_anime, anime_d, config, back, photo_d)
    return TrialModels(photo_to_anime, anime_d, opt_init, opt_g, opt_d, back, photo_d)


# the cycle objectives' networks beside G and D, by checkpoint key
EXTRA_NETS = ("generator_back", "discriminator_photo")


def build_evaluator(config: TrainConfig, domains: Domains, device: torch.device) -> TrialEvaluator | None:
    """Held-out photos (val/) against the held-out style split; None when evaluation is off."""
    if not config.eval.enabled:
        return None
    if domains.style_ref is None or domains.style_ref.shape[0] < 4:
        print("ablate: evaluation skipped: no held-out style split (add <style>/style_ref/ or more style images)",
              file=sys.stderr)
        return None
    from ablation.evaluation.evaluator import Evaluator  # evaluation is optional per config; keep import local

    if domains.style_ref_held_out:  # real data: compared with every style image G trains on (n >= 100 on Hayao)
        return Evaluator(config.eval, style_ref=domains.anime, photos=evaluation_photos(domains), device=device,
                         style_anchor=domains.style_ref)
    return Evaluator(config.eval, style_ref=domains.style_ref, photos=evaluation_photos(domains),
                     pseudo_targets=domains.val_target, device=device)


@dataclass
class Member:
    config: TrainConfig
    out_dir: Path
    log: LogFn
    on_eval: EvalHook | None
    progress: ProgressFn | None
    models: TrialModels
    generator_forward: nn.Module  # models.generator, torch.compile'd where configured
    cpu_rng: torch.Generator  # the global CPU RNG of its own run, right after its models were drawn
    rng: torch.Generator  # its penalty and dropout draws, on the training device (cpu_rng on CPU)
    streams: DataStreams
    backbone_key: str
    backbone_info: dict[str, str]
    evaluator: TrialEvaluator | None
    device: torch.device
    precision: Precision
    steps_per_epoch: int
    total_steps: int
    init_steps: int
    first_bad: torch.Tensor  # step of the first non-finite loss, -1 while none (on the device: no sync per step)
    step: int = 0
    window: MetricWindow = field(default_factory=MetricWindow)
    last: dict[str, float] = field(default_factory=dict)  # last logged value of every key
    status: Outcome | None = None  # set when it leaves the array
    bad_step: int | None = None
    init_rows: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # logged in the init phase
    compute_s: float = 0.0  # its share of the array's step time (the steps it took, split among the members)
    init_reused_s: float | None = None  # set when it continued a stored init phase: that phase's compute time
    pools: dict[str, ImagePool] = field(default_factory=dict)  # the cycle objectives' fakes per domain, if pooled
    last_batch: Batch | None = None  # the last step's batch on the device: what a loss-balance measurement reuses

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def in_init(self) -> bool:
        return self.step < self.init_steps

    @property
    def d_due(self) -> bool:
        return (self.step - self.init_steps) % self.config.optim.g_steps_per_d == 0

    def checkpoint(self) -> None:
        m = self.models
        save_checkpoint(self.ckpt_path, {
            "config": self.config.model_dump(mode="json"), "cell": cell_hash(self.config), "step": self.step,
            "last": self.last, "precision": self.precision,  # a resume in another precision is refused
            "generator": m.generator.state_dict(), "discriminator": m.discriminator.state_dict(),
            "opt_g": m.opt_g.state_dict(), "opt_d": m.opt_d.state_dict(),
            # the init optimiser never steps again once the init phase is over: its moments (twice G's size)
            # would be 40% of every later checkpoint and change nothing a resume computes
            **({"opt_init": m.opt_init.state_dict()} if self.in_init else {}),
            "streams": self.streams.state_dict(), "window": self.window.state_dict(),
            "rng": self.cpu_rng.get_state(),
            "cuda_rng": self.rng.get_state() if self.device.type == "cuda" else None,
            **{name: net.state_dict() for name in EXTRA_NETS if (net := getattr(m, name)) is not None},
            "pools": {name: pool.state_dict() for name, pool in self.pools.items()},
        })

    def restore(self, state: dict) -> None:
        """Everything that decides the next step: weights, optimiser moments, stream positions, generators."""
        self.step, self.last = state["step"], state["last"]
        self.models.generator.load_state_dict(state["generator"])
        self.models.discriminator.load_state_dict(state["discriminator"])
        for name in ("opt_init", "opt_g", "opt_d"):
            if name in state:  # opt_init only before the init phase's end (see `checkpoint`)
                getattr(self.models, name).load_state_dict(state[name])
        for name in EXTRA_NETS:
            if (net := getattr(self.models, name)) is not None:
                net.load_state_dict(state[name])
        for name, pool in self.pools.items():
            pool.load_state_dict(state["pools"][name], self.device)
        self.streams.load_state_dict(state["streams"])
        self.window.load_state_dict(state["window"], self.device)
        self.cpu_rng.set_state(state["rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            self.rng.set_state(state["cuda_rng"])

    def emit(self, metrics: dict[str, float], at: int) -> None:
        self.last.update(metrics)
        self.log(metrics, at)
        if at <= self.init_steps:
            self.init_rows.append((at, dict(metrics)))

    def rng_states(self) -> list[torch.Tensor]:
        """Its penalty/dropout generators' states (a stored init phase must not have drawn from them)."""
        return [self.cpu_rng.get_state()] + ([self.rng.get_state()] if self.rng is not self.cpu_rng else [])

    def init_entry(self) -> InitEntry:
        """What the init phase changed, at its end (gan/init_cache.py)."""
        frames = {p.name: p.read_bytes() for p in samples.epoch_frames(self.out_dir / "samples")}
        return InitEntry(step=self.step, generator=self.models.generator.state_dict(),
                         streams=self.streams.state_dict(), window=self.window.state_dict(),
                         rows=list(self.init_rows), frames=frames, seconds=self.compute_s)

    def continue_init(self, entry: InitEntry) -> None:
        """Take over a stored init phase's end state, log its rows and frames as its own, checkpoint as the
        epoch end does: from here on the trial is the one that ran the init phase itself."""
        self.models.generator.load_state_dict(entry.generator)
        self.streams.load_state_dict(entry.streams)
        self.window.load_state_dict(entry.window, self.device)
        self.step = entry.step
        for at, metrics in entry.rows:
            self.emit(metrics, at)
        (self.out_dir / "samples").mkdir(parents=True, exist_ok=True)
        for name, data in entry.frames.items():
            atomic_write_bytes(self.out_dir / "samples" / name, data)
        self.init_reused_s = entry.seconds
        self.checkpoint()
        if self.progress is not None:
            self.progress(self.step, self.total_steps)

    def record(self, values: dict[str, torch.Tensor], images: int) -> None:
        """Add one step's losses to the window and note a non-finite one, without a device sync."""
        bad = torch.stack([~torch.isfinite(v).all() for v in values.values()]).any()
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, self.step),
                                     self.first_bad)
        self.window.add(values)
        self.window.images += images
        self.window.steps += 1
        self.step += 1
        if self.progress is not None:
            self.progress(self.step, self.total_steps)

    def write_samples(self, epoch: int, domains: Domains) -> None:
        fake = generate_u8(self.models.generator, val_photos(domains, self.config.data.val_count), self)
        samples.write_epoch_frame(self.out_dir / "samples", epoch, fake.permute(0, 2, 3, 1).numpy())

    def result(self, domains: Domains) -> TrainResult:
        """The GIF of the evolution and the final input | output sheet (also for diverged runs), the weights
        of a finished run, and what it reports."""
        assert self.status is not None
        result = TrainResult(self.status, self.step, self.total_steps, metrics=dict(self.last), out_dir=self.out_dir,
                             backbone_info=self.backbone_info, precision=self.precision,
                             init_reused_s=self.init_reused_s)
        if self.status is Outcome.DIVERGED:
            result.diverged_step = self.bad_step
        val_real = val_photos(domains, self.config.data.val_count)  # uint8 [V, 3, S, S], fixed order
        val_real_hwc = val_real.permute(0, 2, 3, 1).numpy()
        sample_dir = self.out_dir / "samples"
        fake = generate_u8(self.models.generator, val_real, self).permute(0, 2, 3, 1).numpy()
        result.artifacts["side_by_side"] = samples.write_side_by_side(sample_dir, val_real_hwc, fake)
        gif = samples.write_gif(sample_dir, val_real_hwc)
        if gif is not None:
            result.artifacts["gif"] = gif
        if self.models.generator_back is not None and domains.style_ref is not None:  # the other direction
            anime_in = domains.style_ref[:self.config.data.val_count]  # held-out anime, uint8 [V, 3, S, S]
            photo_out = generate_u8(self.models.generator_back, anime_in, self).permute(0, 2, 3, 1).numpy()
            result.artifacts["anime_to_photo"] = samples.write_side_by_side(
                sample_dir, anime_in.permute(0, 2, 3, 1).numpy(), photo_out, name="anime_to_photo.png")
        if self.status is Outcome.FINISHED:
            weights = self.out_dir / "generator.pt"
            torch.save(self.models.generator.state_dict(), weights)
            result.artifacts["generator"] = weights
        return result


@torch.no_grad()
def generate_u8(generator: nn.Module, photos_u8: torch.Tensor, member: Member, chunk: int = 16) -> torch.Tensor:
    """uint8 [N, 3, H, W] photos -> uint8 [N, 3, H, W] generator outputs, in chunks.

    In eval mode, and back to the mode it found: in train mode a spectral-normed G (`model.generator_sn`) runs a
    power iteration per forward, so samples and evaluations would change the training run."""
    outs, training = [], generator.training
    generator.eval()
    try:
        for start in range(0, photos_u8.shape[0], chunk):
            real_photo = to_signed(photos_u8[start:start + chunk].to(member.device))
            with autocast(member.device, member.config.runtime):
                fake_anime = generator(to_device_layout(real_photo, member.device, member.config.runtime))
            outs.append(to_uint8(fake_anime).cpu())
    finally:
        generator.train(training)
    return torch.cat(outs)


def open_member(config: TrainConfig, out_dir: Path, log: LogFn, *, domains: Domains, device: torch.device,
                precision: Precision, backbone_key: str, backbone_info: dict[str, str],
                evaluator: TrialEvaluator | None, resume: bool, on_eval: EvalHook | None = None,
                progress: ProgressFn | None = None) -> Member:
    """Set up one trial in `out_dir` as the one-trial trainer does (and resume it from its checkpoint)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    streams = DataStreams(domains, config.schedule.batch_size, config.seed, config.loss.smooth_target, device)
    steps_per_epoch = config.schedule.steps_per_epoch or streams.steps_per_epoch(config.schedule.batch_size)
    models = build_models(config, device)
    # the global RNG as its own run would leave it: its own stream of penalty and dropout draws from here on
    cpu_rng = torch.Generator()
    cpu_rng.set_state(torch.get_rng_state())
    # on CUDA the draws come from the device RNG, which torch.manual_seed(seed) set and model init left untouched
    rng = torch.Generator(device).manual_seed(config.seed) if device.type == "cuda" else cpu_rng
    member = Member(config=config, out_dir=out_dir, log=log, on_eval=on_eval, progress=progress, models=models,
                    generator_forward=maybe_compile(models.generator, device, config.runtime), cpu_rng=cpu_rng,
                    rng=rng, streams=streams, backbone_key=backbone_key, backbone_info=backbone_info,
                    evaluator=evaluator, device=device, precision=precision, steps_per_epoch=steps_per_epoch,
                    total_steps=config.schedule.epochs * steps_per_epoch,
                    init_steps=config.schedule.init_epochs * steps_per_epoch,
                    first_bad=torch.full((), -1, device=device),
                    pools={name: ImagePool(config.optim.pool_size) for name in ("anime", "photo")}
                    if config.optim.pool_size > 0 else {})
    if resume and (state := load_checkpoint(member.ckpt_path)) is not None:
        check_resumable(state, config, precision, member.ckpt_path)
        member.restore(state)
    # after the resume check: a refused resume leaves the folder describing the run that wrote it (a config.yaml
    # rewritten beside the old weights would make `stylize` build another generator for them)
    atomic_write_text(out_dir / "config.yaml", to_yaml(config))
    # which weights the content and style losses saw: their scales differ between weights and preprocessings
    atomic_write_text(out_dir / BACKBONE_INFO, json.dumps(backbone_info))
    if evaluator is not None:  # what produced the eval numbers, and the anchors that give the gaps meaning
        atomic_write_text(out_dir / EVAL_INFO, json.dumps({"info": evaluator.info(), "anchors": evaluator.anchors()}))
    atomic_write_text(out_dir / RUN_INFO, json.dumps({"precision": precision, "device": device.type}))
    return member
