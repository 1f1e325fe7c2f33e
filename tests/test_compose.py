"""Static checks of the scale-out stack (docker-compose.yml, Dockerfiles, .env.example, helper scripts).

Docker is not available in CI, so compose is validated as data: interpolated the way compose does
it (${VAR:-default}, ${VAR:?error}, $$ escapes) with only the passwords set, i.e. what `docker compose
up` runs with a .env that sets just the required ones. tests/study/test_services.py and
tests/study/test_db_roles.py run the same PostgreSQL/MLflow pieces natively.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from services import COMPOSE, COMPOSE_ESCAPE, COMPOSE_VAR, REPO, compose_strings, interpolate, load_compose

ENV_EXAMPLE = REPO / ".env.example"

REQUIRED_SERVICES = {"postgres", "objectstore", "bucket-init", "mlflow", "dashboard", "worker"}
ONE_SHOT = {"bucket-init"}
# No password has a default: compose refuses to start until .env sets these (${VAR:?message}).
# Distinct made-up values, so a test can look for each one wherever it must not be.
SECRETS = {"POSTGRES_PASSWORD": "pg-superuser-secret", "ABLATE_DB_PASSWORD": "app-role-secret",
           "S3_SECRET_KEY": "s3-secret-key"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET")
APP_ROLE = "ablate_app"  # the login role every service connects as (not the superuser POSTGRES_USER)
APP_PASSWORD = SECRETS["ABLATE_DB_PASSWORD"]
PG_URL = re.compile(r"postgres(?:ql)?(?:\+\w+)?://([^:/@\s]+):([^@\s]*)@")
USERINFO_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")  # scheme://user:pass@ with a literal password


def compose_variables(text: str) -> dict[str, set[tuple[str | None, str]]]:
    """Every ${VAR...} compose itself interpolates (ignoring $$-escaped shell variables): name -> {(op, arg)}."""
    found: dict[str, set[tuple[str | None, str]]] = {}
    for value in compose_strings(yaml.safe_load(text)):
        for m in COMPOSE_VAR.finditer(value.replace("$$", COMPOSE_ESCAPE * 2)):
            found.setdefault(m.group(1), set()).add((m.group(2), m.group(3) or ""))
    return found


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example line without '=': {line!r}"
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def raw() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(SECRETS)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def image_tag(ref: str) -> str | None:
    """The tag of an image reference (None when untagged); registry ports are not tags."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def dockerfile_bases(path: Path) -> list[str]:
    return [line.split()[1] for line in path.read_text().splitlines() if line.strip().upper().startswith("FROM ")]


def volume_source(entry: str | dict[str, Any]) -> str:
    return entry["source"] if isinstance(entry, dict) else entry.split(":", 1)[0]


def command_text(cmd: str | list[str]) -> str:
    return cmd if isinstance(cmd, str) else " ".join(cmd)


def argv_fields(svc: dict[str, Any]) -> dict[str, str]:
    """What becomes a process's argv (shown by `ps` on the host and by `docker inspect`): field -> text."""
    fields = {field: command_text(svc[field]) for field in ("entrypoint", "command") if field in svc}
    if "healthcheck" in svc:
        fields["healthcheck"] = command_text(svc["healthcheck"]["test"])
    return fields


# --- structure -------------------------------------------------------------------------------


def test_compose_spec_has_no_version_key_and_required_services(compose: dict[str, Any]) -> None:
    assert "version" not in compose  # obsolete in the Compose spec; compose v2 warns about it
    assert set(compose["services"]) >= REQUIRED_SERVICES


