"""Optuna as the study's work queue and record.

Grid studies: the launcher enqueues one WAITING trial per missing (cell, seed); workers pop them, so no
two workers run the same trial. Identity lives in user attrs (`trial_key`, `cell`, `seed`, `overrides`),
never in GridSampler positions. A trial whose worker died is failed and re-queued with the same attrs
(heartbeat on RDB storages), and resumes from the checkpoint stored under its key.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ablation.errors import UserError, problem
from ablation.study import Study

DEFAULT_STORAGE = "sqlite:///optuna.db"
DONE_OUTCOMES = ("finished", "diverged", "pruned")
optuna.logging.set_verbosity(optuna.logging.ERROR)  # the worker reports trial outcomes itself


@dataclass(frozen=True)
class Heartbeat:
    interval: int = 30  # seconds between a running trial's heartbeats
    grace: int = 120  # a trial silent this long is stale: its worker is presumed dead

    @classmethod
    def from_env(cls) -> "Heartbeat":
        interval = int(os.environ.get("ABLATE_HEARTBEAT_S", "30"))
        return cls(interval, int(os.environ.get("ABLATE_GRACE_S", str(4 * interval))))


def storage_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("ABLATE_STORAGE") or os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE


class Storage(RDBStorage):
    """RDB storage whose heartbeat survives a database outage.

    Optuna records heartbeats from a thread that dies on the first database error (printing a traceback):
    after a short outage the trial would look stale to every other worker while it is still training.
    Here a missed heartbeat prints one line, and heartbeats resume once the database is back.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._heartbeat_down: set[int] = set()
        self._heartbeat_lock = threading.Lock()

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            cause = storage_failure(exc)
            if cause is None:
                raise
            with self._heartbeat_lock:
                first = trial_id not in self._heartbeat_down
                self._heartbeat_down.add(trial_id)
            if first:
                print(f"ablate: Optuna storage {redact(self.url)} unreachable ({_one_line(cause)}); "
                      f"the running trial goes on and is recorded when it ends if the storage is back",
                      file=sys.stderr, flush=True)
            return
        with self._heartbeat_lock:
            back = trial_id in self._heartbeat_down
            self._heartbeat_down.discard(trial_id)
        if back:
            print(f"ablate: Optuna storage {redact(self.url)} is back", file=sys.stderr, flush=True)


OUTAGE_ERRORS = ("OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError")


def storage_failure(exc: BaseException) -> BaseException | None:
    """The database error behind `exc` when the storage could not be reached, else None.

    Optuna wraps driver errors in StorageInternalError, and an error while it records a failed trial can
    surface as an unrelated exception whose context holds the database error: follow the whole chain.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        module = type(current).__module__ or ""
        if type(current).__name__ in OUTAGE_ERRORS and module.startswith(("sqlalchemy", "psycopg", "sqlite3")):
            return current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def redact(url: str) -> str:
    """The storage URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def url_of(opt: optuna.Study) -> str:
    storage = getattr(opt._storage, "_backend", opt._storage)  # optuna wraps RDBStorage in a cache
    return str(getattr(storage, "url", type(storage).__name__))


def storage_down(opt: optuna.Study, cause: BaseException) -> UserError:
    """One line for a worker that stops because the Optuna storage went away."""
    heartbeat = Heartbeat.from_env()
    return UserError(f"--storage: Optuna storage {redact(url_of(opt))} unreachable ({_one_line(cause)}); "
                     f"this worker stops. A trial it was running stays RUNNING: the next worker to start fails it "
                     f"once its heartbeat is {heartbeat.grace}s old, re-queues it and resumes it from its checkpoint")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())  # sqlalchemy: the driver's own message
    return f"{type(exc).__name__}: {text[:200]}"


def open_storage(url: str, heartbeat: Heartbeat, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None
                 ) -> RDBStorage:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}  # several local processes may write now and then
    elif url.startswith("postgresql"):
        kwargs = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2}
        if url.startswith(("postgresql://", "postgresql+psycopg")):
            kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails fast, not after minutes
    try:
        return Storage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat.interval,
                       grace_period=heartbeat.grace, heartbeat_stale_trial_callback=on_stale)
    except Exception as exc:
        raise UserError(problem("--storage", "storage", "a reachable Optuna database URL "
                                "(sqlite:///optuna.db or postgresql+psycopg2://user:pw@host/db)",
                                f"{redact(url)} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")) from None


def directions(study: Study) -> list[str]:
    return [o.direction for o in study.spec.objectives]


def sampler_for(study: Study) -> optuna.samplers.BaseSampler:
    spec = study.spec.search
    if spec is None:
        return optuna.samplers.RandomSampler(seed=0)  # grids only pop enqueued trials
    samplers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=spec.sampler_seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=spec.sampler_seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=spec.sampler_seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=spec.sampler_seed),
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


def key_of(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get("trial_key")


def outcome_of(trial: FrozenTrial) -> str:
    if trial.state == TrialState.WAITING:
        return "waiting"
    if trial.state == TrialState.RUNNING:
        return "running"
    return trial.user_attrs.get("outcome", "failed" if trial.state == TrialState.FAIL else "finished")


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
    """Enqueue every (cell, seed) that is neither done nor pending. Called by one launcher only."""
    latest = latest_by_key(opt)
    added = []
    for trial in study.trials:
        previous = latest.get(trial.key)
        if previous is not None:
            outcome = outcome_of(previous)
            if outcome in ("waiting", "running") or outcome in ("finished", "pruned"):
                continue
            if outcome == "diverged" and not rerun_diverged:
                continue
            if outcome == "failed" and not rerun_failed:
                continue
        attempt = previous.user_attrs.get("attempt", 0) + 1 if previous is not None else 1
        opt.enqueue_trial({"cell_id": int(trial.cell.key, 16), "seed": trial.seed}, user_attrs={
            "trial_key": trial.key, "cell": trial.cell.key, "seed": trial.seed, "label": trial.cell.label,
            "overrides": {p: v for p, v in trial.cell.varied}, "attempt": attempt, "retries_left": study.spec.max_retries})
        added.append(trial.key)
    return added


def requeue(opt: optuna.Study, trial: FrozenTrial, reason: str, consume_retry: bool) -> None:
    """Put a trial back as WAITING with the same params and attrs (the retry keeps its identity)."""
    attrs = dict(trial.user_attrs)
    attrs["attempt"] = attrs.get("attempt", 1) + 1
    attrs["retry_of"] = trial.number
    attrs["requeue_reason"] = reason
    attrs.pop("outcome", None)
    attrs.pop("mlflow_run_id", None)
    if consume_retry:
        attrs["retries_left"] = attrs.get("retries_left", 0) - 1
    opt.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                            distributions=trial.distributions, user_attrs=attrs))


def count_states(opt: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in opt.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


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


class LocalLock:
    """An exclusive lock held by the one launcher of a local (SQLite) study.

    While it is held no other local process runs this study, so every RUNNING trial left in the file is
    from a process that died: it can be re-queued at once instead of after the heartbeat grace period.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: Any = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.path.open("w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            self.handle = None
            return False
        return True

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
