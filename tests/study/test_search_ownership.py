"""Who owns a running point of a SEARCH study (issue 12, items 2 and 3), as tests/study/test_ownership.py checks for
grids; and what a search adds: a point that comes back is trained again as the same params (never a new sample),
counts once toward `n_trials` and ends with one COMPLETE trial and one finished MLflow run.

Real `ablate worker` subprocesses and in-process launchers on real SQLite (Optuna and MLflow) in tmp_path: a 3-point
random search (fixed sampler seed) of tiny 32 px trials. A database outage is a real exclusive SQLite lock.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import re
import sqlite3
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial
from scale_helpers import (
    GRACE_S,
    Proc,
    Procs,
    local_options,
    optuna_trials,
    race_processes,
    running_search_point,
    wait_for,
    worker_env,
    write_search,
)

from ablation.gan.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ablation.study import queue
from ablation.study.queue import open_queue, ownership
from ablation.study.runner import connect, enqueue_study, run_study
from ablation.study.spec.study import TrialSpec, resolve_study, search_cell
from ablation.study.tracking.client import Tracker
from ablation.study.work.context import TrialContext
from ablation.study.work.search import ask_points, search_params

N_TRIALS = 3
SPACE = {"loss.style_weight": {"low": 0.5, "high": 20.0, "log": True}}


def write(tmp: Path, data_root: Path, name: str, epochs: int = 2, steps_per_epoch: int = 2) -> Path:
    """A 3-point random search, one seed: each point trains `epochs * steps_per_epoch` steps in its own folder,
    with a checkpoint after each epoch."""
    return write_search(tmp / "study.yaml", data_root, SPACE, [0], name, N_TRIALS,
                        schedule={"epochs": epochs, "steps_per_epoch": steps_per_epoch})


def worker_args(study: Path, tmp: Path) -> list[str]:
    return ["worker", str(study), "--storage", f"sqlite:///{tmp}/optuna.db", "--quiet", "--fuse", "1"]


def env(tmp: Path) -> dict[str, str]:
    return worker_env(f"sqlite:///{tmp}/mlflow.db", tmp / "trials")


def trials(tmp: Path, name: str) -> list[FrozenTrial]:
    return sorted(optuna_trials(f"sqlite:///{tmp}/optuna.db", name), key=lambda t: t.number)


def running_point(tmp: Path, name: str, worker: Proc) -> tuple[FrozenTrial, Path]:
    """Once the worker's point has a checkpoint: that point and its folder."""
    return wait_for(lambda: running_search_point(f"sqlite:///{tmp}/optuna.db", tmp / "trials", name), 180,
                    "a running point with a checkpoint", [worker], interval=0.05)


def point(trial: FrozenTrial) -> float:
    return trial.params["loss.style_weight"]


def each_point_complete_once(tmp: Path, name: str) -> list[FrozenTrial]:
    """Every attempt, after asserting that the budget was spent on N_TRIALS points, each COMPLETE exactly once."""
    found = trials(tmp, name)
    complete = [t for t in found if t.state.name == "COMPLETE"]
    originals = [t for t in found if "retry_of" not in t.user_attrs]
    summary = [(t.number, t.state.name, point(t), t.user_attrs.get("retry_of")) for t in found]
    assert len(originals) == N_TRIALS, summary  # a point that came back is not counted again
    assert sorted(point(t) for t in complete) == sorted(point(t) for t in originals), summary
    assert len({point(t) for t in complete}) == N_TRIALS, summary
    assert all(t.user_attrs["outcome"] == "finished" for t in complete), summary
    return found


def runs_by_key(tmp: Path, name: str) -> dict[str, list[tuple[str, str]]]:
    """(status, outcome) of the MLflow child runs per trial folder, oldest first; each COMPLETE trial's run is the
    FINISHED one of its folder."""
    runs = sorted(Tracker(f"sqlite:///{tmp}/mlflow.db").trial_runs(name), key=lambda r: r.info.start_time)
    out: dict[str, list[tuple[str, str]]] = {}
    for run in runs:
        out.setdefault(run.data.tags["ablate.trial_key"], []).append((run.info.status, run.data.tags["ablate.outcome"]))
    finished = {r.data.tags["ablate.trial_key"]: r.info.run_id for r in runs if r.info.status == "FINISHED"}
    for trial in trials(tmp, name):
        if trial.state.name == "COMPLETE":
            assert trial.user_attrs["mlflow_run_id"] == finished[f"{trial.user_attrs['cell']}-s0"]
    return out


