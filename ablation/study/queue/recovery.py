"""Trials of dead processes: back to the queue first, then their MLflow runs marked failed.

The queue is what keeps a trial from being lost, and MLflow may be away when a death is noticed: a run that
cannot be marked is recorded on the trial's next attempt (UNSYNCED) and marked by a later launcher.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from typing import Any

import optuna
import sqlalchemy

from ablation.study.outages import tracking_outage
from ablation.study.queue import ownership, storage, trials
from ablation.study.tracking.client import Tracker, mlflow_unavailable


def open_queue(url: str, tracker: Tracker) -> Any:
    """RDB storage with heartbeat; a stale trial is re-queued, then its run is marked failed.

    The heartbeat settings given here are provisional: once the study is open, `storage.settle_heartbeat`
    applies the ones stored with it."""

    def on_stale(opt: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        requeue_dead(opt, trial, tracker, "worker died", "worker stopped sending heartbeats")

    return storage.open_storage(url, storage.Heartbeat.from_env(), on_stale)


def reap_orphans(opt: optuna.Study, tracker: Tracker) -> None:
    """What a launcher does before it queues and works: end the runs that earlier re-queues could not mark
    failed while MLflow was away (first, so that a run this reaping cannot mark is not tried twice in a row),
    then re-queue the trials of dead processes (`reap_dead`)."""
    end_unsynced_runs(opt, tracker)
    reap_dead(opt, tracker)


def reap_dead(opt: optuna.Study, tracker: Tracker) -> list[int]:
    """Fail and re-queue every RUNNING trial whose owner is dead; the numbers of those reaped.

    Dead = silent: no heartbeat for longer than the study's grace period (none at all, and claimed that long
    ago), which holds for every process on every host; or gone: the owner claimed it on this host and none of
    its trial-folder locks is held any more (study.queue.ownership), known at once. Which process runs the reaping
    (a launcher, `ablate worker`, a child of `--workers`) does not matter: a live owner keeps both its
    heartbeat and its locks, so its trial is never taken from it.
    """
    silent = set(_silent_trial_ids(opt))
    reaped = []
    for trial in opt.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial._trial_id in silent:
            reason, run_reason = "worker died", "worker stopped sending heartbeats"
        elif ownership.owner_gone(trial):  # the same reason as a silent one: only the evidence differs
            reason, run_reason = "worker died", "the process running it died"
        else:
            continue
        if not _fail_running(opt, trial._trial_id):  # its owner, or another reaper, ended it first
            continue
        requeue_dead(opt, trial, tracker, reason, run_reason)
        reaped.append(trial.number)
    return reaped


def _fail_running(opt: optuna.Study, trial_id: int) -> bool:
    """RUNNING -> FAIL as one conditional UPDATE (as `trials._claim`): Optuna's read-then-write can overwrite the
    COMPLETE its owner wrote in between on SQLite, which ignores FOR UPDATE. True when this call failed it."""
    backend = storage.backend_of(opt)
    if not isinstance(backend, optuna.storages.RDBStorage):
        try:
            return opt._storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
    query = sqlalchemy.text("UPDATE trials SET state = 'FAIL', datetime_complete = :now "
                            "WHERE trial_id = :trial_id AND state = 'RUNNING'"
                            ).bindparams(sqlalchemy.bindparam("now", type_=sqlalchemy.DateTime()))
    with backend.engine.begin() as connection:
        return connection.execute(query, {"now": datetime.now(), "trial_id": trial_id}).rowcount == 1


def _silent_trial_ids(opt: optuna.Study) -> list[int]:
    """RUNNING trials without a heartbeat for longer than the grace period, by the database's clock; and those
    without any heartbeat that were claimed longer ago than that (the claimer died before its first one)."""
    backend = storage.backend_of(opt)
    if not isinstance(backend, optuna.storages.RDBStorage) or backend.heartbeat_interval is None:
        return []
    grace = storage.heartbeat_of(opt).grace
    silent = list(backend._get_stale_trial_ids(opt._study_id))
    cutoff = datetime.now() - timedelta(seconds=grace)  # `_claim` writes datetime_start from this clock
    with backend.engine.connect() as connection:
        query = sqlalchemy.text(
            "SELECT trial_id FROM trials WHERE study_id = :study_id AND state = 'RUNNING' AND datetime_start < "
            ":cutoff AND trial_id NOT IN (SELECT trial_id FROM trial_heartbeats)"
        ).bindparams(sqlalchemy.bindparam("cutoff", type_=sqlalchemy.DateTime()))  # stored as Optuna stores it
        rows = connection.execute(query, {"study_id": opt._study_id, "cutoff": cutoff}).all()
    return silent + [row[0] for row in rows]


def silent_numbers(opt: optuna.Study) -> set[int]:
    """The numbers of the RUNNING trials whose heartbeat went silent (`_silent_trial_ids`): `ablate status`."""
    silent = set(_silent_trial_ids(opt))
    return {t.number for t in opt.get_trials(deepcopy=False) if t._trial_id in silent}


def give_back(opt: optuna.Study, trial: optuna.trial.FrozenTrial, tracker: Tracker, reason: str,
              tracking_down: bool) -> None:
    """A RUNNING trial this process claimed but cannot finish for a reason not its own (the machine or a
    service failed): ended FAIL and re-queued with its retries untouched, its run marked failed with the
    reason, exactly as a reaper would once this process stopped (`reap_dead`), only at once. With MLflow away
    (`tracking_down`) the run is left for a later launcher to mark (UNSYNCED) instead of waiting again."""
    opt._storage.set_trial_user_attr(trial._trial_id, "outcome", "interrupted")
    opt._storage.set_trial_user_attr(trial._trial_id, "error", reason[-2000:])
    if not _fail_running(opt, trial._trial_id):  # a reaper took it first (its heartbeat went silent)
        return
    if not tracking_down:
        requeue_dead(opt, trial, tracker, reason, reason)
        return
    if trial.user_attrs.get("trial_key") is not None:
        trials.requeue(opt, trial, reason, consume_retry=False)
    if run_id := trial.user_attrs.get("mlflow_run_id"):
        record_unsynced(opt, trial, tracker, {"run_id": run_id, "reason": reason},
                        "for longer than the tracker waits")


UNSYNCED = "mlflow_unsynced"  # user attr of a re-queued trial: the dead attempt's run MLflow could not mark


def requeue_dead(opt: optuna.Study, trial: optuna.trial.FrozenTrial, tracker: Tracker, reason: str,
                 run_reason: str) -> None:
    """A FAIL trial whose process died: back to the queue first, then its MLflow run marked failed.

    In that order because the queue is what keeps a trial from being lost, and MLflow may be away: an outage
    while marking the run used to skip the re-queue and leave the trial FAIL for good (with Optuna's stale
    check, every other dead trial of the same check too). The run's state can be fixed later; see UNSYNCED.
    """
    if trial.user_attrs.get("trial_key") is not None:
        trials.requeue(opt, trial, reason, consume_retry=False)
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id and (cause := try_mark_abandoned(tracker, run_id, run_reason)) is not None:
        record_unsynced(opt, trial, tracker, {"run_id": run_id, "reason": run_reason}, type(cause).__name__)


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
                    why: str) -> None:
    """Keep the unmarked run on the trial's new attempt (a finished trial takes no attrs) and say so."""
    again = trials.successor(opt, trial)
    where = "not recorded: the trial was not re-queued"
    if again is not None:
        try:
            opt._storage.set_trial_user_attr(again._trial_id, UNSYNCED, note)
            where = f"recorded as user attr {UNSYNCED} of trial {again.number}"
        except optuna.exceptions.UpdateFinishedTrialError:
            where = f"not recorded: trial {again.number} already ended"
    print(f"ablate: MLflow at {tracker.shown_uri} unreachable ({why}); trial {trial.number} is back in "
          f"the queue but its run {note['run_id']} is not marked failed yet ({where}, for a later "
          f"`ablate run` to mark)", file=sys.stderr, flush=True)


def end_unsynced_runs(opt: optuna.Study, tracker: Tracker) -> None:
    """Mark failed the runs recorded under UNSYNCED. The records stay (a finished trial's attrs are frozen);
    marking again is a no-op, as `Tracker.mark_abandoned` leaves a FAILED run alone."""
    for trial in opt.get_trials(deepcopy=False):
        note = trial.user_attrs.get(UNSYNCED)
        if note and (cause := try_mark_abandoned(tracker, note["run_id"], note["reason"])) is not None:
            print(f"ablate: MLflow at {tracker.shown_uri} unreachable ({type(cause).__name__}); run {note['run_id']} "
                  f"stays unmarked for now", file=sys.stderr, flush=True)
