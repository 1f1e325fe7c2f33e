"""Issue 25, tier (b): `ablate run --launcher slurm` on a real single-node Slurm (munged, slurmctld, slurmd).

A 2x2 study (two cells, two seeds) is submitted as a 2-task array by the CLI, with PostgreSQL as the queue and
an `mlflow server` (on PostgreSQL) as the tracking store, the way docs/slurm.md sets up a cluster. One task is
warned mid-trial with `scancel --batch --signal=USR1` (what a site sends before preemption or the time limit):
it checkpoints, gives the trial back uncharged and requeues itself through submitit. The other is preempted
mid-trial with `scontrol requeue` (SIGTERM, then Slurm requeues it): the same give-back. Slurm holds a requeued
task back for about two minutes (its BeginTime); the test holds each longer, until both were preempted, then
releases both at once with `StartTime=now`. The tasks come back, resume the given-back trials from their
checkpoints, and every trial finishes exactly once. A second test cancels an array (`scancel`) and submits again.

Every process is real and runs this checkout's code: the launcher through PYTHONPATH, and the array tasks
because Slurm hands the launcher's environment to them (sbatch's default `--export=ALL`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from optuna.trial import FrozenTrial
from scale_helpers import by_key, mlflow_children, optuna_trials, tiny_demo_data, wait_for, worker_env, write_study
from services import REPO, MlflowServer, PostgresServer
from slurm_cluster import SlurmCluster
from slurm_tasks import array_tasks, preemptible_trial, submitit_logs, task_states

from ablation.study.runner import RunOptions
from ablation.study.slurm import JOB_TAG
from ablation.study.spec.study import load_study
from ablation.study.status import study_status

# a hang guard only: a quiet 2-core machine runs each test in 2-3 minutes, but other jobs on a shared one stretched
# a 32 px step from a fraction of a second to 10-50 s (the waits below bound each phase)
pytestmark = [pytest.mark.slurm, pytest.mark.services, pytest.mark.timeout(1800)]

NAME = "slurm-real"
EPOCHS, STEPS_PER_EPOCH = 8, 2  # 16 steps: time to land a signal between the first checkpoint and half-way
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slurm-data")
    tiny_demo_data(root)
    return root


@pytest.fixture(scope="module")
def tracking_server(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[MlflowServer]:
    """The study's `mlflow server`, on a database of the session's PostgreSQL (what compute nodes would reach)."""
    root = tmp_path_factory.mktemp("slurm-mlflow")
    # a generous start-up wait: on a shared machine its first start (schema migrations) took over 180 s
    server = MlflowServer(postgres_server.create_database("slurm_mlflow"), root / "artifacts", root / "server.log",
                          startup_timeout=600)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        postgres_server.drop_database("slurm_mlflow")


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _env(cluster: SlurmCluster, tracking: str, trials_dir: Path) -> dict[str, str]:
    env = worker_env(tracking, trials_dir)
    env["SLURM_CONF"] = str(cluster.conf)
    # this checkout, not whatever `ablation` the interpreter has installed: in the launcher and in every task
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _submit(study: Path, workers: int, storage: str, folder: Path, env: dict[str, str]) -> str:
    """`ablate run --launcher slurm` as a user types it; the array's job id it prints (submitit submits a batch
    of one as a plain job: then that job's id, without a task index)."""
    run = _cli(["run", str(study), "--launcher", "slurm", "--workers", str(workers), "--storage", storage,
                "--submitit-folder", str(folder), "--time", "30", "--fuse", "1"], study.parent, env)
    assert run.returncode == 0, run.stdout + run.stderr
    ids = "_0 " + " ".join(rf"\1_{i}" for i in range(1, workers)) if workers > 1 else ""
    submitted = re.search(rf"submitted {workers} workers of study \S+: (\d+){ids} \(", run.stdout)
    assert submitted, run.stdout
    return submitted.group(1)


def _status(study: Path, storage: str, tracking: str, capsys: pytest.CaptureFixture[str]) -> str:
    """What `ablate status` prints, in this process: cheaper than a CLI start while the tasks wait."""
    capsys.readouterr()
    assert study_status(load_study(study, {}), RunOptions(storage=storage, tracking_uri=tracking)) == 0
    return capsys.readouterr().out