def came_back(found: list[FrozenTrial], number: int) -> tuple[FrozenTrial, FrozenTrial]:
    """The attempt `number` (FAIL, untold) and its one retry (COMPLETE, the same point and key)."""
    first = next(t for t in found if t.number == number)
    retries = [t for t in found if t.user_attrs.get("retry_of") == number]
    assert (first.state.name, first.user_attrs.get("outcome")) == ("FAIL", None)
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE", [(t.number, t.state.name) for t in found]
    retry = retries[0]
    assert retry.params == first.params and retry.user_attrs["trial_key"] == first.user_attrs["trial_key"]
    assert retry.user_attrs["requeue_reason"] == "worker died" and retry.user_attrs["attempt"] == 2
    return first, retry


# item 2: a worker whose heartbeats fail gives its point up; the point comes back as itself --------------------
@pytest.mark.slow
def test_a_search_worker_without_heartbeats_gives_its_point_up_and_it_comes_back_as_the_same_point(
        tmp_path: Path, data_root: Path, procs: Procs, fast_heartbeat: None) -> None:
    name = "lost-point"
    study = write(tmp_path, data_root, name, epochs=10, steps_per_epoch=8)
    enqueue_study(study, local_options(tmp_path))  # creates the study; a search queues nothing
    first = procs.start("first", worker_args(study, tmp_path), env(tmp_path))
    trial, folder = running_point(tmp_path, name, first)

    db = sqlite3.connect(tmp_path / "optuna.db", timeout=60, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # the database is unreachable: no heartbeat goes through
    locked = time.monotonic()
    try:
        second = procs.start("second", worker_args(study, tmp_path), env(tmp_path))  # waits for the database too
        wait_for(lambda: "interrupted after" in (folder / "train.log").read_text(), 60,
                 "the worker to stop its point", [first], interval=0.05)
        stopped_s = time.monotonic() - locked
        assert first.poll() is None  # it waits for the database, its point untold
    finally:
        db.execute("ROLLBACK")
        db.close()
    print(f"point stopped {stopped_s:.1f}s after the database became unreachable (grace {GRACE_S}s)")
    assert GRACE_S - 1 <= stopped_s < 30, stopped_s  # the grace period after the last heartbeat, at the next step

    # once the database answers, one of the two workers re-queues the point (its folder lock is free) and one
    # resumes it from the checkpoint, as the same params; the budget's other points are asked once
    assert first.wait(600) == 0, first.tails()
    assert second.wait(600) == 0, second.tails()
    found = each_point_complete_once(tmp_path, name)
    assert len(found) == N_TRIALS + 1
    came_back(found, trial.number)
    given_up = [line for line in first.stderr.splitlines() if "given up" in line]
    assert len(given_up) == 1 and given_up[0].startswith(
        f"ablate: trial {trial.number} [{trial.user_attrs['trial_key']}] given up: no heartbeat recorded for "), \
        first.stderr
    log = (folder / "train.log").read_text()
    stopped_at = int(re.findall(r"interrupted after (\d+)/", log)[0])
    assert re.findall(r"resume from step (\d+)", log) == [str(stopped_at)], log  # from the checkpoint it left
    assert log.index("interrupted after") < log.index("resume from step") < log.index("finished after"), log
    runs = runs_by_key(tmp_path, name)
    assert runs.pop(folder.name) == [("FAILED", "crashed"), ("FINISHED", "finished")]
    assert sorted(runs.values()) == [[("FINISHED", "finished")]] * (N_TRIALS - 1)


# item 3: a launcher never takes a live worker's point --------------------------------------------------------------
@pytest.mark.slow
def test_a_launcher_leaves_a_live_search_workers_point_alone(tmp_path: Path, data_root: Path, procs: Procs,
                                                             fast_heartbeat: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    name = "alive-point"
    study = write(tmp_path, data_root, name, epochs=5, steps_per_epoch=8)
    enqueue_study(study, local_options(tmp_path))
    worker = procs.start("worker", worker_args(study, tmp_path), env(tmp_path))
    trial, folder = running_point(tmp_path, name, worker)

    elsewhere = tmp_path / "elsewhere"  # a launcher started from another directory, on the same database
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_study(study, local_options(tmp_path)) == 0
    assert worker.wait(600) == 0, worker.tails()
    found = each_point_complete_once(tmp_path, name)
    assert len(found) == N_TRIALS and not [t for t in found if "retry_of" in t.user_attrs]  # nothing reaped
    mine = found[trial.number]
    assert mine.user_attrs[ownership.OWNER_ATTR]["pid"] == worker.pid
    launcher = [t for t in found if t.user_attrs[ownership.OWNER_ATTR]["pid"] == os.getpid()]
    assert launcher, "the launcher trained none of the points"
    # the launcher worked (and reaped) while the worker's point was live: it left it alone
    assert min(t.datetime_start for t in launcher) < mine.datetime_complete, [(t.number, t.datetime_start,
                                                                               t.datetime_complete) for t in found]
    log = (folder / "train.log").read_text()
    assert log.count("start (optuna trial") == 1 and "resume from step" not in log, log
    assert sorted(runs_by_key(tmp_path, name).values()) == [[("FINISHED", "finished")]] * N_TRIALS


# items 2 and 3: a dead worker's point is reaped once its heartbeat is a grace period old -----------------------------
@pytest.mark.slow
def test_a_dead_search_workers_point_is_reaped_after_the_grace_period_and_resumed_as_the_same_point(
        tmp_path: Path, data_root: Path, procs: Procs, fast_heartbeat: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = "dead-point"
    study = write(tmp_path, data_root, name, epochs=3, steps_per_epoch=8)
    enqueue_study(study, local_options(tmp_path))
    victim = procs.start("victim", worker_args(study, tmp_path), env(tmp_path))
    trial, folder = running_point(tmp_path, name, victim)
    victim.kill()  # SIGKILL: no cleanup, the point stays RUNNING
    assert victim.popen.returncode == -9
    db = sqlite3.connect(tmp_path / "optuna.db", timeout=60)
    ((silent_s,),) = db.execute("SELECT (julianday('now') - julianday(heartbeat)) * 86400 FROM trial_heartbeats "
                                "WHERE trial_id = ?", (trial._trial_id,)).fetchall()  # by the database's clock
    seen_at = datetime.now()  # the clock the reaper stamps its FAIL with
    db.close()
    checkpoint = load_checkpoint(folder / CHECKPOINT_NAME)
    assert checkpoint is not None
    # a worker on another host: there its free folder lock says nothing, only the heartbeat and its grace count
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    storage.set_trial_user_attr(trial._trial_id, ownership.OWNER_ATTR,
                                {**trial.user_attrs[ownership.OWNER_ATTR], "host": "elsewhere",
                                 "machine": "elsewhere/another-boot"})
    storage.engine.dispose()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_study(study, local_options(tmp_path)) == 0
    found = each_point_complete_once(tmp_path, name)
    assert len(found) == N_TRIALS + 1
    dead, _ = came_back(found, trial.number)
    reaped_s = (dead.datetime_complete - seen_at).total_seconds()
    print(f"reaped {reaped_s:.1f}s after the kill, its heartbeat {silent_s:.1f}s old then (grace {GRACE_S}s)")
    assert reaped_s + silent_s >= GRACE_S, (reaped_s, silent_s)  # not before its grace period was over
    log = (folder / "train.log").read_text()
    assert re.findall(r"resume from step (\d+)", log) == [str(checkpoint["step"])], log
    assert log.count("finished after") == 1, log
    runs = runs_by_key(tmp_path, name)
    assert runs.pop(folder.name) == [("FAILED", "crashed"), ("FINISHED", "finished")]  # no second finished run
    assert sorted(runs.values()) == [[("FINISHED", "finished")]] * (N_TRIALS - 1)
    abandoned = [r for r in Tracker(f"sqlite:///{tmp_path}/mlflow.db").trial_runs(name) if r.info.status == "FAILED"]
    assert [r.data.tags["ablate.abandoned"] for r in abandoned] == ["worker stopped sending heartbeats"]


# item 2: one writer per trial folder; the search goes on meanwhile ------------------------------------------
def first_point_folder(study_path: Path, tmp: Path, name: str) -> tuple[float, Path]:
    """The point of trial 0 (its sampler's seed is fixed), and its folder, as `ablate run` will make them."""
    study = resolve_study(study_path)
    probe = optuna.create_study(sampler=queue.sampler_for(study, 0), directions=queue.directions(study))
    params = search_params(study, probe.ask())
    return params["loss.style_weight"], tmp / "trials" / name / TrialSpec.of(search_cell(study, params), 0).key


def test_a_search_point_whose_folder_another_process_holds_waits_while_the_others_run(
        tmp_path: Path, data_root: Path, fast_heartbeat: None) -> None:
    name = "held-point"
    study = write(tmp_path, data_root, name)
    enqueue_study(study, local_options(tmp_path))  # creates the study; a search queues nothing
    held_point, folder = first_point_folder(study, tmp_path, name)
    folder.mkdir(parents=True)
    handle = (folder / ownership.LOCK_NAME).open("w")  # another owner (this process stands in for it)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(json.dumps({"host": "elsewhere", "pid": 1, "trial": 99}))
    handle.flush()
    seen: list[list[str]] = []

    def others_done() -> bool:
        found = trials(tmp_path, name)
        return sum(t.state.name == "COMPLETE" and point(t) != held_point for t in found) == N_TRIALS - 1

    def release_when_the_others_are_done() -> None:
        try:
            wait_for(others_done, 240, "the other points", interval=0.5)
            seen.append(sorted(os.listdir(folder)))  # what the launcher wrote while the folder was held
        finally:
            handle.close()

    releaser = threading.Thread(target=release_when_the_others_are_done)
    releaser.start()
    try:
        assert run_study(study, local_options(tmp_path)) == 0
    finally:
        releaser.join()
    assert seen == [[ownership.LOCK_NAME]], "the other points did not run while this one's folder was held"
    found = each_point_complete_once(tmp_path, name)
    assert len(found) == N_TRIALS  # put back while held, then claimed: the same trial, not a new point
    first = found[0]
    assert point(first) == held_point and first.user_attrs["cell"] == folder.name.removesuffix("-s0")
    assert (folder / "train.log").read_text().count("start (optuna trial") == 1
    owner = json.loads((folder / ownership.LOCK_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["trial"] == first.number


# the budget: processes asking points at once ask n_trials of them, all different --------------------------------
def _asker(study_path: Path, tmp: Path, ctx: TrialContext, barrier: Any, results: Any) -> None:
    try:
        study = resolve_study(study_path)
        opt = queue.open_study(study, open_queue(f"sqlite:///{tmp}/optuna.db", ctx.tracker), create=False)
        barrier.wait(timeout=120)
        asked = []
        while batch := ask_points(study, opt, ctx, 1):  # as `run_search` asks them, then opens each point
            asked.extend((trial.number, search_params(study, trial)["loss.style_weight"]) for trial in batch)
        results.put(("ok", asked))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def test_processes_asking_points_at_once_ask_the_budget_once_each_point_different(
        tmp_path: Path, data_root: Path, fast_heartbeat: None) -> None:
    budget = 12
    study_path = write_search(tmp_path / "study.yaml", data_root, SPACE, [0], "askers", budget)
    study = resolve_study(study_path)
    _, ctx, _ = connect(study, study_path, local_options(tmp_path), create=True)  # MLflow set up once, here
    # fork: the askers start with everything imported; each opens its own database connections
    answers = race_processes(multiprocessing.get_context("fork"), _asker, [(study_path, tmp_path, ctx)] * 4)

    asked = [pair for _, mine in answers for pair in mine]
    assert sorted(number for number, _ in asked) == list(range(budget)), asked  # the budget, each point once
    assert len({value for _, value in asked}) == budget, sorted(asked)  # no two processes drew the same point
    assert sum(bool(mine) for _, mine in answers) > 1, "the askers overlapped (else nothing was tested)"
    assert len(trials(tmp_path, "askers")) == budget
