"""Who owns a trial: one writer per trial folder, and how a reaper tells a dead owner from a live one.

A process trains a trial only while it holds the trial folder's lock file (`take`): an exclusive `flock`,
which the kernel drops when the process dies, with the owner's id (host, pid, Optuna trial number) written
into the file. A second process claiming the same trial while the lock is held refuses it instead of writing
(`study.work.grid`, `study.work.search`); the trial goes back to the queue.

The claiming process also records the lock files on its trial (user attr `owner`). A reaper on the same machine
can then tell at once that the owner is gone (every lock file free and still naming this trial); on another
host flock says nothing, and only the heartbeat and its grace period count (`study.queue.recovery`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

LOCK_NAME = "owner.lock"
OWNER_ATTR = "owner"  # trial user attr: {"host", "machine", "pid", "locks": [absolute lock file paths]}
HOST = os.uname().nodename


def _machine_id() -> str:
    """This machine as of this boot: the hostname alone is not enough (two hosts, or two containers on two
    hosts, may share one name, and each would take the other's live trials for dead). The kernel's boot id
    changes with every boot and differs between machines; /etc/machine-id is the fallback where /proc lacks it."""
    for source in ("/proc/sys/kernel/random/boot_id", "/etc/machine-id"):
        with contextlib.suppress(OSError):
            text = Path(source).read_text().strip()
            if text:
                return f"{HOST}/{text}"
    return HOST  # neither readable (not Linux): the hostname is all there is


MACHINE = _machine_id()


@dataclass
class FolderLock:
    """A trial folder's lock, held by this process until `release` (or its death)."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None


def take(folder: Path, trial_number: int) -> FolderLock | None:
    """The folder's lock with this process's id written into it, or None while another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / LOCK_NAME).resolve()
    # never deleted: removing a lock file another process has open would let a third lock a new file
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    record = json.dumps({"host": HOST, "pid": os.getpid(), "trial": trial_number, "since": round(time.time(), 3)})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    return FolderLock(path, fd)


def held(path: Path) -> bool:
    """Whether some process (this one included, through another descriptor) holds the lock file `path`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        # a shared probe: it conflicts with the owner's exclusive lock, and only for an instant with a `take`
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def folder_held(folder: Path) -> bool:
    return held(folder / LOCK_NAME)


def holder(path: Path) -> dict[str, Any] | None:
    """The owner id last written into a lock file (None when absent or torn mid-write)."""
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(Path(path).read_text())
        return record if isinstance(record, dict) else None
    return None


def owner_attr(locks: list[FolderLock]) -> dict[str, Any]:
    return {"host": HOST, "machine": MACHINE, "pid": os.getpid(), "locks": [str(lock.path) for lock in locks]}


def owner_gone(trial: FrozenTrial) -> bool:
    """True when the process that claimed this RUNNING trial on this host is gone: every lock file it took
    is free and still names this trial. Anything less certain (another host, a lock not taken yet, a folder
    taken since by another attempt) is False: the heartbeat decides then."""
    owner = trial.user_attrs.get(OWNER_ATTR)
    # an owner recorded without "machine" (an older ablate) is not known to be here: the heartbeat decides
    if not isinstance(owner, dict) or owner.get("machine") != MACHINE or not owner.get("locks"):
        return False
    for text in owner["locks"]:
        record = holder(Path(text))
        if record is None or record.get("trial") != trial.number or held(Path(text)):
            return False
    return True