def test_preempted_array_tasks_resume_and_every_trial_finishes_once(
        tmp_path: Path, data_root: Path, postgres_url: str, tracking_server: MlflowServer,
        slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [1.0, 3.0]}, [0, 1], NAME,
                        schedule={"epochs": EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH})
    trials_dir, folder = tmp_path / "trials", tmp_path / "submitit"
    env = _env(slurm_cluster, tracking_server.url, trials_dir)
    monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])  # the in-process status's squeue
    array = _submit(study, 2, postgres_url, folder, env)
    tasks = {f"{array}_0", f"{array}_1"}

    def logs() -> str:
        return f"{submitit_logs(folder)}\n{slurm_cluster.logs()}\nslurm: {array_tasks(slurm_cluster, array)}"

    def preempt(candidates: set[str], how: list[str]) -> tuple[str, str]:
        key, task = _wait(lambda: preemptible_trial(postgres_url, NAME, trials_dir, TOTAL_STEPS, candidates),
                          f"a trial mid-way in one of {sorted(candidates)}", logs)
        slurm_cluster.command(*how, task)
        _wait(lambda: task_states(slurm_cluster, array).get(task) == "PENDING", f"{task} requeued", logs)
        # held until released below: on a busy machine the other preemption may take longer than the ~120 s
        # hold Slurm gives a requeued task, and a task back early would change which task trains what
        slurm_cluster.command("scontrol", "update", f"JobId={task}", "StartTime=now+3600")
        return key, task

    warned_key, warned = preempt(tasks, ["scancel", "--batch", "--signal=USR1"])
    requeued_key, requeued = preempt(tasks - {warned}, ["scontrol", "requeue"])
    # slurmctld sets a held task's reason (BeginTime) at its next scheduling pass, not at the update: read the
    # status until it shows both (a first read right after the update saw "1_0 PENDING (None)")
    seen = {"held": ""}

    def both_held() -> bool:
        seen["held"] = _status(study, postgres_url, tracking_server.url, capsys)
        return all(re.search(rf"^  {t} PENDING .*BeginTime", seen["held"], re.M) for t in tasks)

    _wait(both_held, "both tasks held (BeginTime) in ablate status", lambda: f"{seen['held']}\n{logs()}", timeout=120)
    held = seen["held"]  # both tasks held, two trials given back
    assert re.search(r"^all\s+[234]\s+0\s+[012]\s+0$", held, re.M), held
    for task in (warned, requeued):  # released at once: both come back, each to trials given back by either
        slurm_cluster.command("scontrol", "update", f"JobId={task}", "StartTime=now")
    _wait(lambda: set(task_states(slurm_cluster, array).values()) == {"COMPLETED"}, "both tasks COMPLETED", logs,
          timeout=900)

    slurm = array_tasks(slurm_cluster, array)
    assert all(int(slurm[t]["Restarts"]) >= 1 and slurm[t]["ExitCode"] == "0:0" for t in tasks), slurm
    assert re.search(rf"Requeued job {warned}\b", submitit_logs(folder)), logs()  # submitit's hook, on USR1
    trials = optuna_trials(postgres_url, NAME)
    complete = _assert_each_trial_finished_once(trials, {warned_key, requeued_key})
    for key in (warned_key, requeued_key):
        log = (trials_dir / NAME / key / "train.log").read_text()
        stopped = [int(s) for s in re.findall(rf"interrupted after (\d+)/{TOTAL_STEPS} steps", log)]
        resumed = [int(s) for s in re.findall(r"resume from step (\d+)", log)]
        assert stopped and resumed == stopped and all(s > 0 for s in resumed), log  # from the checkpoint it wrote
        assert log.rstrip().endswith(f"finished after {TOTAL_STEPS}/{TOTAL_STEPS} steps"), log
    _assert_one_finished_run_per_trial(tracking_server.url, complete, array)

    status = _cli(["status", str(study), "--storage", postgres_url, "--tracking-uri", tracking_server.url],
                  tmp_path, env)
    assert status.returncode == 0, status.stderr
    for cell in ("style_weight=1", "style_weight=3"):
        assert re.search(rf"^{cell}\s+0\s+0\s+2\s+0$", status.stdout, re.M), status.stdout
    assert re.search(r"^all\s+0\s+0\s+4\s+0$", status.stdout, re.M), status.stdout
    assert "live workers (trials with a fresh heartbeat): 0" in status.stdout
    assert f"slurm {array}:" in status.stdout, status.stdout


