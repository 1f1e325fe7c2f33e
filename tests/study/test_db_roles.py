"""The compose stack's database roles and password hygiene, run natively against a real PostgreSQL.

docker/postgres/init-databases.sh (what the postgres image runs once from /docker-entrypoint-initdb.d)
creates the application's login role: it owns the Optuna and MLflow databases and their public schema,
but is no superuser and can create neither databases nor roles. Everything the stack runs (mlflow server,
optuna-dashboard, ablate workers) logs in as that role, and no password ever sits in a process's argv,
which `ps` on the host and `docker inspect` show to anyone who can look.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import psycopg2
import psycopg2.errors
import pytest
from services import REPO, MlflowServer, PostgresServer, free_port, load_compose

from ablation.study.queue import storage as storage_mod
from ablation.study.runner import RunOptions, run_worker_processes

pytestmark = [
    pytest.mark.services,
    pytest.mark.timeout(600),  # one mlflow start (schema creation + server) on a loaded 1-core run
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

INIT_SCRIPT = REPO / "docker/postgres/init-databases.sh"
# roles are cluster-wide and the PostgreSQL fixture is shared by the session: names no other test uses
APP_ROLE = "ablate_app_roles_t"
OPTUNA_DB, MLFLOW_DB = "optuna_roles_t", "mlflow_roles_t"
# fresh per run and URL-safe (it is spliced into URLs, as compose does): what the argv scans look for
APP_PASSWORD = "app-" + secrets.token_hex(12)
# compose refuses to start without these (${VAR:?...}); what tests/test_compose.py feeds it as well
COMPOSE_SECRETS = {"POSTGRES_PASSWORD": "pg-superuser-secret", "ABLATE_DB_PASSWORD": "app-role-secret",
                   "S3_SECRET_KEY": "s3-secret-key"}


def app_url(server: PostgresServer, db: str) -> str:
    return f"postgresql+psycopg2://{APP_ROLE}:{APP_PASSWORD}@{server.host}:{server.port}/{db}"


def app_connect(server: PostgresServer, db: str) -> Any:
    conn = psycopg2.connect(host=server.host, port=server.port, user=APP_ROLE, password=APP_PASSWORD,
                            dbname=db, connect_timeout=10)
    conn.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
    return conn


def superuser_query(server: PostgresServer, db: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                            dbname=db, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def psql_recorder(tmp: Path, server: PostgresServer) -> tuple[Path, Path]:
    """A `psql` first on PATH that appends its argv to a log, then runs the real one: what `ps` would show."""
    bin_dir, log = tmp / "bin", tmp / "psql-argv.log"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "psql"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> "{log}"\nexec "{server.bin_dir / "psql"}" "$@"\n')
    wrapper.chmod(0o755)
    return bin_dir, log


def run_init(server: PostgresServer, databases: list[str], tmp: Path, **overrides: str | None
             ) -> subprocess.CompletedProcess[str]:
    """The init script as the postgres image's entrypoint runs it: superuser env, the app role's settings."""
    bin_dir, _ = psql_recorder(tmp, server)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "ABLATE_DB_"))}
    env.update({"PGHOST": server.host, "PGPORT": str(server.port), "PGPASSWORD": server.password,
                "POSTGRES_USER": server.user, "POSTGRES_DB": "postgres", "ABLATE_DATABASES": ",".join(databases),
                "ABLATE_DB_USER": APP_ROLE, "ABLATE_DB_PASSWORD": APP_PASSWORD,
                "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def app_databases(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The Optuna and MLflow databases as the init script leaves them (run twice: it must be idempotent).

    Yields the folder whose psql-argv.log recorded every psql command line the script ran.
    """
    tmp = tmp_path_factory.mktemp("db-roles")
    try:
        for _ in range(2):
            proc = run_init(postgres_server, [OPTUNA_DB, MLFLOW_DB], tmp)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        yield tmp
    finally:
        for db in (OPTUNA_DB, MLFLOW_DB):
            postgres_server.drop_database(db)
        # the role owns nothing once its databases are gone, so it can go too (roles outlive databases)
        conn = psycopg2.connect(host=postgres_server.host, port=postgres_server.port, user=postgres_server.user,
                                password=postgres_server.password, dbname="postgres", connect_timeout=10)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP ROLE IF EXISTS "{APP_ROLE}"')
        finally:
            conn.close()


# --- the init script --------------------------------------------------------------------------------


