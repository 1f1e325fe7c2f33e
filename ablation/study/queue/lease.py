"""A lease: one trial this worker claimed, held from its claim to its release.

It owns what the claim holds (the Optuna trial, the locks of its folders, its heartbeat, its MLflow run id)
and is the only way a trial leaves this worker:
- `finish()`, once every member ended: checked -> told to Optuna -> released -> retried -> progress;
- `give_back(reason)`: the machine or a service failed, not the trial: re-queued at once, retries untouched;
- `give_up()`: no heartbeat of it recorded for the grace period: another worker may re-queue it by now, so it is
  left untold (its checkpoint waits for the next owner);
- `release()`: its locks and heartbeat let go; also what a worker does with what it holds on the way out of an
  error (the database gone).
A grid trial has one member; a search point has one per seed, told the mean over its seeds.

A new trial outcome is added in one place: `RECORDS` (how Optuna records it, which outcome speaks for a point
whose seeds ended differently, whether and how it is retried).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablation.gan import EvalHook
from ablation.outcomes import Outcome
from ablation.study.queue import ownership, trials
from ablation.study.queue.ownership import FolderLock
from ablation.study.queue.recovery import give_back
from ablation.study.queue.storage import Beat, give_up_line
from ablation.study.spec.study import Study, TrialSpec
from ablation.study.work.context import TrialContext, TrialOutcome
from ablation.study.work.objectives import checked, objective_values
from ablation.study.work.trial import TrialRequest

OnTrialEnd = Callable[[FrozenTrial | None], None]  # a trial this worker ended (for progress lines and the ETA)
SOLO = "solo"  # user attr: this trial trains alone (its array failed once)
ARRAY_FAILURE = "array_failure"  # user attr: failed as part of an array, not (yet) on its own


@dataclass(frozen=True)
class Record:
    """How one outcome is recorded."""

    state: TrialState  # in Optuna
    rank: int  # a point whose seeds ended differently ends as its lowest-ranked seed (the first such seed)
    retry: str | None = None  # why a trial that ended so goes back to the queue (None: it does not)
    counted: bool = False  # that retry spends one of the trial's retries (`retries_left`)


# Every outcome a trial can end with: the one place a new outcome is added.
RECORDS: dict[Outcome, Record] = {
    Outcome.FAILED: Record(TrialState.FAIL, 0, "failed: automatic retry", counted=True),
    Outcome.INTERRUPTED: Record(TrialState.FAIL, 0, "interrupted"),
    Outcome.PRUNED: Record(TrialState.PRUNED, 1),
    Outcome.DIVERGED: Record(TrialState.COMPLETE, 2),  # a result: worst values, infeasible
    Outcome.FINISHED: Record(TrialState.COMPLETE, 3),
}
ARRAY_RETRY = "its array failed: retry alone"  # a member is never charged for a neighbour's fault


@dataclass
class Shift:
    """What the leases of one worker share: its study, Optuna's record of it, its trial context, and who hears
    of each trial it ended."""

    study: Study
    opt: optuna.Study
    ctx: TrialContext
    on_trial_end: OnTrialEnd | None = None

    def folder(self, key: str) -> Path:
        return self.ctx.trials_dir / self.ctx.study_name / key

    def busy(self, keys: Sequence[str]) -> bool:
        """Whether another process still writes to one of these trial folders (study.queue.ownership)."""
        return any(ownership.folder_held(self.folder(key)) for key in keys)


class Lease:
    """One claimed trial: made by `take`, given its members by `hold`, ended by exactly one of `finish`,
    `give_back`, `give_up` (each releases it)."""

    def __init__(self, shift: Shift, trial: optuna.Trial, locks: list[FolderLock]) -> None:
        self.shift, self.trial, self.locks = shift, trial, locks
        self.beat = Beat(shift.opt, trial._trial_id).start()
        self.specs: list[TrialSpec] = []
        self.params: dict[str, Any] = {}
        self.ended: list[TrialOutcome | None] = []
        self.pruned = False  # a search point its pruner stopped (every seed stops with it)
        self.end: str | None = None  # how it ended: "told", "given back", "given up" (None: still held)
        self.held = True

    @classmethod
    def take(cls, shift: Shift, trial: optuna.Trial, keys: Sequence[str]) -> Lease | None:
        """Lock the claimed trial's folders and start its heartbeat; when another process holds a folder (it
        claimed the trial between our check and our claim), the trial goes back to the queue: None."""
        taken: list[FolderLock] = []
        for key in keys:
            lock = ownership.take(shift.folder(key), trial.number)
            if lock is None:
                for other in taken:
                    other.release()
                trials.unclaim(shift.opt, trial._trial_id)
                return None
            taken.append(lock)
        trial.set_user_attr(ownership.OWNER_ATTR, ownership.owner_attr(taken))
        return cls(shift, trial, taken)

    def hold(self, specs: list[TrialSpec], params: dict[str, Any]) -> None:
        """Its members (one per seed) and the params their runs are logged with."""
        self.specs, self.params, self.ended = specs, params, [None] * len(specs)

    def request(self, index: int, on_eval: EvalHook | None = None) -> TrialRequest:
        """Member `index` for `run_trials`: its end comes back to this lease."""
        return TrialRequest(self.specs[index], self.trial.number, self.params, on_eval=on_eval,
                            on_run=partial(self.trial.set_user_attr, "mlflow_run_id"),
                            on_end=partial(self._member_ended, index))

    def frozen(self) -> FrozenTrial:
        return self.shift.opt._storage.get_trial(self.trial._trial_id)

    def _member_ended(self, index: int, outcome: TrialOutcome) -> None:
        self.ended[index] = outcome
        if all(o is not None for o in self.ended):
            self.finish()

    def finish(self) -> None:
        """Every member ended: record the trial (or give it back or up), release it, retry it, say so."""
        if self.beat.lost:  # it may be re-queued by now: never told here, its checkpoint waits for the next owner
            self.give_up()
            return
        self.beat.stop()
        study, ctx = self.shift.study, self.shift.ctx
        outcomes = [checked(study, ctx, o) for o in self.ended if o is not None]
        infra = next((o for o in outcomes if o.infra is not None), None)
        if infra is not None:  # the machine failed, not the trial: back to the queue at once
            self.give_back(f"infrastructure error: {infra.infra}", infra.tracking_down)
            return
        tell(self, outcomes)
        self.end = "told"
        self.release()  # after the tell: a free lock naming a RUNNING trial means its owner died
        frozen = self.frozen()
        retry(self.shift.opt, frozen)
        if self.shift.on_trial_end is not None:
            self.shift.on_trial_end(frozen)

    def give_back(self, reason: str, tracking_down: bool = False) -> None:
        """End it FAIL and re-queue it with its retries untouched (study.queue.recovery.give_back), then release."""
        self.beat.stop()
        give_back(self.shift.opt, self.frozen(), self.shift.ctx.tracker, reason, tracking_down)
        self.end = "given back"
        self.release()

    def give_up(self) -> None:
        """Leave it untold for a reaper: its claim is lost (no heartbeat recorded for the grace period)."""
        opt, number = self.shift.opt, self.trial.number
        self.shift.ctx.stop.given_up.append(number)
        print(give_up_line(opt, number, self.trial.user_attrs.get("trial_key", "?"), self.beat.silent_s),
              file=sys.stderr, flush=True)
        self.end = "given up"
        self.release()

    def release(self) -> None:
        """Let go of its heartbeat and folder locks (once)."""
        if not self.held:
            return
        self.held = False
        self.beat.stop(wait=False)  # a heartbeat call may hang in an unreachable database
        for lock in self.locks:
            lock.release()


def tell(lease: Lease, outcomes: list[TrialOutcome]) -> None:
    """Record the trial's end in Optuna, as `Study.optimize` would from the objective: its lowest-ranked
    member's outcome (`RECORDS`), the mean of its members' objective values."""
    study, opt, trial = lease.shift.study, lease.shift.opt, lease.trial
    first = min(range(len(outcomes)), key=lambda i: RECORDS[outcomes[i].outcome].rank)
    speaker = outcomes[first]
    outcome = speaker.outcome
    if lease.pruned and RECORDS[outcome].rank > RECORDS[Outcome.PRUNED].rank:
        outcome = Outcome.PRUNED  # its pruner stopped the point (a seed that went on to the end included)
    state = RECORDS[outcome].state
    trial.set_user_attr("outcome", outcome)
    if state is TrialState.FAIL and any(o.array_failed for o in outcomes):
        trial.set_user_attr(SOLO, True)  # re-run each member alone, retries untouched (ARRAY_RETRY)
        trial.set_user_attr(ARRAY_FAILURE, True)
    if outcome is Outcome.FAILED:
        trial.set_user_attr("error", (speaker.error or "")[-2000:])
        print(failed_line(lease.shift.ctx, lease.specs[first], speaker), file=sys.stderr)
    if state is not TrialState.COMPLETE:
        opt.tell(trial, state=state)
        return
    if outcome is Outcome.DIVERGED and speaker.result is not None:
        trial.set_user_attr("diverged_step", speaker.result.diverged_step)
    if hasattr(trial, "set_constraint"):  # Optuna 5: infeasible, so samplers learn to avoid it
        trial.set_constraint("diverged", 1.0 if outcome is Outcome.DIVERGED else -1.0)
    per_seed = [objective_values(study, o) for o in outcomes]
    opt.tell(trial, [sum(v[i] for v in per_seed) / len(per_seed) for i in range(len(study.spec.objectives))])


def retry(opt: optuna.Study, trial: FrozenTrial) -> None:
    """Bounded automatic retry of failures (`RECORDS`); interrupted trials go back to the queue."""
    if trial.state != TrialState.FAIL or trial.user_attrs.get("trial_key") is None:
        return
    record = RECORDS.get(trial.user_attrs.get("outcome"))  # type: ignore[arg-type]  # a StrEnum key: text finds it
    if record is None or record.retry is None:
        return
    if record.counted and trial.user_attrs.get(ARRAY_FAILURE):
        trials.requeue(opt, trial, ARRAY_RETRY, consume_retry=False)
    elif not record.counted or trial.user_attrs.get("retries_left", 0) > 0:
        trials.requeue(opt, trial, record.retry, consume_retry=record.counted)


def failed_line(ctx: TrialContext, spec: TrialSpec, outcome: TrialOutcome) -> str:
    error = (outcome.error or "").strip()
    last_line = error.splitlines()[-1:] or ["?"]
    where = "traceback" if error.startswith("Traceback") else "log"  # an unmeasured objective raised nothing
    return (f"ablate: trial {spec.run_name} [{spec.key}] failed: {last_line[0][:300]} "
            f"({where} in {ctx.trials_dir / ctx.study_name / spec.key / 'train.log'})")
