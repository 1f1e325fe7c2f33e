"""Helpers shared by the study tests (tests/study/test_scale.py, test_runner.py, test_ownership.py, ...): tiny
grid and search studies, `ablate worker` subprocesses, stores."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna
import yaml

TINY_BASE: dict[str, Any] = {
    "data": {"style": "demo", "image_size": 32, "val_count": 2},
    "model": {"d_ch": 8},
    "backbone": {"weights": "random"},
    "schedule": {"epochs": 2, "init_epochs": 1, "batch_size": 2, "steps_per_epoch": 2, "log_every": 1},
    "eval": {"enabled": False},
    "runtime": {"threads": 1},
}
OBJECTIVES = [{"metric": "loss/g/style", "direction": "minimize"},
              {"metric": "loss/g/content", "direction": "minimize"}]
HEARTBEAT_S, GRACE_S = 1, 4


def tiny_demo_data(root: Path) -> Path:
    """The multi-process tests' data set: the demo layout at 32 px, 8 photos, 8 style, 8 reference, 4 val."""
    from ablation.data.demo import build_demo_dataset

    build_demo_dataset(root, image_size=32, n_photo=8, n_style=8, n_ref=8, n_val=4)
    return root


def write_study(path: Path, data_root: Path, axes: dict[str, list], seeds: list[int], name: str,
                schedule: dict[str, Any] | None = None) -> Path:
    base = json.loads(json.dumps(TINY_BASE))
    base["data"]["root"] = str(data_root)
    base["schedule"].update(schedule or {})
    path.write_text(yaml.safe_dump({"name": name, "base": base, "axes": axes, "seeds": seeds,
                                    "objectives": OBJECTIVES}))
    return path


def write_search(path: Path, data_root: Path, space: dict[str, dict[str, Any]], seeds: list[int], name: str,
                 n_trials: int, sampler: str = "random", schedule: dict[str, Any] | None = None) -> Path:
    """A search study over the tiny base: `n_trials` points of `space`, sampled with a fixed seed."""
    base = json.loads(json.dumps(TINY_BASE))
    base["data"]["root"] = str(data_root)
    base["schedule"].update(schedule or {})
    path.write_text(yaml.safe_dump({"name": name, "base": base, "method": "search", "seeds": seeds,
                                    "objectives": OBJECTIVES, "search": {"sampler": sampler, "sampler_seed": 0,
                                                                         "n_trials": n_trials, "space": space}}))
    return path


def worker_env(tracking_uri: str, trials_dir: Path) -> dict[str, str]:
    return dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, ABLATE_HEARTBEAT_S=str(HEARTBEAT_S),
                ABLATE_GRACE_S=str(GRACE_S), ABLATE_TRIALS_DIR=str(trials_dir), PYTHONUNBUFFERED="1")


