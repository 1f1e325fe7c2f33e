"""Outage or bug, decided by exception type on errors really raised by MLflow, SQLAlchemy and Optuna."""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import optuna
import pytest
import requests
import sqlalchemy
import urllib3
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from ablation.study.outages import DATABASE_OUTAGES, NETWORK_OUTAGES, database_outage, tracking_outage
from ablation.study.queue.storage import Storage
from ablation.study.tracking import client as tracking
from ablation.study.tracking.client import Tracker, mlflow_unavailable


def raised(action: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as info:
        action()
    return info.value


def is_tracking_outage(exc: BaseException) -> bool:
    return tracking_outage(exc, mlflow_unavailable) is not None


@pytest.fixture
def no_client_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # one request: the errors come at once


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def http_status(http_answer: Callable[[int, bytes], str]) -> Callable[[int], str]:
    """`http_status(status) -> url` of a local HTTP server answering every request with `status`."""
    return lambda status: http_answer(status, b"<html>upstream is down</html>")


@pytest.fixture
def sqlite_tracker(tmp_path: Path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_refused_connection_to_the_tracking_server_is_an_outage(no_client_retries: None, closed_port: int) -> None:
    exc = raised(lambda: MlflowClient(f"http://127.0.0.1:{closed_port}").get_experiment_by_name("x"))
    assert isinstance(exc, MlflowException)  # what MLflow raises; the requests error is its context
    found = tracking_outage(exc, mlflow_unavailable)
    assert isinstance(found, NETWORK_OUTAGES) and isinstance(found, requests.exceptions.ConnectionError)
    assert database_outage(exc) is None


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_and_unavailable_answers_are_outages(no_client_retries: None, http_status: Callable[[int], str],
                                                     status: int) -> None:
    exc = raised(lambda: MlflowClient(http_status(status)).get_experiment_by_name("x"))
    found = tracking_outage(exc, mlflow_unavailable)
    # mlflow 3.18 raises a bare MlflowException (its error code for a 502 is INTERNAL_ERROR, as for a 500);
    # older clients raised over urllib3's ResponseError: either way the error found names the status
    assert isinstance(found, MlflowException | urllib3.exceptions.ResponseError) and str(status) in str(found)


@pytest.fixture
def counted_answers() -> Iterator[Callable[[list[int]], tuple[str, list[int]]]]:
    """`counted_answers(statuses) -> (url, served)`: a server answering each request with the next status of
    `statuses` (an HTML error page), then with MLflow's JSON "not found"; `served` lists the statuses sent."""
    servers: list[ThreadingHTTPServer] = []

    def start(statuses: list[int]) -> tuple[str, list[int]]:
        served: list[int] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status = statuses[len(served)] if len(served) < len(statuses) else 404
                served.append(status)
                body = (b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"}'
                        if status == 404 else b"<html>502 Bad Gateway</html>")
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", served

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("status", "outage"), [(502, True), (503, True), (504, True), (500, False)])
def test_what_the_clients_own_retries_give_up_with(monkeypatch: pytest.MonkeyPatch, status: int, outage: bool,
                                                   counted_answers: Callable[[list[int]], tuple[str, list[int]]]
                                                   ) -> None:
    # the client's default configuration retries these statuses itself (7 times, minutes of backoff); the same
    # code path with 2 retries and no backoff: what it finally raises must still read as an outage (or not)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    url, served = counted_answers([status] * 10)
    exc = raised(lambda: MlflowClient(url).get_experiment_by_name("x"))
    assert served == [status] * 3  # the first request and the client's 2 retries
    found = tracking_outage(exc, mlflow_unavailable)
    assert (found is not None and str(status) in str(found)) is outage, exc


def test_a_worker_waits_out_a_gateway_outage(no_client_retries: None, monkeypatch: pytest.MonkeyPatch,
                                            counted_answers: Callable[[list[int]], tuple[str, list[int]]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tracking, "RETRY_SECONDS", 0.0)
    url, served = counted_answers([502, 502, 504, 503])  # a proxy whose MLflow is restarting, then MLflow
    assert tracking.retry(lambda: MlflowClient(url).get_experiment_by_name("x"), "get experiment", url) is None
    assert served == [502, 502, 504, 503, 404]
    err = capsys.readouterr().err
    assert f"MLflow at {url} unreachable (MlflowException)" in err and "is back; get experiment done" in err


def test_a_server_error_is_not_an_outage(no_client_retries: None, http_status: Callable[[int], str]) -> None:
    # retrying a request the server fails on would only hide the failure for the whole retry window
    exc = raised(lambda: MlflowClient(http_status(500)).get_experiment_by_name("x"))
    assert isinstance(exc, MlflowException) and not is_tracking_outage(exc)


def test_sqlite_file_that_cannot_be_opened_is_a_database_outage(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'optuna.db'}")
    exc = raised(engine.connect)
    assert isinstance(exc, sqlalchemy.exc.OperationalError)
    assert database_outage(exc) is exc and is_tracking_outage(exc)


def test_optuna_wraps_a_locked_database_and_the_chain_still_says_outage(tmp_path: Path) -> None:
    path = tmp_path / "optuna.db"
    storage = Storage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 0}})
    lock = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        exc = raised(lambda: storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s"))
    finally:
        lock.close()
    assert isinstance(exc, optuna.exceptions.StorageInternalError)
    found = database_outage(exc)
    assert isinstance(found, sqlalchemy.exc.OperationalError) and isinstance(found, DATABASE_OUTAGES)


def test_missing_run_whose_message_says_connection_is_not_an_outage(sqlite_tracker: Tracker) -> None:
    exc = raised(lambda: sqlite_tracker.client.get_run("connection-refused-timed-out"))
    assert isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert "connection" in str(exc)  # the words the old text match looked for
    assert not is_tracking_outage(exc) and database_outage(exc) is None


def test_ordinary_errors_are_not_outages() -> None:
    exc = ValueError("connection refused: database is locked, 503 timed out")
    assert database_outage(exc) is None and not is_tracking_outage(exc)
    wrapped = raised(lambda: _raise_from(RuntimeError("bad config"), KeyError("connection")))
    assert database_outage(wrapped) is None and not is_tracking_outage(wrapped)


@pytest.mark.parametrize(("code", "outage"), [(TEMPORARILY_UNAVAILABLE, True), (RESOURCE_DOES_NOT_EXIST, False),
                                              (INVALID_PARAMETER_VALUE, False)])
def test_mlflow_error_codes(code: int, outage: bool) -> None:
    exc = MlflowException("connection problem, temporarily", error_code=code)
    assert mlflow_unavailable(exc) is outage and is_tracking_outage(exc) is outage


def test_retry_waits_out_an_outage_and_reraises_anything_else(no_client_retries: None, closed_port: int,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(tracking, "RETRY_SECONDS", 0.0)
    down = MlflowClient(f"http://127.0.0.1:{closed_port}")
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            down.get_experiment_by_name("x")  # refused: an outage
        return "done"

    assert tracking.retry(flaky, "get experiment", "http://mlflow") == "done" and len(calls) == 3
    err = capsys.readouterr().err
    assert "MLflow at http://mlflow unreachable (MlflowException); retrying get experiment" in err
    assert "MLflow at http://mlflow is back; get experiment done" in err

    missing = MlflowException("Run 'connection' not found", error_code=RESOURCE_DOES_NOT_EXIST)
    calls.clear()

    def not_found() -> None:
        calls.append(1)
        raise missing

    with pytest.raises(MlflowException) as info:
        tracking.retry(not_found, "get run", "http://mlflow")
    assert info.value is missing and len(calls) == 1


def _raise_from(exc: BaseException, cause: BaseException) -> None:
    raise exc from cause
