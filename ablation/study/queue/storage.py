"""The Optuna storage: URL resolution, the RDB connection with a heartbeat that survives outages, the
heartbeat settings every process of a study shares, the claims a worker loses when its heartbeats cannot be
recorded, and the one line a worker prints when the database goes away."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from ablation.errors import UserError, problem
from ablation.study.outages import database_outage, redact
from ablation.study.queue.lock import enqueue_lock

DEFAULT_STORAGE = "sqlite:///optuna.db"
HEARTBEAT_ENV, GRACE_ENV = "ABLATE_HEARTBEAT_S", "ABLATE_GRACE_S"
HEARTBEAT_ATTR = "ablate.heartbeat"  # study user attr: the settings every process of the study uses


@dataclass(frozen=True)
class Heartbeat:
    interval: int = 30  # seconds between a running trial's heartbeats
    grace: int = 120  # a trial silent this long is stale: its worker is presumed dead

    @classmethod
    def from_env(cls) -> Heartbeat:
        """$ABLATE_HEARTBEAT_S and $ABLATE_GRACE_S (default 4 x the interval), checked against each other."""
        interval = _env_seconds(HEARTBEAT_ENV, "30")
        grace = _env_seconds(GRACE_ENV, str(4 * interval))
        if grace < 2 * interval:
            # a grace of one interval or less declares a live worker dead after one late heartbeat
            raise UserError(problem(GRACE_ENV, "grace period", f"at least twice {HEARTBEAT_ENV} ({2 * interval} s)",
                                    grace))
        return cls(interval, grace)

    @staticmethod
    def env_given() -> bool:
        return any(os.environ.get(name) for name in (HEARTBEAT_ENV, GRACE_ENV))


def _env_seconds(name: str, default: str) -> int:
    text = os.environ.get(name) or default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(problem(name, "seconds", "a whole number of seconds >= 1", text))
    return value


def storage_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("ABLATE_STORAGE") or os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE


class Storage(RDBStorage):
    """RDB storage whose heartbeat survives a database outage, and which knows when a claim is lost.

    Optuna records heartbeats from a thread that dies on the first database error (printing a traceback):
    after a short outage the trial would look stale to every other worker while it is still training.
    Here a missed heartbeat prints one line, and heartbeats resume once the database is back.

    A trial this process trains (`track`) whose heartbeat has not been recorded for longer than the grace
    period may already be re-queued by another worker: it is lost (`lost_trials`), the trainer stops it at
    its next step, and no heartbeat of it is recorded again (one would make it look alive to the reapers).
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._heartbeat_down: set[int] = set()
        self._heartbeat_lock = threading.Lock()
        # trial id -> monotonic time just BEFORE its last heartbeat that was recorded: the database's own
        # timestamp of that heartbeat is later, so this process gives a trial up no later than a reaper may
        self._last_beat: dict[int, float] = {}
        self._lost: set[int] = set()

    def track(self, trial_id: int) -> None:
        """Watch a trial this process just claimed (the claim itself was a write that went through)."""
        with self._heartbeat_lock:
            self._last_beat[trial_id] = time.monotonic()
            self._lost.discard(trial_id)

    def forget(self, trial_id: int) -> None:
        with self._heartbeat_lock:
            self._last_beat.pop(trial_id, None)
            self._lost.discard(trial_id)

    def lost_trials(self) -> list[int]:
        """Tracked trials without a recorded heartbeat for longer than the grace period (then lost for good)."""
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        if not grace:
            return []
        now = time.monotonic()
        with self._heartbeat_lock:
            self._lost.update(t for t, last in self._last_beat.items() if now - last > grace)
            return sorted(self._lost)

    def silent_for(self, trial_id: int) -> float:
        """Seconds since the last recorded heartbeat of a tracked trial began (0 when not tracked)."""
        with self._heartbeat_lock:
            last = self._last_beat.get(trial_id)
        return time.monotonic() - last if last is not None else 0.0

    def record_heartbeat(self, trial_id: int) -> None:
        if trial_id in self._lost:
            return
        started = time.monotonic()
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            cause = database_outage(exc)
            if cause is None:
                raise
            with self._heartbeat_lock:
                first = trial_id not in self._heartbeat_down
                self._heartbeat_down.add(trial_id)
            if first:
                print(f"ablate: Optuna storage {redact(self.url)} unreachable ({_one_line(cause)}); "
                      f"the running trial goes on, and stops with a checkpoint if no heartbeat gets through for "
                      f"{self.grace_period}s", file=sys.stderr, flush=True)
            return
        with self._heartbeat_lock:
            back = trial_id in self._heartbeat_down
            self._heartbeat_down.discard(trial_id)
            if trial_id in self._last_beat and trial_id not in self._lost:  # a late answer revives nothing
                self._last_beat[trial_id] = started
        if back:
            print(f"ablate: Optuna storage {redact(self.url)} is back", file=sys.stderr, flush=True)