def test_every_image_is_pinned_to_an_exact_non_latest_tag(services: dict[str, dict[str, Any]]) -> None:
    exact = re.compile(r"^v?\d+\.\d+(\.\d+)?([.-][0-9A-Za-z.-]+)?$")  # 16.13, v0.21.0, 1.0.0-alpha.83
    for name, svc in services.items():
        assert "image" in svc, f"{name}: no image (built services need image: name:tag too)"
        tag = image_tag(svc["image"])
        assert tag is not None, f"{name}: {svc['image']} has no tag"
        assert tag != "latest" and exact.match(tag), f"{name}: {svc['image']} is not an exact version tag"
    assert services["postgres"]["image"].startswith("postgres:16.")
    for dockerfile in (REPO / "Dockerfile", REPO / "docker/mlflow/Dockerfile"):
        for base in dockerfile_bases(dockerfile):
            tag = image_tag(base)
            assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{dockerfile}: FROM {base} not pinned"


def test_built_images_point_at_existing_dockerfiles(services: dict[str, dict[str, Any]]) -> None:
    built = {name: svc for name, svc in services.items() if "build" in svc}
    assert set(built) == {"mlflow", "worker"}
    for name, svc in built.items():
        context = REPO / svc["build"]["context"]
        assert (context / svc["build"].get("dockerfile", "Dockerfile")).is_file(), name
    assert services["worker"]["build"]["context"] == "."


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    completed = {dep for svc in services.values() for dep, spec in (svc.get("depends_on") or {}).items()
                 if spec.get("condition") == "service_completed_successfully"}
    assert completed == ONE_SHOT
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name} is one-shot: it must not restart"
            continue
        check = svc.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert svc.get("restart") in ("unless-stopped", "on-failure", "always"), name


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, svc in compose["services"].items():
        for entry in svc.get("volumes", []):
            source = volume_source(entry)
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source!r} not declared at top level"
                used.add(source)
    assert declared == used == {"pgdata", "objectstore-data", "checkpoints", "torch-cache"}


def test_depends_on_references_existing_services_with_valid_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            assert condition in ("service_healthy", "service_completed_successfully"), (name, dep)
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no check"
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "objectstore": {"condition": "service_healthy"},
        "bucket-init": {"condition": "service_completed_successfully"},
    }
    assert services["bucket-init"]["depends_on"] == {"objectstore": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                                "mlflow": {"condition": "service_healthy"}}


# --- per service -----------------------------------------------------------------------------


