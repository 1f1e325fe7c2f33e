"""The Optuna storage: URL resolution, the RDB connection with a heartbeat that survives outages, and
the one line a worker prints when the database goes away."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from ablation.errors import UserError, problem
from ablation.study.outages import database_outage

DEFAULT_STORAGE = "sqlite:///optuna.db"


@dataclass(frozen=True)
class Heartbeat:
    interval: int = 30  # seconds between a running trial's heartbeats
    grace: int = 120  # a trial silent this long is stale: its worker is presumed dead

    @classmethod
    def from_env(cls) -> Heartbeat:
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
            cause = database_outage(exc)
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