def test_app_role_is_a_plain_login_role_that_owns_both_databases(postgres_server: PostgresServer,
                                                                 app_databases: Path) -> None:
    conn = app_connect(postgres_server, OPTUNA_DB)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
                        "FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchall() == [(False, False, False, False, False)]
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("CREATE DATABASE roles_t_forbidden")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("CREATE ROLE roles_t_forbidden LOGIN")
    finally:
        conn.close()
    owners = superuser_query(postgres_server, "postgres",
                             "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname IN %s "
                             "ORDER BY datname", ((OPTUNA_DB, MLFLOW_DB),))
    assert owners == [(MLFLOW_DB, APP_ROLE), (OPTUNA_DB, APP_ROLE)]
    for db in (OPTUNA_DB, MLFLOW_DB):
        assert superuser_query(postgres_server, db, "SELECT pg_get_userbyid(nspowner) FROM pg_namespace "
                                                    "WHERE nspname = 'public'") == [(APP_ROLE,)]
    # the password reached psql on stdin / from the environment, never on a command line
    argv = (app_databases / "psql-argv.log").read_text()
    assert "--dbname" in argv and APP_PASSWORD not in argv


def test_app_role_creates_and_uses_the_optuna_schema(postgres_server: PostgresServer, app_databases: Path) -> None:
    storage = optuna.storages.RDBStorage(app_url(postgres_server, OPTUNA_DB))
    try:
        study = optuna.create_study(study_name="roles", storage=storage, direction="minimize")
        study.optimize(lambda t: t.suggest_float("x", -1.0, 1.0) ** 2, n_trials=2)
        assert [t.state.name for t in optuna.load_study(study_name="roles", storage=storage).trials] == ["COMPLETE"] * 2
    finally:
        storage.engine.dispose()
    owners = superuser_query(postgres_server, OPTUNA_DB, "SELECT DISTINCT tableowner FROM pg_tables "
                                                          "WHERE schemaname = 'public'")
    assert owners == [(APP_ROLE,)]  # Optuna's own migrations (ALTER TABLE) need ownership later


def test_init_script_hands_an_existing_database_to_the_app_role(postgres_server: PostgresServer,
                                                                 app_databases: Path, tmp_path: Path) -> None:
    """A stack whose volume predates the app role: tables the superuser created become the role's."""
    legacy = "legacy_roles_t"
    superuser_url = postgres_server.create_database(legacy)
    try:
        old = optuna.storages.RDBStorage(superuser_url)
        optuna.create_study(study_name="before", storage=old).optimize(lambda t: t.suggest_float("x", 0, 1), 1)
        old.engine.dispose()
        proc = run_init(postgres_server, [legacy], tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        storage = optuna.storages.RDBStorage(app_url(postgres_server, legacy))
        try:
            study = optuna.load_study(study_name="before", storage=storage)
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
            assert len(study.trials) == 2
        finally:
            storage.engine.dispose()
        not_owned = superuser_query(postgres_server, legacy, """
            SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) <> %s
            UNION ALL
            SELECT t.typname, t.typtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = 'public' AND pg_get_userbyid(t.typowner) <> %s""", (APP_ROLE, APP_ROLE))
        assert not_owned == []  # tables, their sequences and indexes, Optuna's enum types
    finally:
        postgres_server.drop_database(legacy)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"ABLATE_DB_PASSWORD": None}, "ABLATE_DB_PASSWORD"),
    ({"ABLATE_DB_PASSWORD": ""}, "ABLATE_DB_PASSWORD"),
    ({"ABLATE_DB_USER": "ablate"}, "must not be the superuser"),  # PostgresServer's superuser is `ablate`
    ({"ABLATE_DB_PASSWORD": "p@ss/word"}, "URL"),  # compose splices it into URLs unescaped
])
def test_init_script_refuses_an_unsafe_app_role(postgres_server: PostgresServer, app_databases: Path,
                                                tmp_path: Path, overrides: dict[str, str | None], message: str) -> None:
    proc = run_init(postgres_server, [OPTUNA_DB, MLFLOW_DB], tmp_path, **overrides)
    assert proc.returncode != 0 and message in proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "psql-argv.log").exists()  # refused before touching the cluster


# --- the services as the app role, and what `ps` shows ---------------------------------------------


