"""Chaos run: a grid of tiny trials worked by `ablate worker` processes while faults hit at random moments.

Shared by tests/study/test_chaos.py (a few faults, short outages) and benchmarks/chaos.py (20 faults). The
fault sequence (kind, gap before it, outage length, which live worker) is drawn up front from a seeded RNG:
- `sigkill` / `sigterm`: a random live worker (idle, starting or mid-trial);
- `mlflow`: the tracking server killed (SIGKILL), restarted on its port after the outage;
- `postgres`: the Optuna database stopped (`pg_ctl stop -m fast`), started after the outage.
A worker that exits with anything but 0 ("queue empty") is replaced at once; while PostgreSQL is down, once it
is back (a worker cannot start without its storage). When a worker ends, the step of every trial folder's
checkpoint is noted, so that the checks (`verify`) can tell whether a retry resumed from what its folder held.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from scale_helpers import Proc, Procs, worker_env, write_study
from services import MlflowServer, PostgresServer

GRID = {"loss.style_weight": [1.0, 3.0, 10.0], "loss.style_target": ["gray", "color"]}
SEEDS = [0, 1]  # 6 cells x 2 seeds = 12 trials
KINDS = ("sigkill", "sigterm", "mlflow", "postgres")
SIGNALS = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM}


@dataclass(frozen=True)
class Plan:
    seed: int = 0
    faults: int = 20
    gap_s: tuple[float, float] = (3.0, 12.0)  # from one fault to the next
    mlflow_down_s: tuple[float, float] = (5.0, 40.0)
    postgres_down_s: tuple[float, float] = (5.0, 20.0)
    weights: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)  # of KINDS
    workers: int = 3
    epochs: int = 4  # one init epoch, the rest GAN epochs; a checkpoint at the end of each
    steps_per_epoch: int = 2
    # generous next to the outages: a worker whose database is away for the whole outage (plus the restart and
    # one heartbeat) must still look alive afterwards, or its live trial would be re-queued under it
    heartbeat_s: int = 2
    grace_s: int = 30
    timeout_s: float = 900.0

    def schedule(self, postgres: bool) -> list[dict[str, Any]]:
        """The faults in order: kind, gap before it, outage length, and where among the live workers to strike."""
        rng = random.Random(self.seed)
        weights = [w if kind != "postgres" or postgres else 0.0 for kind, w in zip(KINDS, self.weights, strict=True)]
        out = []
        for _ in range(self.faults):
            kind = rng.choices(KINDS, weights)[0]
            span = {"mlflow": self.mlflow_down_s, "postgres": self.postgres_down_s}.get(kind)
            out.append({"kind": kind, "gap_s": round(rng.uniform(*self.gap_s), 2), "pick": rng.random(),
                        "down_s": round(rng.uniform(*span), 2) if span else 0.0})
        return out


class ChaosTimeout(AssertionError):
    pass


class Chaos:
    """One chaos run; `run()` returns what happened (faults, worker exits, checkpoint notes)."""

    def __init__(self, folder: Path, data_root: Path, storage_url: str, mlflow: MlflowServer,
                 postgres: PostgresServer | None, plan: Plan) -> None:
        self.folder, self.url, self.mlflow, self.postgres, self.plan = folder, storage_url, mlflow, postgres, plan
        self.name = f"chaos-{'pg' if postgres is not None else 'sqlite'}-{plan.seed}"
        self.study = write_study(folder / "study.yaml", data_root, GRID, SEEDS, self.name,
                                 schedule={"epochs": plan.epochs, "steps_per_epoch": plan.steps_per_epoch})
        self.trials_dir = folder / "trials"
        self.env = {**worker_env(mlflow.url, self.trials_dir), "ABLATE_HEARTBEAT_S": str(plan.heartbeat_s),
                    "ABLATE_GRACE_S": str(plan.grace_s)}
        self.procs = Procs(folder)
        self.schedule = plan.schedule(postgres is not None)
        self.faults: list[dict[str, Any]] = []
        self.exits: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []  # {"at": datetime, "steps": {trial key: checkpoint step}}
        self.down: dict[str, float] = {}  # service -> monotonic time it comes back
        self.sent: dict[int, str] = {}  # worker pid -> the fault that hit it
        self.slots: list[Proc | None] = []
        self.began = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self.began, 2)

    def worker_args(self) -> list[str]:
        return ["worker", str(self.study), "--storage", self.url, "--quiet", "--fuse", "1"]

    def run(self) -> dict[str, Any]:
        self.procs.run("enqueue", ["enqueue", str(self.study), "--storage", self.url], self.env)
        self._note_checkpoints()  # imports torch now, not at the first fault
        self.began = time.monotonic()
        self.slots = [self._start() for _ in range(self.plan.workers)]
        done: set[int] = set()
        next_at: float | None = None
        first_trial: float | None = None
        try:
            while len(done) < len(self.slots):
                if self.now() > self.plan.timeout_s:
                    raise ChaosTimeout(f"study not done after {self.plan.timeout_s:.0f}s\n{self.procs.tails()}")
                self._bring_back(due_only=True)
                self._tend(done)
                # the fault clock starts with the first trial: before it, every fault would hit a worker still
                # importing torch (a minute on a busy core), which tests nothing the later faults do not
                if first_trial is None and self.schedule and any((self.trials_dir / self.name).glob("*/train.log")):
                    first_trial = self.now()
                    next_at = first_trial + self.schedule[0]["gap_s"]
                due = next_at is not None and self.now() >= next_at and len(done) < len(self.slots)
                if due and self._inject(self.schedule[len(self.faults)]):
                    following = self.schedule[len(self.faults):]
                    next_at = self.now() + following[0]["gap_s"] if following else None
                time.sleep(0.2)
        finally:
            self._bring_back(due_only=False)
            self.procs.kill_all()
        return {"name": self.name, "storage": "postgresql" if self.postgres is not None else "sqlite",
                "plan": asdict(self.plan), "schedule": self.schedule, "faults": self.faults, "exits": self.exits,
                "checkpoints": [{**c, "at": c["at"].isoformat()} for c in self.checkpoints],
                "first_trial_at_s": first_trial, "wall_s": self.now()}

    def _start(self) -> Proc:
        return self.procs.start(f"worker{len(self.procs.started) - 1}", self.worker_args(), self.env)

    def _tend(self, done: set[int]) -> None:
        """Note every worker that ended; replace it unless it found the queue empty."""
        for slot, proc in enumerate(self.slots):
            if slot in done or (proc is not None and proc.poll() is None):
                continue
            if proc is not None:
                code = proc.wait(30)
                err = proc.stderr
                self.exits.append({"worker": proc.name, "at_s": self.now(), "code": code,
                                   "fault": self.sent.get(proc.pid), "traceback": "Traceback" in err,
                                   "error": next((x for x in reversed(err.splitlines()) if x.strip()), "")[:300]})
                self._note_checkpoints()
                self.slots[slot] = None
                if code == 0:
                    done.add(slot)
                    continue
            if "postgres" not in self.down:
                self.slots[slot] = self._start()

    def _inject(self, fault: dict[str, Any]) -> bool:
        """Apply one fault; False while it cannot apply yet (no live worker, its service still down)."""
        kind, target = fault["kind"], ""
        if kind in SIGNALS:
            live = [p for p in self.slots if p is not None and p.poll() is None]
            if not live:
                return False
            victim = live[min(int(fault["pick"] * len(live)), len(live) - 1)]
            self.sent[victim.pid] = kind
            os.killpg(victim.pid, SIGNALS[kind])
            target = victim.name
            if kind == "sigkill":  # what the dead worker left, before anyone can claim its trial again
                victim.popen.wait(30)
                self._note_checkpoints()
        elif kind in self.down:
            return False
        elif kind == "mlflow":
            assert self.mlflow.process is not None
            os.killpg(self.mlflow.process.pid, signal.SIGKILL)  # a crash, not a shutdown
            self.mlflow.stop()
            self.down[kind] = time.monotonic() + fault["down_s"]
        else:
            assert self.postgres is not None
            self.postgres.stop("fast")
            self.down[kind] = time.monotonic() + fault["down_s"]
        self.faults.append({**fault, "at_s": self.now(), "target": target})
        return True

    def _bring_back(self, due_only: bool) -> None:
        for service, until in list(self.down.items()):
            if due_only and time.monotonic() < until:
                continue
            if service == "mlflow":
                self.mlflow.start()
            else:
                assert self.postgres is not None
                self.postgres.start()
            del self.down[service]
            last = next(f for f in reversed(self.faults) if f["kind"] == service)
            last["back_at_s"] = self.now()  # the outage as workers saw it: until the service answers again

    def _note_checkpoints(self) -> None:
        """The step of each trial folder's checkpoint now (read lazily: mmap, no tensor is copied)."""
        import torch

        steps: dict[str, int] = {}
        for path in (self.trials_dir / self.name).glob("*/checkpoint.pt"):
            try:
                steps[path.parent.name] = int(torch.load(path, map_location="cpu", weights_only=False,
                                                         mmap=True)["step"])
            except FileNotFoundError:
                continue
        self.checkpoints.append({"at": datetime.now(), "steps": steps})


