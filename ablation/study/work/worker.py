"""A worker: pops trials from the shared Optuna study and runs them until the queue is empty.

Outcomes stay distinct: finished and diverged are COMPLETE (a diverged trial is a result, marked
infeasible with its step); failed (an exception) is FAIL and re-queued while retries are left;
interrupted (SIGINT/SIGTERM/SIGUSR1) is FAIL, re-queued, and the worker stops.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial

from ablation.errors import UserError
from ablation.study import queue
from ablation.study.outages import database_outage
from ablation.study.queue import Shift
from ablation.study.spec.study import Study
from ablation.study.work.context import TrialContext
from ablation.study.work.grid import resolve_fuse, run_grid
from ablation.study.work.search import run_search


def work(study: Study, opt: optuna.Study, ctx: TrialContext,
         on_trial_end: Callable[[FrozenTrial | None], None] | None = None, max_trials: int | None = None,
         fuse: int | None = 1) -> int:
    """Run trials until none is left (grid) or the budget is spent (search). Returns trials run.

    Grids train up to `fuse` compatible trials at once as one array (study/work/grid.py); searches ask for
    `fuse // len(seeds)` points at once and train their seed replicates as arrays (study/work/search.py); `fuse`
    None is auto: measured here, by the worker that claims the arrays (`arrays.resolve_fuse`).
    `on_trial_end` gets each trial this worker ended. A worker that lost its claim on a trial (no heartbeat
    recorded for longer than the grace period) stops it with a checkpoint and leaves it unrecorded, for a
    reaper to re-queue (itself, once the database answers again); if the database stays away, it stops with
    one line."""
    size = resolve_fuse(fuse, study)
    ctx.stop.watch(queue.backend_of(opt))
    try:
        ran = _work(study, opt, ctx, on_trial_end, max_trials, size)
    except Exception as exc:
        # the database went away: one clear line, not Optuna's traceback (its own error handling fails too)
        if (cause := database_outage(exc)) is None:
            raise
        if ctx.stop.given_up:
            raise queue.claims_lost(opt, ctx.stop.given_up) from None
        raise queue.storage_down(opt, cause) from None
    if ctx.stop.halted is not None:
        # every worker on a full disk or a dead GPU would otherwise fail the whole queue in minutes
        raise UserError(f"worker stopped by an infrastructure error: {ctx.stop.halted}; its trial went "
                        "back to the queue with its retries untouched (fix the machine, then run the worker again)")
    return ran


def _work(study: Study, opt: optuna.Study, ctx: TrialContext, on_trial_end: Callable[[FrozenTrial | None], None]
          | None, max_trials: int | None, fuse: int) -> int:
    shift = Shift(study, opt, ctx, on_trial_end)
    loop = run_grid if study.spec.method == "grid" else run_search
    return loop(shift, fuse, max_trials)
