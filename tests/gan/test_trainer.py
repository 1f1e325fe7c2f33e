"""Tiny real training runs on 32 px procedural data: init lowers content loss, resume is exact,
every GAN type trains, NaN ends the run as diverged, samples and checkpoints are written."""

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from ablation.config import GAN_TYPES, BackboneConfig, TrainConfig, with_overrides
from ablation.data.demo import procedural_batch
from ablation.data.streams import DataStreams, Domains, domains_from_arrays
from ablation.errors import UserError
from ablation.gan import array as array_module
from ablation.gan import balance
from ablation.gan import steps as steps_module
from ablation.gan.backbone import build_backbone
from ablation.gan.checkpoint import load_checkpoint, save_checkpoint
from ablation.gan.trainer import StopFlag, build_models, train

SIZE = 32


@pytest.fixture(scope="module")
def domains() -> Domains:
    photos, _ = procedural_batch(12, SIZE, seed=1)
    _, animes = procedural_batch(12, SIZE, seed=2)
    val, val_anime = procedural_batch(4, SIZE, seed=3)
    ref_a, ref_b = procedural_batch(8, SIZE, seed=4)
    return domains_from_arrays(photos, animes, val, style_ref=ref_b, val_target=val_anime)


def tiny(**overrides: object) -> TrainConfig:
    base = {"data.image_size": SIZE, "data.val_count": 3, "model.d_ch": 16, "schedule.epochs": 3,
            "schedule.init_epochs": 1, "schedule.batch_size": 2, "schedule.steps_per_epoch": 3,
            "schedule.log_every": 1, "eval.enabled": False, "runtime.threads": 2,
            "backbone.weights": "random"}  # the default (imagenet) needs a download the tests cannot make
    return with_overrides(TrainConfig(), {**base, **overrides})


class Recorder:
    def __init__(self, stop_at: int | None = None, flag: StopFlag | None = None) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.stop_at, self.flag = stop_at, flag

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))
        if self.stop_at is not None and step >= self.stop_at and self.flag is not None:
            self.flag.set()

    def losses(self) -> dict[int, dict[str, float]]:
        return {step: {k: v for k, v in m.items() if k.startswith("loss/")} for step, m in self.rows}


def test_init_phase_lowers_content_loss(tmp_path: Path, domains: Domains) -> None:
    config = tiny(**{"schedule.epochs": 2, "schedule.init_epochs": 1, "schedule.steps_per_epoch": 12,
                     "optim.init_lr": 2e-3})
    log = Recorder()
    result = train(config, tmp_path, log, domains=domains)
    content = [m["loss/init/content"] for _, m in log.rows if "loss/init/content" in m]
    assert len(content) == 12
    assert np.mean(content[-3:]) < 0.7 * np.mean(content[:3])
    assert result.status == "finished" and result.step == 24


def test_logs_raw_terms_weighted_totals_and_perf(tmp_path: Path, domains: Domains) -> None:
    log = Recorder()
    train(tiny(), tmp_path, log, domains=domains)
    gan_row = next(m for _, m in reversed(log.rows) if "loss/g/adv" in m)  # the last row of losses
    for key in ("loss/g/adv", "loss/g/content", "loss/g/style", "loss/g/color", "loss/g/total", "loss/d/real",
                "loss/d/fake", "loss/d/gray", "loss/d/smooth", "loss/d/total", "lr/g", "lr/d",
                "perf/step_s", "perf/images_per_s"):
        assert key in gan_row, key
    assert gan_row["lr/g"] == pytest.approx(8e-5) and gan_row["lr/d"] == pytest.approx(1.6e-4)
    # the D total is the weighted sum of its raw terms (x300), per logged step (log_every=1)
    expected = 300 * (gan_row["loss/d/real"] + gan_row["loss/d/fake"] + gan_row["loss/d/gray"]
                      + 0.1 * gan_row["loss/d/smooth"])
    assert gan_row["loss/d/total"] == pytest.approx(expected, rel=1e-4)


def test_resume_reproduces_uninterrupted_losses_exactly(tmp_path: Path, domains: Domains) -> None:
    config = tiny()
    full = Recorder()
    train(config, tmp_path / "full", full, domains=domains)

    flag = StopFlag()
    first = Recorder(stop_at=5, flag=flag)  # mid-epoch (3 steps per epoch), inside the GAN phase
    interrupted = train(config, tmp_path / "split", first, domains=domains, stop=flag)
    assert interrupted.status == "interrupted" and interrupted.step == 5
    assert (tmp_path / "split" / "checkpoint.pt").exists()
    second = Recorder()
    resumed = train(config, tmp_path / "split", second, domains=domains, resume=True)
    assert resumed.status == "finished" and resumed.step == 9
    split = {**first.losses(), **second.losses()}
    assert split.keys() == full.losses().keys()
    for step, values in full.losses().items():
        assert split[step] == values, f"step {step}"


