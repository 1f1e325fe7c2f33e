"""Launchers racing: `enqueue_missing` from several processes at once (two `ablate run`, or `ablate enqueue`
beside `ablate run`) queues every trial key once, on SQLite and on PostgreSQL; `--rerun-failed` queues one
new attempt per failed key, also while workers re-queue the same attempts.

Real processes (spawn) on a real storage; a barrier releases them together, so that without a lock each one
reads the queue before the others have written to it.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from scale_helpers import race_processes, write_study

from ablation.outcomes import Outcome
from ablation.study import queue
from ablation.study.queue import storage
from ablation.study.spec.study import Study, load_study

pytestmark = pytest.mark.slow

LAUNCHERS = 3
AXES = {"loss.style_weight": [float(w) for w in range(1, 11)], "loss.style_target": ["gray", "color"]}
SEEDS = [0, 1]  # 10 x 2 cells x 2 seeds = 40 keys: each launcher writes for a while, so the reads overlap


def _open(study: Study, url: str, create: bool) -> optuna.Study:
    return queue.open_study(study, storage.open_storage(url, storage.Heartbeat(), None), create=create)


def _launcher(study_path: str, url: str, role: str, barrier: Any, results: Any) -> None:
    """One process adding to the queue: a launcher (`enqueue`, `rerun` = --rerun-failed) or a worker
    re-queueing every failed trial (`requeue`). Everything slow (imports, connecting) happens before the
    barrier."""
    try:
        study = load_study(Path(study_path))
        opt = _open(study, url, create=False)
        barrier.wait(timeout=120)
        if role == "requeue":
            for trial in opt.get_trials(states=(TrialState.FAIL,)):
                queue.requeue(opt, trial, "failed: automatic retry", consume_retry=True)
            results.put(("ok", 0))
            return
        added = queue.enqueue_missing(study, opt, rerun_failed=role == "rerun")
        results.put(("ok", len(added)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _race(study_path: Path, url: str, roles: list[str]) -> int:
    """Run one process per role at once; the number of trials the launchers say they queued, all together."""
    ctx = multiprocessing.get_context("spawn")
    answers = race_processes(ctx, _launcher, [(str(study_path), url, role) for role in roles])
    return sum(count for _, count in answers)


def _waiting_per_key(url: str, name: str) -> Counter[str]:
    opt = optuna.load_study(study_name=name, storage=url)
    return Counter(t.user_attrs["trial_key"] for t in opt.get_trials(states=(TrialState.WAITING,)))


def _fail_half(study: Study, url: str) -> set[str]:
    """Run the queue as a worker would, with every other trial failing; the keys that failed."""
    opt = _open(study, url, create=False)
    failed = set()
    for i, trial in enumerate(queue.claim_waiting(opt, 1000, lambda t: "all")):
        if i % 2:
            trial.set_user_attr("outcome", Outcome.FAILED)
            opt.tell(trial, state=TrialState.FAIL)
            failed.add(trial.user_attrs["trial_key"])
        else:
            trial.set_user_attr("outcome", Outcome.FINISHED)
            opt.tell(trial, [1.0, 1.0])
    return failed


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def study_path(tmp_path: Path, url: str) -> Path:
    path = write_study(tmp_path / "study.yaml", tmp_path / "data", AXES, SEEDS, "race")
    _open(load_study(path), url, create=True)  # the study exists before the launchers race on its queue
    return path


def test_racing_launchers_queue_each_key_once(study_path: Path, url: str) -> None:
    keys = {t.key for t in load_study(study_path).trials}
    queued = _race(study_path, url, ["enqueue"] * LAUNCHERS)
    waiting = _waiting_per_key(url, "race")
    assert set(waiting) == keys and set(waiting.values()) == {1}, sorted(waiting.items())
    assert queued == len(keys)
    assert len(optuna.load_study(study_name="race", storage=url).trials) == len(keys)


def test_racing_reruns_queue_one_new_attempt_per_failed_key(study_path: Path, url: str) -> None:
    study = load_study(study_path)
    queue.enqueue_missing(study, _open(study, url, create=False))
    failed = _fail_half(study, url)
    assert len(failed) == len(study.trials) // 2

    queued = _race(study_path, url, ["rerun"] * LAUNCHERS)
    waiting = _waiting_per_key(url, "race")
    assert set(waiting) == failed and set(waiting.values()) == {1}, sorted(waiting.items())
    assert queued == len(failed)
    opt = optuna.load_study(study_name="race", storage=url)
    assert Counter(t.user_attrs["attempt"] for t in opt.get_trials(states=(TrialState.WAITING,))) == {2: len(failed)}
    assert len(opt.trials) == len(study.trials) + len(failed)


def test_a_rerun_racing_the_retry_of_the_same_attempt_queues_one(study_path: Path, url: str) -> None:
    """`ablate enqueue --rerun-failed` while workers re-queue the same failed attempts (automatic retries):
    whoever comes second sees the other's attempt and adds none."""
    study = load_study(study_path)
    queue.enqueue_missing(study, _open(study, url, create=False))
    failed = _fail_half(study, url)

    _race(study_path, url, ["rerun", "requeue", "rerun", "requeue"])
    waiting = _waiting_per_key(url, "race")
    assert set(waiting) == failed and set(waiting.values()) == {1}, sorted(waiting.items())
    opt = optuna.load_study(study_name="race", storage=url)
    new = opt.get_trials(states=(TrialState.WAITING,))
    assert {t.user_attrs["attempt"] for t in new} == {2}
    first = {t.number for t in opt.trials if t.state == TrialState.FAIL}
    assert sorted(t.user_attrs.get("retry_of", t.user_attrs.get("rerun_of")) for t in new) == sorted(first)
