"""Grid trials in arrays: claim up to K compatible WAITING trials, train them as one fused model, record
each as its own Optuna trial and MLflow run.

K = 1 is the plain case (one trial at a time) and takes the same path, so that every grid claim is the
conditional UPDATE of `queue.claim_waiting`: Optuna's own pop can hand one trial to two processes on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from optuna.trial import FrozenTrial, Trial

from ablation.config import TrainConfig
from ablation.errors import UserError, problem
from ablation.gan import array_key, resolve_device
from ablation.study import queue
from ablation.study.queue import SOLO, Lease, Shift, heartbeat_of, reap_dead
from ablation.study.spec.queued import trial_spec
from ablation.study.spec.study import Study, TrialSpec
from ablation.study.work.trial import TrialRequest, run_trials

CELL_ID_MAX = 2**48  # cell hashes are 12 hex digits
SEED_MAX = 2**31 - 1
ALONE = "alone:"  # group key prefix of a trial that trains in an array of its own


# `--fuse auto` on a CPU (README "Trial arrays"): one trial at a time. The CPU step is compute-bound and the
# members run their own kernels, so an array gains only the backbone targets of members with the same seed and
# random backbone (about 1.1x at K = 9 in benchmarks/trial_arrays.py), and it lost end to end: the demo study
# took 622 s with K = 4 and less with K = 1 (same machine, same results bit for bit); the shared init phase
# (gan/init_cache.py) works at any K.
AUTO = "auto"
CPU_AUTO_FUSE = 1
CUDA_MAX_FUSE = 16
CUDA_MEMORY_SHARE = 0.8  # of the free memory at start: room for the evaluator and allocator slack


def parse_fuse(text: str) -> int | None:
    """`--fuse 4` -> 4, `--fuse auto` -> None: auto is resolved by each worker (`resolve_fuse`)."""
    if text == AUTO:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UserError(problem(None, "--fuse", "a positive integer or auto", text))
    return int(text)


def fuse_text(fuse: int | None) -> str:
    """The `--fuse` a child worker process is started with: `parse_fuse` reads it back."""
    return AUTO if fuse is None else str(fuse)


def planned_fuse(fuse: int | None, study: Study) -> int | None:
    """The trials per array a dry run can tell without training: None for auto on CUDA, where only the worker
    that claims an array measures it (`resolve_fuse` trains a probe)."""
    if fuse is not None:
        return fuse
    config = study.cells[0].config if study.cells else study.base_config
    return None if resolve_device(config.runtime).type == "cuda" else CPU_AUTO_FUSE


def resolve_fuse(fuse: int | None, study: Study) -> int:
    """The trials per array: `fuse` when given; auto = by measured memory on CUDA, CPU_AUTO_FUSE on a CPU.
    Called by the worker that claims the arrays (it trains a probe on CUDA), never by a launcher or dry run."""
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
    from ablation.gan import Joiner, train_array

    probe = with_overrides(config, {"schedule.epochs": 2, "schedule.init_epochs": 1, "schedule.steps_per_epoch": 2,
                                    "eval.enabled": False})
    torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as out:
        train_array([Joiner(probe, Path(out), lambda metrics, step: None)])
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


def run_grid(shift: Shift, fuse: int, max_trials: int | None) -> int:
    """Claim, train, record until the queue is empty (or `max_trials` ran, or a stop was requested).

    Each array claims up to `fuse` compatible trials and, as members leave early, claims more of its group for
    the free slots; each trial is a lease (study.queue.lease), recorded the moment it ends, with a heartbeat kept while
    it trains. A trial trains only while this process holds its folder's lock (study.queue.ownership): one whose
    folder another process still writes to goes back to the queue. A trial whose claim was lost (no heartbeat
    recorded for the grace period: `Storage.lost_trials`) is stopped with a checkpoint and given up."""
    study, opt, ctx = shift.study, shift.opt, shift.ctx
    claimed_total = 0
    group = group_of(study)
    leases: list[Lease] = []  # what this process holds (released ones are dropped as the loop goes)

    def busy(frozen: FrozenTrial) -> bool:
        return "trial_key" in frozen.user_attrs and shift.busy([str(frozen.user_attrs["trial_key"])])

    def requests(trials: list[Trial]) -> list[TrialRequest]:
        nonlocal claimed_total
        claimed = []
        for trial in trials:
            lease = Lease.take(shift, trial, [str(trial.user_attrs.get("trial_key"))])
            if lease is None:
                continue
            claimed_total += 1
            leases.append(lease)
            spec = _spec(study, trial)
            lease.hold([spec], dict(spec.cell.varied))
            claimed.append(lease.request(0))
        return claimed

    def budget(slots: int) -> int:
        return slots if max_trials is None else max(0, min(slots, max_trials - claimed_total))

    try:
        while not ctx.stop and budget(1):
            leases[:] = [lease for lease in leases if lease.held]
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
        for lease in leases:
            lease.release()
    return claimed_total


def _spec(study: Study, trial: Trial) -> TrialSpec:
    trial.set_user_attr("attempt", trial.user_attrs.get("attempt", 1))
    trial.suggest_int("cell_id", 0, CELL_ID_MAX)  # the enqueued (fixed) params: identity in the Optuna UI
    seed = trial.suggest_int("seed", 0, SEED_MAX)
    return trial_spec(study, trial.user_attrs, seed)  # the config the launcher queued, not a rebuild