def session_cmdlines(sid: int) -> dict[int, str]:
    """argv (NUL-separated, joined by spaces) of every live process in session `sid`."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getsid(int(entry.name)) == sid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return found


@pytest.mark.slow
def test_compose_mlflow_command_as_app_role_creates_the_schema_and_hides_the_password(
        postgres_server: PostgresServer, app_databases: Path, tmp_path: Path) -> None:
    """The mlflow service's command from docker-compose.yml, as the app role: schema, server, clean argv."""
    from mlflow import MlflowClient

    service = load_compose(COMPOSE_SECRETS)["services"]["mlflow"]
    port = free_port()
    log = tmp_path / "mlflow.log"
    env = {**os.environ, **{k: str(v) for k, v in service["environment"].items()},
           "MLFLOW_BACKEND_STORE_URI": app_url(postgres_server, MLFLOW_DB),
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
           "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true",
           # `mlflow`/`python` on PATH must be the interpreter running the tests
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(service.get("entrypoint", []) + service["command"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = MlflowServer(env["MLFLOW_BACKEND_STORE_URI"], tmp_path / "artifacts", log, port=port)
    server.process = proc  # adopt it, so stop() kills the whole process group
    try:
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 300
        while not server_healthy(server) and time.monotonic() < deadline:
            seen.update(session_cmdlines(proc.pid))  # the schema step's processes too, while they live
            assert proc.poll() is None, f"mlflow command exited rc={proc.returncode}\n{server.log_tail()}"
            time.sleep(0.2)
        server._wait_healthy()
        seen.update(session_cmdlines(proc.pid))
        client = MlflowClient(tracking_uri=server.url)
        run = client.create_run(client.create_experiment("roles"))
        client.log_metric(run.info.run_id, "fid", 1.5)
        assert client.get_run(run.info.run_id).data.metrics == {"fid": 1.5}
        assert any("mlflow" in c and "server" in c for c in seen.values()), seen
        leaking = {pid: c for pid, c in seen.items() if APP_PASSWORD in c}
        assert leaking == {}, f"password in argv (what `ps` shows): {leaking}"
    finally:
        server.stop()
    owners = superuser_query(postgres_server, MLFLOW_DB, "SELECT DISTINCT tableowner FROM pg_tables "
                                                          "WHERE schemaname = 'public'")
    assert owners == [(APP_ROLE,)]


def server_healthy(server: MlflowServer) -> bool:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{server.url}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_run_worker_processes_passes_the_storage_url_by_environment(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`ablate run --workers N` children: the storage URL is in their environment, not their argv.

    The children are real; each is read from /proc right after exec and killed before it connects anywhere.
    """
    url = f"postgresql+psycopg2://{APP_ROLE}:{APP_PASSWORD}@127.0.0.1:1/optuna"
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    options = RunOptions(workers=2, storage=url, trials_dir=tmp_path / "trials")
    codes: list[int] = []
    launcher = threading.Thread(target=lambda: codes.append(
        run_worker_processes(tmp_path / "study.yaml", options, url, "http://127.0.0.1:1")), daemon=True)
    launcher.start()
    children: dict[int, tuple[str, dict[str, str]]] = {}
    deadline = time.monotonic() + 120
    while len(children) < 2 and time.monotonic() < deadline:
        for pid, (argv, env) in worker_children().items():
            if pid not in children:
                children[pid] = (argv, env)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # seen: no need to let it import torch
        time.sleep(0.01)
    launcher.join(timeout=60)
    assert len(children) == 2 and codes and codes[0] != 0, (children, codes)
    for argv, env in children.values():
        assert APP_PASSWORD not in argv and "--storage" not in argv.split(), argv
        assert env.get("ABLATE_STORAGE") == url, sorted(env)
        monkeypatch.setenv("ABLATE_STORAGE", env["ABLATE_STORAGE"])
        assert storage_mod.storage_url(None) == url  # what the child's CLI resolves without --storage


def worker_children() -> dict[int, tuple[str, dict[str, str]]]:
    """This process's `ablation.cli worker` children (after exec): pid -> (argv, environment)."""
    me = os.getpid()
    found: dict[int, tuple[str, dict[str, str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            # field 4 of stat is the parent pid; the name in field 2 may hold spaces, hence the rsplit on ')'
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "ablation.cli worker" not in argv:
                continue  # forked but not yet exec'd: still this interpreter's argv
            raw = (entry / "environ").read_bytes().split(b"\0")
            env = dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)
            found[int(entry.name)] = (argv, env)
    return found
