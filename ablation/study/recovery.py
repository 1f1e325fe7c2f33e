"""Trials of dead processes: back to the queue first, then their MLflow runs marked failed.

The queue is what keeps a trial from being lost, and MLflow may be away when a death is noticed: a run that
cannot be marked is recorded on the trial's next attempt (UNSYNCED) and marked by a later launcher.
"""

from __future__ import annotations

import sys
from typing import Any

import optuna

from ablation.study import queue, storage
from ablation.study.outages import tracking_outage
from ablation.study.tracking import Tracker, mlflow_unavailable


def open_queue(url: str, tracker: Tracker) -> Any:
    """RDB storage with heartbeat; a stale trial is re-queued, then its run is marked failed."""

    def on_stale(opt: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        requeue_dead(opt, trial, tracker, "worker died", "worker stopped sending heartbeats")

    return storage.open_storage(url, storage.Heartbeat.from_env(), on_stale)


def reap_orphans(opt: optuna.Study, tracker: Tracker) -> None:
    """With the local lock held, every RUNNING trial belongs to a process that is gone.

    First ends the runs that earlier re-queues could not mark failed while MLflow was away (before, so that
    a run this reaping cannot mark is not tried twice in a row)."""
    end_unsynced_runs(opt, tracker)
    for trial in opt.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        try:
            opt._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        requeue_dead(opt, trial, tracker, "process died", "the process running it died")


UNSYNCED = "mlflow_unsynced"  # user attr of a re-queued trial: the dead attempt's run MLflow could not mark


def requeue_dead(opt: optuna.Study, trial: optuna.trial.FrozenTrial, tracker: Tracker, reason: str,
                 run_reason: str) -> None:
    """A FAIL trial whose process died: back to the queue first, then its MLflow run marked failed.

    In that order because the queue is what keeps a trial from being lost, and MLflow may be away: an outage
    while marking the run used to skip the re-queue and leave the trial FAIL for good (with Optuna's stale
    check, every other dead trial of the same check too). The run's state can be fixed later; see UNSYNCED.
    """
    if trial.user_attrs.get("trial_key") is not None:
        queue.requeue(opt, trial, reason, consume_retry=False)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id and (cause := try_mark_abandoned(tracker, run_id, run_reason)) is not None:
        record_unsynced(opt, trial, tracker, {"run_id": run_id, "reason": run_reason}, cause)


def try_mark_abandoned(tracker: Tracker, run_id: str, reason: str) -> BaseException | None:
    """Mark the run of a dead attempt failed; the outage that prevented it (after the tracker waited it out
    as long as it waits for anything), else None. Any other error is a bug and keeps its traceback."""
    try:
        tracker.mark_abandoned(run_id, reason)
    except Exception as exc:
        if (cause := tracking_outage(exc, mlflow_unavailable)) is None:
            raise
        return cause
    return None


def record_unsynced(opt: optuna.Study, trial: optuna.trial.FrozenTrial, tracker: Tracker, note: dict[str, str],
                    cause: BaseException) -> None:
    """Keep the unmarked run on the trial's new attempt (a finished trial takes no attrs) and say so."""
    again = queue.successor(opt, trial)
    where = "not recorded: the trial was not re-queued"
    if again is not None:
        try:
            opt._storage.set_trial_user_attr(again._trial_id, UNSYNCED, note)
            where = f"recorded as user attr {UNSYNCED} of trial {again.number}"
        except optuna.exceptions.UpdateFinishedTrialError:
            where = f"not recorded: trial {again.number} already ended"
    print(f"ablate: MLflow at {tracker.uri} unreachable ({type(cause).__name__}); trial {trial.number} is back in "
          f"the queue but its run {note['run_id']} is not marked failed yet ({where}, for a later "
          f"`ablate run` to mark)", file=sys.stderr, flush=True)


def end_unsynced_runs(opt: optuna.Study, tracker: Tracker) -> None:
    """Mark failed the runs recorded under UNSYNCED. The records stay (a finished trial's attrs are frozen);
    marking again is a no-op, as `Tracker.mark_abandoned` leaves a FAILED run alone."""
    for trial in opt.get_trials(deepcopy=False):
        note = trial.user_attrs.get(UNSYNCED)
        if note and (cause := try_mark_abandoned(tracker, note["run_id"], note["reason"])) is not None:
            print(f"ablate: MLflow at {tracker.uri} unreachable ({type(cause).__name__}); run {note['run_id']} "
                  f"stays unmarked for now", file=sys.stderr, flush=True)
