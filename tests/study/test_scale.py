"""Several `ablate worker` processes on real services: PostgreSQL (Optuna RDB storage) and `mlflow server`.

Every worker is a real subprocess (`python -m ablation.cli worker ...`) with a 1 s heartbeat and a 4 s
grace period, sharing one trials dir (checkpoints). Covers: three workers on one grid, a worker killed
mid-trial, the MLflow server going away for a while, the Optuna database going away, and the local
`ablate run --workers N` path on SQLite.

MLflow's backend is a PostgreSQL cluster of its own, so stopping the Optuna database (test 4) does not
also take the tracking server down.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from scale_helpers import (
    Procs,
    by_key,
    metrics_rows,
    mlflow_children,
    optuna_trials,
    running_checkpoint,
    tiny_demo_data,
    wait_for,
    worker_env,
    write_study,
)
from services import MlflowServer, PostgresServer, find_postgres_bin_dir

pytestmark = [
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

STYLE_GRID = {"loss.style_weight": [1.0, 3.0, 10.0], "loss.style_target": ["gray", "color"]}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale-data")
    tiny_demo_data(root)
    return root


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One `mlflow server` for the module, backed by its own PostgreSQL cluster (see the module doc)."""
    bin_dir = find_postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found")
    pg = PostgresServer(bin_dir)
    root = tmp_path_factory.mktemp("scale-mlflow")
    server = None
    try:
        pg.start()
        server = MlflowServer(pg.create_database("mlflow"), root / "artifacts", root / "server.log")
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        pg.close()


def _worker_args(study: Path, storage: str) -> list[str]:
    # one trial per claim: these tests follow single trials through kills and outages (a killed array's
    # members resume one by one in tests/study/test_runner.py::test_killed_process_resumes_without_duplicates)
    return ["worker", str(study), "--storage", storage, "--quiet", "--fuse", "1"]


def _complete_by_key(trials: list) -> dict[str, list]:
    return by_key([t for t in trials if t.state.name == "COMPLETE"], lambda t: t.user_attrs["trial_key"])


def _states(trials: list) -> list[tuple]:
    """What a failure message needs: each trial's number, state, key and the attrs that say why."""
    why = ("attempt", "retry_of", "requeue_reason", "outcome", "error", "retries_left", "owner")
    return [(t.number, t.state.name, t.user_attrs.get("trial_key"),
             {k: str(t.user_attrs[k])[-300:] for k in why if k in t.user_attrs}) for t in trials]


def _assert_each_key_complete_once(trials: list, expected_keys: int, procs: Procs | None = None) -> dict[str, list]:
    complete = _complete_by_key(trials)
    assert len(complete) == expected_keys, (sorted(complete), _states(trials), procs.tails() if procs else "")
    assert all(len(ts) == 1 for ts in complete.values()), {k: [t.number for t in ts] for k, ts in complete.items()}
    # anything else is a superseded attempt of a key, or a trial Optuna created when the queue ran dry
    for trial in trials:
        if trial.state.name != "COMPLETE":
            assert trial.state.name in ("FAIL", "PRUNED"), (trial.number, trial.state, trial.user_attrs)
            assert trial.user_attrs.get("trial_key") in complete or trial.user_attrs.get("spurious"), trial.user_attrs
    return complete


def _finished_by_key(children: list) -> dict[str, list]:
    return by_key([r for r in children if r.info.status == "FINISHED"], lambda r: r.data.tags["ablate.trial_key"])


def _assert_history_matches_local(client: MlflowClient, run, folder: Path) -> None:
    """Every (metric, step, value) in the trial's local metrics.jsonl is in the run's MLflow history."""
    rows = metrics_rows(folder)
    assert rows, f"no local metrics in {folder}"
    local: dict[str, dict[int, float]] = {}
    for row in rows:
        step = row.pop("step")
        for key, value in row.items():
            local.setdefault(key, {})[step] = value
    for key, by_step in local.items():
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert sorted(history) == sorted(by_step), (key, sorted(history), sorted(by_step))
        for step, value in by_step.items():
            assert math.isclose(history[step], value, rel_tol=1e-6, abs_tol=1e-9), (key, step, history[step], value)


