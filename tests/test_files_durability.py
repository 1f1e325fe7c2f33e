"""Durability and hygiene of the files `ablation.files` publishes: the rename is fsynced through the folder (only
the errnos of file systems that refuse a directory fsync are skipped), stale temp files of a killed writer are
removed when their target is loaded again, and the local state folder stays out of the Docker build context."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest
import torch

from ablation import files
from ablation.config import TrainConfig
from ablation.files import atomic_write_bytes
from ablation.gan.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from ablation.gan.init_cache import init_key, load_entry

REPO = Path(__file__).resolve().parents[1]
HOUR = 3600.0


def _temp(target: Path, token: str = "0123456789ab", age_s: float = 0.0) -> Path:
    """A temp file named the way `atomic_write` names one, last written `age_s` ago."""
    tmp = target.with_name(f".{target.name}.{token}.tmp")
    tmp.write_bytes(b"half of a checkpoint")
    then = time.time() - age_s
    os.utime(tmp, (then, then))
    return tmp


def test_atomic_write_fsyncs_its_folder_opened_as_a_directory_after_the_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    dir_flags: list[int] = []
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace
    folder = os.stat(tmp_path)

    def record_open(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: object) -> int:
        if os.path.isdir(path):
            dir_flags.append(flags)
        return real_open(path, flags, *args, **kwargs)

    def record_fsync(fd: int) -> None:
        info = os.fstat(fd)
        is_folder = stat.S_ISDIR(info.st_mode) and (info.st_dev, info.st_ino) == (folder.st_dev, folder.st_ino)
        events.append("fsync folder" if is_folder else "fsync file")
        real_fsync(fd)

    def record_replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "open", record_open)
    monkeypatch.setattr(files.os, "fsync", record_fsync)
    monkeypatch.setattr(files.os, "replace", record_replace)
    atomic_write_bytes(tmp_path / "notes.txt", b"new")
    assert (tmp_path / "notes.txt").read_bytes() == b"new"
    assert events == ["fsync file", "rename", "fsync folder"]
    if hasattr(os, "O_DIRECTORY"):  # refuses to open a non-folder: the handle is the folder, not a file swapped in
        assert dir_flags and all(flags & os.O_DIRECTORY for flags in dir_flags)


def test_fsync_dir_skips_only_the_errnos_of_a_refused_directory_fsync(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def refuse_with(code: int) -> None:
        def fsync(fd: int) -> None:
            calls.append(code)
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(files.os, "fsync", fsync)

    for code in (errno.EINVAL, errno.EBADF, errno.EACCES):  # network mounts, Windows: the rename is all there is
        refuse_with(code)
        files.fsync_dir(tmp_path)
    assert calls == [errno.EINVAL, errno.EBADF, errno.EACCES]
    refuse_with(errno.EIO)  # a real I/O error: the rename may not be durable, and the caller must hear of it
    with pytest.raises(OSError) as info:
        files.fsync_dir(tmp_path)
    assert info.value.errno == errno.EIO


def test_remove_stale_temps_removes_old_temps_of_the_target_only(tmp_path: Path) -> None:
    target = tmp_path / CHECKPOINT_NAME
    target.write_bytes(b"the checkpoint")
    stale = [_temp(target, "0123456789ab", HOUR), _temp(target, "ba9876543210", 2 * HOUR)]
    fresh = _temp(target, "aaaaaaaaaaaa", 1.0)  # another process may be writing it right now
    other = _temp(tmp_path / "other.pt", "0123456789ab", HOUR)  # another target's temp
    lookalike = tmp_path / f".{CHECKPOINT_NAME}.backup.tmp"  # not a name atomic_write makes
    lookalike.write_bytes(b"kept")
    os.utime(lookalike, (time.time() - HOUR, time.time() - HOUR))

    removed = files.remove_stale_temps(target, older_than_s=600)

    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and other.exists() and lookalike.exists() and target.read_bytes() == b"the checkpoint"
    assert files.remove_stale_temps(tmp_path / "missing" / CHECKPOINT_NAME, older_than_s=600) == []


def test_a_temp_file_written_by_atomic_write_is_recognised_as_its_targets(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The cleanup matches the very name atomic_write gives its temp file: kill a write at the rename, then age it."""
    def killed(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    target = tmp_path / "notes.txt"
    monkeypatch.setattr(files.Path, "unlink", lambda self, missing_ok=False: None)  # the killed process cleans nothing
    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    (left,) = tmp_path.iterdir()
    os.utime(left, (time.time() - HOUR, time.time() - HOUR))
    assert files.remove_stale_temps(target, older_than_s=600) == [left]
    assert list(tmp_path.iterdir()) == []


def test_loading_a_trial_checkpoint_to_resume_removes_its_stale_temp(tmp_path: Path) -> None:
    trial = tmp_path / "trials" / "cell-s0"
    save_checkpoint(trial / CHECKPOINT_NAME, {"step": 5, "weights": torch.ones(3)})
    (trial / "config.yaml").write_text("seed: 0\n")
    stale = _temp(trial / CHECKPOINT_NAME, age_s=HOUR)  # a save killed an hour ago
    fresh = _temp(trial / CHECKPOINT_NAME, "fedcba987654", age_s=0.0)

    state = load_checkpoint(trial / CHECKPOINT_NAME)

    assert state is not None and state["step"] == 5
    assert not stale.exists() and fresh.exists()
    assert sorted(p.name for p in trial.iterdir()) == sorted([CHECKPOINT_NAME, "config.yaml", fresh.name])


def test_a_first_save_killed_before_any_checkpoint_exists_is_cleaned_too(tmp_path: Path) -> None:
    stale = _temp(tmp_path / CHECKPOINT_NAME, age_s=HOUR)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME) is None
    assert not stale.exists()


def test_looking_up_an_init_cache_entry_removes_its_stale_temps(tmp_path: Path) -> None:
    config = TrainConfig()
    key = init_key(config)
    stale = [_temp(tmp_path / f"{key}.pt", age_s=HOUR), _temp(tmp_path / f"{key}.json", age_s=HOUR)]
    fresh = _temp(tmp_path / f"{key}.pt", "fedcba987654", age_s=0.0)  # the leader on another host, mid-write
    other = _temp(tmp_path / "0000000000000000.pt", age_s=HOUR)  # another identity's entry: its own lookup cleans it

    assert load_entry(tmp_path, config) is None

    assert not any(p.exists() for p in stale)
    assert fresh.exists() and other.exists()


def test_dockerignore_keeps_the_local_state_folder_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".ablate/", "**/.ablate"} <= ignored
