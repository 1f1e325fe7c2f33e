"""Search studies in arrays: ask Optuna for several points at once, train every point's seed replicates as
members of arrays, tell each point the mean over its seeds.

A batch holds `fuse // len(seeds)` points (at least one). Points are asked one after another while the
earlier ones are RUNNING, so TPE's constant liar (queue.sampler_for) steers each new point away from the
pending ones, as it does for parallel workers; re-queued points (retries) are claimed first, and only, with
the conditional UPDATE of `queue.claim_waiting`. A point whose array failed is retried with each seed alone.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ablation.config import TrainConfig
from ablation.gan.array_rules import array_key
from ablation.outcomes import Outcome
from ablation.study import ownership, queue
from ablation.study.arrays import ARRAY_FAILURE, SOLO, OnTrialEnd, failed_line
from ablation.study.objectives import checked
from ablation.study.ownership import FolderLock
from ablation.study.queue import CONFIG_ATTR
from ablation.study.recovery import give_back, reap_dead
from ablation.study.spec import Cell, Study, TrialSpec, search_cell
from ablation.study.storage import Beat, give_up_line, heartbeat_of
from ablation.study.stored import with_local_runtime
from ablation.study.trial import TrialContext, TrialOutcome, TrialRequest, run_trials

Values = Callable[[TrialOutcome], list[float]]  # a member's objective values (worst where it has none)
Retry = Callable[[optuna.Study, FrozenTrial], None]  # what happens to a FAIL trial (re-queue or not)


def search_params(study: Study, trial: Trial) -> dict[str, Any]:
    """The point's values: sampled for a new trial, the stored ones for a re-queued trial."""
    assert study.spec.search is not None
    params: dict[str, Any] = {}
    for name, p in study.spec.search.space.items():
        if p.choices is not None:
            params[name] = trial.suggest_categorical(name, p.choices)
        elif p.int:
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
    return params


@dataclass
class Point:
    """One Optuna trial of a search: its sampled params and one member per seed."""

    trial: Trial
    params: dict[str, Any]
    specs: list[TrialSpec]
    outcomes: list[TrialOutcome] = field(default_factory=list)
    pruned: bool = False


