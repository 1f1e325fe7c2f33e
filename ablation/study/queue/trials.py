"""Optuna as the study's work queue and record.

Grid studies: the launcher enqueues one WAITING trial per missing (cell, seed); workers pop them, so no
two workers run the same trial. Identity lives in user attrs (`trial_key`, `cell`, `seed`, `overrides`),
never in GridSampler positions. A trial whose worker died is failed and re-queued with the same attrs
(heartbeat on RDB storages), and resumes from the checkpoint stored under its key.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ablation.errors import UserError, problem
from ablation.outcomes import Outcome
from ablation.study.queue.lock import engine_of, enqueue_lock
from ablation.study.spec.study import Study


def directions(study: Study) -> list[str]:
    return [o.direction for o in study.spec.objectives]


def sampler_for(study: Study, number: int | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler; with `number`, the one that draws trial `number`'s point, seeded by `sampler_seed` and
    that number: seeded alike, every process (launcher, workers) drew the same first points and trained them twice."""
    spec = study.spec.search
    if spec is None:
        return optuna.samplers.RandomSampler(seed=0)  # grids only pop enqueued trials
    seed = spec.sampler_seed
    if number is not None:
        seed = int(np.random.SeedSequence([spec.sampler_seed, number]).generate_state(1)[0])
    samplers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        # constant liar: points asked while others run (a batch for an array, other workers) are steered
        # away from the pending ones instead of piling onto the same region
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
    }
    return samplers[spec.sampler]()


def pruner_for(study: Study) -> optuna.pruners.BasePruner:
    name = study.spec.search.pruner if study.spec.search else "none"
    pruners: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3),
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    }
    return pruners[name]()


def open_study(study: Study, storage: RDBStorage, create: bool) -> optuna.Study:
    name = study.spec.name
    if create:
        opt = optuna.create_study(study_name=name, storage=storage, directions=directions(study),
                                  sampler=sampler_for(study), pruner=pruner_for(study), load_if_exists=True)
        wanted = [optuna.study.StudyDirection.MINIMIZE if d == "minimize" else optuna.study.StudyDirection.MAXIMIZE
                  for d in directions(study)]
        if list(opt.directions) != wanted:
            raise UserError(problem(study.path, "objectives", f"the directions the stored study {name} was created "
                                    f"with ({[d.name.lower() for d in opt.directions]})", directions(study)))
        return opt
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler_for(study),
                                 pruner=pruner_for(study))
    except KeyError:
        raise UserError(problem("--storage", "study", f"an existing study named {name} (start it with "
                                "`ablate run` or `ablate enqueue`)", "<not found>")) from None


CONFIG_ATTR = "config"  # user attr: the trial's resolved training config (JSON), as the launcher queued it


