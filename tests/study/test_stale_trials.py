"""Waiting trials queued from an earlier version of a study file (issue 23): a worker names the way out,
`ablate enqueue --drop-stale`, which fails exactly those trials (one line each) and touches nothing else.

Real Optuna on SQLite and MLflow in tmp_path; nothing is trained.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from test_stored_config import LAUNCHER_ARMS, options, trials, write_arms

from ablation.errors import UserError
from ablation.study.queue import open_study
from ablation.study.runner import enqueue_study, run_worker
from ablation.study.spec.queued import check_agrees
from ablation.study.spec.study import load_study

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

EDITED_ARMS = {"a": {"loss.style_weight": 5.0}, "b": {"loss.style_weight": 2.0}}  # arm a edited, b as queued


def _by_label(tmp: Path) -> dict[str, list[optuna.trial.FrozenTrial]]:
    found: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials(tmp):
        found.setdefault(trial.user_attrs["label"], []).append(trial)
    return found


def test_a_worker_facing_stale_waiting_trials_names_drop_stale(tmp_path: Path, data_root: Path) -> None:
    study = write_arms(tmp_path / "study.yaml", data_root, LAUNCHER_ARMS)
    enqueue_study(study, options(tmp_path))
    write_arms(study, data_root, EDITED_ARMS)  # the same file, edited after the launcher queued it
    with pytest.raises(UserError) as raised:
        run_worker(study, options(tmp_path))
    assert len(raised.value.lines) == 1
    assert raised.value.lines[0].endswith(f"loss.style_weight: expected 9.0 (as the launcher queued it), got 5.0 in "
                                          f"this study file; start workers with the launcher's study file, or, if "
                                          f"{study} was edited on purpose, drop the waiting trials it no longer has "
                                          f"with `ablate enqueue {study} --drop-stale` (with this worker's options)")


def test_drop_stale_fails_only_the_stale_waiting_trials(tmp_path: Path, data_root: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    study = write_arms(tmp_path / "study.yaml", data_root, {**LAUNCHER_ARMS, "c": {"loss.style_weight": 4.0}})
    enqueue_study(study, options(tmp_path))
    before = _by_label(tmp_path)
    write_arms(study, data_root, EDITED_ARMS)  # a edited, b kept, c removed
    assert enqueue_study(study, replace(options(tmp_path), quiet=False),
                         drop_stale=True) == 0
    lines = capsys.readouterr().out.splitlines()
    a, c = before["a"][0], before["c"][0]
    assert lines[:2] == [
        f"dropped stale trial {a.user_attrs['trial_key']} [a seed=0] (Optuna trial {a.number}): loss.style_weight: "
        "queued 9.0, study file 5.0",
        f"dropped stale trial {c.user_attrs['trial_key']} [c seed=0] (Optuna trial {c.number}): cell: queued 'c', "
        "study file '<no such cell>'"]
    after = {t.number: t for t in trials(tmp_path)}
    assert after[a.number].state.name == after[c.number].state.name == "FAIL"
    assert after[a.number].user_attrs["dropped"] == "stale: loss.style_weight: queued 9.0, study file 5.0"
    b = before["b"][0]
    assert after[b.number].state.name == "WAITING" and after[b.number].user_attrs == b.user_attrs  # untouched
    # the edited arm a is queued under its new key; the worker's check now passes
    edited = load_study(study)
    waiting = {t.user_attrs["trial_key"] for t in after.values() if t.state.name == "WAITING"}
    assert waiting == {t.key for t in edited.trials}
    opt = open_study(edited, optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db"), create=False)
    check_agrees(edited, opt)
    # a second run has nothing to drop and queues nothing twice
    assert enqueue_study(study, options(tmp_path), drop_stale=True) == 0
    assert len(trials(tmp_path)) == len(after)


def test_the_cli_takes_drop_stale(tmp_path: Path, data_root: Path) -> None:
    study = write_arms(tmp_path / "study.yaml", data_root, LAUNCHER_ARMS)
    enqueue_study(study, options(tmp_path))
    write_arms(study, data_root, EDITED_ARMS)
    # this checkout's code, not an installed `ablate`: the subprocess gets the test's import path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "ablation.cli", "enqueue", str(study), "--drop-stale",
                           "--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri",
                           f"sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    dropped = [line for line in done.stdout.splitlines() if line.startswith("dropped stale trial")]
    assert len(dropped) == 1 and "[a seed=0]" in dropped[0]
