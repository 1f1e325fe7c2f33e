"""K trials trained as one array log what each trial logs trained alone (32 px, batch 2, d_ch 8, fp32 CPU):
over a grid of gan types, loss weights, targets, learning rates, betas, D schedules and seeds; across a
checkpoint in the middle resumed alone and inside another array; with a member that diverges and one that is
pruned. Also the compatibility key, the shared backbone targets, and the fused networks layer by layer."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from ablation.config import TrainConfig, with_overrides
from ablation.data.demo import procedural_batch
from ablation.data.streams import DataStreams, Domains, domains_from_arrays
from ablation.gan import array as array_module
from ablation.gan import balance
from ablation.gan import steps as steps_module
from ablation.gan.array import EndHook, Joiner, train_array
from ablation.gan.array_rules import array_key
from ablation.gan.backbone import build_backbone
from ablation.gan.discriminator import build_discriminator
from ablation.gan.fused import FusedNet
from ablation.gan.generator import build_generator
from ablation.gan.steps import compute_targets, d_step, g_step, init_step
from ablation.gan.trainer import EvalHook, LogFn, StopFlag, build_models, train
from ablation.outcomes import Outcome

SIZE = 32
STEPS = 20  # 5 epochs of 4 steps, the first epoch the init phase
Losses = dict[int, dict[str, float]]  # step -> loss key -> value

# Members may differ in every loss weight, gan type, target, learning rate, beta, D schedule and seed.
GRID: list[dict[str, object]] = [
    {},  # official v1: lsgan, seed 0
    {"seed": 1, "loss.gan_type": "hinge", "loss.style_weight": 10.0, "loss.style_target": "color",
     "loss.smooth_target": "color", "optim.g_lr": 2e-4, "loss.d_weights.fake": 2.5},
    # seed 0 again: the same batches and random backbone as the first, so their targets are shared
    {"loss.gan_type": "wgan-gp", "loss.content_weight": 3.0, "loss.color_scale": "255", "loss.color_count": 2,
     "optim.beta1": 0.3, "optim.g_steps_per_d": 2, "loss.d_adv_weight": 100.0},
    {"seed": 2, "loss.gan_type": "dragan", "loss.tv_weight": 1.0, "optim.d_lr": 3e-4, "optim.beta2": 0.99,
     "optim.init_lr": 2e-4, "loss.gp_weight": 5.0},
]


def tiny_domains() -> Domains:
    photos, _ = procedural_batch(12, SIZE, seed=1)
    _, animes = procedural_batch(12, SIZE, seed=2)
    val, _ = procedural_batch(4, SIZE, seed=3)
    return domains_from_arrays(photos, animes, val)


@pytest.fixture(scope="module")
def domains() -> Domains:
    return tiny_domains()


def tiny(**overrides: object) -> TrainConfig:
    base = {"data.image_size": SIZE, "data.val_count": 2, "model.d_ch": 8, "schedule.epochs": 5,
            "schedule.init_epochs": 1, "schedule.batch_size": 2, "schedule.steps_per_epoch": 4,
            "schedule.log_every": 1, "eval.enabled": False, "runtime.threads": 2,
            "backbone.weights": "random"}  # the default (imagenet) needs a download the tests cannot make
    return with_overrides(TrainConfig(), {**base, **overrides})


class Recorder:
    """A member's log: its loss values per step; sets `flag` once `stop_at` is logged."""

    def __init__(self, stop_at: int | None = None, flag: StopFlag | None = None) -> None:
        self.losses: Losses = {}
        self.stop_at, self.flag = stop_at, flag

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        values = {k: v for k, v in metrics.items() if k.startswith("loss/")}
        if values:
            self.losses[step] = values
        if self.stop_at is not None and step >= self.stop_at and self.flag is not None:
            self.flag.set()


def joined(configs: Sequence[TrainConfig], out_dirs: Sequence[Path], logs: Sequence[LogFn],
           on_eval: Sequence[EvalHook | None] | None = None, on_end: Sequence[EndHook | None] | None = None
           ) -> list[Joiner]:
    """One joiner per config, from parallel lists: the shape these tests build their arrays in."""
    return [Joiner(config, Path(out_dirs[i]), logs[i], on_eval[i] if on_eval else None, None,
                   on_end[i] if on_end else None) for i, config in enumerate(configs)]