def test_postgres_creates_optuna_and_mlflow_databases(services: dict[str, dict[str, Any]]) -> None:
    pg = services["postgres"]
    assert pg["environment"]["ABLATE_DATABASES"].split(",") == ["optuna", "mlflow"]
    env = pg["environment"]
    assert env["POSTGRES_USER"] == "ablate" and env["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    # read by the init script: the application's own login role (see tests/study/test_db_roles.py)
    assert env["ABLATE_DB_USER"] == APP_ROLE and env["ABLATE_DB_PASSWORD"] == APP_PASSWORD
    assert "pgdata:/var/lib/postgresql/data" in pg["volumes"]
    init = [v for v in pg["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    assert len(init) == 1
    script = REPO / init[0].split(":")[0]
    assert script.is_file() and script.stat().st_mode & stat.S_IXUSR
    test = " ".join(pg["healthcheck"]["test"])
    assert "pg_isready" in test and "-h 127.0.0.1" in test  # TCP: not ready during init-only phase
    assert "$${POSTGRES_USER}" not in test and "${POSTGRES_USER}" in test  # $$ became a container-side $
    assert pg["ports"] == ["127.0.0.1:5432:5432"]


def test_objectstore_and_bucket_init(services: dict[str, dict[str, Any]]) -> None:
    store, init = services["objectstore"], services["bucket-init"]
    assert store["image"] == "rustfs/rustfs:1.0.0-alpha.83"
    assert "ports" not in store  # reached only through MLflow's artifact proxy
    assert store["environment"]["RUSTFS_ACCESS_KEY"] == init["environment"]["AWS_ACCESS_KEY_ID"]
    assert store["environment"]["RUSTFS_SECRET_KEY"] == init["environment"]["AWS_SECRET_ACCESS_KEY"]
    assert init["image"] == "amazon/aws-cli:2.33.25"
    assert init["environment"]["S3_ENDPOINT_URL"] == "http://objectstore:9000"
    assert init["entrypoint"] == ["/bin/sh", "/create-bucket.sh"]
    assert "./docker/objectstore/create-bucket.sh:/create-bucket.sh:ro" in init["volumes"]


def test_mlflow_upgrades_schema_then_serves_with_allowed_hosts(services: dict[str, dict[str, Any]]) -> None:
    ml = services["mlflow"]
    env = ml["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"postgresql+psycopg2://{APP_ROLE}:{APP_PASSWORD}@postgres:5432/mlflow"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://objectstore:9000"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    assert ml["command"][:2] == ["/bin/sh", "-c"]
    script = ml["command"][2]
    # `mlflow db upgrade URL` only takes the URL as an argument: the same click command runs in-process
    # with the URL from the environment; the server reads MLFLOW_BACKEND_STORE_URI itself (click envvar)
    upgrade = script.index('upgrade.main([os.environ["MLFLOW_BACKEND_STORE_URI"]]')
    serve = script.index("exec mlflow server")
    assert upgrade < serve
    server = script[serve:]
    assert "--backend-store-uri" not in server
    for flag in ('--artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"', "--serve-artifacts",
                 '--host "${MLFLOW_HOST:-0.0.0.0}"', '--port "${MLFLOW_PORT:-5000}"'):
        assert flag in server
    allowed = re.search(r'--allowed-hosts "([^"]*)"', server)
    assert allowed is not None
    hosts = allowed.group(1).split("${")[0].split(",")
    assert {"mlflow", "mlflow:5000", "localhost", "localhost:*", "127.0.0.1:*"} <= set(hosts)
    assert ml["ports"] == ["127.0.0.1:5000:5000"]
    assert "/health" in " ".join(ml["healthcheck"]["test"])
    assert dockerfile_bases(REPO / "docker/mlflow/Dockerfile") == ["ghcr.io/mlflow/mlflow:v3.18.0"]
    mlflow_dockerfile = (REPO / "docker/mlflow/Dockerfile").read_text()
    assert "psycopg2-binary==" in mlflow_dockerfile and "boto3==" in mlflow_dockerfile


def test_mlflow_server_image_matches_the_client_version(services: dict[str, dict[str, Any]]) -> None:
    import mlflow

    server = image_tag(dockerfile_bases(REPO / "docker/mlflow/Dockerfile")[0])
    assert server is not None and server.startswith("v")
    assert image_tag(services["mlflow"]["image"]) == server[1:], "bump both mlflow tags together"
    server_version = tuple(int(x) for x in server[1:].split(".")[:2])
    client_version = tuple(int(x) for x in mlflow.__version__.split(".")[:2])
    assert client_version[0] == server_version[0], f"mlflow client {mlflow.__version__} vs server {server}"
    if client_version > server_version:
        # not a failure: CI installs whatever PyPI has; but a newer client may call endpoints the server lacks
        warnings.warn(f"mlflow client {mlflow.__version__} is newer than the compose server {server}; "
                      "bump docker/mlflow/Dockerfile", stacklevel=1)


def test_every_postgres_url_names_the_psycopg2_driver(compose: dict[str, Any]) -> None:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which no image here installs
    pattern = r"postgres(?:ql)?(?:\+\w+)?://[^\s\"']+"
    urls = [m for value in compose_strings(compose) for m in re.findall(pattern, value)]
    assert len(urls) == 3, urls  # mlflow backend, dashboard, worker
    assert all(u.startswith("postgresql+psycopg2://") for u in urls), urls


def test_dashboard_reads_the_optuna_database(services: dict[str, dict[str, Any]]) -> None:
    dash = services["dashboard"]
    assert dash["image"] == "ghcr.io/optuna/optuna-dashboard:v0.21.0"
    assert dash["environment"] == {"ABLATE_STORAGE": f"postgresql+psycopg2://{APP_ROLE}:{APP_PASSWORD}@postgres:5432/optuna"}
    # optuna-dashboard takes the storage URL only as an argument: its console script runs in-process
    # with the URL from the environment, and the image's own server options (gunicorn on 0.0.0.0:8080)
    assert "command" not in dash and dash["entrypoint"][:2] == ["python", "-c"] and len(dash["entrypoint"]) == 3
    script = dash["entrypoint"][2]
    compile(script, "dashboard-entrypoint", "exec")
    assert 'os.environ["ABLATE_STORAGE"]' in script and 'name="optuna-dashboard"' in script
    assert '"--host", "0.0.0.0", "--port", "8080", "--server", "gunicorn"' in script
    assert dash["ports"] == ["127.0.0.1:8080:8080"]


def test_worker_is_scalable_gpu_service(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    for name, svc in services.items():
        assert "container_name" not in svc, f"{name}: container_name breaks --scale and parallel stacks"
    assert worker["command"] == ["worker", "studies/style_weight.yaml"]  # the storage URL is ABLATE_STORAGE
    # no S3 creds on workers; checkpoints go to the shared volume so a retried trial resumes anywhere
    assert worker["environment"] == {
        "ABLATE_STORAGE": f"postgresql+psycopg2://{APP_ROLE}:{APP_PASSWORD}@postgres:5432/optuna",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000", "ABLATE_TRIALS_DIR": "/app/runs"}
    assert "checkpoints:/app/runs" in worker["volumes"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "checkpoints:/app/runs" in worker["volumes"]
    assert worker["stop_signal"] == "SIGINT"
    assert worker["shm_size"] == "8gb"
    assert "ports" not in worker  # scaled replicas cannot share a host port


def test_checkpoint_volume_is_shared_by_every_worker_replica(compose: dict[str, Any]) -> None:
    # a named volume (not an anonymous one) is the same volume for all --scale replicas
    assert compose["volumes"]["checkpoints"] in (None, {})
    sources = {volume_source(v): v for v in compose["services"]["worker"]["volumes"]}
    assert sources["checkpoints"].endswith(":/app/runs")


# --- variables -------------------------------------------------------------------------------


def test_every_compose_variable_is_documented_in_env_example(raw: str) -> None:
    used = compose_variables(raw)
    documented = env_example()
    assert set(used) == set(documented), (
        f"undocumented: {sorted(set(used) - set(documented))}, stale: {sorted(set(documented) - set(used))}"
    )
    for name, forms in used.items():
        if SECRET_NAME.search(name):
            # required, and .env.example ships no usable value: `cp .env.example .env` alone must not start
            # a stack with a password everyone knows
            assert {op for op, _ in forms} == {":?"}, f"{name}: use ${{{name}:?set {name} in .env}}"
            assert documented[name] == "", f"{name}: .env.example must leave it empty, not {documented[name]!r}"
            continue
        defaults = {arg for op, arg in forms if op == ":-"}
        assert {op for op, _ in forms} == {":-"}, f"{name}: use ${{{name}:-default}} so compose runs without .env"
        assert len(defaults) == 1, f"{name}: different defaults in different places: {defaults}"
        assert defaults == {documented[name]}, f"{name}: .env.example says {documented[name]!r}, compose {defaults}"


def test_env_example_overrides_flow_into_services() -> None:
    env = {**env_example(), **SECRETS, "ABLATE_DB_PASSWORD": "s3cret", "ABLATE_STUDY": "studies/x.yaml",
           "MLFLOW_EXTRA_ALLOWED_HOSTS": "gpu-head:5000", "POSTGRES_PUBLISH": "0.0.0.0:5432"}
    svc = load_compose(env)["services"]
    assert svc["worker"]["command"][1] == "studies/x.yaml"
    assert svc["worker"]["environment"]["ABLATE_STORAGE"] == "postgresql+psycopg2://ablate_app:s3cret@postgres:5432/optuna"
    assert svc["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].endswith(":s3cret@postgres:5432/mlflow")
    assert svc["dashboard"]["environment"]["ABLATE_STORAGE"] == svc["worker"]["environment"]["ABLATE_STORAGE"]
    assert svc["postgres"]["ports"] == ["0.0.0.0:5432:5432"]
    assert svc["mlflow"]["environment"]["MLFLOW_EXTRA_ALLOWED_HOSTS"] == "gpu-head:5000"


# --- passwords and roles ---------------------------------------------------------------------------


def test_no_password_has_a_default_and_compose_refuses_to_start_without_one(raw: str) -> None:
    used = compose_variables(raw)
    assert {name for name in used if SECRET_NAME.search(name)} == set(SECRETS)
    assert not re.search(r"\$\{\w*(PASSWORD|SECRET)\w*:?-", raw), "a password with a default"
    for name in SECRETS:
        assert used[name] == {(":?", f"set {name} in .env")}, used[name]
        with pytest.raises(KeyError, match=name):  # what `docker compose up` does: stop with the message
            load_compose({k: v for k, v in SECRETS.items() if k != name})


def test_no_service_puts_a_password_in_argv(services: dict[str, dict[str, Any]]) -> None:
    """argv is public (`ps` on the host, `docker inspect` Cmd/Args): passwords travel by environment.

    Also catches "$VAR" in a shell command, which the container's shell expands into a child's argv.
    """
    for name, svc in services.items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        secret_env = {k for k, v in env.items() if SECRET_NAME.search(k) or USERINFO_URL.search(v)
                      or any(s in v for s in SECRETS.values())}
        for field, text in argv_fields(svc).items():
            where = f"{name}.{field}"
            assert not [s for s in SECRETS.values() if s in text], f"{where}: a password in argv"
            assert not USERINFO_URL.search(text), f"{where}: a user:password@ URL in argv"
            for var in secret_env:
                assert not re.search(rf"\$\{{?{var}\b", text), f"{where}: ${var} expands into some argv"
    assert "MLFLOW_BACKEND_STORE_URI" in services["mlflow"]["environment"]  # i.e. the check above had work


def test_every_app_connection_string_uses_the_app_role(compose: dict[str, Any]) -> None:
    found = [m for value in compose_strings(compose) for m in PG_URL.findall(value)]
    assert found == [(APP_ROLE, APP_PASSWORD)] * 3, found  # mlflow, dashboard, worker
    # renaming the superuser does not move the services onto it; renaming the app role does
    renamed = load_compose({**SECRETS, "POSTGRES_USER": "root", "ABLATE_DB_USER": "app2"})
    found = [m for value in compose_strings(renamed) for m in PG_URL.findall(value)]
    assert found == [("app2", APP_PASSWORD)] * 3, found
    pg = renamed["services"]["postgres"]["environment"]
    assert pg["POSTGRES_USER"] == "root" and pg["ABLATE_DB_USER"] == "app2"  # the init script makes that role


def test_interpolate_follows_compose_rules() -> None:
    assert interpolate("a ${X:-d} $${Y:-z} ${X:+alt}", {}) == "a d ${Y:-z} "
    assert interpolate("${X:-d} ${X:+alt}", {"X": "v"}) == "v alt"
    with pytest.raises(ValueError, match="bare"):
        interpolate("$HOME", {})
    assert interpolate("${X:?set X}", {"X": "v"}) == "v"
    with pytest.raises(KeyError, match="X: set X"):
        interpolate("${X:?set X}", {"X": ""})  # compose treats empty like unset for :?


# --- Dockerfiles and helper scripts ---------------------------------------------------------------


def test_worker_dockerfile_is_pinned_non_root_and_installs_the_project() -> None:
    text = (REPO / "Dockerfile").read_text()
    bases = dockerfile_bases(REPO / "Dockerfile")
    assert len(bases) == 1 and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", bases[0]), bases
    lines = [line.strip() for line in text.splitlines()]
    assert "RUN pip install ." in lines
    assert "COPY . /app" in lines and "WORKDIR /app" in lines
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert lines[[i for i, line in enumerate(lines) if line.startswith("ENTRYPOINT")][-1]] == 'ENTRYPOINT ["ablate"]'
    assert "torch" in text and "TORCH_INDEX_URL" in text
    assert "/app/runs" in text  # the checkpoint volume's mount point, owned by the runtime user


def test_dockerignore_keeps_secrets_and_data_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".env", "dataset", "runs", "mlruns"} <= ignored
    assert not ({"ablation", "pyproject.toml", "studies"} & ignored)


def test_helper_scripts_are_executable_and_parse() -> None:
    for script in (REPO / "docker/postgres/init-databases.sh", REPO / "docker/objectstore/create-bucket.sh"):
        assert script.stat().st_mode & stat.S_IXUSR, script
        shell = "bash" if script.read_text().startswith("#!/usr/bin/env bash") else "sh"
        proc = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("bucket_exists", [True, False])
def test_bucket_init_creates_the_bucket_only_when_missing(tmp_path: Path, bucket_exists: bool) -> None:
    """create-bucket.sh against a fake `aws` that records its calls (no S3 server needed)."""
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "aws"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n"
                    f"case \"$*\" in *head-bucket*) exit {0 if bucket_exists else 1};; esac\nexit 0\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}",
           "S3_ENDPOINT_URL": "http://objectstore:9000", "S3_BUCKET": "mlflow", "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.run(["sh", str(REPO / "docker/objectstore/create-bucket.sh")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "--endpoint-url http://objectstore:9000 s3api head-bucket --bucket mlflow"
    if bucket_exists:
        assert lines == lines[:1] and "already exists" in proc.stdout
    else:
        assert lines[1:] == ["--endpoint-url http://objectstore:9000 s3api create-bucket --bucket mlflow "
                             "--region us-east-1"]


def test_bucket_init_fails_after_bounded_retries(tmp_path: Path) -> None:
    fake = tmp_path / "aws"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "S3_ENDPOINT_URL": "http://x:9000",
           "S3_BUCKET": "mlflow", "BUCKET_INIT_ATTEMPTS": "2"}
    proc = subprocess.run(["sh", str(REPO / "docker/objectstore/create-bucket.sh")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "after 2 attempts" in proc.stderr


# --- .ci/run ---------------------------------------------------------------------------------------

CI_RUN = REPO / ".ci" / "run"
README_TEST_COMMAND = 'python3 -m pip install -e ".[test]" && python3 -m ruff check && python3 -m pytest -x -q'


def test_ci_run_is_strict_bash_and_runs_the_readme_command() -> None:
    text = CI_RUN.read_text()
    assert CI_RUN.stat().st_mode & stat.S_IXUSR
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert f"# must match README\nTEST_COMMAND='{README_TEST_COMMAND}'" in text
    readme = REPO / "README.md"
    if readme.exists():  # the README is the source of truth for how tests run
        assert README_TEST_COMMAND in readme.read_text()
    assert "apt-get install -y" in text and "postgresql" in text and "chromium" in text
    assert "missing+=(slurmctld slurmd slurm-client munge)" in text  # the slurm tier's cluster


@pytest.mark.parametrize("pytest_rc", [0, 1, 5])
def test_ci_run_propagates_pytest_exit_code(tmp_path: Path, pytest_rc: int) -> None:
    """A copy of .ci/run with fake python3/dpkg/chromium: pytest's status is the script's status."""
    (tmp_path / ".ci").mkdir()
    script = tmp_path / ".ci" / "run"
    script.write_text(CI_RUN.read_text())
    script.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    fakes = {
        "python3": f'echo "python3 $*" >> {log}\ncase "$*" in *pytest*) exit {pytest_rc};; esac\nexit 0\n',
        "dpkg": "exit 0\n",  # "installed": apt-get must not run
        "chromium": "exit 0\n",
        "apt-get": f'echo "apt-get $*" >> {log}\nexit 1\n',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == pytest_rc, proc.stdout + proc.stderr
    # the slow tier, then the slurm tier: only after the default run passed
    slow = ["python3 -m pytest -x -q -m slow", "python3 -m pytest -x -q -m slurm"] if pytest_rc == 0 else []
    assert log.read_text().splitlines() == [
        "python3 -m pip install -e .[test]",
        "python3 -m ruff check",
        "python3 -m pytest -x -q",
        *slow,
    ]
