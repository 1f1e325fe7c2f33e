"""Search studies in arrays: ask Optuna for several points at once, train every point's seed replicates as
members of arrays, tell each point the mean over its seeds.

A batch holds `fuse // len(seeds)` points (at least one). Points are asked one after another while the
earlier ones are RUNNING, so TPE's constant liar (queue.sampler_for) steers each new point away from the
pending ones, as it does for parallel workers; re-queued points (retries) are claimed first, and only, with
the conditional UPDATE of `queue.claim_waiting`. A point whose array failed is retried with each seed alone.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial

from ablation.config import TrainConfig
from ablation.gan import EvalHook, array_key
from ablation.study import queue
from ablation.study.queue import CONFIG_ATTR, SOLO, Lease, Shift, heartbeat_of, new_trial, reap_dead, sampler_for
from ablation.study.spec.queued import with_local_runtime
from ablation.study.spec.study import Cell, Study, TrialSpec, search_cell
from ablation.study.work.context import TrialContext
from ablation.study.work.trial import run_trials


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


def run_search(shift: Shift, fuse: int, max_trials: int | None) -> int:
    """Ask, train, tell until the budget is spent (or `max_trials` points ran, or a stop was requested).

    As for grids (study.work.grid): each point is a lease (study.queue.lease), trained only while this process holds
    the locks of its seeds' folders, and a point whose claim was lost (no heartbeat recorded for the grace
    period) is given up, untold."""
    study, opt, ctx = shift.study, shift.opt, shift.ctx
    ran = 0
    per_batch = max(1, fuse // len(study.spec.seeds))
    while not ctx.stop and (max_trials is None or ran < max_trials):
        reap_dead(opt, ctx.tracker)  # dead workers' trials go back to the queue first
        wanted = per_batch if max_trials is None else min(per_batch, max_trials - ran)
        points: list[Lease] = []
        try:
            for trial in ask_points(study, opt, ctx, wanted):
                specs, params = _open_point(study, trial)
                if (lease := Lease.take(shift, trial, [spec.key for spec in specs])) is not None:
                    lease.hold(specs, params)
                    points.append(lease)
            if not points:
                if not queue.has_running(opt) and not queue.has_waiting(opt):
                    break
                time.sleep(min(heartbeat_of(opt).interval, 10))  # wait for the last, as grids do
                continue
            for members in _arrays(points, fuse):
                run_trials(ctx, [point.request(index, _pruning(study, point)) for point, index in members])
            ran += sum(1 for point in points if point.end != "given up")
        finally:
            for point in points:
                point.release()
    return ran


def ask_points(study: Study, opt: optuna.Study, ctx: TrialContext, wanted: int) -> list[Trial]:
    """Re-queued points first (claimed atomically, unless another process still owns their folders), then new
    ones while the budget allows."""

    shift = Shift(study, opt, ctx)

    def busy(frozen: FrozenTrial) -> bool:
        cell = frozen.user_attrs.get("cell")
        return cell is not None and shift.busy([f"{cell}-s{seed}" for seed in study.spec.seeds])

    trials = queue.claim_waiting(opt, wanted, lambda frozen: "search", busy=busy)
    with queue.enqueue_lock(opt):  # processes asking at once take turns: the budget is read with their points
        while len(trials) < wanted and queue.search_budget_left(study, opt) > 0:
            trials.append(_new_point(study, opt))
    return trials


def _new_point(study: Study, opt: optuna.Study) -> Trial:
    """A new trial, its point drawn at once by the sampler of its number (`queue.sampler_for`).

    Made as `Study.ask` makes one, except that it never pops a WAITING trial: Optuna's pop is a read-then-write
    (two processes can both take a trial on SQLite) and knows nothing of `busy`, so a re-queued point whose
    folder another process still held was popped instead of a new point being asked, put back by its lease, and
    popped again: the search stood still until that folder was released. Re-queued points are taken by
    `queue.claim_waiting` alone."""
    trial = new_trial(opt, lambda number: sampler_for(study, number))
    search_params(study, trial)  # drawn now, by this trial's sampler (`_open_point` reads them back)
    return trial


def _open_point(study: Study, trial: Trial) -> tuple[list[TrialSpec], dict[str, Any]]:
    trial.set_user_attr("attempt", trial.user_attrs.get("attempt", 1))
    params = search_params(study, trial)
    cell = search_cell(study, params)
    stored = trial.user_attrs.get(CONFIG_ATTR)
    if stored is not None:  # a re-queued point trains the config it was first asked with (study.spec.queued)
        cell = Cell(trial.user_attrs.get("cell", cell.key), cell.label, cell.varied,
                    with_local_runtime(study, TrainConfig.model_validate(stored)))
    else:
        trial.set_user_attr(CONFIG_ATTR, cell.config.model_dump(mode="json"))
    trial.set_user_attr("cell", cell.key)
    trial.set_user_attr("trial_key", f"search:{cell.key}")
    return [TrialSpec.of(cell, seed) for seed in study.spec.seeds], params


def _arrays(points: list[Lease], fuse: int) -> list[list[tuple[Lease, int]]]:
    """Members (point, seed index) that can be fused (equal `array_key`: a search space may vary the
    architecture), `fuse` at a time; a point whose array failed before trains each seed alone."""
    groups: dict[str, list[tuple[Lease, int]]] = {}
    for point in points:
        for index, spec in enumerate(point.specs):
            alone = point.trial.user_attrs.get(SOLO)
            key = f"alone:{point.trial.number}:{spec.seed}" if alone else array_key(spec.config)
            groups.setdefault(key, []).append((point, index))
    return [members[i:i + fuse] for members in groups.values() for i in range(0, len(members), fuse)]


def _pruning(study: Study, point: Lease) -> EvalHook:
    """A seed's evaluation hook: the point's pruner decides, and stops every seed of the point."""
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

    return on_eval