def assert_same_losses(got: Losses, want: Losses, rel: float = 1e-4) -> None:
    assert got.keys() == want.keys()
    for step, values in want.items():
        assert got[step].keys() == values.keys(), f"step {step}"
        for key, value in values.items():
            message = f"step {step} {key}: {got[step][key]} vs {value}"
            assert abs(got[step][key] - value) <= rel * max(abs(value), 1e-8), message


def run_alone(config: TrainConfig, out_dir: Path, domains: Domains) -> Losses:
    log = Recorder()
    assert train(config, out_dir, log, domains=domains).status == Outcome.FINISHED
    return log.losses


def original_loop(config: TrainConfig, domains: Domains, steps: int) -> Losses:
    """The one-trial algorithm written out with the one-trial steps: global RNG, G run again for each step."""
    cpu = torch.device("cpu")
    streams = DataStreams(domains, config.schedule.batch_size, config.seed, config.loss.smooth_target, cpu)
    backbone = build_backbone(config.backbone, config.seed)
    models = build_models(config, cpu)  # seeds the global RNG, which the penalty and dropout then draw from
    init_steps = config.schedule.init_epochs * (config.schedule.steps_per_epoch or 1)
    out: Losses = {}
    for step in range(steps):
        batch = streams.next()
        if step < init_steps:
            values = init_step(models, backbone, batch, compute_targets(backbone, batch, "gray", need_style=False),
                               config)
        else:
            targets = compute_targets(backbone, batch, config.loss.style_target)
            values = d_step(models, batch, config) if (step - init_steps) % config.optim.g_steps_per_d == 0 else {}
            values = {**values, **g_step(models, backbone, batch, targets, config)}
        out[step + 1] = {k: float(v) for k, v in values.items()}
    return out


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory, domains: Domains) -> list[Losses]:
    """Each grid trial trained by itself, one after the other."""
    root = tmp_path_factory.mktemp("alone")
    return [run_alone(tiny(**overrides), root / str(i), domains) for i, overrides in enumerate(GRID)]


@pytest.mark.slow
def test_a_trial_alone_logs_what_the_one_trial_steps_compute(alone: list[Losses], domains: Domains) -> None:
    # one G forward per step and the per-trial generator change nothing: the original loop, to fp rounding
    for i in (0, 2):  # lsgan; wgan-gp (its penalty draws) with a D step every 2nd G step
        assert_same_losses(alone[i], original_loop(tiny(**GRID[i]), domains, STEPS))


@pytest.mark.slow
def test_an_array_logs_each_trials_own_losses(tmp_path: Path, alone: list[Losses], domains: Domains) -> None:
    logs = [Recorder() for _ in GRID]
    results = train_array(joined([tiny(**o) for o in GRID], [tmp_path / str(i) for i in range(len(GRID))], logs),
                          domains=domains)
    assert [r.status for r in results] == [Outcome.FINISHED] * len(GRID)
    for i, log in enumerate(logs):
        assert_same_losses(log.losses, alone[i])
        assert (tmp_path / str(i) / "generator.pt").exists() and (tmp_path / str(i) / "samples" / "final.png").exists()


@pytest.mark.slow
def test_dropout_and_penalty_draws_stay_per_member(tmp_path: Path, domains: Domains) -> None:
    configs = [tiny(**{"model.d_dropout": 0.2, "loss.gan_type": "wgan-gp", "schedule.epochs": 3}),
               tiny(**{"model.d_dropout": 0.2, "loss.gan_type": "dragan", "schedule.epochs": 3, "seed": 1})]
    logs = [Recorder(), Recorder()]
    train_array(joined(configs, [tmp_path / "a", tmp_path / "b"], logs), domains=domains)
    for config, log in zip(configs, logs, strict=True):
        assert_same_losses(log.losses, original_loop(config, domains, 12))


