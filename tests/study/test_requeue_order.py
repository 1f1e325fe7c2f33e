"""A trial whose process died goes back to the queue even when MLflow is away: re-queue first, then mark its
run failed as far as MLflow lets us, and record what could not be marked so a later run ends it.

Real `mlflow server` (stopped before the reaping), real Optuna SQLite storage with heartbeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from services import MlflowServer

from ablation.study import queue
from ablation.study.queue import ownership, recovery
from ablation.study.tracking import client as tracking
from ablation.study.tracking.client import Tracker

pytestmark = pytest.mark.services


class ImpatientTracker(Tracker):
    """The real tracker, giving up on an outage after a second instead of waiting it out for 15 minutes."""

    def _retry(self, action: Callable[[], Any], what: str) -> Any:
        return tracking.retry(action, what, self.uri, give_up_after=1.0)


@pytest.fixture
def server(mlflow_server: Callable[..., MlflowServer], monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    monkeypatch.setattr(tracking, "RETRY_SECONDS", 0.2)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused request fails at once
    return mlflow_server()


def _running_trials(opt: optuna.Study, tracker: Tracker, n: int) -> list[str]:
    """`n` trials claimed by a worker, each with its MLflow run started; their run ids."""
    experiment = tracker.experiment_id(opt.study_name)
    for i in range(n):
        opt.enqueue_trial({"seed": i}, user_attrs={"trial_key": f"cell-s{i}", "attempt": 1, "retries_left": 0})
    run_ids = []
    for trial in queue.claim_waiting(opt, n, lambda t: "all"):
        trial.suggest_int("seed", 0, 10)
        run_id = tracker.client.create_run(experiment, tags={"ablate.trial_key": trial.user_attrs["trial_key"]})
        trial.set_user_attr("mlflow_run_id", run_id.info.run_id)
        run_ids.append(run_id.info.run_id)
    return run_ids


def _orphan(opt: optuna.Study, folder: Path) -> None:
    """Make every RUNNING trial one whose process took its trial folder on this host and then died (its lock
    free, still naming the trial): what `recovery.reap_orphans` re-queues at once (study.queue.ownership)."""
    for trial in opt.get_trials(states=(TrialState.RUNNING,)):
        lock = ownership.take(folder / trial.user_attrs["trial_key"], trial.number)
        assert lock is not None
        opt._storage.set_trial_user_attr(trial._trial_id, ownership.OWNER_ATTR, ownership.owner_attr([lock]))
        lock.release()


def _check_requeued(opt: optuna.Study, run_ids: list[str], reason: str) -> dict[str, FrozenTrial]:
    """Every dead trial is FAIL with exactly one new WAITING attempt that records its unsynced run."""
    trials = opt.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    waiting = {t.user_attrs["retry_of"]: t for t in trials if t.state == TrialState.WAITING}
    assert len(trials) == 2 * len(run_ids) and len(failed) == len(run_ids)
    assert sorted(waiting) == [t.number for t in failed]
    for dead in failed:
        again = waiting[dead.number]
        assert again.user_attrs["trial_key"] == dead.user_attrs["trial_key"] and again.params == dead.params
        assert again.user_attrs["attempt"] == 2 and again.user_attrs["requeue_reason"] == reason
        assert "mlflow_run_id" not in again.user_attrs
        assert again.user_attrs["mlflow_unsynced"]["run_id"] == dead.user_attrs["mlflow_run_id"]
    assert sorted(t.user_attrs["mlflow_unsynced"]["run_id"] for t in waiting.values()) == sorted(run_ids)
    return waiting


@pytest.mark.slow
def test_reaping_with_mlflow_down_requeues_and_a_later_run_ends_the_runs(
        server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tracker = ImpatientTracker(server.url)
    opt = optuna.create_study(study_name="reap", storage=recovery.open_queue(f"sqlite:///{tmp_path}/optuna.db",
                                                                          tracker))
    run_ids = _running_trials(opt, tracker, 2)
    _orphan(opt, tmp_path / "trials")
    server.stop()

    recovery.reap_orphans(opt, tracker)  # the launcher of the next `ablate run`, its process gone

    _check_requeued(opt, run_ids, "worker died")
    err = capsys.readouterr().err
    assert all(f"its run {run_id} is not marked failed yet" in err for run_id in run_ids), err

    server.start()
    recovery.reap_orphans(opt, tracker)  # the launcher after that, with MLflow back
    for run_id in run_ids:
        run = tracker.client.get_run(run_id)
        assert run.info.status == "FAILED" and run.data.tags["ablate.abandoned"] == "the process running it died"
    assert len(opt.get_trials()) == 4  # nothing queued twice
    assert len(opt.get_trials(states=(TrialState.WAITING,))) == 2


def test_stale_trials_with_mlflow_down_all_go_back_to_the_queue(
        server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ABLATE_HEARTBEAT_S", "1")
    monkeypatch.setenv("ABLATE_GRACE_S", "2")  # at least two heartbeats (storage.Heartbeat.from_env)
    tracker = ImpatientTracker(server.url)
    opt = optuna.create_study(study_name="stale", storage=recovery.open_queue(f"sqlite:///{tmp_path}/optuna.db",
                                                                           tracker))
    run_ids = _running_trials(opt, tracker, 2)
    for trial in opt.get_trials(states=(TrialState.RUNNING,)):
        opt._storage.record_heartbeat(trial._trial_id)  # the worker's last heartbeat before it died
    server.stop()
    time.sleep(3.5)  # past the grace period

    optuna.storages.fail_stale_trials(opt)  # what a live worker does before its next trial

    _check_requeued(opt, run_ids, "worker died")
    assert "not marked failed yet" in capsys.readouterr().err