def key_of(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get("trial_key")


def outcome_of(trial: FrozenTrial) -> Outcome:
    if trial.state == TrialState.WAITING:
        return Outcome.WAITING
    if trial.state == TrialState.RUNNING:
        return Outcome.RUNNING
    default = Outcome.FAILED if trial.state == TrialState.FAIL else Outcome.FINISHED
    return Outcome(trial.user_attrs.get("outcome", default))


def latest_by_key(opt: optuna.Study) -> dict[str, FrozenTrial]:
    """The newest trial per key: retries supersede the attempts before them."""
    latest: dict[str, FrozenTrial] = {}
    for trial in opt.get_trials(deepcopy=False):
        key = key_of(trial)
        if key is not None and (key not in latest or trial.number > latest[key].number):
            latest[key] = trial
    return latest


def enqueue_missing(study: Study, opt: optuna.Study, rerun_failed: bool = False,
                    rerun_diverged: bool = False) -> list[str]:
    """Enqueue every (cell, seed) that is neither done nor pending.

    Launchers may race (two `ablate run`, `ablate enqueue` beside `ablate run`): the queue is read and
    added to under `enqueue_lock`, so the second reads what the first added and queues nothing twice.
    """
    with enqueue_lock(opt):
        latest = latest_by_key(opt)
        added = []
        for trial in study.trials:
            previous = latest.get(trial.key)
            if previous is not None and not _runs_again(outcome_of(previous), rerun_failed, rerun_diverged):
                continue
            attempt = previous.user_attrs.get("attempt", 0) + 1 if previous is not None else 1
            # `rerun_of` names the attempt this one supersedes, as `retry_of` does for a requeue: a
            # requeue of that attempt racing this rerun sees it and adds no second one
            lineage = {"rerun_of": previous.number} if previous is not None else {}
            # the resolved config travels with the trial: a worker trains exactly this (study.spec.queued)
            opt.enqueue_trial({"cell_id": int(trial.cell.key, 16), "seed": trial.seed}, user_attrs={
                "trial_key": trial.key, "cell": trial.cell.key, "seed": trial.seed, "label": trial.cell.label,
                "overrides": dict(trial.cell.varied), CONFIG_ATTR: trial.config.model_dump(mode="json"),
                "attempt": attempt, "retries_left": study.spec.max_retries, **lineage})
            added.append(trial.key)
    return added


def _runs_again(outcome: Outcome, rerun_failed: bool, rerun_diverged: bool) -> bool:
    """Whether a key whose newest attempt ended (or waits) this way is queued again."""
    if outcome.pending or outcome in (Outcome.FINISHED, Outcome.PRUNED):
        return False
    if outcome is Outcome.DIVERGED:
        return rerun_diverged
    if outcome is Outcome.FAILED:
        return rerun_failed
    return True


def requeue(opt: optuna.Study, trial: FrozenTrial, reason: str, consume_retry: bool) -> None:
    """Put a trial back as WAITING with the same params and attrs (the retry keeps its identity).

    Once per attempt: under `enqueue_lock`, nothing is added when a retry (`retry_of`) or a `--rerun-failed`
    (`rerun_of`) of this attempt is already queued, so a racing launcher or a second reaper adds no twin.
    """
    attrs = dict(trial.user_attrs)
    attrs["attempt"] = attrs.get("attempt", 1) + 1
    attrs["retry_of"] = trial.number
    attrs["requeue_reason"] = reason
    for attempt_only in ("outcome", "mlflow_run_id", "array_failure", "error", "diverged_step", "rerun_of",
                         "mlflow_unsynced", "owner"):
        attrs.pop(attempt_only, None)  # what this attempt did; identity (and a `solo` flag) carries over
    if consume_retry:
        attrs["retries_left"] = attrs.get("retries_left", 0) - 1
    # an attempt killed between its claim and its suggest calls has only some of the enqueued params set: the
    # rest stay fixed, or the retry would sample them (a random seed: the run tagged with another trial's key)
    fixed = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    with enqueue_lock(opt):
        if successor(opt, trial) is not None:
            return
        opt.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                                distributions=trial.distributions, user_attrs=attrs,
                                                system_attrs={"fixed_params": fixed} if fixed else None))


