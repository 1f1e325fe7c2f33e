"""Grid trials in arrays: claim up to K compatible WAITING trials, train them as one fused model, record
each as its own Optuna trial and MLflow run.

K = 1 is the plain case (one trial at a time) and takes the same path, so that every grid claim is the
conditional UPDATE of `queue.claim_waiting`: Optuna's own pop can hand one trial to two processes on SQLite.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, Trial, TrialState

from ablation.config import TrainConfig
from ablation.gan.array_rules import array_key
from ablation.gan.device import resolve_device
from ablation.outcomes import Outcome
from ablation.study import ownership, queue
from ablation.study.ownership import FolderLock
from ablation.study.recovery import give_back, reap_dead
from ablation.study.spec import Study, TrialSpec
from ablation.study.storage import Beat, give_up_line, heartbeat_of
from ablation.study.stored import trial_spec
from ablation.study.trial import TrialContext, TrialOutcome, TrialRequest, run_trials

OnTrialEnd = Callable[[FrozenTrial | None], None]
CELL_ID_MAX = 2**48  # cell hashes are 12 hex digits
SEED_MAX = 2**31 - 1
SOLO = "solo"  # user attr: this trial trains alone (its array failed once)
ARRAY_FAILURE = "array_failure"  # user attr: failed as part of an array, not (yet) on its own
ALONE = "alone:"  # group key prefix of a trial that trains in an array of its own


# `--fuse auto` on a CPU (README "Trial arrays"): one trial at a time. The CPU step is compute-bound and the
# members run their own kernels, so an array gains only the backbone targets of members with the same seed and
# random backbone (about 1.1x at K = 9 in benchmarks/trial_arrays.py), and it lost end to end: the demo study
# took 622 s with K = 4 and less with K = 1 (same machine, same results bit for bit); the shared init phase
# (gan/init_cache.py) works at any K.
CPU_AUTO_FUSE = 1
CUDA_MAX_FUSE = 16
CUDA_MEMORY_SHARE = 0.8  # of the free memory at start: room for the evaluator and allocator slack


def resolve_fuse(fuse: int | None, study: Study) -> int:
    """The trials per array: `fuse` when given; auto = by measured memory on CUDA, CPU_AUTO_FUSE on a CPU."""
    if fuse is not None:
        return fuse
    config = study.cells[0].config if study.cells else study.base_config
    device = resolve_device(config.runtime)
    if device.type != "cuda":
        return CPU_AUTO_FUSE
    return _cuda_fuse(config, device)


def _cuda_fuse(config: TrainConfig, device: torch.device) -> int:
    """Train one member for a few steps on this device and divide the free memory by its peak."""
    import tempfile

    from ablation.config import with_overrides
    from ablation.gan.array import train_array

    probe = with_overrides(config, {"schedule.epochs": 2, "schedule.init_epochs": 1, "schedule.steps_per_epoch": 2,
                                    "eval.enabled": False})
    torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as out:
        train_array([probe], [Path(out)], [lambda metrics, step: None])
    peak = torch.cuda.max_memory_allocated(device)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(CUDA_MAX_FUSE, int(CUDA_MEMORY_SHARE * free // max(peak, 1))))


def planned_arrays(study: Study, fuse: int) -> list[list[TrialSpec]]:
    """How one worker will fuse a fresh grid: it claims the oldest compatible trials, in queue order."""
    arrays: list[list[TrialSpec]] = []
    open_by_key: dict[str, list[TrialSpec]] = {}
    for spec in study.trials:
        key = array_key(spec.config)
        members = open_by_key.get(key)
        if members is None or len(members) == fuse:
            members = open_by_key[key] = []
            arrays.append(members)
        members.append(spec)
    return arrays


def group_of(study: Study) -> Callable[[FrozenTrial], str]:
    """Trials that may train in one array share this key (`gan.array_rules.array_key` of their config)."""
    memo: dict[str, str] = {}

    def key(trial: FrozenTrial) -> str:
        if trial.user_attrs.get(SOLO) or "overrides" not in trial.user_attrs:
            return f"{ALONE}{trial.number}"  # its array failed once, or not one of ours: never fused
        cell_key = trial.user_attrs["cell"]
        if cell_key not in memo:
            memo[cell_key] = array_key(trial_spec(study, trial.user_attrs, trial.user_attrs.get("seed", 0)).config)
        return memo[cell_key]

    return key


def run_grid(study: Study, opt: optuna.Study, ctx: TrialContext, fuse: int, on_trial_end: OnTrialEnd | None,
             max_trials: int | None, record: Callable[[Trial, TrialSpec, TrialOutcome], None]) -> int:
    """Claim, train, record until the queue is empty (or `max_trials` ran, or a stop was requested).

    Each array claims up to `fuse` compatible trials and, as members leave early, claims more of its group for
    the free slots; each trial is recorded the moment it ends, with a heartbeat kept while it trains. A trial
    trains only while this process holds its folder's lock (study.ownership): one whose folder another process
    still writes to goes back to the queue. A trial whose claim was lost (no heartbeat recorded for the grace
    period: `Storage.lost_trials`) is stopped with a checkpoint and left unrecorded, for a reaper to re-queue."""
    claimed_total = 0
    group = group_of(study)
    held: dict[int, tuple[FolderLock, Beat]] = {}  # trial id -> what this process holds for it

    def folder(trial: FrozenTrial | Trial) -> Path:
        return ctx.trials_dir / ctx.study_name / str(trial.user_attrs.get("trial_key"))

    def busy(frozen: FrozenTrial) -> bool:
        return "trial_key" in frozen.user_attrs and ownership.folder_held(folder(frozen))

    def request(trial: Trial) -> TrialRequest | None:
        nonlocal claimed_total
        lock = ownership.take(folder(trial), trial.number)
        if lock is None:  # another process owns the folder (claimed between our check and our claim)
            queue.unclaim(opt, trial._trial_id)
            return None
        trial.set_user_attr(ownership.OWNER_ATTR, ownership.owner_attr([lock]))
        claimed_total += 1
        beat = Beat(opt, trial._trial_id).start()
        held[trial._trial_id] = (lock, beat)
        spec = _spec(study, trial)

        def on_end(outcome: TrialOutcome) -> None:
            if beat.lost:  # it may be re-queued by now: never told here, its checkpoint waits for the next owner
                ctx.stop.given_up.append(trial.number)
                print(give_up_line(opt, trial.number, spec.key, beat.silent_s), file=sys.stderr, flush=True)
                beat.stop(wait=False)  # its last heartbeat call may hang in the unreachable database
                lock.release()
                held.pop(trial._trial_id, None)
                return
            beat.stop()
            if outcome.infra is not None:  # the machine failed, not the trial: back to the queue at once
                give_back(opt, opt._storage.get_trial(trial._trial_id), ctx.tracker,
                          f"infrastructure error: {outcome.infra}", outcome.tracking_down)
                lock.release()
                held.pop(trial._trial_id, None)
                return
            if outcome.array_failed:
                # one exception fails the whole fused model: re-run each member alone, retries untouched, so a
                # member is never charged for a neighbour's fault
                trial.set_user_attr(SOLO, True)
                trial.set_user_attr(ARRAY_FAILURE, True)
            record(trial, spec, outcome)
            lock.release()  # after the record: a free lock naming a RUNNING trial means its owner died
            held.pop(trial._trial_id, None)
            if on_trial_end is not None:
                on_trial_end(opt._storage.get_trial(trial._trial_id))

        return TrialRequest(spec, trial.number, dict(spec.cell.varied), on_end=on_end,
                            on_run=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))

    def requests(trials: list[Trial]) -> list[TrialRequest]:
        return [r for r in map(request, trials) if r is not None]

    def budget(slots: int) -> int:
        return slots if max_trials is None else max(0, min(slots, max_trials - claimed_total))

    try:
        while not ctx.stop and budget(1):
            reap_dead(opt, ctx.tracker)  # dead workers' trials go back to the queue first
            trials = queue.claim_waiting(opt, budget(fuse), group, busy=busy)
            claimed = requests(trials)
            if not claimed:
                if not queue.has_running(opt) and not queue.has_waiting(opt):
                    break
                # another worker holds the last trials (or their folders): stay until they end, so that one
                # whose worker died is picked up here instead of leaving the study incomplete
                time.sleep(min(heartbeat_of(opt).interval, 10))
                continue
            key = group(trials[0])  # type: ignore[arg-type]  # a Trial has the user_attrs and number it reads

            def refill(free: int, key: str = key) -> list[TrialRequest]:
                if ctx.stop or key.startswith(ALONE) or not budget(free):
                    return []
                return requests(queue.claim_waiting(opt, budget(free), group, group=key, busy=busy))

            run_trials(ctx, claimed, refill=refill if fuse > 1 else None)
    finally:  # an error on the way out (the database gone): nothing of ours stays locked in this process
        for lock, beat in held.values():
            beat.stop(wait=False)
            lock.release()
    return claimed_total


def _spec(study: Study, trial: Trial) -> TrialSpec:
    trial.set_user_attr("attempt", trial.user_attrs.get("attempt", 1))
    trial.suggest_int("cell_id", 0, CELL_ID_MAX)  # the enqueued (fixed) params: identity in the Optuna UI
    seed = trial.suggest_int("seed", 0, SEED_MAX)
    return trial_spec(study, trial.user_attrs, seed)  # the config the launcher queued, not a rebuild


def failed_line(ctx: TrialContext, spec: TrialSpec, outcome: TrialOutcome) -> str:
    error = (outcome.error or "").strip()
    last_line = error.splitlines()[-1:] or ["?"]
    where = "traceback" if error.startswith("Traceback") else "log"  # an unmeasured objective raised nothing
    return (f"ablate: trial {spec.run_name} [{spec.key}] failed: {last_line[0][:300]} "
            f"({where} in {ctx.trials_dir / ctx.study_name / spec.key / 'train.log'})")


def tell(opt: optuna.Study, trial: Trial, spec: TrialSpec, outcome: TrialOutcome, ctx: TrialContext,
         values: list[float]) -> None:
    """Record one member's end in Optuna, the way `Study.optimize` would have from the objective."""
    trial.set_user_attr("outcome", outcome.outcome)
    if outcome.outcome is Outcome.FAILED:
        trial.set_user_attr("error", (outcome.error or "")[-2000:])
        print(failed_line(ctx, spec, outcome), file=sys.stderr)
    if outcome.outcome in (Outcome.FAILED, Outcome.INTERRUPTED):
        opt.tell(trial, state=TrialState.FAIL)
        return
    if outcome.outcome is Outcome.DIVERGED and outcome.result is not None:
        trial.set_user_attr("diverged_step", outcome.result.diverged_step)
    if hasattr(trial, "set_constraint"):  # Optuna 5: infeasible, so samplers learn to avoid it
        trial.set_constraint("diverged", 1.0 if outcome.outcome is Outcome.DIVERGED else -1.0)
    opt.tell(trial, values)
