"""The cycle objectives (model.objective "animegan+cycle" and "cyclegan"): their losses against hand-computed
values, the image pool, the added networks, the learning-rate decay, exact resume and fusion in an array."""

from pathlib import Path

import pytest
import torch
from test_array import joined
from test_trainer import SIZE, Recorder, tiny

from ablation.config import TrainConfig, cell_hash, with_overrides
from ablation.data.demo import procedural_batch
from ablation.data.streams import Domains, domains_from_arrays
from ablation.gan import losses
from ablation.gan.array import train_array
from ablation.gan.array_rules import array_key
from ablation.gan.checkpoint import load_checkpoint
from ablation.gan.cycle_steps import ImagePool
from ablation.gan.init_cache import init_key
from ablation.gan.steps import decay_factor
from ablation.gan.trainer import StopFlag, build_models, train

CYCLE = {"model.objective": "animegan+cycle", "loss.identity_weight": 1.0, "optim.pool_size": 3}
CYCLEGAN = {"model.objective": "cyclegan", "loss.identity_weight": 5.0, "optim.pool_size": 3,
            "optim.lr_decay": "linear", "schedule.init_epochs": 0}


@pytest.fixture(scope="module")
def domains() -> Domains:
    photos, _ = procedural_batch(12, SIZE, seed=1)
    _, animes = procedural_batch(12, SIZE, seed=2)
    val, _ = procedural_batch(4, SIZE, seed=3)
    _, style_ref = procedural_batch(8, SIZE, seed=4)  # held-out anime: the anime -> photo sheet's inputs
    return domains_from_arrays(photos, animes, val, style_ref=style_ref)


def test_cycle_and_identity_losses_are_the_l1_means_of_both_directions() -> None:
    photo = torch.tensor([0.0, 1.0, -1.0, 0.5]).reshape(1, 1, 2, 2)
    rec_photo = torch.tensor([0.5, 1.0, 0.0, 0.5]).reshape(1, 1, 2, 2)  # |diff| 0.5, 0, 1, 0 -> mean 0.375
    anime = torch.zeros(1, 1, 2, 2)
    rec_anime = torch.tensor([0.2, -0.2, 0.2, -0.2]).reshape(1, 1, 2, 2)  # mean 0.2
    assert losses.cycle_loss(photo, rec_photo, anime, rec_anime).item() == pytest.approx(0.575)
    # identity: G(a) against a, F(p) against p
    assert losses.identity_loss(anime, rec_anime, photo, rec_photo).item() == pytest.approx(0.575)
    assert losses.identity_loss(anime, anime, photo, photo).item() == 0.0


def test_pair_terms_are_lsgans_real_and_fake_terms() -> None:
    d_real, d_fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    terms = losses.discriminator_pair_losses("lsgan", d_real, d_fake)
    assert terms["real"].item() == pytest.approx((0 + 1) / 2)  # mean((d - 1)²)
    assert terms["fake"].item() == pytest.approx((0 + 4) / 2)  # mean(d²)


def _pool_run(seed: int, steps: int) -> list[float]:
    """A pool of 4 filled with 0..3, then fed 100, 101, ...: what it returns for each."""
    pool, rng = ImagePool(4), torch.Generator().manual_seed(seed)
    first = torch.arange(4.0).reshape(4, 1, 1, 1)
    assert torch.equal(pool.query(first, rng), first)  # filling: every new image comes back, and is stored
    out = [pool.query(torch.full((1, 1, 1, 1), 100.0 + step), rng).item() for step in range(steps)]
    assert len(pool.images) == 4
    return out


def test_the_image_pool_fills_then_returns_a_past_image_half_the_time() -> None:
    returned = _pool_run(seed=0, steps=200)
    past = [value for step, value in enumerate(returned) if value != 100.0 + step]
    assert 80 <= len(past) <= 120  # p = 1/2 over 200 draws: 100 ± 2.8σ
    assert all(value <= 100.0 + step for step, value in enumerate(returned))  # never a later image
    assert set(past) & {0.0, 1.0, 2.0, 3.0}  # the first images come back too
    assert _pool_run(seed=0, steps=200) == returned  # seeded: the same draws
    assert _pool_run(seed=1, steps=200) != returned


def test_a_pool_of_size_zero_passes_images_through() -> None:
    images = torch.randn(3, 3, 4, 4)
    assert ImagePool(0).query(images, torch.Generator()) is images


def test_the_cycle_objectives_add_a_generator_and_a_discriminator_of_the_same_architecture() -> None:
    def count(net: torch.nn.Module) -> int:
        return sum(p.numel() for p in net.parameters())

    plain = build_models(tiny(), torch.device("cpu"))
    cycle = build_models(tiny(**CYCLE), torch.device("cpu"))
    assert plain.generator_back is None and plain.discriminator_photo is None
    assert count(cycle.generator_back) == count(cycle.generator) == count(plain.generator) == 3_956_096  # v1
    assert count(cycle.discriminator_photo) == count(cycle.discriminator) == count(plain.discriminator)
    # G and D are drawn first: the same as the "animegan" objective's, seed by seed, so the init phase is shared
    for mine, theirs in ((cycle.generator, plain.generator), (cycle.discriminator, plain.discriminator)):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(),
                                                      strict=True))
    assert init_key(tiny(**CYCLE)) == init_key(tiny())
    # both optimisers cover both networks of their kind
    assert sum(p.numel() for g in cycle.opt_g.param_groups for p in g["params"]) == 2 * 3_956_096
    resnet = build_models(tiny(**CYCLEGAN, **{"model.generator": "resnet9", "model.discriminator": "patchgan",
                                              "model.d_sn": False, "model.d_ch": 64}), torch.device("cpu"))
    assert count(resnet.generator_back) == 11_378_179 and count(resnet.discriminator_photo) == 2_764_737