class Beat:
    """Records one claimed trial's heartbeat every interval, and tracks its claim (`Storage.lost_trials`).

    A daemon thread, unlike Optuna's: a heartbeat stuck in an unreachable database must not keep a worker
    that gave its trial up from exiting. `stop(wait=False)` leaves such a call behind.
    """

    def __init__(self, opt: optuna.Study, trial_id: int) -> None:
        backend = backend_of(opt)
        self.beats = backend if isinstance(backend, RDBStorage) and backend.heartbeat_interval else None
        self.storage = self.beats if isinstance(self.beats, Storage) else None  # ours: it tracks the claim
        self.trial_id = trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Beat:
        if self.storage is not None:
            self.storage.track(self.trial_id)
        if self.beats is not None:
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.beats is not None and self.beats.heartbeat_interval is not None
        while True:
            self.beats.record_heartbeat(self.trial_id)
            if self._stop.wait(self.beats.heartbeat_interval):
                return

    @property
    def lost(self) -> bool:
        return self.storage is not None and self.trial_id in self.storage.lost_trials()

    @property
    def silent_s(self) -> float:
        return self.storage.silent_for(self.trial_id) if self.storage is not None else 0.0

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join()
        if self.storage is not None:
            self.storage.forget(self.trial_id)


def backend_of(opt: optuna.Study) -> Any:
    return getattr(opt._storage, "_backend", opt._storage)  # optuna wraps RDBStorage in a cache


def heartbeat_of(opt: optuna.Study) -> Heartbeat:
    """The heartbeat settings this process applies to the study (see `settle_heartbeat`)."""
    backend = backend_of(opt)
    interval = getattr(backend, "heartbeat_interval", None) or Heartbeat.interval
    return Heartbeat(interval, getattr(backend, "grace_period", None) or 2 * interval)


def settle_heartbeat(opt: optuna.Study, wanted: Heartbeat, env_given: bool) -> Heartbeat:
    """The study's heartbeat settings: stored with it by the first process that opens it, read by every later
    one, so that no two processes judge a silent trial differently (a worker with a shorter grace period would
    re-queue trials that a worker with a longer heartbeat interval is still training). A process whose
    environment asks for other values says so in one line and uses the stored ones."""
    with enqueue_lock(opt):  # two first processes: the second reads what the first stored
        stored = opt.user_attrs.get(HEARTBEAT_ATTR)
        if stored is None:
            opt.set_user_attr(HEARTBEAT_ATTR, {"interval": wanted.interval, "grace": wanted.grace})
            settled = wanted
        else:
            settled = Heartbeat(int(stored["interval"]), int(stored["grace"]))
    if env_given and settled != wanted:
        print(f"ablate: {HEARTBEAT_ENV}={wanted.interval} {GRACE_ENV}={wanted.grace} ignored: study "
              f"{opt.study_name} keeps the heartbeat settings stored with it (interval {settled.interval}s, grace "
              f"{settled.grace}s), which every process of the study uses", file=sys.stderr, flush=True)
    backend = backend_of(opt)
    backend.heartbeat_interval, backend.grace_period = settled.interval, settled.grace
    return settled


def url_of(opt: optuna.Study) -> str:
    storage = backend_of(opt)
    return str(getattr(storage, "url", type(storage).__name__))


def storage_down(opt: optuna.Study, cause: BaseException) -> UserError:
    """One line for a worker that stops because the Optuna storage went away."""
    heartbeat = heartbeat_of(opt)
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


def give_up_line(opt: optuna.Study, number: int, key: str, silent_s: float) -> str:
    """What a worker prints when it leaves a trial it lost unrecorded (`Storage.lost_trials`)."""
    return (f"ablate: trial {number} [{key}] given up: no heartbeat recorded for {silent_s:.0f}s, longer than the "
            f"study's grace period ({heartbeat_of(opt).grace}s), so another worker may re-queue it; stopped with a "
            "checkpoint and left unrecorded, to be re-queued and resumed")


def claims_lost(opt: optuna.Study, numbers: list[int]) -> UserError:
    """One line for a worker that gave its trials up: no heartbeat of theirs recorded for the grace period."""
    heartbeat = heartbeat_of(opt)
    return UserError(f"--storage: Optuna storage {redact(url_of(opt))} unreachable: no heartbeat of trial(s) "
                     f"{', '.join(map(str, numbers))} recorded for longer than the study's grace period "
                     f"({heartbeat.grace}s); this worker stopped them with a checkpoint, left them unrecorded, and "
                     f"stops. A worker on this host re-queues them at once, any other once their heartbeat is "
                     f"{heartbeat.grace}s old")
