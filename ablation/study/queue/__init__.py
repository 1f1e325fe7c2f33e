"""Optuna as the study's work queue: the only place that reaches into Optuna's internals.

- trials: open the study, enqueue what is missing, claim WAITING trials atomically, re-queue, ask new points;
- storage: the RDB storage whose heartbeat survives outages, and knows when a claim is lost;
- ownership, lock: the trial-folder locks that say which process trains a trial, the launcher's own lock;
- recovery: trials of dead processes back to the queue, their MLflow runs marked;
- lease: one claimed trial from its claim to its release (the only end-of-trial path).

Everything outside imports from here (`__all__`), never Optuna's private attributes
(tests/test_layout.py counts them).
"""

from ablation.study.queue.lease import ARRAY_FAILURE, RECORDS, SOLO, Lease, OnTrialEnd, Record, Shift
from ablation.study.queue.lock import LocalLock, enqueue_lock, launcher_lock_path
from ablation.study.queue.ownership import OWNER_ATTR
from ablation.study.queue.recovery import open_queue, reap_dead, reap_orphans, silent_numbers
from ablation.study.queue.storage import (
    Heartbeat,
    backend_of,
    claims_lost,
    heartbeat_of,
    open_storage,
    settle_heartbeat,
    storage_down,
    storage_url,
)
from ablation.study.queue.trials import (
    CONFIG_ATTR,
    claim_waiting,
    directions,
    drop_waiting,
    enqueue_missing,
    has_running,
    has_waiting,
    key_of,
    latest_by_key,
    new_trial,
    open_study,
    outcome_of,
    requeue,
    sampler_for,
    search_budget_left,
)

__all__ = [
    "ARRAY_FAILURE", "CONFIG_ATTR", "Heartbeat", "Lease", "LocalLock", "OWNER_ATTR", "OnTrialEnd", "RECORDS",
    "Record", "SOLO", "Shift", "backend_of", "claim_waiting", "claims_lost", "directions", "drop_waiting",
    "enqueue_lock", "enqueue_missing", "has_running", "has_waiting", "heartbeat_of", "key_of", "latest_by_key",
    "launcher_lock_path", "new_trial", "open_queue", "open_storage", "open_study", "outcome_of", "reap_dead",
    "reap_orphans", "requeue", "sampler_for", "search_budget_left", "settle_heartbeat", "silent_numbers",
    "storage_down", "storage_url",
]
