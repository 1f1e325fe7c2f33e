"""The launcher lock of a local (SQLite) study: one `ablate run` per study and database file."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

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
