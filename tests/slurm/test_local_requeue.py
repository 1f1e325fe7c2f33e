"""Issue 25, tier (a): the Slurm launcher's task under submitit's local executor (no Slurm needed).

`ablate run --launcher slurm` with cluster="local": one worker task is warned mid-trial with SIGUSR1, the signal
submitit's local controller sends before a task's time limit (as ablate sets submitit's signal) and Slurm sends
before preemption. It is sent by the test once the trial has logged steps: on this shared 2-core machine a fixed
time limit lands in the worker's start-up as often as in its training. The warning stops the trial at a step
boundary with a checkpoint, gives it back without charging its retry, and submitit requeues the task; the requeued
task resumes the trial from its checkpoint. It ends finished, with one finished MLflow run.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from scale_helpers import local_options, metrics_rows, write_study

from ablation.data.demo import build_demo_dataset
from ablation.study.runner import RunOptions, run_study
from ablation.study.slurm import JOB_TAG, SlurmOptions
from ablation.study.spec.study import load_study
from ablation.study.status import study_status
from ablation.study.tracking.client import Tracker

pytestmark = pytest.mark.slow


def test_warned_task_is_requeued_and_resumes_its_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABLATE_SLURM_ALLOW_SQLITE", "1")  # one host: the override the launcher names
    data_root = tmp_path / "data"
    build_demo_dataset(data_root, image_size=32, n_photo=8, n_style=8, n_ref=8, n_val=4)
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0], "preempt",
                        schedule={"epochs": 6, "steps_per_epoch": 2})
    slurm = SlurmOptions(workers=1, folder=tmp_path / "submitit", time_min=30, cluster="local")
    options = local_options(tmp_path)
    assert run_study(study, replace(options, slurm=slurm, quiet=False)) == 0
    assert "submitted 1 workers of study preempt" in capsys.readouterr().out

    (controller,) = Tracker(options.tracking_uri).parent_run_of("preempt").data.tags[JOB_TAG].split(",")
    try:
        _preempt_and_check(tmp_path, options, int(controller))
    finally:  # a failed test leaves no task behind: the controller forwards SIGTERM to it
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(controller), signal.SIGTERM)
    capsys.readouterr()
    assert study_status(load_study(study, {}), options) == 0  # `ablate status`: the queue per cell
    out = capsys.readouterr().out
    assert re.search(r"^style_weight=3\s+0\s+0\s+1\s+0$", out, re.M), out
    assert "live workers (trials with a fresh heartbeat): 0" in out


def _preempt_and_check(tmp_path: Path, options: RunOptions, controller: int) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not any(metrics_rows(p) for p in (tmp_path / "trials").glob("*/*")):
        time.sleep(0.5)
    children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    assert len(children) == 1, children  # submitit's local job id is its controller's pid; the task is its child
    os.kill(int(children[0]), signal.SIGUSR1)

    opt = optuna.load_study(study_name="preempt", storage=options.storage)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not any(t.state.name == "COMPLETE" for t in opt.get_trials()):
        time.sleep(2)
    logs = "\n".join(p.read_text() for p in (tmp_path / "submitit").rglob("*.err"))
    trials = opt.get_trials()
    assert [t.state.name for t in trials if t.state.name == "COMPLETE"] == ["COMPLETE"], logs[-3000:]
    interrupted = [t for t in trials if t.user_attrs.get("outcome") == "interrupted"]
    assert interrupted, "the warning came mid-trial: the trial was given back"
    done = next(t for t in trials if t.state.name == "COMPLETE")
    assert done.user_attrs["retries_left"] == trials[0].user_attrs["retries_left"]  # no retry charged
    log = next((tmp_path / "trials" / "preempt").glob("*/train.log")).read_text()
    resumed = [int(line.split("resume from step")[1].split()[0].strip(":,")) for line in log.splitlines()
               if "resume from step" in line]
    assert resumed and all(step > 0 for step in resumed)
    assert "Requeued job" in "\n".join(p.read_text() for p in (tmp_path / "submitit").rglob("*.out")) + logs

    tracker = Tracker(options.tracking_uri)
    runs = tracker.trial_runs("preempt")
    assert [r.info.status for r in runs].count("FINISHED") == 1
    assert tracker.parent_run_of("preempt").data.tags[JOB_TAG]
