"""Fixtures of the study tests: one tiny demo dataset per test module, the subprocesses a test starts, and a
fast heartbeat for in-process launchers and workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scale_helpers import GRACE_S, HEARTBEAT_S, Procs, tiny_demo_data


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 px demo data: 8 photos, 8 style images, 8 reference images, 4 held-out photos."""
    root = tmp_path_factory.mktemp("data")
    tiny_demo_data(root)
    return root


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """`ablate` subprocesses started in tmp_path (`procs.start`); whatever is left is killed at teardown."""
    started = Procs(tmp_path)
    yield started
    started.kill_all()


@pytest.fixture
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's heartbeat settings: the ones `scale_helpers.worker_env` gives `ablate worker` subprocesses."""
    monkeypatch.setenv("ABLATE_HEARTBEAT_S", str(HEARTBEAT_S))
    monkeypatch.setenv("ABLATE_GRACE_S", str(GRACE_S))