@pytest.mark.slow
def test_a_checkpoint_in_the_middle_resumes_alone_and_in_another_array(tmp_path: Path, alone: list[Losses],
                                                                       domains: Domains) -> None:
    configs = [tiny(**o) for o in GRID[:3]]
    flag = StopFlag()
    first = [Recorder(stop_at=10, flag=flag), Recorder(), Recorder()]
    dirs = [tmp_path / str(i) for i in range(3)]
    results = train_array(joined(configs, dirs, first), domains=domains, stop=flag)  # as SIGINT would, mid-epoch
    assert [(r.status, r.step) for r in results] == [(Outcome.INTERRUPTED, 10)] * 3
    assert all((d / "checkpoint.pt").exists() for d in dirs)

    # the first alone; the other two with a fresh trial, which is 10 steps behind them
    resumed_alone = Recorder()
    assert train(configs[0], dirs[0], resumed_alone, domains=domains, resume=True).step == STEPS
    fresh = tiny(**GRID[3])
    second = [Recorder(), Recorder(), Recorder()]
    results = train_array(joined([configs[1], configs[2], fresh], [dirs[1], dirs[2], tmp_path / "fresh"], second),
                          domains=domains, resume=True)
    assert [(r.status, r.step) for r in results] == [(Outcome.FINISHED, STEPS)] * 3
    assert_same_losses({**first[0].losses, **resumed_alone.losses}, alone[0])
    for i in (1, 2):
        assert_same_losses({**first[i].losses, **second[i - 1].losses}, alone[i])
    assert_same_losses(second[2].losses, alone[3])


class StubEvaluator:
    def evaluate(self, outputs: torch.Tensor) -> dict[str, float]:
        return {"eval/stub": float(outputs.float().mean())}

    def info(self) -> dict[str, str]:
        return {"eval/evaluator": "stub"}

    def anchors(self) -> dict[str, float]:
        return {}


def test_diverged_and_pruned_members_leave_and_the_others_go_on_unchanged(
        tmp_path: Path, domains: Domains, monkeypatch: pytest.MonkeyPatch) -> None:
    # one backbone for all (backbone.seed): the diverging member's NaN images go through the same backbone passes
    survivor = tiny(**{"backbone.seed": 0})
    diverging = tiny(**{"backbone.seed": 0, "seed": 1, "loss.style_weight": 7.0})
    pruned = tiny(**{"backbone.seed": 0, "seed": 2, "schedule.eval_every": 1})
    want = run_alone(survivor, tmp_path / "alone", domains)

    real_g_terms, calls = steps_module.g_terms, {"n": 0}

    def exploding(config: TrainConfig, *args: object) -> dict[str, torch.Tensor]:
        terms = real_g_terms(config, *args)  # type: ignore[arg-type]
        if config.loss.style_weight == 7.0:
            calls["n"] += 1
            if calls["n"] >= 3:  # its third G step, step index 6 (4 init steps first)
                terms["color"] = terms["color"] * float("nan")
        return terms

    monkeypatch.setattr(steps_module, "g_terms", exploding)
    # the loss-balance measurement computes g_terms too, without training: its calls would shift the count
    monkeypatch.setattr(balance, "measure", lambda *args, **kwargs: {})
    logs = [Recorder(), Recorder(), Recorder()]
    results = train_array(joined([survivor, diverging, pruned], [tmp_path / n for n in ("s", "d", "p")], logs,
                                 on_eval=[None, None, lambda metrics, step: step >= 8]),
                          domains=domains, evaluator=StubEvaluator())
    assert (results[0].status, results[0].step) == (Outcome.FINISHED, STEPS)
    assert (results[1].status, results[1].diverged_step, results[1].step) == (Outcome.DIVERGED, 6, 7)
    assert max(logs[1].losses) == 7  # logged its NaN (log_every 1), then left: no step after it
    assert (results[2].status, results[2].step) == (Outcome.PRUNED, 8)
    assert max(logs[2].losses) == 8
    assert "generator" not in results[1].artifacts and "generator" not in results[2].artifacts
    assert_same_losses(logs[0].losses, want, rel=0.0)  # to the last bit


