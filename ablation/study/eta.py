"""The study's time left: the steps still to train, in measured step times, counting each shared init phase once.

A trial that continues a stored init phase (gan/init_cache.py) trains only its GAN steps, so the work left is
the GAN steps of every unfinished trial plus the init steps of each init identity not computed yet. Init and GAN
steps are timed apart (a GAN step runs D and G; an init step runs G only), from consecutive steps of the trial the
display follows; a jump (a continued init phase, a resume) is not a step taken and is not timed. The timing
includes the evaluations and checkpoints between steps. What a trial costs besides its steps (set-up, the final
evaluation, artifacts, MLflow) is measured per followed trial and added once per trial left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import optuna

from ablation.config import TrainConfig, with_overrides
from ablation.gan import INIT_DIR, init_key, shareable
from ablation.study import queue
from ablation.study.spec.study import Study

# Until a GAN step has been timed, its cost is guessed from the init step: D + G over G alone, measured at 64 px
# on a 2-core CPU (MobileNetV2 0.64 / 0.50 s, VGG19 1.0 / 0.8 s; README "Demo").
GAN_OVER_INIT = 1.3
# A GAN step's cost by model.objective, in AnimeGAN steps: G and D of both directions, and CycleGAN's identity
# passes (benchmarks/objectives.py at the demo's 64 px on a CPU: 3.4x and 4.9x). GAN step times are kept in
# these units, so a study mixing objectives gets each trial's steps at its own cost.
GAN_STEP_COST: dict[str, float] = {"animegan": 1.0, "animegan+cycle": 3.4, "cyclegan": 4.9}


@dataclass(frozen=True)
class TrialWork:
    """One planned trial's steps, and the init identity it may share (None: it computes its own)."""

    key: str
    init_key: str | None
    init_steps: int
    gan_steps: int
    gan_cost: float = 1.0  # one of its GAN steps in AnimeGAN steps (GAN_STEP_COST)


def trial_work(key: str, config: TrainConfig) -> TrialWork:
    schedule = config.schedule
    init_steps = min(schedule.init_epochs, schedule.epochs) * schedule.steps_per_epoch
    total = schedule.epochs * schedule.steps_per_epoch
    return TrialWork(key, init_key(config) if shareable(config) else None, init_steps, total - init_steps,
                     GAN_STEP_COST[config.model.objective])


def stored_init_keys(trials_dir: Path) -> set[str]:
    """Init identities already computed by any worker (their entry's identity file is written last)."""
    return {path.stem for path in (trials_dir / INIT_DIR).glob("*.json")}


