"""The launcher lock of a local (SQLite) study."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any


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
