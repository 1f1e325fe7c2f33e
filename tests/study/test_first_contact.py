"""A tracking URI this process never reached (a typo, a server not started) is one line at once, not an outage
waited out for GIVE_UP_S; once it answered, the same failure is an outage again (tests/study/test_outages.py)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from ablation.errors import UserError
from ablation.study.tracking import client as tracking
from ablation.study.tracking.client import Tracker


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_fails_at_the_first_call_in_one_line(closed_port: int) -> None:
    url = f"http://ablate:pa55word@127.0.0.1:{closed_port}"
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        Tracker(url).experiment_id("s")
    assert time.monotonic() - started < tracking.FIRST_CONTACT_S  # refused: at once, not after GIVE_UP_S
    (line,) = info.value.lines
    assert line.startswith(f"--tracking-uri / MLFLOW_TRACKING_URI: expected a reachable MLflow tracking server or "
                           f"store, got <http://ablate:***@127.0.0.1:{closed_port}: ConnectionError: ")
    assert "pa55word" not in line and "Connection refused" in line


def test_a_reached_store_is_asked_once_and_works(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    assert not tracker.reached and tracker.study_names() == [] and tracker.reached
    assert tracker.experiment_id("s") == tracker.experiment_id("s")
