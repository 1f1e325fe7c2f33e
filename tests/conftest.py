"""Shared fixtures: the process settings `ablate` applies, and the service machinery (which lives in
tests/services.py; this file only registers it)."""

from __future__ import annotations

import itertools
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from services import PG_MISSING_MESSAGE, MlflowServer, PostgresServer, find_postgres_bin_dir

from ablation.process import configure_process


@pytest.fixture(scope="session", autouse=True)
def ablate_process_settings() -> None:
    """Library code under test runs as `ablate` runs it: with the CLI's process settings (short MLflow
    retries, quiet Optuna). Importing ablation no longer applies them, so the test session does."""
    configure_process()


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture(autouse=True)
def free_disk_after_passing(request: pytest.FixtureRequest) -> Iterator[None]:
    """Empty a passing test's tmp_path when it ends (set up first, so torn down after every server and store
    it used); a failing test's stays to look at. The suite writes about 12 GB of checkpoints, models and stores:
    kept whole, it filled a CI machine's disk. The folder itself stays: pytest would
    hand its name to the next test of the same name prefix, and MLflow and Optuna cache stores by path."""
    yield
    path = request.node.funcargs.get("tmp_path")
    if isinstance(path, Path) and not request.node.stash.get(_FAILED, False):
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def restore_import_path() -> Iterator[None]:
    """Tests that load a logged model with mlflow.pyfunc get its code folder (a partial copy of ablation) put
    first on sys.path for good; a later test's spawned process would import that copy."""
    path = list(sys.path)
    yield
    sys.path[:] = path


@pytest.fixture
def http_answer() -> Iterator[Callable[[int, bytes], str]]:
    """`http_answer(status, body) -> url`: a plain HTTP server on 127.0.0.1 answering every GET with `status`
    and `body` (a dataset to download, an upstream error page)."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, body: bytes) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/dataset.zip"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session; `create_database(name) -> url`, `stop()`, `start()`."""
    bin_dir = find_postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(PG_MISSING_MESSAGE)
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.close()


_db_counter = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for one test (dropped afterwards); its postgresql+psycopg2:// URL."""
    name = f"t{next(_db_counter)}_{request.node.name.lower()}"
    name = "".join(c if c.isalnum() else "_" for c in name)[:60]
    url = postgres_server.create_database(name)
    yield url
    if not postgres_server.running:  # a fault test left it stopped; bring it back to clean up
        postgres_server.start()
    postgres_server.drop_database(name)


@pytest.fixture
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., MlflowServer]]:
    """Factory: `mlflow_server(backend_store_uri=None, **MlflowServer kwargs) -> MlflowServer`.

    Default backend: a fresh SQLite file. Every server started is killed at teardown.
    """
    started: list[MlflowServer] = []

    def start(backend_store_uri: str | None = None, **kwargs: object) -> MlflowServer:
        root: Path = tmp_path_factory.mktemp("mlflow-server")
        uri = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
        server = MlflowServer(uri, root / "artifacts", root / "server.log", **kwargs)  # type: ignore[arg-type]
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
