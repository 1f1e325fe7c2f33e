"""A worker: pops trials from the shared Optuna study and runs them until the queue is empty.

Outcomes stay distinct: finished and diverged are COMPLETE (a diverged trial is a result, marked
infeasible with its step); failed (an exception) is FAIL and re-queued while retries are left;
interrupted (SIGINT/SIGTERM) is FAIL, re-queued, and the worker stops.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ablation.outcomes import Outcome
from ablation.study import arrays, queue, storage
from ablation.study.outages import database_outage
from ablation.study.spec import Study, TrialSpec, search_cell
from ablation.study.trial import TrialContext, TrialOutcome, run_trial


class Interrupted(Exception):
    """The trial stopped on a signal; it is re-queued and resumes from its checkpoint."""


class TrialFailed(Exception):
    """The training raised; the MLflow run already holds the traceback."""


def objective_values(study: Study, outcome: TrialOutcome) -> list[float]:
    values = []
    for objective in study.spec.objectives:
        worst = math.inf if objective.direction == "minimize" else -math.inf
        value = outcome.metrics.get(objective.metric)
        if outcome.outcome is Outcome.DIVERGED or value is None or not math.isfinite(value):
            value = worst  # an infinite value is COMPLETE for Optuna; NaN would turn it into FAIL
        values.append(float(value))
    return values


def _search_params(study: Study, trial: Trial) -> dict[str, Any]:
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


def make_objective(study: Study, ctx: TrialContext, opt: optuna.Study) -> Callable[[Trial], list[float]]:
    prune = study.spec.search is not None and study.spec.search.pruner != "none"
    metric = study.spec.objectives[0].metric

    def on_eval_for(trial: Trial) -> Callable[[dict[str, float], int], bool]:
        def on_eval(metrics: dict[str, float], step: int) -> bool:
            if not prune or metric not in metrics:
                return False
            trial.report(metrics[metric], step)
            return trial.should_prune()
        return on_eval

    def run(trial: Trial, spec: TrialSpec, params: dict[str, Any]) -> TrialOutcome:
        trial.set_user_attr("attempt", trial.user_attrs.get("attempt", 1))
        outcome = run_trial(ctx, spec, optuna_number=trial.number, params=params, on_eval=on_eval_for(trial),
                            on_run=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
        trial.set_user_attr("outcome", outcome.outcome)
        if outcome.outcome is Outcome.INTERRUPTED:
            raise Interrupted(spec.key)
        if outcome.outcome is Outcome.FAILED:
            trial.set_user_attr("error", (outcome.error or "")[-2000:])
            last_line = (outcome.error or "").strip().splitlines()[-1:] or ["?"]
            print(f"ablate: trial {spec.run_name} [{spec.key}] failed: {last_line[0][:300]} "
                  f"(traceback in {ctx.trials_dir / ctx.study_name / spec.key / 'train.log'})", file=sys.stderr)
            raise TrialFailed(spec.key)
        if outcome.outcome is Outcome.DIVERGED and outcome.result is not None:
            trial.set_user_attr("diverged_step", outcome.result.diverged_step)
        return outcome

    def objective(trial: Trial) -> list[float]:
        params = _search_params(study, trial)
        cell = search_cell(study, params)
        trial.set_user_attr("cell", cell.key)
        trial.set_user_attr("trial_key", f"search:{cell.key}")
        results = []
        for seed in study.spec.seeds:  # replicates of one sampled point; the objective is their mean
            spec = TrialSpec.of(cell, seed)
            results.append(run(trial, spec, params))
            if results[-1].outcome is Outcome.PRUNED:
                raise optuna.TrialPruned()
        per_seed = [objective_values(study, r) for r in results]
        values = [sum(v[i] for v in per_seed) / len(per_seed) for i in range(len(study.spec.objectives))]
        outcome = results[-1] if any(r.outcome is Outcome.DIVERGED for r in results) else results[0]
        diverged = outcome.outcome is Outcome.DIVERGED
        if hasattr(trial, "set_constraint"):  # Optuna 5: infeasible, so samplers learn to avoid it
            trial.set_constraint("diverged", 1.0 if diverged else -1.0)
        return values

    return objective


def after_trial(study: Study, stop_requested: Callable[[], bool]) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Bounded automatic retry of failures; interrupted trials go back to the queue."""

    def callback(opt: optuna.Study, trial: FrozenTrial) -> None:
        outcome = trial.user_attrs.get("outcome")
        if trial.state != TrialState.FAIL or trial.user_attrs.get("trial_key") is None:
            return
        if outcome == Outcome.INTERRUPTED:
            queue.requeue(opt, trial, "interrupted", consume_retry=False)
        elif outcome == Outcome.FAILED and trial.user_attrs.get(arrays.ARRAY_FAILURE):
            queue.requeue(opt, trial, "its array failed: retry alone", consume_retry=False)
        elif outcome == Outcome.FAILED and trial.user_attrs.get("retries_left", 0) > 0:
            queue.requeue(opt, trial, "failed: automatic retry", consume_retry=True)
        if stop_requested() and opt._thread_local.in_optimize_loop:  # stop() outside optimize() raises
            opt.stop()

    return callback


def work(study: Study, opt: optuna.Study, ctx: TrialContext,
         on_trial_end: Callable[[FrozenTrial | None], None] | None = None, max_trials: int | None = None,
         fuse: int = 1) -> int:
    """Run trials until none is left (grid) or the budget is spent (search). Returns trials run.

    Grids train up to `fuse` compatible trials at once as one array (study/arrays.py). `on_trial_end` gets
    each trial this worker ended (None when Optuna's ask found the queue empty)."""
    try:
        if study.spec.method == "grid":
            retry = after_trial(study, lambda: bool(ctx.stop))

            def record(trial: optuna.Trial, spec: TrialSpec, outcome: TrialOutcome) -> None:
                arrays.tell(opt, trial, spec, outcome, ctx, objective_values(study, outcome))
                retry(opt, opt._storage.get_trial(trial._trial_id))

            return arrays.run_grid(study, opt, ctx, fuse, on_trial_end, max_trials, record)
        return _work_search(study, opt, ctx, on_trial_end, max_trials)
    except Exception as exc:
        # the database went away: one clear line, not Optuna's traceback (its own error handling fails too)
        if (cause := database_outage(exc)) is None:
            raise
        raise storage.storage_down(opt, cause) from None


def _work_search(study: Study, opt: optuna.Study, ctx: TrialContext,
                 on_trial_end: Callable[[FrozenTrial | None], None] | None, max_trials: int | None) -> int:
    ran = 0
    ended: list[FrozenTrial] = []
    callbacks = [after_trial(study, lambda: bool(ctx.stop)), lambda _opt, trial: ended.append(trial)]
    while not ctx.stop and (max_trials is None or ran < max_trials):
        optuna.storages.fail_stale_trials(opt)  # dead workers' trials go back to the queue first
        if queue.search_budget_left(study, opt) <= 0 and not queue.has_waiting(opt):
            if not queue.has_running(opt):
                break
            time.sleep(min(storage.Heartbeat.from_env().interval, 10))  # wait for the last, as grids do
            continue
        opt.optimize(make_objective(study, ctx, opt), n_trials=1, catch=(TrialFailed, Interrupted),
                     callbacks=callbacks)
        ran += 1
        if on_trial_end is not None:
            on_trial_end(ended.pop() if ended else None)
    return ran