def test_cancelled_array_gives_its_trial_back_and_a_new_submission_finishes_it(
        tmp_path: Path, data_root: Path, postgres_url: str, tracking_server: MlflowServer,
        slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/slurm.md: `scancel <array>` loses no trial (SIGTERM: the running one is given back with its
    checkpoint), and submitting again finishes it from there."""
    name = "slurm-cancel"
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0], name,
                        schedule={"epochs": EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH})
    trials_dir, folder = tmp_path / "trials", tmp_path / "submitit"
    env = _env(slurm_cluster, tracking_server.url, trials_dir)
    monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])
    first = _submit(study, 1, postgres_url, folder, env)

    def logs() -> str:
        return f"{submitit_logs(folder)}\n{slurm_cluster.logs()}"

    key, _ = _wait(lambda: preemptible_trial(postgres_url, name, trials_dir, TOTAL_STEPS, {first}),
                   "a trial mid-way", logs)
    slurm_cluster.command("scancel", first)
    _wait(lambda: task_states(slurm_cluster, first) == {first: "CANCELLED"}, "the task CANCELLED", logs)
    (given_back,) = [t for t in optuna_trials(postgres_url, name) if t.state.name == "FAIL"]
    assert given_back.user_attrs["outcome"] == "interrupted", given_back.user_attrs  # not crashed: no retry spent
    waiting = _status(study, postgres_url, tracking_server.url, capsys)
    assert re.search(r"^style_weight=3\s+1\s+0\s+0\s+0$", waiting, re.M), waiting
    assert "no task queued or running" in waiting, waiting

    second = _submit(study, 1, postgres_url, folder, env)
    _wait(lambda: task_states(slurm_cluster, second) == {second: "COMPLETED"}, "the new task COMPLETED",
          logs, timeout=900)
    trials = optuna_trials(postgres_url, name)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"], [(t.number, t.user_attrs) for t in trials]
    assert trials[1].user_attrs["retries_left"] == trials[0].user_attrs["retries_left"]
    log = (trials_dir / name / key / "train.log").read_text()
    stopped = re.findall(rf"interrupted after (\d+)/{TOTAL_STEPS} steps", log)
    assert stopped and re.findall(r"resume from step (\d+)", log) == stopped and int(stopped[0]) > 0, log
    assert log.rstrip().endswith(f"finished after {TOTAL_STEPS}/{TOTAL_STEPS} steps"), log


def _wait(predicate: Callable[[], Any], what: str, logs: Callable[[], str], timeout: float = 300) -> Any:
    try:
        return wait_for(predicate, timeout, what, interval=0.5)
    except AssertionError as exc:  # with the daemons' and the tasks' logs: what a CI failure needs
        raise AssertionError(f"{exc}\n{logs()}") from None


def _assert_each_trial_finished_once(trials: list[FrozenTrial], preempted: set[str]) -> dict[str, FrozenTrial]:
    """Four keys COMPLETE once each; the only other attempts are the preempted ones, given back uncharged."""
    complete = by_key([t for t in trials if t.state.name == "COMPLETE"], lambda t: t.user_attrs["trial_key"])
    assert len(complete) == 4 and all(len(ts) == 1 for ts in complete.values()), [
        (t.number, t.state.name, t.user_attrs) for t in trials]
    others = [t for t in trials if t.state.name != "COMPLETE"]
    assert {t.user_attrs["trial_key"] for t in others} == preempted, [(t.number, t.user_attrs) for t in others]
    assert all(t.state.name == "FAIL" and t.user_attrs["outcome"] == "interrupted" for t in others), others
    for key in preempted:
        done = complete[key][0]
        assert done.user_attrs["requeue_reason"] == "interrupted"
        assert done.user_attrs["retries_left"] == trials[0].user_attrs["retries_left"]  # no retry charged
    return {key: ts[0] for key, ts in complete.items()}


def _assert_one_finished_run_per_trial(tracking: str, complete: dict[str, FrozenTrial], array: str) -> None:
    parent, children = mlflow_children(MlflowClient(tracking), NAME)
    assert parent.data.tags[JOB_TAG] == f"{array}_0,{array}_1"
    runs = by_key(children, lambda r: r.data.tags["ablate.trial_key"])
    assert set(runs) == set(complete)
    for key, key_runs in runs.items():
        finished = [r for r in key_runs if r.info.status == "FINISHED"]
        assert [r.info.run_id for r in finished] == [complete[key].user_attrs["mlflow_run_id"]], key
        assert all(r.info.status == "KILLED" for r in key_runs if r not in finished), key  # the given-back attempts
