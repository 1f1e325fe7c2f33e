"""What the `slurm` tier asks of the cluster and the study: array tasks' states, which task trains which trial.

Kept apart from the test so the test reads as the scenario: submit, warn one task, requeue another, let both
come back, check that every trial finished once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from scale_helpers import metrics_rows, optuna_trials
from slurm_cluster import SlurmCluster

_FIELD = re.compile(r"(\w+)=(\S*)")


def array_tasks(cluster: SlurmCluster, array_id: str) -> dict[str, dict[str, str]]:
    """`<array>_<i>` (or the job id: submitit submits a batch of one as a plain job) -> its `scontrol show job`
    fields (JobState, Restarts, ExitCode, ...). scontrol, not squeue: squeue leaves finished jobs out, and
    without accounting there is no sacct."""
    done = cluster.command("scontrol", "show", "job", "-o", array_id, check=False)
    tasks = {}
    for line in done.stdout.splitlines():
        fields = dict(_FIELD.findall(line))
        if fields.get("ArrayTaskId", "").isdigit():
            tasks[f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"] = fields
        elif "JobId" in fields:
            tasks[fields["JobId"]] = fields
    return tasks


def task_states(cluster: SlurmCluster, array_id: str) -> dict[str, str]:
    return {task: fields["JobState"] for task, fields in array_tasks(cluster, array_id).items()}


def task_of_pid(pid: int) -> str | None:
    """The array task a worker process runs in, from its environment: `<array>_<i>` (a plain job: its id). The
    cluster is this host, so the worker pid a trial's owner attr records is looked up here (elsewhere: the node)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def preemptible_trial(storage: str, study: str, trials_dir: Path, total_steps: int,
                      tasks: set[str]) -> tuple[str, str] | None:
    """(trial key, array task) of a trial one of `tasks` is training that has a checkpoint (so an interruption
    has a step > 0 to resume from) and half its steps still to go (so the signal lands mid-trial), else None."""
    try:
        trials = optuna_trials(storage, study)
    except KeyError:  # not created yet
        return None
    for trial in trials:
        owner: dict[str, Any] = trial.user_attrs.get("owner") or {}
        if trial.state.name != "RUNNING" or "pid" not in owner:
            continue
        task = task_of_pid(int(owner["pid"]))
        folder = trials_dir / study / str(trial.user_attrs.get("trial_key"))
        steps = [int(row["step"]) for row in metrics_rows(folder) if "step" in row]
        if task in tasks and (folder / "checkpoint.pt").exists() and steps and max(steps) <= total_steps // 2:
            return str(trial.user_attrs["trial_key"]), task
    return None


def submitit_logs(folder: Path) -> str:
    """Every array task's submitit stdout and stderr, for failure messages and the requeue line."""
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(folder.rglob("*.out")) + sorted(folder.rglob("*.err")))