def successor(opt: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """The newer attempt that retries (`requeue`) or reruns (`enqueue_missing`) `trial`, if one was queued."""
    return next((t for t in opt.get_trials(deepcopy=False) if t.number > trial.number
                 and trial.number in (t.user_attrs.get("retry_of"), t.user_attrs.get("rerun_of"))), None)


def has_waiting(opt: optuna.Study) -> bool:
    return bool(opt.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def has_running(opt: optuna.Study) -> bool:
    return bool(opt.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def search_budget_left(study: Study, opt: optuna.Study) -> int:
    """Sampled configurations still allowed (retries of earlier ones do not count)."""
    assert study.spec.search is not None
    originals = [t for t in opt.get_trials(deepcopy=False) if "retry_of" not in t.user_attrs
                 and not t.user_attrs.get("spurious")]
    return study.spec.search.n_trials - len(originals)


def claim_waiting(opt: optuna.Study, limit: int, group_of: Callable[[FrozenTrial], str],
                  group: str | None = None, busy: Callable[[FrozenTrial], bool] | None = None
                  ) -> list[optuna.Trial]:
    """Claim up to `limit` WAITING trials of one group (trials that can train together), oldest first.

    Each claim is one conditional UPDATE (`_claim`): a trial another worker took in between is skipped, so no
    trial is ever claimed twice, on SQLite as on PostgreSQL. The group is `group` when given (an array that
    refills its free slots), else the first claimed trial's. A trial `busy` says another process still writes
    to (its folder is locked: study.queue.ownership) is left for later.
    """
    claimed: list[optuna.Trial] = []
    for frozen in sorted(opt.get_trials(deepcopy=False, states=(TrialState.WAITING,)), key=lambda t: t.number):
        if len(claimed) == limit:
            break
        if group is not None and group_of(frozen) != group:
            continue
        if busy is not None and busy(frozen):
            continue
        if _claim(opt, frozen._trial_id):
            group = group if group is not None else group_of(frozen)
            claimed.append(optuna.Trial(opt, frozen._trial_id))
    return claimed


def new_trial(opt: optuna.Study, sampler_of: Callable[[int], optuna.samplers.BaseSampler]) -> optuna.Trial:
    """A new RUNNING trial whose point the sampler `sampler_of(its number)` draws (study.work.search).

    Made as `Study.ask` makes one, except that it never pops a WAITING trial (see `claim_waiting`)."""
    opt._thread_local.cached_all_trials = None  # as `ask` does: the sampler reads the trials as they are now
    trial_id = opt._storage.create_new_trial(opt._study_id)
    opt.sampler = sampler_of(opt._storage.get_trial_number_from_id(trial_id))
    return optuna.Trial(opt, trial_id)


def _claim(opt: optuna.Study, trial_id: int) -> bool:
    """WAITING -> RUNNING as one `UPDATE ... WHERE state = 'WAITING'`: atomic on every SQL database.

    Optuna's own pop (`set_trial_state_values`) reads the row FOR UPDATE and then writes; SQLite ignores FOR
    UPDATE, so two processes can both read WAITING and both run the trial. The row count says who won.
    """
    backend = getattr(opt._storage, "_backend", opt._storage)
    engine = getattr(backend, "engine", None)
    if engine is None:  # in-memory storage: one process, serialised by the storage's own lock
        return opt._storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    with engine.begin() as connection:
        result = connection.execute(
            sqlalchemy.text("UPDATE trials SET state = 'RUNNING', datetime_start = :now "
                            "WHERE trial_id = :trial_id AND state = 'WAITING'"),
            {"now": datetime.now(), "trial_id": trial_id})
    return result.rowcount == 1


def drop_waiting(opt: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Fail a WAITING trial so that no worker ever claims it, noting why (user attr `dropped`). It is claimed
    first with the queue's atomic claim, so a trial a worker took meanwhile is left alone (False); Optuna's own
    `tell` then fails it."""
    if not _claim(opt, trial._trial_id):  # the queue's one atomic WAITING -> RUNNING
        return False
    claimed = optuna.Trial(opt, trial._trial_id)
    claimed.set_user_attr("dropped", reason)
    opt.tell(claimed, state=TrialState.FAIL)
    return True


def unclaim(opt: optuna.Study, trial_id: int) -> bool:
    """RUNNING -> WAITING for a trial this worker claimed but may not train (another process owns its folder),
    as one conditional UPDATE like `_claim`; the trial keeps its number, params and attrs."""
    engine = engine_of(opt)
    if engine is None:  # in-memory storage: one process, whose own folders are never busy to it
        return False
    with engine.begin() as connection:
        result = connection.execute(
            sqlalchemy.text("UPDATE trials SET state = 'WAITING', datetime_start = NULL "
                            "WHERE trial_id = :trial_id AND state = 'RUNNING'"), {"trial_id": trial_id})
        connection.execute(sqlalchemy.text("DELETE FROM trial_heartbeats WHERE trial_id = :trial_id"),
                           {"trial_id": trial_id})
    return result.rowcount == 1