def run_search(study: Study, opt: optuna.Study, ctx: TrialContext, fuse: int, on_trial_end: OnTrialEnd | None,
               max_trials: int | None, values_of: Values, retry: Retry) -> int:
    """Ask, train, tell until the budget is spent (or `max_trials` points ran, or a stop was requested).

    As for grids (study.arrays): a point trains only while this process holds the locks of its seeds' folders,
    and a point whose claim was lost (no heartbeat recorded for the grace period) is left untold."""
    ran = 0
    per_batch = max(1, fuse // len(study.spec.seeds))
    while not ctx.stop and (max_trials is None or ran < max_trials):
        reap_dead(opt, ctx.tracker)  # dead workers' trials go back to the queue first
        wanted = per_batch if max_trials is None else min(per_batch, max_trials - ran)
        locks: dict[int, list[FolderLock]] = {}
        try:
            points = [p for p in (_open_point(study, t) for t in ask_points(study, opt, ctx, wanted))
                      if _own(ctx, opt, p, locks)]
            if not points:
                if not queue.has_running(opt) and not queue.has_waiting(opt):
                    break
                time.sleep(min(heartbeat_of(opt).interval, 10))  # wait for the last, as grids do
                continue
            beats = [Beat(opt, p.trial._trial_id).start() for p in points]
            lost: dict[int, float] = {}  # trial id -> seconds without a recorded heartbeat
            try:
                for members in _arrays(points, fuse):
                    outcomes = run_trials(ctx, [_request(study, point, spec) for point, spec in members])
                    for (point, _), outcome in zip(members, outcomes, strict=True):
                        point.outcomes.append(checked(study, ctx, outcome))
            finally:
                lost = {beat.trial_id: beat.silent_s for beat in beats if beat.lost}
                for beat in beats:
                    beat.stop(wait=beat.trial_id not in lost)  # a lost one may hang in the dead database
            for point in points:
                if point.trial._trial_id in lost:  # maybe re-queued already: left for the reaper, untold
                    ctx.stop.given_up.append(point.trial.number)
                    print(give_up_line(opt, point.trial.number, point.trial.user_attrs.get("trial_key", "?"),
                                       lost[point.trial._trial_id]), file=sys.stderr, flush=True)
                    continue
                if (infra := next((o for o in point.outcomes if o.infra is not None), None)) is not None:
                    give_back(opt, opt._storage.get_trial(point.trial._trial_id), ctx.tracker,
                              f"infrastructure error: {infra.infra}", infra.tracking_down)
                else:
                    _tell(study, opt, ctx, point, values_of)
                for lock in locks.pop(point.trial._trial_id, []):
                    lock.release()  # after the tell: a free lock naming a RUNNING trial means its owner died
                frozen = opt._storage.get_trial(point.trial._trial_id)
                retry(opt, frozen)
                ran += 1
                if on_trial_end is not None:
                    on_trial_end(frozen)
        finally:
            for held in locks.values():
                for lock in held:
                    lock.release()
    return ran


def _folders(ctx: TrialContext, study: Study, cell_key: str) -> list[Path]:
    return [ctx.trials_dir / ctx.study_name / f"{cell_key}-s{seed}" for seed in study.spec.seeds]


def _own(ctx: TrialContext, opt: optuna.Study, point: Point, locks: dict[int, list[FolderLock]]) -> bool:
    """Take the locks of the point's seed folders; when another process holds one, the point goes back to
    the queue (study.ownership)."""
    taken: list[FolderLock] = []
    for spec in point.specs:
        lock = ownership.take(ctx.trials_dir / ctx.study_name / spec.key, point.trial.number)
        if lock is None:
            for other in taken:
                other.release()
            queue.unclaim(opt, point.trial._trial_id)
            return False
        taken.append(lock)
    locks[point.trial._trial_id] = taken
    point.trial.set_user_attr(ownership.OWNER_ATTR, ownership.owner_attr(taken))
    return True


def ask_points(study: Study, opt: optuna.Study, ctx: TrialContext, wanted: int) -> list[Trial]:
    """Re-queued points first (claimed atomically, unless another process still owns their folders), then new
    ones while the budget allows."""

    def busy(frozen: FrozenTrial) -> bool:
        cell = frozen.user_attrs.get("cell")
        return cell is not None and any(ownership.folder_held(f) for f in _folders(ctx, study, cell))

    trials = queue.claim_waiting(opt, wanted, lambda frozen: "search", busy=busy)
    with queue.enqueue_lock(opt):  # processes asking at once take turns: the budget is read with their points
        while len(trials) < wanted and queue.search_budget_left(study, opt) > 0:
            trials.append(_new_point(study, opt))
    return trials


def _new_point(study: Study, opt: optuna.Study) -> Trial:
    """A new trial, its point drawn at once by the sampler of its number (`queue.sampler_for`).

    Made as `Study.ask` makes one, except that it never pops a WAITING trial: Optuna's pop is a read-then-write
    (two processes can both take a trial on SQLite) and knows nothing of `busy`, so a re-queued point whose
    folder another process still held was popped instead of a new point being asked, put back by `_own`, and
    popped again: the search stood still until that folder was released. Re-queued points are taken by
    `queue.claim_waiting` alone."""
    opt._thread_local.cached_all_trials = None  # as `ask` does: the sampler reads the trials as they are now
    trial_id = opt._storage.create_new_trial(opt._study_id)
    opt.sampler = queue.sampler_for(study, opt._storage.get_trial_number_from_id(trial_id))
    trial = optuna.Trial(opt, trial_id)
    search_params(study, trial)  # drawn now, by this trial's sampler (`_open_point` reads them back)
    return trial


def _open_point(study: Study, trial: Trial) -> Point:
    trial.set_user_attr("attempt", trial.user_attrs.get("attempt", 1))
    params = search_params(study, trial)
    cell = search_cell(study, params)
    stored = trial.user_attrs.get(CONFIG_ATTR)
    if stored is not None:  # a re-queued point trains the config it was first asked with (study.stored)
        cell = Cell(trial.user_attrs.get("cell", cell.key), cell.label, cell.varied,
                    with_local_runtime(study, TrainConfig.model_validate(stored)))
    else:
        trial.set_user_attr(CONFIG_ATTR, cell.config.model_dump(mode="json"))
    trial.set_user_attr("cell", cell.key)
    trial.set_user_attr("trial_key", f"search:{cell.key}")
    return Point(trial, params, [TrialSpec.of(cell, seed) for seed in study.spec.seeds])


def _arrays(points: list[Point], fuse: int) -> list[list[tuple[Point, TrialSpec]]]:
    """Members that can be fused (equal `array_key`: a search space may vary the architecture), `fuse` at a
    time; a point whose array failed before trains each seed alone."""
    groups: dict[str, list[tuple[Point, TrialSpec]]] = {}
    for point in points:
        for spec in point.specs:
            alone = point.trial.user_attrs.get(SOLO)
            key = f"alone:{point.trial.number}:{spec.seed}" if alone else array_key(spec.config)
            groups.setdefault(key, []).append((point, spec))
    return [members[i:i + fuse] for members in groups.values() for i in range(0, len(members), fuse)]


def _request(study: Study, point: Point, spec: TrialSpec) -> TrialRequest:
    prune = study.spec.search is not None and study.spec.search.pruner != "none"
    metric = study.spec.objectives[0].metric
    trial = point.trial

    def on_eval(metrics: dict[str, float], step: int) -> bool:
        if point.pruned:  # a sibling seed was pruned: the point is, so this replicate stops too
            return True
        if not prune or metric not in metrics:
            return False
        trial.report(metrics[metric], step)
        point.pruned = trial.should_prune()
        return point.pruned

    return TrialRequest(spec, trial.number, point.params, on_eval=on_eval,
                        on_run=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))


