"""The study ETA (study/eta.py): work left in measured step times, each shared init phase counted once."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablation.config import TrainConfig, with_overrides
from ablation.gan.init_cache import INIT_DIR, init_key
from ablation.study.eta import (
    GAN_OVER_INIT,
    GAN_STEP_COST,
    StudyEta,
    TrialWork,
    format_eta,
    stored_init_keys,
    trial_work,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def config(**overrides: object) -> TrainConfig:
    base = {"schedule.epochs": 3, "schedule.init_epochs": 2, "schedule.steps_per_epoch": 10}
    return with_overrides(TrainConfig(), {**base, **overrides})


def test_trial_work_splits_init_and_gan_steps_and_keys_the_init_identity() -> None:
    work = trial_work("a-s0", config())
    assert (work.init_steps, work.gan_steps) == (20, 10)
    assert work.init_key == init_key(config())
    assert trial_work("b-s0", config(**{"loss.style_weight": 10.0})).init_key == work.init_key  # shared
    assert trial_work("c-s0", config(**{"schedule.init_epochs": 0})).init_key is None  # nothing to share


def three_levels_two_seeds() -> list[TrialWork]:
    """A loss-weight axis of 3 levels x 2 seeds: 2 distinct init phases of 20 steps, 6 GAN phases of 10."""
    return [TrialWork(f"w{w}-s{s}", f"init-s{s}", 20, 10) for s in (0, 1) for w in (1, 3, 10)]


def test_each_shared_init_phase_is_counted_once() -> None:
    eta = StudyEta(three_levels_two_seeds())
    assert eta.steps_left() == (2 * 20, 6 * 10)
    eta.update(done=["w1-s0"], stored=["init-s0"])
    assert eta.steps_left() == (20, 5 * 10)
    eta.update(done=["w1-s0", "w3-s0", "w10-s0", "w1-s1"], stored=["init-s0", "init-s1"])
    assert eta.steps_left() == (0, 2 * 10)


def test_remaining_seconds_use_the_measured_init_and_gan_step_times() -> None:
    clock = Clock()
    eta = StudyEta(three_levels_two_seeds(), clock=clock)
    assert eta.remaining_s() is None and format_eta(None) == "eta: timing the first steps"
    eta.follow("w1-s0")
    for step in range(1, 21):  # its init phase: 0.5 s a step
        clock.now += 0.5
        eta.step(step, 30)
    # init steps measured, GAN steps guessed from them until one is timed
    assert eta.step_s("init") == pytest.approx(0.5)
    assert eta.step_s("gan") == pytest.approx(0.5 * GAN_OVER_INIT)
    for step in range(21, 26):  # 5 GAN steps at 0.75 s
        clock.now += 0.75
        eta.step(step, 30)
    assert eta.step_s("gan") == pytest.approx(0.75)
    # left: its own 5 GAN steps, 5 other GAN phases and seed 1's init phase (its own is computed, not stored yet)
    assert eta.steps_left() == (20, 5 + 50)
    assert eta.remaining_s() == pytest.approx(20 * 0.5 + 55 * 0.75)
    assert "eta 0:51" in format_eta(eta.remaining_s())


def test_a_continued_init_phase_is_a_jump_not_a_timed_step() -> None:
    clock = Clock()
    eta = StudyEta(three_levels_two_seeds(), clock=clock)
    eta.update(done=["w1-s0"], stored=["init-s0"])
    eta.follow("w3-s0")
    eta.step(20, 30)  # continued from the stored init phase: straight to step 20
    clock.now += 0.75
    eta.step(21, 30)
    assert eta.count == {"init": 0, "gan": 1}  # the jump is no init step
    assert eta.steps_left() == (20, 9 + 40)


def test_arrays_divide_the_time_by_their_width(tmp_path: Path) -> None:
    clock = Clock()
    eta = StudyEta(three_levels_two_seeds(), width=3, clock=clock)
    eta.follow("w1-s0")
    for step in (1, 2):
        clock.now += 1.0
        eta.step(step, 30)
    assert eta.remaining_s() == pytest.approx((38 * 1.0 + 60 * 1.0 * GAN_OVER_INIT) / 3)


def test_stored_init_keys_are_read_from_the_trials_folder(tmp_path: Path) -> None:
    assert stored_init_keys(tmp_path) == set()
    (tmp_path / INIT_DIR).mkdir()
    (tmp_path / INIT_DIR / "abc.json").write_text("{}")
    (tmp_path / INIT_DIR / "abc.pt").write_bytes(b"")
    (tmp_path / INIT_DIR / "def.pt").write_bytes(b"")  # its identity file is written last: not stored yet
    assert stored_init_keys(tmp_path) == {"abc"}


def test_time_outside_the_steps_is_measured_per_trial_and_added_per_trial_left() -> None:
    clock = Clock()
    eta = StudyEta(three_levels_two_seeds(), clock=clock)
    eta.follow("w1-s0")
    clock.now += 4.0  # set-up before its first step: not a step
    for step in range(1, 31):
        eta.step(step, 30)
        clock.now += 0.5 if step < 20 else 1.0  # 19 timed init gaps of 0.5 s (step 1 starts the clock) ...
    clock.now += 6.0  # ... its final evaluation, artifacts and MLflow
    eta.ended("w1-s0")
    eta.update(done=["w1-s0"], stored=["init-s0"])
    # 4 s set-up + 1 s after step 30 + 6 s = 11 s outside the timed steps
    assert eta.overhead == {"seconds": pytest.approx(11.0), "trials": 1}
    assert eta.steps_left() == (20, 50)
    assert eta.remaining_s() == pytest.approx(20 * 0.5 + 50 * 1.0 + 5 * 11.0)


def test_a_search_point_stands_in_for_the_next_planned_trial() -> None:
    clock = Clock()
    eta = StudyEta([TrialWork(f"point-{i}", "init-s0", 20, 10) for i in range(3)], clock=clock)
    eta.follow("c0ffee-s0")  # a point's key is known only once Optuna asks for it
    assert eta.followed is not None and eta.followed.key == "point-0"
    for step in range(1, 6):
        clock.now += 0.5
        eta.step(step, 30)
    assert eta.steps_left() == (15, 30)  # its own init phase, shared by the other points
    eta.ended("c0ffee-s0")
    assert eta.overhead["trials"] == 1


def test_gan_steps_of_the_cycle_objectives_count_at_their_cost() -> None:
    cyclegan = trial_work("cg-s0", config(**{"model.objective": "cyclegan", "schedule.init_epochs": 0}))
    assert cyclegan.gan_cost == GAN_STEP_COST["cyclegan"] > GAN_STEP_COST["animegan+cycle"] > 1.0
    assert trial_work("a-s0", config()).gan_cost == 1.0
    clock = Clock()
    # an AnimeGAN trial timed at 1 s per GAN step; a CycleGAN trial of 10 GAN steps is left
    eta = StudyEta([TrialWork("a", None, 0, 10), TrialWork("cg", None, 0, 10, gan_cost=4.0)], clock=clock)
    eta.follow("a")
    for step in range(1, 11):
        clock.now += 1.0
        eta.step(step, 10)
    eta.update({"a"}, set())
    assert eta.remaining_s() == pytest.approx(10 * 4.0)
    # timed on the CycleGAN trial instead: its 4 s steps are 1 s in AnimeGAN steps
    eta = StudyEta([TrialWork("cg", None, 0, 10, gan_cost=4.0), TrialWork("a", None, 0, 10)], clock=clock)
    eta.follow("cg")
    for step in (1, 2):
        clock.now += 4.0
        eta.step(step, 10)
    assert eta.remaining_s() == pytest.approx(8 * 4.0 + 10 * 1.0)  # at step 2 of 10