# 1 ---------------------------------------------------------------------------------------------------------
def test_three_workers_share_a_grid_without_duplicates(tmp_path: Path, data_root: Path, postgres_url: str,
                                                       tracking_server: MlflowServer, procs: Procs) -> None:
    name = "scale-grid"
    study = write_study(tmp_path / "study.yaml", data_root, STYLE_GRID, [0, 1], name)
    env = worker_env(tracking_server.url, tmp_path / "trials")
    procs.run("enqueue", ["enqueue", str(study), "--storage", postgres_url], env)
    assert len(optuna_trials(postgres_url, name)) == 12
    workers = [procs.start(f"worker{i}", _worker_args(study, postgres_url), env) for i in range(3)]
    for worker in workers:
        assert worker.wait(300) == 0, worker.tails()

    trials = optuna_trials(postgres_url, name)
    complete = _assert_each_key_complete_once(trials, 12, procs)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 12
    assert not [t for t in trials if t.user_attrs.get("trial_key") and t.state.name != "COMPLETE"], \
        "no trial needed a retry"
    # each (cell, seed) is its own key: 6 cells x 2 seeds
    assert {(t.user_attrs["cell"], t.user_attrs["seed"]) for ts in complete.values() for t in ts} == \
        {(c, s) for c in {t.user_attrs["cell"] for ts in complete.values() for t in ts} for s in (0, 1)}

    client = MlflowClient(tracking_server.url)
    parent, children = mlflow_children(client, name)
    assert len(children) == 12 and all(r.info.status == "FINISHED" for r in children), \
        [(r.info.status, r.data.tags.get("ablate.trial_key")) for r in children]
    finished = _finished_by_key(children)
    assert set(finished) == set(complete) and all(len(rs) == 1 for rs in finished.values())
    for key, (run,) in finished.items():
        (trial,) = complete[key]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["ablate.outcome"] == "finished"
        assert run.data.tags["ablate.optuna_trial"] == str(trial.number)
        params = run.data.params
        assert params["seed"] == str(trial.user_attrs["seed"])
        assert params["loss.style_weight"] in ("1", "3", "10") and params["loss.style_target"] in ("gray", "color")
        assert {k: params[k] for k in trial.user_attrs["overrides"]} == \
            {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in trial.user_attrs["overrides"].items()}
        assert "loss/g/style" in run.data.metrics and "loss/g/content" in run.data.metrics
    assert len({(r.data.params["loss.style_weight"], r.data.params["loss.style_target"], r.data.params["seed"])
                for r in children}) == 12


