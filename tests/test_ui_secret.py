"""`ablate ui` hands the tracking store's URL (which may carry a password) to the MLflow UI through the
environment: no process of the UI shows it on its command line, and the UI still serves that store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(p) for p in children.read_text().split()] if children.exists() else []
    return found + [grand for child in found for grand in _descendants(child)]


@pytest.mark.slow  # an MLflow server starts: ~10-30 s
def test_ui_gets_the_store_url_from_the_environment_not_argv(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/secret-pa55word.db"  # stands for postgresql://user:password@host/db
    MlflowClient(store).create_experiment("visible-in-the-ui")
    port = _free_port()
    # the user gives it as documented for secrets: in the environment (README), not as --tracking-uri
    ui = subprocess.Popen([sys.executable, "-m", "ablation.cli", "ui", "--port", str(port)], cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": store}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, answer = time.monotonic() + 120, None
        while answer is None and time.monotonic() < deadline and ui.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search"
                                            "?max_results=10", timeout=5) as response:
                    answer = json.load(response)
            except OSError:
                time.sleep(0.5)
        assert answer is not None, "the UI did not answer"
        assert "visible-in-the-ui" in [e["name"] for e in answer["experiments"]]
        processes = _descendants(os.getpid())
        assert len(processes) >= 2  # ablate ui and the MLflow server under it (and its workers)
        for pid in processes:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                assert b"pa55word" not in handle.read(), pid
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
