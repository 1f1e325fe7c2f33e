"""Real PostgreSQL and `mlflow server` processes for tests: the compose stack, run natively.

Docker is not available where the tests run, so the services `docker-compose.yml` starts
(PostgreSQL, the MLflow tracking server with proxied artifacts) are started here as plain
subprocesses on free localhost ports. `tests/conftest.py` wraps these classes in fixtures;
other tests may import them directly (`from services import PostgresServer`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg2.extensions import connection as PgConnection

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"

PG_MISSING_MESSAGE = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/<version>/bin "
    "or on PATH; .ci/run installs them (apt-get install -y postgresql)"
)

# Database names go into CREATE DATABASE unparameterised (DDL cannot take bind parameters),
# so only plain identifiers are accepted.
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Who runs PostgreSQL when the tests run as root (postgres refuses uid 0). The Debian package
# creates `postgres`; the fallback is created on demand on hosts without it.
_PG_SYSTEM_USERS: tuple[str, ...] = ("postgres", "ablate-pg")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for failure messages (empty string when missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def find_postgres_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL bin dir, else a PATH that has initdb + pg_ctl, else None.

    Debian keeps server binaries off PATH (/usr/lib/postgresql/<major>/bin) and the major
    version changes between releases, so it is found by globbing, never hard-coded.
    """
    override = os.environ.get("ABLATE_PG_BIN")
    if override and (Path(override) / "initdb").exists():
        return Path(override)

    def major(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.parent.name)) or (0,)

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=major, reverse=True)
    for initdb in candidates:
        if (initdb.parent / "pg_ctl").exists():
            return initdb.parent
    initdb_on_path = shutil.which("initdb")
    if initdb_on_path and shutil.which("pg_ctl"):
        return Path(initdb_on_path).parent
    return None


def _unprivileged_user() -> str:
    """An existing non-root system user for PostgreSQL, creating `ablate-pg` if none exists."""
    for name in _PG_SYSTEM_USERS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    name = _PG_SYSTEM_USERS[-1]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    return name


class PostgresServer:
    """A throw-away PostgreSQL cluster: initdb into a temp dir, served on 127.0.0.1:<free port>.

    Args:
        bin_dir: directory holding initdb/pg_ctl (see `find_postgres_bin_dir`).
        base_dir: where the cluster lives; default a fresh `mkdtemp` under the system temp dir.
            It must be traversable by the server's user, which pytest's 0700 tmp_path is not
            when the tests run as root, hence the separate default.
        user / password: the superuser that `url()`s log in as (password auth over TCP).
        port: fixed port, default a free one. It stays the same across stop()/start().
        start_timeout: seconds pg_ctl waits for the server to accept connections.

    Attributes: `port`, `host`, `user`, `password`, `data_dir`, `socket_dir`, `log_path`,
    `run_as` (the system user running postgres when we are root, else None).
    """

    def __init__(self, bin_dir: Path, base_dir: Path | None = None, *, user: str = "ablate",
                 password: str = "ablate", port: int | None = None, start_timeout: float = 60.0) -> None:
        self.bin_dir = Path(bin_dir)
        self.host = "127.0.0.1"
        self.user = user
        self.password = password
        self.port = port or free_port(self.host)
        self.start_timeout = start_timeout
        self._owns_base_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="ablate-pg-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_path = self.base_dir / "postgres.log"
        self.run_as: str | None = _unprivileged_user() if os.geteuid() == 0 else None
        self._initdb()

    # -- process control -------------------------------------------------------------------
    def _cmd(self, *args: str) -> list[str]:
        """Prefix a command so it runs as the unprivileged user when we are root."""
        if self.run_as is None:
            return list(args)
        if shutil.which("runuser"):
            return ["runuser", "-u", self.run_as, "--", *args]
        # su needs a shell command line; the nologin shell is bypassed with -s
        import shlex

        return ["su", "-s", "/bin/sh", self.run_as, "-c", shlex.join(args)]

    def _run(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        # cwd = base_dir: the postgres user cannot read root's cwd, and initdb warns about it
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        proc = subprocess.run(self._cmd(*args), cwd=self.base_dir, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                f"--- {self.log_path} ---\n{log_tail(self.log_path)}"
            )
        return proc

    def _initdb(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            for path in (self.base_dir, self.socket_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            # trust on the unix socket (only our user can reach it), a real password over TCP so
            # the URLs the tests hand out are the same kind the compose stack uses
            self._run(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                      f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                      "--encoding=UTF8", "--locale=C", "--no-sync", timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        proc = self._run(str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir), check=False)
        return proc.returncode == 0

    def start(self) -> None:
        """Start (or restart after `stop()`) on the same port; returns once it accepts connections."""
        # fsync off: test data is disposable and it makes DDL-heavy Optuna/MLflow setup much faster.
        # max_connections: every RDBStorage / MLflow server keeps its own pool (harness.md §1.4).
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses={self.host} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_path),
                  "-o", options, "-w", "-t", str(int(self.start_timeout)), timeout=self.start_timeout + 30)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: disconnect clients, as a crash looks to them). No-op if stopped."""
        if not self.running:
            return
        self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w",
                  "-t", "60", timeout=90)

    def close(self) -> None:
        """Stop immediately and delete the cluster."""
        try:
            self.stop(mode="immediate")
        finally:
            if self._owns_base_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- databases -------------------------------------------------------------------------
    def url(self, dbname: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL, e.g. postgresql+psycopg2://ablate:ablate@127.0.0.1:PORT/dbname."""
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    def _admin_connect(self) -> PgConnection:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname="postgres", connect_timeout=10)
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
        return conn

    def database_exists(self, name: str) -> bool:
        conn = self._admin_connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                return cur.fetchone() is not None
        finally:
            conn.close()

    def create_database(self, name: str, *, exist_ok: bool = False) -> str:
        """CREATE DATABASE name; returns its postgresql+psycopg2:// URL.

        A second create of the same name raises unless exist_ok, so two tests cannot silently
        share a database.
        """
        if not _DB_NAME.match(name):
            raise ValueError(f"database name must be a plain identifier, got {name!r}")
        if exist_ok and self.database_exists(name):
            return self.url(name)
        conn = self._admin_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE ... WITH (FORCE): also ends sessions that pools still hold open."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name must be a plain identifier, got {name!r}")
        conn = self._admin_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, data_dir={str(self.data_dir)!r}, run_as={self.run_as!r})"


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    # health polls go to 127.0.0.1; an HTTP(S)_PROXY in the environment must not intercept them
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def mlflow_executable() -> list[str]:
    """How to launch the mlflow CLI of the interpreter running the tests (not some other one on PATH)."""
    return [sys.executable, "-m", "mlflow"]