# 2 ---------------------------------------------------------------------------------------------------------
def test_worker_killed_mid_trial_is_retried_and_resumes(tmp_path: Path, data_root: Path, postgres_url: str,
                                                        tracking_server: MlflowServer, procs: Procs) -> None:
    name = "scale-kill"
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [1.0, 3.0, 10.0]}, [0], name,
                        schedule={"epochs": 6})  # 12 steps: the checkpoint after epoch 1 leaves 10 to go
    trials_dir = tmp_path / "trials"
    env = worker_env(tracking_server.url, trials_dir)
    procs.run("enqueue", ["enqueue", str(study), "--storage", postgres_url], env)

    victim = procs.start("victim", _worker_args(study, postgres_url), env)
    folder = wait_for(lambda: running_checkpoint(trials_dir, name, postgres_url), 180,
                      "a running trial with a checkpoint", [victim], interval=0.05)
    survivor = procs.start("survivor", _worker_args(study, postgres_url), env)
    victim.kill()  # SIGKILL: no cleanup, the trial stays RUNNING until its heartbeat goes stale
    assert victim.popen.returncode == -9
    killed_key = folder.name
    assert survivor.wait(300) == 0, survivor.tails()

    trials = optuna_trials(postgres_url, name)
    complete = _assert_each_key_complete_once(trials, 3, procs)
    attempts = sorted((t for t in trials if t.user_attrs.get("trial_key") == killed_key), key=lambda t: t.number)
    assert [t.state.name for t in attempts] == ["FAIL", "COMPLETE"], [(t.number, t.state) for t in attempts]
    first, retry = attempts
    assert retry.user_attrs["retry_of"] == first.number and retry.user_attrs["attempt"] == 2
    assert retry.user_attrs["requeue_reason"] == "worker died"
    assert all("retry_of" not in ts[0].user_attrs for key, ts in complete.items() if key != killed_key)

    log = (folder / "train.log").read_text()
    resumed = re.findall(r"resume from step (\d+)", log)
    assert len(resumed) == 1 and int(resumed[0]) > 0, log
    assert re.search(r"finished after 12/12 steps", log), log

    client = MlflowClient(tracking_server.url)
    _, children = mlflow_children(client, name)
    runs = by_key(children, lambda r: r.data.tags["ablate.trial_key"])
    assert set(runs) == set(complete)
    assert sorted(r.info.status for r in runs[killed_key]) == ["FAILED", "FINISHED"]
    dead = next(r for r in runs[killed_key] if r.info.status == "FAILED")
    assert dead.info.run_id == first.user_attrs["mlflow_run_id"]
    assert dead.data.tags["ablate.outcome"] == "crashed"
    for key, key_runs in runs.items():
        finished = [r for r in key_runs if r.info.status == "FINISHED"]
        assert len(finished) == 1 and finished[0].info.run_id == complete[key][0].user_attrs["mlflow_run_id"]
        if key != killed_key:
            assert len(key_runs) == 1
    # the resumed run holds the whole curve: the part before the checkpoint was copied over
    new = next(r for r in runs[killed_key] if r.info.status == "FINISHED")
    assert [m.step for m in client.get_metric_history(new.info.run_id, "loss/init/content")] == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(new.info.run_id, "loss/g/total")) == list(range(3, 13))
    _assert_history_matches_local(client, new, folder)


# 3 ---------------------------------------------------------------------------------------------------------
def test_mlflow_outage_is_retried_and_loses_no_metric(tmp_path: Path, data_root: Path, postgres_url: str,
                                                      tracking_server: MlflowServer, procs: Procs) -> None:
    name = "scale-mlflow-down"
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0, 1], name,
                        schedule={"epochs": 6})
    trials_dir = tmp_path / "trials"
    env = worker_env(tracking_server.url, trials_dir)
    procs.run("enqueue", ["enqueue", str(study), "--storage", postgres_url], env)
    client = MlflowClient(tracking_server.url)

    def first_run_has_metrics() -> bool:
        _, children = mlflow_children(client, name)
        return any(r.data.metrics for r in children)

    worker = procs.start("worker", _worker_args(study, postgres_url), env)
    wait_for(first_run_has_metrics, 180, "the first logged metrics", [worker], interval=0.2)
    tracking_server.stop()
    try:
        time.sleep(10)
        assert worker.poll() is None, worker.tails()  # it waits for the server, it does not give up
    finally:
        tracking_server.start()
    assert worker.wait(300) == 0, worker.tails()

    err = worker.stderr
    assert re.search(rf"MLflow at {re.escape(tracking_server.url)} unreachable .*retrying", err), err
    assert "is back" in err and "Traceback" not in err, err

    trials = optuna_trials(postgres_url, name)
    complete = _assert_each_key_complete_once(trials, 2, procs)
    _, children = mlflow_children(client, name)
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    for run in children:
        key = run.data.tags["ablate.trial_key"]
        assert complete[key][0].user_attrs["mlflow_run_id"] == run.info.run_id
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss/g/total")) == \
            list(range(3, 13))
        _assert_history_matches_local(client, run, trials_dir / name / key)


