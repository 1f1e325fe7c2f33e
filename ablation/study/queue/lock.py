"""Locks of a study's processes: the launcher lock of a local (SQLite) study (one `ablate run` per study and
database file), and `enqueue_lock`, which processes adding to one study's queue take turns under."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url


def launcher_lock_path(storage_url: str, study_name: str) -> Path | None:
    """Beside the SQLite file the study lives in, whatever the current directory; None for a server database
    (several hosts: a local file would say nothing) or an in-memory one."""
    url = make_url(storage_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    database = Path(url.database).resolve()
    return database.parent / f"{database.name}-{study_name}.run.lock"


class LocalLock:
    """An exclusive lock held by the one launcher (`ablate run`) of a local study.

    It only keeps two launchers of one study from running at once (join a running one with `ablate worker`).
    It says nothing about which trials are alive: workers and the children of `--workers` do not hold it and
    may outlive the launcher. Trials are reaped by heartbeat and trial-folder locks (study.queue.recovery).
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


# Namespace of our PostgreSQL advisory locks ("ablt"): the (namespace, study id) pair cannot collide with the
# single-key locks or the other namespaces that another application on the same server may use.
_PG_LOCK_NAMESPACE = 0x61626C74
_IN_PROCESS_LOCK = threading.Lock()  # in-memory storages live in one process: a thread lock is enough


@contextlib.contextmanager
def enqueue_lock(opt: optuna.Study) -> Iterator[None]:
    """Held across "read the queue, then add to it", so that processes adding to one study take turns.

    Optuna reads and inserts through its own pooled connections, so no transaction of ours can span its
    read and its insert. A unique key in a table of our own could not be written in the same transaction as
    Optuna's trial either: a launcher killed between the two would leave a key marked queued with no trial,
    never queued again. So the read-then-insert runs under a lock that its holder's death releases:
    - PostgreSQL: a transaction-level advisory lock, per study, on a connection of our own; it ends with that
      transaction, or with the connection when the process dies.
    - SQLite: an exclusive flock on a file beside the database. SQLite is local only (it breaks on network
      file systems), so every process using the database sees this file; the kernel drops the lock when the
      process dies. (A `BEGIN IMMEDIATE` on our own connection would block Optuna's inserts, made on another
      connection, until they time out.)
    - in-memory storage: one process, a thread lock. Other databases (MySQL): no lock, one launcher at a time.
    """
    engine = engine_of(opt)
    if engine is None:
        with _IN_PROCESS_LOCK:
            yield
    elif engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:namespace, :study_id)"),
                               {"namespace": _PG_LOCK_NAMESPACE, "study_id": opt._study_id})
            yield
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with _file_lock(Path(f"{engine.url.database}-ablate.lock")):
            yield
    elif engine.dialect.name == "sqlite":  # an in-memory database belongs to one process
        with _IN_PROCESS_LOCK:
            yield
    else:
        yield


def engine_of(opt: optuna.Study) -> sqlalchemy.engine.Engine | None:
    backend = getattr(opt._storage, "_backend", opt._storage)  # optuna wraps RDBStorage in a cache
    return getattr(backend, "engine", None)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # never deleted: removing a lock file another process has open would let a third lock a new file
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # per open file, so threads of one process take turns as well
        yield
    finally:
        os.close(fd)  # releases the lock