def test_a_freed_slot_is_refilled_and_the_newcomer_logs_its_own_run(
        tmp_path: Path, alone: list[Losses], domains: Domains) -> None:
    # member 0 is pruned at step 8; its slot takes GRID[1], which then trains all 20 steps beside member 2,
    # bit for bit as alone (looped fusion), while the old member's models are dropped from the array
    first = [tiny(**GRID[0], **{"schedule.eval_every": 1}), tiny(**GRID[2])]
    logs = [Recorder(), Recorder()]
    newcomer_log, ended, asked = Recorder(), [], []

    def refill(free: int) -> list[array_module.Joiner]:
        asked.append(free)
        if len(asked) > 1:
            return []  # the queue is empty now
        return [array_module.Joiner(tiny(**GRID[1]), tmp_path / "new", newcomer_log,
                                    on_end=lambda result: ended.append(("new", result.status, result.step)))]

    results = train_array(joined(first, [tmp_path / "a", tmp_path / "b"], logs,
                                 on_eval=[lambda metrics, step: step >= 8, None],
                                 on_end=[lambda r: ended.append(("a", r.status, r.step)),
                                         lambda r: ended.append(("b", r.status, r.step))]),
                          domains=domains, evaluator=StubEvaluator(), refill=refill)
    assert [(r.status, r.step) for r in results] == [(Outcome.PRUNED, 8), (Outcome.FINISHED, STEPS),
                                                     (Outcome.FINISHED, STEPS)]
    # each end is reported as it happens: the pruned member first, the newcomer 8 steps after the other
    assert ended == [("a", Outcome.PRUNED, 8), ("b", Outcome.FINISHED, STEPS), ("new", Outcome.FINISHED, STEPS)]
    assert asked[0] == 1
    assert_same_losses(newcomer_log.losses, alone[1], rel=0.0)
    assert_same_losses(logs[1].losses, alone[2], rel=0.0)
    assert (tmp_path / "new" / "generator.pt").exists()


def test_members_that_drew_the_same_images_share_their_backbone_targets(
        tmp_path: Path, domains: Domains, monkeypatch: pytest.MonkeyPatch) -> None:
    seen_images = {"n": 0}

    def counted(cfg: object, seed: int) -> torch.nn.Module:
        backbone = build_backbone(cfg, seed)  # type: ignore[arg-type]
        backbone.register_forward_hook(
            lambda module, args, out: seen_images.__setitem__("n", seen_images["n"] + args[0].shape[0]))
        return backbone

    monkeypatch.setattr(array_module, "build_backbone", counted)
    monkeypatch.setattr(balance, "measure", lambda *args, **kwargs: {})  # it runs the backbone, not training
    seen: dict[int, int] = {}
    short = {"schedule.epochs": 2, "schedule.steps_per_epoch": 1}
    # same seed, different weights: one batch, one backbone. Init step: 1 photo batch + 2 fakes; GAN step: photo
    # and (gray) style target once, 2 fakes. In images of batch 2.
    train_array(joined([tiny(**short), tiny(**short, **{"loss.style_weight": 10.0})], [tmp_path / "a", tmp_path / "b"],
                       [lambda metrics, step: seen.__setitem__(step, seen_images["n"]), lambda metrics, step: None]),
                domains=domains)
    assert seen == {1: 3 * 2, 2: (3 + 4) * 2}


