"""Loss balance (gan/balance.py): shares add to 1 and equal a gradient split worked by hand, value shares follow
the config's weights, every trial logs them at the first step of each phase and at its cadence, and measuring
them never changes what the trial trains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ablation.config import TrainConfig, with_overrides
from ablation.data.demo import procedural_batch
from ablation.data.streams import Domains, domains_from_arrays
from ablation.gan import balance
from ablation.gan.trainer import StopFlag, train

SIZE = 32


@pytest.fixture(scope="module")
def domains() -> Domains:
    photos, _ = procedural_batch(12, SIZE, seed=1)
    _, animes = procedural_batch(12, SIZE, seed=2)
    val, _ = procedural_batch(4, SIZE, seed=3)
    return domains_from_arrays(photos, animes, val)


def tiny(**overrides: object) -> TrainConfig:
    base = {"data.image_size": SIZE, "data.val_count": 2, "model.d_ch": 8, "schedule.epochs": 3,
            "schedule.init_epochs": 1, "schedule.batch_size": 2, "schedule.steps_per_epoch": 3,
            "schedule.log_every": 1, "eval.enabled": False, "runtime.threads": 1, "backbone.weights": "random",
            "backbone.arch": "vgg19", "backbone.preprocess": "caffe"}
    return with_overrides(TrainConfig(), {**base, **overrides})


def test_grad_shares_equal_a_split_worked_by_hand() -> None:
    # y = a·x1 + b·x2 with (a, b) = (1, 2) at x = (3, 4): term1 = 2·y² has gradient 4y·(x1, x2), term2 = 5·a
    # has (5, 0). y = 11: |grad1| = 44·5 = 220, |grad2| = 5, shares 220/225 and 5/225.
    a, b = nn.Parameter(torch.tensor(1.0)), nn.Parameter(torch.tensor(2.0))
    y = a * 3 + b * 4
    shares = balance.grad_shares({"one": 2 * y**2, "two": 5 * a, "off": torch.zeros(())}, [a, b])
    assert shares == pytest.approx({"one": 220 / 225, "two": 5 / 225, "off": 0.0}, rel=1e-6)
    assert math.isclose(sum(shares.values()), 1.0, rel_tol=1e-9)
    assert a.grad is None and b.grad is None  # autograd.grad: nothing accumulated where an optimiser would look


def test_weights_and_value_shares_follow_the_config() -> None:
    config = tiny(**{"loss.color_count": 2, "loss.d_weights.fake": 2.5, "loss.init_color_weight": 10.0})
    assert balance.term_weights(config, "g") == {"adv": 300.0, "content": 1.5, "style": 3.0, "color": 20.0,
                                                 "tv": 0.0}
    assert balance.term_weights(config, "d")["fake"] == 750.0 and balance.term_weights(config, "d")["gp"] == 1.0
    assert balance.term_weights(config, "init") == {"content": 1.5, "color": 10.0}
    assert balance.term_weights(tiny(), "init") == {"content": 1.5}  # faithful: the init phase is content only
    raw = {"adv": 0.5, "content": 2.0, "style": 1.0, "color": 0.15, "tv": 0.0}  # weighted 150, 3, 3, 3, 0
    shares = balance.value_shares(config, "g", raw)
    assert shares == pytest.approx({"adv": 150 / 159, "content": 3 / 159, "style": 3 / 159, "color": 3 / 159,
                                    "tv": 0.0})
    assert balance.metric_name("g", "grad", "style") == "balance/g/grad/style"


class Rows(list):
    """The rows a trial logs, as `metrics.jsonl` holds them: {"step": s, **metrics}."""

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.append({"step": step, **metrics})


def test_a_trial_logs_its_balance_at_each_phase_start_and_cadence(tmp_path: Path, domains: Domains) -> None:
    rows = Rows()
    result = train(tiny(**{"schedule.balance_every": 1}), tmp_path, rows, domains=domains)
    assert result.step == 9
    grad_steps = sorted({r["step"] for r in rows if "balance/g/grad/adv" in r})
    init_steps = sorted({r["step"] for r in rows if "balance/init/grad/content" in r})
    assert init_steps == [1, 3] and grad_steps == [4, 6, 9]  # first step of each phase, then each epoch end
    for row in rows:
        for phase in ("init", "g", "d"):
            for kind in ("grad", "value"):
                found = [v for k, v in row.items() if k.startswith(f"balance/{phase}/{kind}/")]
                if found:
                    assert math.isclose(sum(found), 1.0, rel_tol=1e-6), (row["step"], phase, kind)
    first_gan = next(r for r in rows if r["step"] == 4 and "balance/g/grad/style" in r)
    assert first_gan["balance/g/grad/style"] > 0 and first_gan["balance/d/grad/gp"] == 0.0  # lsgan: no penalty
    keys = [(r["step"], k) for r in rows for k in r if k != "step"]
    assert len(keys) == len(set(keys))  # each (step, metric) once


@pytest.mark.parametrize("overrides", [
    {"loss.gan_type": "dragan", "model.d_dropout": 0.2},  # penalty draws and dropout masks from the RNG
    {"model.generator_sn": True, "model.d_sn": True},  # power iterations advance spectral-norm buffers
])
def test_measuring_never_changes_what_the_trial_trains(tmp_path: Path, domains: Domains,
                                                       monkeypatch: pytest.MonkeyPatch, overrides: dict) -> None:
    config = tiny(**{"schedule.balance_every": 1, **overrides})
    measured_rows, plain_rows = Rows(), Rows()
    train(config, tmp_path / "measured", measured_rows, domains=domains)
    monkeypatch.setattr(balance, "measure", lambda *args, **kwargs: {})
    train(config, tmp_path / "plain", plain_rows, domains=domains)

    def losses(rows: Rows) -> list[tuple[int, dict]]:
        return [(r["step"], {k: v for k, v in r.items() if k.startswith("loss/")}) for r in rows
                if any(k.startswith("loss/") for k in r)]

    assert any("balance/g/grad/adv" in r for r in measured_rows)
    assert losses(measured_rows) == losses(plain_rows)  # to the last bit
    measured = torch.load(tmp_path / "measured" / "checkpoint.pt", weights_only=True)
    plain = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)
    for net in ("generator", "discriminator"):
        for key, tensor in plain[net].items():
            assert torch.equal(measured[net][key], tensor), (net, key)


def test_a_resumed_trial_logs_each_share_once(tmp_path: Path, domains: Domains) -> None:
    config = tiny(**{"schedule.balance_every": 1})
    flag, rows = StopFlag(), Rows()

    def stop_after_five(metrics: dict, step: int) -> None:
        rows(metrics, step)
        if step >= 5:
            flag.set()

    train(config, tmp_path, stop_after_five, domains=domains, stop=flag)
    rows[:] = [r for r in rows if r["step"] <= 6]  # what the console keeps up to the checkpoint (epoch end 6)
    train(config, tmp_path, rows, domains=domains, resume=True)
    keys = [(r["step"], k) for r in rows for k in r if k.startswith("balance/")]
    assert len(keys) == len(set(keys))
    assert {r["step"] for r in rows if "balance/g/grad/adv" in r} == {4, 6, 9}