# 4 ---------------------------------------------------------------------------------------------------------
def test_optuna_database_outage_stops_the_worker_cleanly(tmp_path: Path, data_root: Path, postgres_url: str,
                                                         postgres_server: PostgresServer,
                                                         tracking_server: MlflowServer, procs: Procs) -> None:
    name = "scale-pg-down"
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0, 1], name,
                        schedule={"epochs": 6})
    trials_dir = tmp_path / "trials"
    env = worker_env(tracking_server.url, trials_dir)
    procs.run("enqueue", ["enqueue", str(study), "--storage", postgres_url], env)

    worker = procs.start("worker", _worker_args(study, postgres_url), env)
    folder = wait_for(lambda: running_checkpoint(trials_dir, name, postgres_url), 180,
                      "a running trial with a checkpoint", [worker], interval=0.05)
    postgres_server.stop()
    try:
        code = worker.wait(120)
    finally:
        postgres_server.start()
    err = worker.stderr
    assert code != 0, worker.tails()
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    db = postgres_url.rsplit("/", 1)[1]
    assert len(errors) == 1 and "storage" in errors[0] and db in errors[0] and "unreachable" in errors[0], err
    assert ":ablate@" not in err, "the password is not printed"

    # nothing the study did not record as done is shown as done
    client = MlflowClient(tracking_server.url)
    trials = optuna_trials(postgres_url, name)
    for trial in trials:
        if trial.state.name == "COMPLETE":
            assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    interrupted = [t for t in trials if t.user_attrs.get("trial_key") == folder.name]
    assert [t.state.name for t in interrupted] == ["RUNNING"], [(t.number, t.state) for t in interrupted]

    # a later worker fails the orphaned trial (no heartbeat), re-queues it, resumes it, finishes the study
    rescuer = procs.start("rescuer", _worker_args(study, postgres_url), env)
    assert rescuer.wait(300) == 0, rescuer.tails()
    trials = optuna_trials(postgres_url, name)
    complete = _assert_each_key_complete_once(trials, 2, procs)
    attempts = sorted((t for t in trials if t.user_attrs.get("trial_key") == folder.name), key=lambda t: t.number)
    assert [t.state.name for t in attempts] == ["FAIL", "COMPLETE"]
    assert attempts[1].user_attrs["retry_of"] == attempts[0].number
    assert re.search(r"resume from step [1-9]\d*", (folder / "train.log").read_text())
    _, children = mlflow_children(client, name)
    finished = _finished_by_key(children)
    assert set(finished) == set(complete) and all(len(rs) == 1 for rs in finished.values())
    for key, (run,) in finished.items():
        assert run.info.run_id == complete[key][0].user_attrs["mlflow_run_id"]
    first_run = client.get_run(attempts[0].user_attrs["mlflow_run_id"])
    assert first_run.info.status == "FAILED" and first_run.data.tags["ablate.outcome"] == "crashed"


# 5 ---------------------------------------------------------------------------------------------------------
def test_local_run_with_two_worker_processes_on_sqlite(tmp_path: Path, data_root: Path, procs: Procs) -> None:
    name = "scale-local"
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [1.0, 3.0]}, [0, 1], name)
    storage, tracking = f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    env = worker_env(tracking, tmp_path / "trials")
    procs.run("run", ["run", str(study), "--workers", "2", "--storage", storage, "--tracking-uri", tracking,
                      "--trials-dir", str(tmp_path / "trials"), "--no-report"], env, timeout=300)

    trials = optuna_trials(storage, name)
    complete = _assert_each_key_complete_once(trials, 4, procs)
    assert not [t for t in trials if t.user_attrs.get("trial_key") and t.state.name != "COMPLETE"]
    client = MlflowClient(tracking)
    _, children = mlflow_children(client, name)
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["ablate.trial_key"] for r in children} == set(complete)
    for run in children:
        assert complete[run.data.tags["ablate.trial_key"]][0].user_attrs["mlflow_run_id"] == run.info.run_id
    assert len({(r.data.params["loss.style_weight"], r.data.params["seed"]) for r in children}) == 4