class MlflowServer:
    """A real `mlflow server` subprocess on 127.0.0.1 with proxied artifacts (as in compose).

    Args:
        backend_store_uri: sqlite:///... file or a postgresql(+psycopg2):// URL.
        artifacts_dir: local directory behind `--artifacts-destination` (S3 in compose).
        log_path: server stdout+stderr; its tail is included in every failure message.
        port: fixed port, default a free one; kept across stop()/start().
        workers: server worker processes; 1 keeps it light on small CI machines.
        startup_timeout: seconds to wait for GET /health after each start.
        extra_args: further `mlflow server` flags (e.g. ["--allowed-hosts", "..."]).
        env: extra environment for the server process.

    Attributes: `url` (http://127.0.0.1:PORT), `port`, `backend_store_uri`, `artifacts_dir`,
    `log_path`, `process` (the Popen while running), `startup_seconds` (last start's duration).
    """

    def __init__(self, backend_store_uri: str, artifacts_dir: Path, log_path: Path, *, port: int | None = None,
                 workers: int = 1, startup_timeout: float = 180.0, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.backend_store_uri = backend_store_uri
        self.artifacts_dir = Path(artifacts_dir)
        self.log_path = Path(log_path)
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        return [*mlflow_executable(), "server",
                "--backend-store-uri", self.backend_store_uri,
                "--artifacts-destination", str(self.artifacts_dir),
                "--serve-artifacts",
                "--host", self.host, "--port", str(self.port),
                "--workers", str(self.workers),
                *self.extra_args]

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def start(self) -> None:
        """Start (or restart on the same port with the same stores) and wait for /health."""
        if self.running:
            return
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")  # append: a restart keeps the earlier log
        env = {**os.environ,
               "MLFLOW_DISABLE_TELEMETRY": "true",  # no network in CI; avoid start-up delays
               "PYTHONUNBUFFERED": "1",
               **self.env}
        env.pop("MLFLOW_TRACKING_URI", None)  # the server must not treat itself as a client
        began = time.monotonic()
        # own session = own process group: stop() kills mlflow and its uvicorn child together
        self.process = subprocess.Popen(self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def _wait_healthy(self) -> None:
        opener = _no_proxy_opener()
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with rc={self.process.returncode} before /health "
                                   f"answered\n--- {self.log_path} ---\n{self.log_tail()}")
            try:
                with opener.open(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last_error = f"HTTP {resp.status}"
            except (urllib.error.URLError, OSError) as exc:
                last_error = repr(exc)
            time.sleep(0.25)
        raise TimeoutError(f"mlflow server at {self.url} not healthy after {self.startup_timeout:.0f}s "
                           f"(last: {last_error})\n--- {self.log_path} ---\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`. No-op when stopped."""
        proc = self.process
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
            # the leader may be gone while workers linger in the group: kill the group regardless
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __repr__(self) -> str:
        return f"MlflowServer(url={self.url!r}, backend_store_uri={self.backend_store_uri!r})"


# --- docker-compose.yml as data -------------------------------------------------------------------

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:+alt}, ${NAME:?err}; the stack uses no nesting
COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+?])([^}]*))?\}")
COMPOSE_ESCAPE = "\x00"  # stands in for compose's $$ while interpolating


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose-style interpolation: ${VAR:-default} and friends from env, then $$ -> $.

    Raises ValueError for a bare $VAR, which compose would also expand but which hides whether
    a variable is meant for compose or for the container's shell.
    """
    text = text.replace("$$", COMPOSE_ESCAPE)

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":+":
            return arg if value else ""
        if op in (":?", "?"):
            if not value:
                raise KeyError(f"{name}: {arg}")
            return value
        return value or ""

    out = COMPOSE_VAR.sub(sub, text)
    if "$" in out:
        at = out.index("$")
        raise ValueError(f"bare $VAR (neither ${{VAR}} nor $$) in compose text near {out[max(0, at - 40):at + 40]!r}")
    return out.replace(COMPOSE_ESCAPE, "$")


def compose_strings(node: Any) -> list[str]:
    """Every string value in a parsed compose file (compose interpolates values, not comments)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in compose_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in compose_strings(v)]
    return []


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(v, env) for v in node]
    return node


def load_compose(env: Mapping[str, str] | None = None, path: Path = COMPOSE) -> dict[str, Any]:
    """docker-compose.yml as `docker compose config` would see it with this environment (default: none).

    Like compose: parse YAML first, then interpolate string values (so comments are never touched).
    """
    import yaml

    return _interpolate_tree(yaml.safe_load(path.read_text()), env or {})