def test_new_fields_at_their_earlier_value_keep_a_cells_identity() -> None:
    # a study stored before these fields existed keeps its keys: the hash below is the one it had then
    assert cell_hash(TrainConfig()) == "9253b56ad0df"
    assert cell_hash(with_overrides(TrainConfig(), {"loss.cycle_weight": 5.0})) != "9253b56ad0df"


def test_linear_decay_keeps_the_rate_for_half_the_gan_phase_then_falls_to_a_step_above_zero() -> None:
    config = tiny(**{"optim.lr_decay": "linear"})
    factors = [decay_factor(config, step, 8) for step in range(8)]
    assert factors == pytest.approx([1, 1, 1, 1, 4 / 5, 3 / 5, 2 / 5, 1 / 5])
    assert decay_factor(tiny(), 7, 8) == 1.0


def test_a_pool_with_the_animegan_objective_is_refused_in_one_line() -> None:
    with pytest.raises(Exception, match="optim.pool_size: expected 0 with model.objective animegan"):
        tiny(**{"optim.pool_size": 50})


@pytest.mark.slow  # 2 x 18 steps of two generators and two discriminators: about 30 s
@pytest.mark.parametrize("objective", [CYCLE, CYCLEGAN], ids=["animegan+cycle", "cyclegan"])
def test_resume_of_a_cycle_objective_reproduces_every_loss_exactly(tmp_path: Path, domains: Domains,
                                                                    objective: dict) -> None:
    config = tiny(**objective)
    full = Recorder()
    result = train(config, tmp_path / "full", full, domains=domains)
    assert result.status == "finished"
    assert {"loss/g/cycle", "loss/g/identity", "loss/g/adv_photo", "loss/d_photo/total"} <= set(full.rows[-1][1])
    flag = StopFlag()
    first = Recorder(stop_at=5, flag=flag)  # mid-epoch, inside the GAN phase, the pools full (3 images)
    assert train(config, tmp_path / "split", first, domains=domains, stop=flag).step == 5
    state = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert {"generator_back", "discriminator_photo"} <= set(state)
    assert [len(p["images"]) for p in state["pools"].values()] == [3, 3]
    second = Recorder()
    assert train(config, tmp_path / "split", second, domains=domains, resume=True).status == "finished"
    split = {**first.losses(), **second.losses()}
    assert split == full.losses()
    if config.optim.lr_decay == "linear":  # 9 GAN steps: 4 at the rate, then 5/6 ... 1/6 of it
        assert full.rows[-1][1]["lr/g"] == pytest.approx(config.optim.g_lr / 6)
    # the anime -> photo direction is a sample sheet of its own
    assert (tmp_path / "full" / "samples" / "anime_to_photo.png").exists()
    assert result.artifacts["anime_to_photo"].name == "anime_to_photo.png"


@pytest.mark.slow
def test_cycle_members_fuse_and_each_logs_what_it_logs_alone(tmp_path: Path, domains: Domains) -> None:
    configs = [tiny(**CYCLE, seed=0), tiny(**{**CYCLE, "loss.cycle_weight": 2.0, "loss.identity_weight": 0.0},
                                           seed=1)]
    assert array_key(configs[0]) == array_key(configs[1]) != array_key(tiny())
    alone = []
    for i, config in enumerate(configs):
        log = Recorder()
        train(config, tmp_path / f"alone{i}", log, domains=domains)
        alone.append(log.losses())
    logs = [Recorder(), Recorder()]
    train_array(joined(configs, [tmp_path / "a0", tmp_path / "a1"], logs), domains=domains, fuse="looped")
    assert [log.losses() for log in logs] == alone
    assert alone[1][9]["loss/g/identity"] == 0.0  # not weighed: not computed


@pytest.mark.slow
def test_grouped_cycle_members_take_the_looped_gan_step(tmp_path: Path, domains: Domains) -> None:
    """CycleGAN's own networks (transposed convs, PatchGAN) in a grouped array: the first GAN step's losses equal
    the looped array's (each member's own kernels) to fp32 rounding."""
    nets = {**CYCLEGAN, "model.generator": "resnet9", "model.discriminator": "patchgan", "model.d_sn": False}
    configs = [tiny(**nets, seed=0), tiny(**{**nets, "loss.cycle_weight": 3.0}, seed=1)]
    losses_by_mode = {}
    for fuse in ("looped", "grouped"):
        flag = StopFlag()
        logs = [Recorder(stop_at=1, flag=flag), Recorder()]
        train_array(joined(configs, [tmp_path / fuse / "0", tmp_path / fuse / "1"], logs), domains=domains, stop=flag,
                    fuse=fuse)  # type: ignore[arg-type]
        losses_by_mode[fuse] = [log.losses()[1] for log in logs]
    for grouped, looped in zip(losses_by_mode["grouped"], losses_by_mode["looped"], strict=True):
        assert grouped.keys() == looped.keys() and "loss/g/cycle" in looped
        assert grouped == pytest.approx(looped, rel=1e-4)