def test_array_key_is_shared_exactly_by_configs_that_can_be_fused(tmp_path: Path, domains: Domains) -> None:
    base = tiny()
    for overrides in GRID + [{"schedule.log_every": 5, "schedule.eval_every": 2, "data.val_count": 3,
                              "eval.enabled": True, "loss.d_weights.smooth": 1.0, "optim.g_steps_per_d": 3}]:
        assert array_key(tiny(**overrides)) == array_key(base), overrides
    for path, value in (("model.generator", "v2"), ("model.generator_sn", True), ("model.resize", "half_pixel"),
                        ("model.d_ch", 16), ("model.d_layers", 2), ("model.d_sn", False), ("model.d_dropout", 0.1),
                        ("backbone.arch", "mobilenet_v2"), ("backbone.seed", 3), ("backbone.preprocess", "signed"),
                        ("data.image_size", 64), ("data.style", "Paprika"), ("data.root", "elsewhere"),
                        ("schedule.batch_size", 4), ("schedule.epochs", 6), ("schedule.init_epochs", 2),
                        ("schedule.steps_per_epoch", 5), ("runtime.amp", False), ("runtime.device", "cpu")):
        assert array_key(tiny(**{path: value})) != array_key(base), path
    with pytest.raises(ValueError, match="differ in model.d_ch"):
        train_array(joined([base, tiny(**{"model.d_ch": 16})], [tmp_path / "a", tmp_path / "b"], [print, print]),
                    domains=domains)


@pytest.mark.parametrize("fuse", ["grouped", "looped"])
def test_both_fusions_take_the_same_gan_step(tmp_path: Path, domains: Domains, fuse: str) -> None:
    """Grouped kernels round differently from a trial's own (and GAN training amplifies rounding within a few
    steps), so the grouped array is compared on one GAN step from the same checkpoint: the first after init."""
    configs = [tiny(**o) for o in GRID]
    dirs = [tmp_path / "start" / str(i) for i in range(len(GRID))]
    flag = StopFlag()
    train_array(joined(configs, dirs, [Recorder(stop_at=4, flag=flag)] + [Recorder() for _ in GRID[1:]]),
                domains=domains, stop=flag)
    shutil.copytree(tmp_path / "start", tmp_path / "copy")
    want = [Recorder() for _ in GRID]
    for config, out_dir, log in zip(configs, dirs, want, strict=True):
        one = StopFlag()
        log.flag, log.stop_at = one, 5
        train(config, out_dir, log, domains=domains, resume=True, stop=one)
    flag = StopFlag()
    got = [Recorder(stop_at=5, flag=flag) for _ in GRID]
    train_array(joined(configs, [tmp_path / "copy" / str(i) for i in range(len(GRID))], got), domains=domains,
                resume=True, stop=flag, fuse=fuse)  # type: ignore[arg-type]
    for g, w in zip(got, want, strict=True):
        assert_same_losses(g.losses, w.losses)


@pytest.mark.parametrize("net", ["v1", "v2", "d"])
def test_a_grouped_network_is_each_members_own(net: str) -> None:
    """Outputs, parameter gradients, spectral-norm vectors and dropout masks of each member's own module."""
    def build(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_generator(net) if net != "d" else build_discriminator(8, 3, spectral_norm=True, dropout=0.3)

    own, grouped = [build(s) for s in (0, 1)], [build(s) for s in (0, 1)]
    images = [torch.rand(2, 3, SIZE, SIZE) * 2 - 1 for _ in own]
    rng_states = [torch.Generator().manual_seed(10 + k).get_state() for k in range(2)]
    want = []
    for module, image, state in zip(own, images, rng_states, strict=True):
        torch.set_rng_state(state)  # what Dropout2d draws from in a trial's own run
        out = module(image)
        out.square().mean().backward()
        want.append(out.detach())
    rngs = [torch.Generator().set_state(s) for s in rng_states]
    outs = FusedNet(grouped[0], "grouped")(grouped, images, rngs)
    torch.stack([o.square().mean() for o in outs]).sum().backward()

    def close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-4) -> bool:  # in norm: fp32 rounding
        return bool((got - want).norm() <= rel * want.norm())

    for k in range(2):
        assert close(outs[k], want[k])
        state_own, state_grouped = own[k].state_dict(), grouped[k].state_dict()
        for name, tensor in state_own.items():  # the power iteration's u, v included
            assert close(state_grouped[name], tensor), name
        # backward through v1's 30 layers on 8 x 8 maps: grouped and plain kernels differ by ~2e-4
        assert close(torch.cat([p.grad.flatten() for p in grouped[k].parameters()]),
                     torch.cat([p.grad.flatten() for p in own[k].parameters()]), rel=1e-3)