def _tell(study: Study, opt: optuna.Study, ctx: TrialContext, point: Point, values_of: Values) -> None:
    """One point's end, as `Study.optimize` would record it from the objective: the mean over its seeds."""
    trial, outcomes = point.trial, point.outcomes
    worst = next((o for o in outcomes if o.outcome in (Outcome.INTERRUPTED, Outcome.FAILED)), None)
    if worst is not None:
        trial.set_user_attr("outcome", worst.outcome)
        if any(o.array_failed for o in outcomes):
            trial.set_user_attr(SOLO, True)  # retried with each seed alone, retries untouched
            trial.set_user_attr(ARRAY_FAILURE, True)
        if worst.outcome is Outcome.FAILED:
            trial.set_user_attr("error", (worst.error or "")[-2000:])
            print(failed_line(ctx, point.specs[outcomes.index(worst)], worst), file=sys.stderr)
        opt.tell(trial, state=TrialState.FAIL)
        return
    if point.pruned or any(o.outcome is Outcome.PRUNED for o in outcomes):
        trial.set_user_attr("outcome", Outcome.PRUNED)
        opt.tell(trial, state=TrialState.PRUNED)
        return
    diverged = next((o for o in outcomes if o.outcome is Outcome.DIVERGED), None)
    trial.set_user_attr("outcome", (diverged or outcomes[0]).outcome)
    if diverged is not None and diverged.result is not None:
        trial.set_user_attr("diverged_step", diverged.result.diverged_step)
    if hasattr(trial, "set_constraint"):  # Optuna 5: infeasible, so samplers learn to avoid it
        trial.set_constraint("diverged", 1.0 if diverged is not None else -1.0)
    per_seed = [values_of(o) for o in outcomes]
    opt.tell(trial, [sum(v[i] for v in per_seed) / len(per_seed) for i in range(len(study.spec.objectives))])
