"""A worker: pops trials from the shared Optuna study and runs them until the queue is empty.

Outcomes stay distinct: finished and diverged are COMPLETE (a diverged trial is a result, marked
infeasible with its step); failed (an exception) is FAIL and re-queued while retries are left;
interrupted (SIGINT/SIGTERM/SIGUSR1) is FAIL, re-queued, and the worker stops.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablation.errors import UserError
from ablation.outcomes import Outcome
from ablation.study import arrays, queue, storage
from ablation.study.objectives import checked, objective_values
from ablation.study.outages import database_outage
from ablation.study.searching import run_search
from ablation.study.spec import Study, TrialSpec
from ablation.study.trial import TrialContext, TrialOutcome


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

    Grids train up to `fuse` compatible trials at once as one array (study/arrays.py); searches ask for
    `fuse // len(seeds)` points at once and train their seed replicates as arrays (study/searching.py).
    `on_trial_end` gets each trial this worker ended. A worker that lost its claim on a trial (no heartbeat
    recorded for longer than the grace period) stops it with a checkpoint and leaves it unrecorded, for a
    reaper to re-queue (itself, once the database answers again); if the database stays away, it stops with
    one line."""
    ctx.stop.watch(storage.backend_of(opt))
    try:
        ran = _work(study, opt, ctx, on_trial_end, max_trials, fuse)
    except Exception as exc:
        # the database went away: one clear line, not Optuna's traceback (its own error handling fails too)
        if (cause := database_outage(exc)) is None:
            raise
        if ctx.stop.given_up:
            raise storage.claims_lost(opt, ctx.stop.given_up) from None
        raise storage.storage_down(opt, cause) from None
    if ctx.stop.halted is not None:
        # every worker on a full disk or a dead GPU would otherwise fail the whole queue in minutes
        raise UserError(f"worker stopped by an infrastructure error: {ctx.stop.halted}; its trial went "
                        "back to the queue with its retries untouched (fix the machine, then run the worker again)")
    return ran


def _work(study: Study, opt: optuna.Study, ctx: TrialContext, on_trial_end: Callable[[FrozenTrial | None], None]
          | None, max_trials: int | None, fuse: int) -> int:
    if study.spec.method == "grid":
        retry = after_trial(study, lambda: bool(ctx.stop))

        def record(trial: optuna.Trial, spec: TrialSpec, outcome: TrialOutcome) -> None:
            outcome = checked(study, ctx, outcome)
            arrays.tell(opt, trial, spec, outcome, ctx, objective_values(study, outcome))
            retry(opt, opt._storage.get_trial(trial._trial_id))

        return arrays.run_grid(study, opt, ctx, fuse, on_trial_end, max_trials, record)
    return run_search(study, opt, ctx, fuse, on_trial_end, max_trials,
                      lambda outcome: objective_values(study, outcome), after_trial(study, lambda: bool(ctx.stop)))