class Proc:
    """One `python -m ablation.cli ...` subprocess; stdout and stderr go to files (no pipe can fill up)."""

    def __init__(self, name: str, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.out_path, self.err_path = cwd / f"{name}.out", cwd / f"{name}.err"
        self._out, self._err = self.out_path.open("wb"), self.err_path.open("wb")
        self.popen = subprocess.Popen([sys.executable, "-m", "ablation.cli", *args], cwd=cwd, env=env,
                                      stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} still running after {timeout:.0f}s\n{self.tails()}") from None
        self._close()
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._close()

    def _close(self) -> None:
        for handle in (self._out, self._err):
            if not handle.closed:
                handle.close()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def tails(self, lines: int = 30) -> str:
        out = self.out_path.read_text(errors="replace") if self.out_path.exists() else ""
        return (f"--- {self.name} stdout ---\n" + "\n".join(out.splitlines()[-lines:]) +
                f"\n--- {self.name} stderr ---\n" + "\n".join(self.stderr.splitlines()[-lines:]))


class Procs:
    """Every subprocess a test starts; the fixture kills what is left at teardown."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[Proc] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, args, self.cwd, env)
        self.started.append(proc)
        return proc

    def run(self, name: str, args: list[str], env: dict[str, str], timeout: float = 180) -> Proc:
        proc = self.start(name, args, env)
        code = proc.wait(timeout)
        assert code == 0, f"{name} exited with {code}\n{proc.tails()}"
        return proc

    def tails(self) -> str:
        return "\n".join(p.tails() for p in self.started)

    def kill_all(self) -> None:
        for proc in self.started:
            proc.kill()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, procs: Iterable[Proc] = (),
             interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy; fail with the workers' output if it never is or they all exit."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if procs and all(p.poll() is not None for p in procs):
            value = predicate()
            if value:
                return value
            raise AssertionError(f"workers exited before {what}\n" + "\n".join(p.tails() for p in procs))
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n" +
                         "\n".join(p.tails() for p in procs))


def optuna_trials(storage_url: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    """A fresh storage connection each time (servers get stopped in these tests)."""
    storage = optuna.storages.RDBStorage(storage_url, skip_compatibility_check=True)
    try:
        return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=True)
    finally:
        storage.engine.dispose()


def trial_state(storage_url: str, study_name: str, key: str) -> str | None:
    """The state of the newest trial of one key (None while there is none)."""
    found = [t for t in optuna_trials(storage_url, study_name) if t.user_attrs.get("trial_key") == key]
    return max(found, key=lambda t: t.number).state.name if found else None


def metrics_rows(trial_folder: Path) -> list[dict[str, Any]]:
    path = trial_folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def running_checkpoint(trials_dir: Path, study_name: str, storage_url: str) -> Path | None:
    """A trial folder whose checkpoint exists while its training is not over yet (killable mid-trial)."""
    for ckpt in sorted((trials_dir / study_name).glob("*/checkpoint.pt")):
        log = ckpt.parent / "train.log"
        text = log.read_text() if log.exists() else ""
        if " after " in text:  # "finished after N/M steps": too late to kill mid-trial
            continue
        if trial_state(storage_url, study_name, ckpt.parent.name) == "RUNNING":
            return ckpt.parent
    return None


def running_search_point(storage_url: str, trials_dir: Path, study_name: str
                         ) -> tuple[optuna.trial.FrozenTrial, Path] | None:
    """A RUNNING point of a one-seed search whose folder has a checkpoint already, and that folder."""
    try:
        trials = optuna_trials(storage_url, study_name)
    except KeyError:  # the study is not created yet
        return None
    for trial in sorted(trials, key=lambda t: t.number):
        folder = trials_dir / study_name / f"{trial.user_attrs.get('cell')}-s0"
        if trial.state.name == "RUNNING" and "cell" in trial.user_attrs and (folder / "checkpoint.pt").exists():
            return trial, folder
    return None


def mlflow_children(client: Any, study_name: str) -> tuple[Any, list[Any]]:
    """The study's one parent run and every run whose mlflow.parentRunId points at it."""
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(study_name)
    assert exp is not None, f"no MLflow experiment {study_name}"
    parents = client.search_runs([exp.experiment_id], "tags.`ablate.role` = 'parent'", ViewType.ALL)
    assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  ViewType.ALL, max_results=1000)
    return parent, children


def by_key(items: Iterable[Any], key: Callable[[Any], str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out


def local_options(tmp: Path, fuse: int | None = None, probe: bool = False) -> Any:
    """RunOptions of a quiet study on SQLite and MLflow files under `tmp`, without a report. Without the
    balance probe unless asked (tests/study/test_balance_probe.py): it would compute each first seed's init
    phase before the trials, which these tests count."""
    from ablation.study.runner import RunOptions

    return RunOptions(storage=f"sqlite:///{tmp}/optuna.db", tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                      trials_dir=tmp / "trials", artifact_root=tmp / "mlartifacts", report=False, quiet=True,
                      fuse=fuse, probe=probe)


def race_processes(ctx: Any, target: Callable[..., None], args: list[tuple]) -> list[Any]:
    """Start one `ctx.Process(target, args + (barrier, results))` per args tuple, released together by a
    barrier; their answers (each `("ok", value)` or `("error", traceback)`), after asserting none failed."""
    barrier, results = ctx.Barrier(len(args)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, results)) for a in args]
    for proc in procs:
        proc.start()
    answers = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    errors = [text for kind, text in answers if kind == "error"]
    assert not errors, "\n".join(errors)
    return answers
