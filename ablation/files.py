"""Atomic file writes: readers (parallel workers, a resumed run) see the old file or the new one, never half of one.

Top level rather than in gan/ or data/ so that both use it without data/ importing gan/ (and torch).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_TOKEN_BYTES = 6  # the random part of a temp file's name: 12 hex digits
# What a file system that cannot fsync a directory answers: Windows has no directory handles (EACCES on open),
# some network mounts refuse the fsync (EINVAL, EBADF). Any other error (EIO) means the rename may be lost: raised.
_NO_DIR_FSYNC = frozenset({errno.EINVAL, errno.EBADF, errno.EACCES})
# A temp file not written to for this long is taken for the leftover of a killed writer. Another live process (a
# worker on another host sharing the volume) may be writing one right now, so young temps are left alone: its
# mtime moves with every write. A writer stalled longer than this (a hung mount) loses its temp and its rename
# fails loudly, leaving the previous file intact; clocks of hosts sharing a volume must agree within minutes.
STALE_TEMP_AGE_S = 600.0


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")


def _temp_pattern(path: Path) -> re.Pattern[str]:
    """Exactly the names `_temp_path` gives `path`'s temp files: nothing else beside it is ever removed."""
    return re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp")


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temp file in `path`'s folder, fsync it, rename it over `path`, fsync the folder.

    The temp file lives in the same folder so the rename stays on one file system (atomic); the folder fsync
    makes the rename itself survive a power cut. On any failure the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
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
    fsync_dir(path.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """For writers that take a file name, not a handle (ONNX, torch.export): yields a temp path beside `path`
    (same suffix, for writers that look at it) to write to; on a clean exit it is fsynced and renamed over
    `path`, on an exception removed, `path` untouched either way until the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(folder: Path) -> None:
    """fsync `folder`, so that a rename into it (a file just published) survives a power cut.

    Skipped quietly only where the platform or file system refuses a directory fsync (`_NO_DIR_FSYNC`): there the
    rename is as durable as it gets. Any other error is raised: the caller published a file that may vanish.
    """
    # O_DIRECTORY: open fails rather than sync a file swapped in under the folder's name
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError as exc:
        if exc.errno in _NO_DIR_FSYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def remove_stale_temps(path: Path, older_than_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the temp files `atomic_write` left beside `path` (a writer killed mid-write) that nobody has written
    to for `older_than_s` seconds; returns those removed. Best effort: a folder that is missing or read-only (a
    report reading a mounted trials volume) keeps its files, and a temp that vanishes meanwhile (its writer
    renamed it) is skipped. Younger temps are kept: a live writer may be filling one now (see STALE_TEMP_AGE_S)."""
    path = Path(path)
    pattern = _temp_pattern(path)
    try:
        names = [entry.name for entry in os.scandir(path.parent) if pattern.fullmatch(entry.name)]
    except OSError:
        return []
    removed: list[Path] = []
    now = time.time()
    for name in names:
        tmp = path.parent / name
        try:
            if now - tmp.lstat().st_mtime > older_than_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone already, or not ours to remove: cleaning up must never fail a load
            continue
    return removed