def render_report(study: Path, storage_url: str, tracking_uri: str, out: Path, env: dict[str, str]) -> str | None:
    """`ablate report`: None when it rendered, else what went wrong."""
    proc = subprocess.run([sys.executable, "-m", "ablation.cli", "report", str(study), "--storage", storage_url,
                           "--tracking-uri", tracking_uri, "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    found = re.search(r"report: (\S+)", proc.stdout)
    if proc.returncode == 0 and found and Path(found[1]).is_file():
        return None
    return f"rc={proc.returncode}: {(proc.stderr or proc.stdout).strip()[-600:]}"


# ---- the checks ------------------------------------------------------------------------------------------
NOTE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (.*)$")  # a train.log note (a traceback's lines are not)
OPENED = re.compile(r"^(?:start|resume from step (\d+)) \(optuna trial (\d+),")
CLOSED = re.compile(r"^(?:\S.* after \d+/\d+ steps|failed: .*)$")


def log_attempts(path: Path) -> tuple[dict[int, int], int]:
    """From a trial folder's train.log: {Optuna trial number: step its attempt started from (0: scratch)}, and
    how often an attempt was closed twice (a second writer ended it too)."""
    opened: dict[int, int] = {}
    closed_twice, is_open = 0, False
    for line in path.read_text().splitlines() if path.exists() else []:
        note = NOTE.match(line)
        if note is None:
            continue
        if found := OPENED.match(note[1]):
            opened[int(found[2])] = int(found[1] or 0)
            is_open = True
        elif CLOSED.match(note[1]):
            closed_twice += not is_open
            is_open = False
    return opened, closed_twice


def verify(chaos: Chaos) -> dict[str, Any]:
    """The promises, after the study ended (see issue 12, "The chaos test"):
    - each planned trial: one COMPLETE Optuna trial with outcome finished, one FINISHED MLflow child run, and
      the trial names that run (else the key is lost, or duplicated when there are two);
    - one writer per folder: train.log never closes an attempt twice, and no run of a key logged a metric
      after a newer run of that key started;
    - each retry started from the newest checkpoint its folder held when the retry was claimed;
    - metrics.jsonl and the finished run's history hold each (metric, step) once, the loss curves without gaps,
      all together every step 1..T;
    - no worker exited with a traceback; `ablate report` renders.
    """
    from collections import Counter

    from mlflow import MlflowClient
    from scale_helpers import by_key, metrics_rows, mlflow_children, optuna_trials

    from ablation.study.spec.study import load_study

    planned = sorted(t.key for t in load_study(chaos.study).trials)
    steps = list(range(1, chaos.plan.epochs * chaos.plan.steps_per_epoch + 1))
    trials = [t for t in optuna_trials(chaos.url, chaos.name) if t.user_attrs.get("trial_key")]
    client = MlflowClient(chaos.mlflow.url)
    _, children = mlflow_children(client, chaos.name)
    complete = by_key([t for t in trials if t.state.name == "COMPLETE"], lambda t: t.user_attrs["trial_key"])
    runs = by_key(children, lambda r: r.data.tags["ablate.trial_key"])
    finished = {k: [r for r in rs if r.info.status == "FINISHED"] for k, rs in runs.items()}
    problems: list[str] = []
    lost = [k for k in planned if not complete.get(k) or not finished.get(k)]
    duplicated = [k for k in planned if len(complete.get(k, [])) > 1 or len(finished.get(k, [])) > 1]
    problems += [f"{k}: lost (COMPLETE trials {len(complete.get(k, []))}, FINISHED runs "
                 f"{len(finished.get(k, []))})" for k in lost]
    problems += [f"{k}: duplicated (COMPLETE trials {[t.number for t in complete.get(k, [])]}, FINISHED runs "
                 f"{[r.info.run_id for r in finished.get(k, [])]})" for k in duplicated]
    once = [k for k in planned if k not in lost and k not in duplicated]
    for k in once:
        trial, run = complete[k][0], finished[k][0]
        if trial.user_attrs.get("mlflow_run_id") != run.info.run_id or trial.user_attrs.get("outcome") != "finished":
            problems.append(f"{k}: trial {trial.number} ({trial.user_attrs.get('outcome')}) names run "
                            f"{trial.user_attrs.get('mlflow_run_id')}, the finished run is {run.info.run_id}")
    problems += [f"trial {t.number} still {t.state.name}" for t in trials if t.state.name in ("RUNNING", "WAITING")]

    logs = {k: log_attempts(chaos.trials_dir / chaos.name / k / "train.log") for k in planned}
    retries: Counter[str] = Counter()
    resumed = restarted = never_opened = 0
    for trial in (t for t in trials if "retry_of" in t.user_attrs):
        key = trial.user_attrs["trial_key"]
        retries[trial.user_attrs.get("requeue_reason", "?")] += 1
        began = logs[key][0].get(trial.number)
        if began is None or trial.datetime_start is None:  # its own worker died before it opened the folder
            never_opened += 1
            continue
        notes = [c["steps"].get(key, 0) for c in chaos.checkpoints if c["at"] < trial.datetime_start]
        held = notes[-1] if notes else 0
        if began < held:
            problems.append(f"{key}: retry {trial.number} started from step {began}, its folder held a "
                            f"checkpoint at step {held}")
        resumed += began > 0
        restarted += began == 0
    two_writers = sorted({k for k, (_, twice) in logs.items() if twice})
    for key, key_runs in runs.items():
        ordered = sorted(key_runs, key=lambda r: r.info.start_time)
        for earlier, later in zip(ordered, ordered[1:], strict=False):
            stamps = [m.timestamp for name in ("loss/init/content", "loss/g/total")
                      for m in client.get_metric_history(earlier.info.run_id, name)]
            if stamps and max(stamps) > later.info.start_time:
                two_writers.append(key)
    problems += [f"{k}: two writers" for k in sorted(set(two_writers))]

    metric_issues = []
    for k in once:
        try:
            rows = metrics_rows(chaos.trials_dir / chaos.name / k)
        except ValueError as exc:
            metric_issues.append(f"{k}: metrics.jsonl unreadable ({exc})")
            continue
        local: dict[str, list[int]] = {}
        for row in rows:
            for name in row:
                if name != "step":
                    local.setdefault(name, []).append(row["step"])
        if sorted({row["step"] for row in rows}) != steps:
            metric_issues.append(f"{k}: metrics.jsonl steps {sorted({row['step'] for row in rows})}")
        for name, logged in local.items():
            history = sorted(m.step for m in client.get_metric_history(finished[k][0].info.run_id, name))
            gap = name.startswith("loss/") and sorted(logged) != list(range(min(logged), max(logged) + 1))
            if len(set(logged)) != len(logged) or gap or history != sorted(logged):
                metric_issues.append(f"{k} {name}: metrics.jsonl steps {sorted(logged)}, MLflow {history}")
    problems += metric_issues
    crashes = [f"{e['worker']} (code {e['code']}): {e['error']}" for e in chaos.exits if e["traceback"]]
    problems += [f"worker crashed: {c}" for c in crashes]
    report = render_report(chaos.study, chaos.url, chaos.mlflow.url, chaos.folder / "reports", chaos.env)
    problems += [f"ablate report failed: {report}"] if report else []
    return {"planned": len(planned), "finished_once": len(once), "lost": lost, "duplicated": duplicated,
            "retries": dict(retries), "resumed": resumed, "restarted_from_scratch": restarted,
            "retries_killed_before_opening": never_opened, "two_writers": sorted(set(two_writers)),
            "metric_issues": metric_issues, "crashes": crashes, "report_error": report, "problems": problems}

