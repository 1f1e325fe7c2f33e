"""Who owns a running trial (issue 12, items 2 and 3): heartbeat settings stored with the study, a worker that
cannot record heartbeats gives its trial up, one writer per trial folder, and no launcher takes a live
worker's trial.

Real `ablate worker` subprocesses and in-process launchers on real SQLite (Optuna and MLflow) in tmp_path,
with tiny 32 px trials. A database outage is a real one: the test holds an exclusive SQLite lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from scale_helpers import Procs, local_options, optuna_trials, wait_for, worker_env, write_study

from ablation.errors import UserError
from ablation.study.runner import connect, enqueue_study, run_study
from ablation.study.spec.study import resolve_study
from ablation.study.tracking.client import Tracker

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def env_for(tmp: Path) -> dict[str, str]:
    return worker_env(f"sqlite:///{tmp}/mlflow.db", tmp / "trials")


def worker_args(study: Path, tmp: Path) -> list[str]:
    return ["worker", str(study), "--storage", f"sqlite:///{tmp}/optuna.db", "--quiet", "--fuse", "1"]


def by_key(tmp: Path, name: str) -> dict[str, list[tuple[str, str | None]]]:
    """(state, outcome) of every attempt per trial key, oldest first."""
    out: dict[str, list[tuple[str, str | None]]] = {}
    for trial in sorted(optuna_trials(f"sqlite:///{tmp}/optuna.db", name), key=lambda t: t.number):
        out.setdefault(trial.user_attrs["trial_key"], []).append((trial.state.name, trial.user_attrs.get("outcome")))
    return out


def checkpoint_of_running(tmp: Path, name: str) -> Path | None:
    """The folder of a trial that is RUNNING in Optuna and already has a checkpoint."""
    try:
        trials = optuna_trials(f"sqlite:///{tmp}/optuna.db", name)
    except KeyError:  # the study is not created yet
        return None
    running = {t.user_attrs["trial_key"] for t in trials if t.state.name == "RUNNING"}
    found = [p.parent for p in (tmp / "trials" / name).glob("*/checkpoint.pt") if p.parent.name in running]
    return found[0] if found else None


# item 2: the heartbeat settings are the study's ---------------------------------------------------------------
def test_heartbeat_settings_are_stored_with_the_study(tmp_path: Path, data_root: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0], "beat")
    monkeypatch.setenv("ABLATE_HEARTBEAT_S", "3")
    monkeypatch.setenv("ABLATE_GRACE_S", "9")
    enqueue_study(study, local_options(tmp_path))  # the first process stores its settings with the study

    monkeypatch.setenv("ABLATE_HEARTBEAT_S", "30")  # a worker started with other values
    monkeypatch.setenv("ABLATE_GRACE_S", "120")
    capsys.readouterr()
    _, _, opt = connect(resolve_study(study), study, local_options(tmp_path), create=False)
    backend = opt._storage._backend
    assert (backend.heartbeat_interval, backend.grace_period) == (3, 9)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "ABLATE_GRACE_S" in line]
    assert len(warnings) == 1 and "interval 3s, grace 9s" in warnings[0], warnings

    monkeypatch.delenv("ABLATE_HEARTBEAT_S")  # no explicit wish: the stored values, without a word
    monkeypatch.delenv("ABLATE_GRACE_S")
    _, _, opt = connect(resolve_study(study), study, local_options(tmp_path), create=False)
    assert (opt._storage._backend.heartbeat_interval, opt._storage._backend.grace_period) == (3, 9)
    assert "ABLATE_GRACE_S" not in capsys.readouterr().err


def test_a_grace_period_shorter_than_two_heartbeats_is_refused(tmp_path: Path, data_root: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0], "short")
    monkeypatch.setenv("ABLATE_HEARTBEAT_S", "10")
    monkeypatch.setenv("ABLATE_GRACE_S", "15")
    with pytest.raises(UserError) as raised:
        enqueue_study(study, local_options(tmp_path))
    assert raised.value.lines == ["ABLATE_GRACE_S: grace period: expected at least twice ABLATE_HEARTBEAT_S (20 s), "
                                  "got 15"]


# item 2: a worker whose heartbeats fail gives its trial up ------------------------------------------------------
@pytest.mark.slow
def test_a_worker_without_heartbeats_stops_its_trial_and_leaves_it_unrecorded(
        tmp_path: Path, data_root: Path, procs: Procs, fast_heartbeat: None) -> None:
    name = "lost"
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0], name,
                        schedule={"epochs": 40})
    enqueue_study(study, local_options(tmp_path))
    worker = procs.start("worker", worker_args(study, tmp_path), env_for(tmp_path))
    folder = wait_for(lambda: checkpoint_of_running(tmp_path, name), 180, "a running trial with a checkpoint",
                      [worker], interval=0.05)

    db = sqlite3.connect(tmp_path / "optuna.db", timeout=60, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # the database is unreachable for the worker: no heartbeat goes through
    locked = time.monotonic()
    try:
        wait_for(lambda: "interrupted after" in (folder / "train.log").read_text(), 60,
                 "the worker to stop its trial", [worker], interval=0.05)
        stopped_s = time.monotonic() - locked
        assert worker.poll() is None  # it waits for the database, its trial untold (nothing could record it)
    finally:
        db.execute("ROLLBACK")
        db.close()
    print(f"trial stopped {stopped_s:.1f}s after the database became unreachable (grace 4s)")
    assert 3 <= stopped_s < 15, stopped_s  # the grace period (4 s) after the last heartbeat, at the next step

    # once the database answers, the worker itself sees its old claim dead (its folder lock is free), re-queues
    # the trial and resumes it from the checkpoint
    assert worker.wait(180) == 0, worker.tails()
    trials = sorted(optuna_trials(f"sqlite:///{tmp_path}/optuna.db", name), key=lambda t: t.number)
    assert [(t.state.name, t.user_attrs.get("outcome")) for t in trials] == [("FAIL", None),
                                                                            ("COMPLETE", "finished")]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].user_attrs["requeue_reason"] == "worker died"
    given_up = [line for line in worker.stderr.splitlines() if "given up" in line]
    assert len(given_up) == 1 and given_up[0].startswith(f"ablate: trial 0 [{folder.name}] given up: no heartbeat "
                                                         "recorded for "), worker.stderr
    log = (folder / "train.log").read_text()
    assert log.index("interrupted after") < log.index("resume from step") < log.index("finished after"), log
    runs = Tracker(f"sqlite:///{tmp_path}/mlflow.db").trial_runs(name)
    assert sorted((r.info.status, r.data.tags["ablate.outcome"]) for r in runs) == [("FAILED", "crashed"),
                                                                                     ("FINISHED", "finished")]


# item 2: one writer per trial folder -------------------------------------------------------------------------
def test_a_trial_folder_another_process_holds_is_not_written(tmp_path: Path, data_root: Path,
                                                            fast_heartbeat: None) -> None:
    name = "held"
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0, 1], name)
    enqueue_study(study, local_options(tmp_path))
    trials = optuna_trials(f"sqlite:///{tmp_path}/optuna.db", name)
    first_key = min(trials, key=lambda t: t.number).user_attrs["trial_key"]  # the one a worker claims first
    other_key = next(k for k in by_key(tmp_path, name) if k != first_key)
    folder = tmp_path / "trials" / name / first_key
    folder.mkdir(parents=True)
    handle = (folder / "owner.lock").open("w")  # another owner (this process stands in for it) holds the folder
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(json.dumps({"host": "elsewhere", "pid": 1, "trial": 99}))
    handle.flush()
    seen: list[list[str]] = []

    def release_when_the_other_is_done() -> None:
        try:
            wait_for(lambda: by_key(tmp_path, name)[other_key][-1][0] == "COMPLETE", 240, "the other trial",
                     interval=0.5)
            seen.append(sorted(os.listdir(folder)))  # what the worker wrote while the folder was held
        finally:
            handle.close()

    releaser = threading.Thread(target=release_when_the_other_is_done)
    releaser.start()
    try:
        assert run_study(study, local_options(tmp_path)) == 0
    finally:
        releaser.join()
    assert seen == [["owner.lock"]]
    assert by_key(tmp_path, name) == {first_key: [("COMPLETE", "finished")], other_key: [("COMPLETE", "finished")]}
    assert (folder / "train.log").read_text().count("start (optuna trial") == 1
    owner = json.loads((folder / "owner.lock").read_text())
    assert owner["pid"] == os.getpid() and owner["trial"] == min(t.number for t in trials)


# item 3: a launcher never takes a live worker's trial ------------------------------------------------------------
@pytest.mark.slow
def test_a_launcher_leaves_a_live_workers_trial_alone(tmp_path: Path, data_root: Path, procs: Procs,
                                                      fast_heartbeat: None, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "alive"
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0, 1], name,
                        schedule={"epochs": 12})
    enqueue_study(study, local_options(tmp_path))
    worker = procs.start("worker", worker_args(study, tmp_path), env_for(tmp_path))
    wait_for(lambda: checkpoint_of_running(tmp_path, name), 180, "a running trial with a checkpoint", [worker],
             interval=0.05)

    elsewhere = tmp_path / "elsewhere"  # a launcher started from another directory, on the same database
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_study(study, local_options(tmp_path)) == 0
    assert worker.wait(240) == 0, worker.tails()
    attempts = by_key(tmp_path, name)
    assert sorted(attempts.values()) == [[("COMPLETE", "finished")]] * 2, attempts
    runs = Tracker(f"sqlite:///{tmp_path}/mlflow.db").trial_runs(name)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]


def test_the_launcher_lock_lives_beside_the_database(tmp_path: Path, data_root: Path, procs: Procs,
                                                     fast_heartbeat: None, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "twice"
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0], name,
                        schedule={"epochs": 12})
    opts = local_options(tmp_path)
    launcher = procs.start("launcher", ["run", str(study), "--storage", str(opts.storage), "--tracking-uri",
                                        str(opts.tracking_uri), "--trials-dir", str(opts.trials_dir),
                                        "--no-report"], env_for(tmp_path))
    wait_for(lambda: checkpoint_of_running(tmp_path, name), 180, "a running trial", [launcher], interval=0.05)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(UserError) as raised:
        run_study(study, opts)
    assert len(raised.value.lines) == 1
    assert raised.value.lines[0].startswith(f"{tmp_path / 'optuna.db'}-{name}.run.lock: lock: expected no other "
                                            "`ablate run` of this study"), raised.value.lines
    assert launcher.poll() is None  # the first launcher goes on undisturbed (the fixture ends it)
