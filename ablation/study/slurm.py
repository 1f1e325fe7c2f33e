"""`ablate run STUDY --launcher slurm`: N `ablate worker` tasks submitted as one Slurm job array through submitit.

The workers pull trials from the shared study, so the launcher only starts them and leaves. Preemption: Slurm (and
submitit, which ablate points at SIGUSR1) warns a task with SIGUSR1 before preemption or its time limit; a site may
send SIGTERM instead. The worker treats both alike: checkpoint at the next step, give the trial back without charging
a retry, stop. On SIGUSR1 the task then asks submitit to requeue it (submitit's checkpoint hook); on SIGTERM Slurm
itself requeues (preemption, `scontrol requeue`) or the user cancelled. Whoever claims the trial next resumes it from
its checkpoint in the shared trials folder.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ablation.errors import UserError, problem
from ablation.study.queue import storage_url
from ablation.study.spec.study import Study

# submitit reads this when it is imported (here and in every task): its preemption and timeout signal
PREEMPT_SIGNAL = "USR1"
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", PREEMPT_SIGNAL)
# the single-node test cluster has no PostgreSQL of its own to spare: an explicit, named override
ALLOW_SQLITE_ENV = "ABLATE_SLURM_ALLOW_SQLITE"
JOB_TAG = "ablate.slurm_job_ids"
SIGNAL_DELAY_S = 120  # the warning comes this long before the time limit: enough for one step and a checkpoint


@dataclass(frozen=True)
class SlurmOptions:
    workers: int = 1
    folder: Path = Path(".ablate/submitit")  # submitit's pickles and logs: on a file system the nodes share
    partition: str | None = None
    gpus_per_worker: int = 0
    time_min: float = 240  # the time limit; Slurm gets whole minutes
    array_parallelism: int | None = None  # at most this many tasks at once (default: all)
    extra: tuple[tuple[str, str], ...] = ()  # --slurm-arg key=value: any other sbatch option
    cluster: str | None = None  # None: Slurm; "local": submitit's local executor (tests)
    max_requeues: int = 20


def parse_slurm_args(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(problem(None, "--slurm-arg", "key=value (an sbatch option without its dashes, e.g. "
                                    "qos=high)", pair))
        out.append((key.strip().lstrip("-").replace("-", "_"), value.strip()))
    return tuple(out)


def check_shared_storage(url: str) -> None:
    """Array tasks may land on other hosts: a SQLite file is neither shared safely nor locked across nodes."""
    if url.startswith("sqlite") and not os.environ.get(ALLOW_SQLITE_ENV):
        raise UserError(problem(None, "--storage", "a PostgreSQL URL the compute nodes can reach (postgresql://"
                                "user:pass@host/db) for --launcher slurm", url))


def signal_delay_s(limit_min: int) -> int:
    """How long before the time limit a task is warned: SIGNAL_DELAY_S, at most a quarter of a short limit. A lead
    as long as the limit warns the task as it starts (Slurm checks about every 30 s), and a task warned before its
    first step requeues itself without training, again and again until submitit's requeues run out."""
    return min(SIGNAL_DELAY_S, limit_min * 60 // 4)


def sbatch_parameters(study: Study, slurm: SlurmOptions) -> dict[str, Any]:
    """The sbatch options of the array, in submitit's Slurm names (also what --dry-run shows)."""
    limit_min = max(1, round(slurm.time_min))  # Slurm gets whole minutes
    delay_s = signal_delay_s(limit_min)
    params: dict[str, Any] = {
        "job_name": f"ablate-{study.spec.name}",
        "time": limit_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "array_parallelism": slurm.array_parallelism or slurm.workers,
        "signal_delay_s": delay_s,
        "use_srun": False,  # the worker is the batch script's own process: `scancel --batch` signals reach it
        # B: signals the batch shell, which is the worker (exec); requeue lets Slurm preemption requeue it
        "additional_parameters": {"signal": f"B:{PREEMPT_SIGNAL}@{delay_s}", "requeue": True,
                                  **dict(slurm.extra)},
    }
    if slurm.partition:
        params["partition"] = slurm.partition
    if slurm.gpus_per_worker:
        params["gpus_per_node"] = slurm.gpus_per_worker  # one task per node: its GPUs, bound through GRES
    return params


def sbatch_script(study: Study, slurm: SlurmOptions) -> str:
    """The batch script submitit writes for the array (its private renderer, the same one it submits with)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = shlex.quote(str(slurm.folder.resolve() / "%j"))
    command = f"exec {shlex.quote(sys.executable)} -u -m submitit.core._submit {folder}"
    return _make_sbatch_string(command=command, folder=slurm.folder / "%j", map_count=slurm.workers,
                               **sbatch_parameters(study, slurm))


def dry_run_submission(path: Path, study: Study, options: Any) -> str:
    slurm: SlurmOptions = options.slurm
    return "\n".join([f"would submit {slurm.workers} x `ablate worker {path}` as one Slurm job array "
                      f"(submitit folder {slurm.folder}):", sbatch_script(study, slurm)])


class WorkerTask:
    """One array task: an `ablate worker` in this process (Slurm signals reach it; a child would not get them)."""

    def __init__(self, path: Path, options: Any) -> None:
        self.path, self.options = path, options

    def __call__(self) -> int:
        from ablation.study.runner import run_worker

        stopped_by: list[int] = []
        code = run_worker(self.path, self.options, stopped_by)
        if stopped_by == [signal.SIGUSR1]:
            # the warning, not the preemption: requeue through submitit's own handler (checkpoint -> requeue ->
            # exit), restored by the worker on its way out
            os.kill(os.getpid(), signal.SIGUSR1)
        return code

    def checkpoint(self) -> Any:
        """submitit's hook on preemption or timeout: run the same worker again; the trial state is in the study."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(WorkerTask(self.path, self.options))


def executor_for(study: Study, slurm: SlurmOptions) -> Any:
    import submitit

    submitit.JobEnvironment.USR_SIG = PREEMPT_SIGNAL  # when submitit was imported before this module
    if slurm.cluster == "local":  # submitit's local executor: the same task, signals and requeues, no Slurm
        local = submitit.LocalExecutor(folder=slurm.folder / "%j", max_num_timeout=slurm.max_requeues)
        local.update_parameters(timeout_min=slurm.time_min, signal_delay_s=max(1, int(slurm.time_min * 30)))
        return local
    if shutil.which("sbatch") is None:  # submitit would fall back to local processes without a word
        raise UserError(problem(None, "--launcher", "a host with Slurm's sbatch on PATH (a login node)",
                                "slurm (no sbatch here)"))
    executor = submitit.AutoExecutor(folder=slurm.folder / "%j", cluster="slurm",
                                     slurm_python=f"exec {shlex.quote(sys.executable)}",
                                     slurm_max_num_timeout=slurm.max_requeues)
    params = sbatch_parameters(study, slurm)
    executor.update_parameters(name=params.pop("job_name"), timeout_min=params.pop("time"),
                               **{f"slurm_{k}": v for k, v in params.items()})
    return executor


def submit_array(path: Path, study: Study, options: Any, tracker: Any, parent_run_id: str) -> list[Any]:
    """Submit the workers, print and tag their job ids, return the submitit jobs."""
    slurm: SlurmOptions = options.slurm
    slurm.folder.mkdir(parents=True, exist_ok=True)
    # paths and URLs as this launcher resolved them: a task starts in another process, maybe on another host
    worker_options = replace(options, slurm=None, quiet=True, report=False, storage=storage_url(options.storage),
                             tracking_uri=tracker.uri, trials_dir=options.trials_dir.resolve())
    executor = executor_for(study, slurm)
    with executor.batch():
        jobs = [executor.submit(WorkerTask(path.resolve(), worker_options)) for _ in range(slurm.workers)]
    ids = [job.job_id for job in jobs]
    tracker.set_parent_tags(parent_run_id, {JOB_TAG: ",".join(ids)})
    print(f"submitted {len(ids)} workers of study {study.spec.name}: {' '.join(ids)} "
          f"(watch: ablate status {path}; cancel: scancel {ids[0].split('_')[0]})", flush=True)
    return jobs
