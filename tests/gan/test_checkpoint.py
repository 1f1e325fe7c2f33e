"""Atomic writes (ablation.files) and the checkpoint built on them: a failed write leaves the old file and no
temp file; a successful one replaces the file whole and syncs both the file and its folder."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest
import torch

from ablation import files
from ablation.files import atomic_write, atomic_write_bytes, atomic_write_text
from ablation.gan.checkpoint import load_checkpoint, save_checkpoint


class WriteFailed(Exception):
    pass


def _failing_write(handle: BinaryIO) -> None:
    handle.write(b"half of the new")
    raise WriteFailed


def test_write_replaces_the_file_and_creates_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "notes.txt"
    atomic_write_text(path, "first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["notes.txt"]


def test_written_file_gets_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    atomic_write_text(path, "old")
    with pytest.raises(WriteFailed):
        atomic_write(path, _failing_write)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_failed_rename_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: str, dst: str) -> None:
        raise OSError("rename refused")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        atomic_write_bytes(tmp_path / "notes.txt", b"new")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_round_trips_and_a_failed_save_keeps_the_previous_one(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    assert load_checkpoint(path) is None
    save_checkpoint(path, {"step": 3, "rng": torch.arange(4)})
    loaded = load_checkpoint(path)
    assert loaded is not None and loaded["step"] == 3 and torch.equal(loaded["rng"], torch.arange(4))

    def crash(state: object, handle: BinaryIO) -> None:
        _failing_write(handle)

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(WriteFailed):
        save_checkpoint(path, {"step": 4})
    assert load_checkpoint(path)["step"] == 3  # type: ignore[index]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