class StudyEta:
    """Fed by the display: `follow(key)` when a trial starts reporting, `step(step, steps)` from its progress,
    `update(done, stored)` as trials end; `remaining_s()` for the display."""

    def __init__(self, work: list[TrialWork], width: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.work = {trial.key: trial for trial in work}
        self.width = max(width, 1)  # trials trained at once: an array step advances each of its members
        self.clock = clock
        self.seconds = {"init": 0.0, "gan": 0.0}
        self.count = {"init": 0, "gan": 0}
        self.followed: TrialWork | None = None  # the trial whose progress the display shows
        self.followed_key = ""  # its trial key (a search point's differs from its stand-in's)
        self.last: tuple[int, float] | None = None  # (step, time) of its last progress call
        self.started = 0.0  # when the followed trial began reporting
        self.in_steps = 0.0  # seconds of timed steps since then
        self.overhead = {"seconds": 0.0, "trials": 0}  # per trial, outside its timed steps
        self.done: set[str] = set()
        self.stored: set[str] = set()

    def update(self, done: Iterable[str], stored: Iterable[str]) -> None:
        """The trial keys that ended and the init identities stored so far."""
        self.done, self.stored = set(done), set(stored)

    def follow(self, key: str) -> None:
        """Follow trial `key`; a key not planned ahead (a search point) stands in for the next planned trial."""
        self.followed = self.work.get(key) or next((w for w in self.work.values() if w.key not in self.done), None)
        self.followed_key = key
        self.last, self.started, self.in_steps = None, self.clock(), 0.0

    def step(self, step: int, steps: int) -> None:
        now = self.clock()
        if self.last is not None and step == self.last[0] + 1 and self.followed is not None:
            phase = "init" if step <= self.followed.init_steps else "gan"
            cost = 1.0 if phase == "init" else self.followed.gan_cost
            self.seconds[phase] += (now - self.last[1]) / cost  # in AnimeGAN steps
            self.count[phase] += 1
            self.in_steps += now - self.last[1]
        self.last = (step, now)

    def ended(self, key: str) -> None:
        """A trial ended; when it is the followed one, its time outside the timed steps is measured."""
        if self.followed is not None and self.followed_key == key:
            self.overhead["seconds"] += max(self.clock() - self.started - self.in_steps, 0.0)
            self.overhead["trials"] += 1
            self.followed, self.last = None, None

    def step_s(self, phase: str) -> float | None:
        if self.count[phase]:
            return self.seconds[phase] / self.count[phase]
        if phase == "gan" and self.count["init"]:
            return GAN_OVER_INIT * self.seconds["init"] / self.count["init"]
        return None

    def steps_left(self) -> tuple[int, float]:
        """(init steps, GAN steps in AnimeGAN steps) still to train over the study: each init identity once,
        unless stored."""
        init_left, gan_left = 0, 0.0
        counted = set(self.stored)
        followed, at = self.followed, self.last[0] if self.last is not None else 0
        if followed is not None and followed.key not in self.done:
            gan_left += (followed.gan_steps - max(at - followed.init_steps, 0)) * followed.gan_cost
            if at < followed.init_steps:  # it computes its init phase now (a continued one jumps past it)
                init_left += followed.init_steps - at
            if followed.init_key is not None:
                counted.add(followed.init_key)
        for trial in self.work.values():
            if trial.key in self.done or trial is followed:
                continue
            gan_left += trial.gan_steps * trial.gan_cost
            if trial.init_key is None or trial.init_key not in counted:
                init_left += trial.init_steps
                if trial.init_key is not None:
                    counted.add(trial.init_key)
        return init_left, gan_left

    def remaining_s(self) -> float | None:
        """Seconds left, or None until a step has been timed."""
        init_s, gan_s = self.step_s("init"), self.step_s("gan")
        init_left, gan_left = self.steps_left()
        if (init_left and init_s is None) or (gan_left and gan_s is None):
            return None
        trials_left = sum(key not in self.done for key in self.work)
        per_trial = self.overhead["seconds"] / self.overhead["trials"] if self.overhead["trials"] else 0.0
        return (init_left * (init_s or 0.0) + gan_left * (gan_s or 0.0) + trials_left * per_trial) / self.width


def study_eta(study: Study, opt: optuna.Study, trials_dir: Path, fuse: int) -> StudyEta:
    """The ETA over every planned trial; a search's points are unknown ahead, so each counts as the base config
    with one of the study's seeds."""
    if study.spec.method == "search" and study.spec.search is not None:
        seeds = study.spec.seeds
        work = [trial_work(f"point-{i}", with_overrides(study.base_config, {"seed": seeds[i % len(seeds)]}))
                for i in range(study.spec.search.n_trials)]
    else:
        work = [trial_work(trial.key, trial.config) for trial in study.trials]
    eta = StudyEta(work, width=fuse)
    update_eta(eta, study, opt, trials_dir)
    return eta


def update_eta(eta: StudyEta, study: Study, opt: optuna.Study, trials_dir: Path) -> None:
    ended = [key for key, trial in queue.latest_by_key(opt).items() if queue.outcome_of(trial).done]
    if study.spec.method == "search":  # points are interchangeable: count them
        ended = list(eta.work)[:len(ended)]
    eta.update(ended, stored_init_keys(trials_dir))


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "eta: timing the first steps"
    minutes, secs = divmod(round(seconds), 60)
    return f"eta {minutes}:{secs:02d} (measured step times; shared init phases counted once)"
