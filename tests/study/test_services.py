"""The service fixtures are real: PostgreSQL serves Optuna RDB storage, mlflow server round-trips data.

Also runs the compose stack's own pieces natively against them: the Postgres init script and the
mlflow service's start command (db upgrade + server + allowed hosts), without Docker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import requests
from services import REPO, MlflowServer, PostgresServer, free_port, load_compose

pytestmark = [
    pytest.mark.slow,
    pytest.mark.services,
    pytest.mark.timeout(600),  # two mlflow starts on a loaded 2-core box can take minutes
    # RDBStorage(heartbeat_interval=...) is "experimental" in Optuna 5; the warning is expected here
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]


def _storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url, heartbeat_interval=1)


def test_postgres_serves_optuna_rdb_storage_to_two_clients(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("optuna_roundtrip")
    assert url == f"postgresql+psycopg2://ablate:ablate@127.0.0.1:{postgres_server.port}/optuna_roundtrip"

    writer = _storage(url)
    study = optuna.create_study(study_name="roundtrip", storage=writer, direction="minimize")
    study.optimize(lambda t: (t.suggest_float("x", -1.0, 1.0)) ** 2, n_trials=2)

    reader = _storage(url)  # a second storage object = a second worker's view of the study
    trials = optuna.load_study(study_name="roundtrip", storage=reader).get_trials(deepcopy=False)
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert [t.value for t in trials] == [t.value for t in study.trials]
    assert trials[0].params["x"] == study.trials[0].params["x"]
    writer.engine.dispose()
    reader.engine.dispose()


def test_postgres_create_database_rejects_duplicates_and_bad_names(postgres_server: PostgresServer) -> None:
    postgres_server.create_database("dup_check")
    with pytest.raises(Exception, match="already exists"):
        postgres_server.create_database("dup_check")
    assert postgres_server.create_database("dup_check", exist_ok=True).endswith("/dup_check")
    with pytest.raises(ValueError, match="plain identifier"):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')
    postgres_server.drop_database("dup_check")
    assert not postgres_server.database_exists("dup_check")


def test_postgres_stop_and_start_keep_port_and_data(postgres_url: str, postgres_server: PostgresServer) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url, pool_pre_ping=True)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE kept (v int)"))
        conn.execute(sqlalchemy.text("INSERT INTO kept VALUES (7)"))
    port = postgres_server.port
    postgres_server.stop()
    try:
        assert not postgres_server.running
        with pytest.raises(sqlalchemy.exc.OperationalError), engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    finally:
        postgres_server.start()
    assert postgres_server.running and postgres_server.port == port
    with engine.connect() as conn:  # pre_ping replaces the pooled connection the stop killed
        assert conn.execute(sqlalchemy.text("SELECT v FROM kept")).scalar_one() == 7
    engine.dispose()


def test_mlflow_server_on_postgres_roundtrips_and_survives_restart(
    postgres_server: PostgresServer, mlflow_server: Callable[..., MlflowServer], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    server = mlflow_server(postgres_server.create_database("mlflow_roundtrip"))
    assert server.url == f"http://127.0.0.1:{server.port}"
    client = MlflowClient(tracking_uri=server.url)
    exp_id = client.create_experiment("services-check")
    run = client.create_run(exp_id, tags={"ablate.cell": "abc123"})
    run_id = run.info.run_id
    client.log_param(run_id, "loss.style_weight", "3.0")
    for step, value in enumerate([1.0, 0.5, 0.25]):
        client.log_metric(run_id, "loss/g/style", value, step=step)
    sample = tmp_path / "sample.txt"
    sample.write_text("anime\n")
    client.log_artifact(run_id, str(sample), artifact_path="samples")
    client.set_terminated(run_id)

    def check(c: MlflowClient) -> None:
        got = c.get_run(run_id)
        assert got.data.params == {"loss.style_weight": "3.0"}
        assert got.data.tags["ablate.cell"] == "abc123"
        assert [m.value for m in c.get_metric_history(run_id, "loss/g/style")] == [1.0, 0.5, 0.25]
        assert [f.path for f in c.list_artifacts(run_id, "samples")] == ["samples/sample.txt"]
        dest = Path(c.download_artifacts(run_id, "samples/sample.txt", str(tmp_path / f"dl{time.monotonic_ns()}")))
        assert dest.read_text() == "anime\n"

    check(client)
    # proxied artifacts: the bytes live under the server's --artifacts-destination, not the client's cwd
    assert list(server.artifacts_dir.rglob("sample.txt")), server.log_tail()

    port = server.port
    server.stop()
    assert not server.running
    server.start()
    assert server.port == port
    check(MlflowClient(tracking_uri=server.url))


def test_mlflow_server_default_backend_is_sqlite(mlflow_server: Callable[..., MlflowServer]) -> None:
    from mlflow import MlflowClient

    server = mlflow_server()
    assert server.backend_store_uri.startswith("sqlite:///")
    exp_id = MlflowClient(tracking_uri=server.url).create_experiment("sqlite-check")
    assert MlflowClient(tracking_uri=server.url).get_experiment(exp_id).name == "sqlite-check"
    assert server.startup_seconds is not None and server.startup_seconds < server.startup_timeout


def test_mlflow_server_failure_message_includes_log_tail(tmp_path: Path) -> None:
    server = MlflowServer("notadb://nowhere", tmp_path / "a", tmp_path / "server.log", startup_timeout=60)
    with pytest.raises((RuntimeError, TimeoutError)) as info:
        server.start()
    assert str(server.log_path) in str(info.value)
    assert not server.running


# --- the compose stack's helper scripts, run natively -------------------------------------------


def test_postgres_init_script_creates_optuna_and_mlflow_databases(postgres_server: PostgresServer) -> None:
    """docker/postgres/init-databases.sh, as the postgres image's entrypoint would run it."""
    names = "optuna_init_t,mlflow_init_t"
    env = {**os.environ, "PGHOST": postgres_server.host, "PGPORT": str(postgres_server.port),
           "PGPASSWORD": postgres_server.password, "POSTGRES_USER": postgres_server.user,
           "POSTGRES_DB": "postgres", "ABLATE_DATABASES": names}
    psql_dir = str(postgres_server.bin_dir)
    env["PATH"] = f"{psql_dir}:{env['PATH']}"
    for _ in range(2):  # idempotent: a second run (e.g. re-init by hand) must not fail
        proc = subprocess.run(["bash", str(REPO / "docker/postgres/init-databases.sh")], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in names.split(","):
        assert postgres_server.database_exists(name)
        postgres_server.drop_database(name)


def test_compose_mlflow_command_upgrades_schema_then_serves(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """The mlflow service's command from docker-compose.yml, run by sh with the container's env.

    Only MLFLOW_HOST/MLFLOW_PORT differ from compose (loopback and a free port instead of
    0.0.0.0:5000), and the artifact destination is a folder instead of s3://.
    """
    from mlflow import MlflowClient

    # compose refuses to expand a required secret that is unset: give each one
    secrets = {"POSTGRES_PASSWORD": "x", "ABLATE_DB_PASSWORD": "x", "S3_SECRET_KEY": "x"}
    service = load_compose(secrets)["services"]["mlflow"]
    assert service["command"][:2] == ["/bin/sh", "-c"]
    url = postgres_server.create_database("mlflow_compose_cmd")
    port = free_port()
    log = tmp_path / "mlflow-compose.log"
    env = {**os.environ,
           **{k: str(v) for k, v in service["environment"].items()},
           "MLFLOW_BACKEND_STORE_URI": url,
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
           "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
           "MLFLOW_EXTRA_ALLOWED_HOSTS": "gpu-head:5000",
           "MLFLOW_DISABLE_TELEMETRY": "true",
           # `mlflow` on PATH must be the one of the interpreter running the tests
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(service["command"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = MlflowServer(env["MLFLOW_BACKEND_STORE_URI"], tmp_path / "artifacts", log, port=port)
    server.process = proc  # adopt it, so stop() kills the whole process group
    try:
        server._wait_healthy()
        client = MlflowClient(tracking_uri=server.url)
        run = client.create_run(client.create_experiment("compose-cmd"))
        client.log_metric(run.info.run_id, "fid", 12.5)
        assert client.get_run(run.info.run_id).data.metrics == {"fid": 12.5}

        def status(host: str) -> int:
            return requests.get(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1",
                                headers={"Host": host}, timeout=10).status_code

        assert status("mlflow:5000") == 200  # the compose service name workers use
        assert status("gpu-head:5000") == 200  # MLFLOW_EXTRA_ALLOWED_HOSTS is appended
        assert status("evil.example:5000") == 403  # the DNS-rebinding check is still on
    finally:
        server.stop()
    text = log.read_text(errors="replace")
    assert "mlflow db upgrade" in text, text[-3000:]
    assert text.index("mlflow db upgrade") < text.index("Uvicorn running"), text[-3000:]
