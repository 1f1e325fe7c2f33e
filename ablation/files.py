"""Atomic file writes: readers (parallel workers, a resumed run) see the old file or the new one, never half of one.

Top level rather than in gan/ or data/ so that both use it without data/ importing gan/ (and torch).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temp file in `path`'s folder, fsync it, rename it over `path`, fsync the folder.

    The temp file lives in the same folder so the rename stays on one file system (atomic); the folder fsync
    makes the rename itself survive a power cut. On any failure the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # not mkstemp: its mode 0600 would hide a smoothed image or a sample from workers running as another user;
    # 0666 minus the umask is what a plain open() gives
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows): the rename is as durable as it gets
        return
    try:
        # some file systems (network mounts) refuse fsync on a directory; the file's data is already safe
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