@pytest.mark.parametrize("gan_type", GAN_TYPES)
def test_every_gan_type_trains_with_finite_losses(tmp_path: Path, domains: Domains, gan_type: str) -> None:
    log = Recorder()
    result = train(tiny(**{"loss.gan_type": gan_type, "schedule.epochs": 2, "schedule.steps_per_epoch": 2}),
                   tmp_path, log, domains=domains)
    assert result.status == "finished"
    gan_rows = [m for _, m in log.rows if "loss/d/total" in m]
    assert gan_rows and all(np.isfinite(v) for m in gan_rows for v in m.values())
    if gan_type in ("wgan-gp", "wgan-lp", "dragan"):
        assert any(m["loss/d/gp"] != 0.0 for m in gan_rows)
    else:
        assert all(m["loss/d/gp"] == 0.0 for m in gan_rows)


def test_nan_loss_ends_run_as_diverged_at_its_step(tmp_path: Path, domains: Domains,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real_color_loss = steps_module.losses.color_loss
    calls = {"n": 0}

    def exploding(real: torch.Tensor, fake: torch.Tensor, scale: str = "unit") -> torch.Tensor:
        calls["n"] += 1
        value = real_color_loss(real, fake, scale)
        return value * float("nan") if calls["n"] >= 2 else value

    monkeypatch.setattr(steps_module.losses, "color_loss", exploding)
    config = tiny(**{"schedule.log_every": 4})
    result = train(config, tmp_path, Recorder(), domains=domains)
    # 3 init steps (0-2), then GAN steps 3, 4: the second G step (index 4) is the first NaN
    assert result.status == "diverged" and result.diverged_step == 4
    assert result.status_text == "diverged at step 4"
    assert (tmp_path / "samples" / "final.png").exists()  # samples are kept
    assert "generator" not in result.artifacts  # no weights for a diverged run


def test_samples_gif_and_side_by_side(tmp_path: Path, domains: Domains) -> None:
    result = train(tiny(), tmp_path, Recorder(), domains=domains)
    gif = iio.imread(result.artifacts["gif"], index=None)
    assert gif.shape[0] == 3  # one frame per epoch
    assert gif.shape[1:3] == (2 * SIZE, 3 * SIZE)  # input row over output row, 3 val photos
    sheet = iio.imread(result.artifacts["side_by_side"])
    assert sheet.shape[:2] == (3 * SIZE, 2 * SIZE)  # input | output per val photo
    assert (tmp_path / "generator.pt").exists()
    state = torch.load(tmp_path / "generator.pt", weights_only=True)
    assert sum(v.numel() for k, v in state.items() if "weight" in k or "bias" in k) == 3_956_096


def test_backbone_gets_no_parameter_gradients(tmp_path: Path, domains: Domains) -> None:
    config = tiny()
    backbone = build_backbone(config.backbone, 0)
    assert all(not p.requires_grad for p in backbone.parameters())


def test_run_folder_records_the_backbone_and_its_weights_hash(tmp_path: Path, domains: Domains) -> None:
    config = tiny(**{"schedule.epochs": 2, "schedule.steps_per_epoch": 1, "seed": 5})
    result = train(config, tmp_path, Recorder(), domains=domains)
    written = json.loads((tmp_path / "backbone.json").read_text())
    # the hash of the weights the run really used: random weights are drawn from the trial seed
    assert written["hash"] == build_backbone(config.backbone, 5).weights_hash
    assert written["hash"] != build_backbone(config.backbone, 6).weights_hash
    assert written["arch"] == config.backbone.arch and written["seed"] == "5"
    assert result.backbone_info == written


def test_evaluation_metrics_logged_at_the_end(tmp_path: Path, domains: Domains) -> None:
    config = tiny(**{"eval.enabled": True, "eval.image_size": 32, "eval.kid_subsets": 5,
                     "eval.kid_subset_size": 4, "schedule.epochs": 2})
    log = Recorder()
    result = train(config, tmp_path, log, domains=domains)
    assert "eval/style/kid_rand" in result.metrics and "eval/content/ssim_luma_blur" in result.metrics
    assert "eval/content/pgt_psnr" in result.metrics
    eval_steps = [step for step, m in log.rows if "eval/style/kid_rand" in m]
    assert eval_steps == [result.total_steps]


def test_writeup_colour_defect_shows_in_the_first_logged_raw_term(tmp_path: Path, domains: Domains) -> None:
    """The write-up's YUV-on-0-255 colour loss is orders of magnitude above the official one at the first
    GAN step, which is logged on its own so the raw scales are visible before any averaging."""
    first_gan = {}
    for scale in ("unit", "255"):
        log = Recorder()
        train(tiny(**{"loss.color_scale": scale, "schedule.epochs": 2, "schedule.log_every": 10}),
              tmp_path / scale, log, domains=domains)
        rows = dict(log.rows)
        assert 4 in rows  # init_steps + 1: the first G step is logged although log_every is 10
        first_gan[scale] = rows[4]["loss/g/color"]
    assert first_gan["255"] > 100 * first_gan["unit"]


# ---------------------------------------------------------------- precision: recorded, and a resume never mixes


def test_run_records_its_precision(tmp_path: Path, domains: Domains) -> None:
    result = train(tiny(**{"schedule.epochs": 2, "schedule.steps_per_epoch": 1}), tmp_path, Recorder(),
                   domains=domains)
    assert result.precision == "fp32"  # CPU: autocast never runs, whatever runtime.amp says
    assert json.loads((tmp_path / "run.json").read_text()) == {"precision": "fp32", "device": "cpu"}
    assert load_checkpoint(tmp_path / "checkpoint.pt")["precision"] == "fp32"  # type: ignore[index]


def _interrupted_run(out_dir: Path, domains: Domains) -> TrainConfig:
    config = tiny(**{"schedule.epochs": 2, "schedule.steps_per_epoch": 2})
    flag = StopFlag()
    assert train(config, out_dir, Recorder(stop_at=1, flag=flag), domains=domains, stop=flag).step == 1
    return config


def test_resume_refuses_a_checkpoint_written_in_bf16(tmp_path: Path, domains: Domains) -> None:
    config = _interrupted_run(tmp_path, domains)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    assert state is not None
    save_checkpoint(path, {**state, "precision": "bf16"})  # as a CUDA run with runtime.amp would have written it
    with pytest.raises(UserError) as info:
        train(config, tmp_path, Recorder(), domains=domains, resume=True)
    assert info.value.lines == [
        f"{path}: runtime.amp / precision: expected 'bf16' (the precision this checkpoint was written in: resume "
        "with runtime.amp: true on a CUDA device with bf16, or use a new --out folder), got 'fp32'"]
    assert load_checkpoint(path)["step"] == 1  # type: ignore[index]  # untouched


def test_checkpoint_without_precision_resumes_as_fp32(tmp_path: Path, domains: Domains) -> None:
    config = _interrupted_run(tmp_path, domains)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    assert state is not None
    save_checkpoint(path, {k: v for k, v in state.items() if k != "precision"})  # written before the field
    result = train(config, tmp_path, Recorder(), domains=domains, resume=True)
    assert result.status == "finished" and result.step == 4 and result.precision == "fp32"


# ---------------------------------------------------------------- the init step's backbone passes


def test_init_step_sees_photo_and_fake_and_a_gan_step_also_the_style_target(
        tmp_path: Path, domains: Domains, monkeypatch: pytest.MonkeyPatch) -> None:
    seen_images = {"n": 0}

    def counted(cfg: BackboneConfig, seed: int) -> torch.nn.Module:
        backbone = build_backbone(cfg, seed)
        backbone.register_forward_hook(
            lambda module, args, out: seen_images.__setitem__("n", seen_images["n"] + args[0].shape[0]))
        return backbone

    monkeypatch.setattr(array_module, "build_backbone", counted)
    monkeypatch.setattr(balance, "measure", lambda *args, **kwargs: {})  # it runs the backbone, not training
    seen: dict[int, int] = {}
    # 1 init step (photo, fake), then 1 GAN step (photo, style target, fake); D's step uses no backbone.
    # Counted in images (batch 2): the no-grad targets run as one pass
    train(tiny(**{"schedule.epochs": 2, "schedule.steps_per_epoch": 1}), tmp_path,
          lambda metrics, step: seen.__setitem__(step, seen_images["n"]), domains=domains)
    assert seen == {1: 2 * 2, 2: 5 * 2}


def test_init_loss_is_the_content_loss_computed_directly(tmp_path: Path, domains: Domains) -> None:
    config = tiny(**{"schedule.epochs": 2, "schedule.steps_per_epoch": 1})
    log = Recorder()
    train(config, tmp_path, log, domains=domains)
    first = dict(log.rows)[1]
    # the same first batch, initial G and backbone, the loss written out: L1 of conv4_4 features, x1.5
    cpu = torch.device("cpu")
    batch = DataStreams(domains, config.schedule.batch_size, config.seed, config.loss.smooth_target, cpu).next()
    generator = build_models(config, cpu).generator
    backbone = build_backbone(config.backbone, config.seed)
    with torch.no_grad():
        feat_photo, feat_fake = backbone(batch.real_photo), backbone(generator(batch.real_photo))
        expected = (feat_photo - feat_fake).abs().mean().item()
    assert first["loss/init/content"] == pytest.approx(expected, rel=1e-5)
    assert first["loss/init/total"] == pytest.approx(1.5 * expected, rel=1e-5)
