"""`ablate run STUDY`: validate, set up tracking and the queue, enqueue what is missing, work, report.

Reads top to bottom; each step is one call one level down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from ablation.data.presets import demo_deviations
from ablation.errors import UserError, problem
from ablation.gan import stop_on_signals
from ablation.outcomes import Outcome
from ablation.study import counts, queue
from ablation.study.balance_probe import ProbeResult, probe_study
from ablation.study.eta import format_eta, study_eta, update_eta
from ablation.study.spec import checks
from ablation.study.spec.dry_run import dry_run_lines, offline_lines
from ablation.study.spec.preflight import check_data_layout, preflight_backbones
from ablation.study.spec.queued import check_agrees
from ablation.study.spec.queued import drop_stale as drop_stale_trials
from ablation.study.spec.study import Study, load_study, resolve_study
from ablation.study.tracking.client import TAG_DEMO, TAG_PROBE, Tracker
from ablation.study.tracking.experiment_note import EXPERIMENT_KIND, experiment_note
from ablation.study.work.context import TrialContext
from ablation.study.work.grid import fuse_text, planned_fuse, resolve_fuse
from ablation.study.work.worker import work

# set by `ablate run` for its `--workers` children: they resolve the launcher's own study file, so the check
# that a worker's file agrees with the queue (study.spec.queued) is the launcher's to make, not theirs
LAUNCHER_ENV = "ABLATE_LAUNCHER_PID"
TAG_LIMIT = 5000  # the longest tag value every MLflow backend keeps


@dataclass(frozen=True)
class RunOptions:
    demo: bool = False
    overrides: tuple[tuple[str, Any], ...] = ()
    storage: str | None = None  # Optuna storage URL (default sqlite:///optuna.db)
    tracking_uri: str | None = None  # MLflow (default MLFLOW_TRACKING_URI or sqlite:///mlflow.db)
    trials_dir: Path = Path(".ablate/trials")  # the CLI reads $ABLATE_TRIALS_DIR; library calls pass it
    artifact_root: Path = Path("mlartifacts")
    workers: int = 1  # local worker processes (CPU)
    devices: tuple[str, ...] = ()  # CUDA device ids: one worker each (times trials_per_device)
    trials_per_device: int = 1
    rerun_failed: bool = False
    rerun_diverged: bool = False
    report: bool = True
    reports_dir: Path = Path("reports")
    quiet: bool = False
    fuse: int | None = None  # trials per array; None = auto (arrays.resolve_fuse)
    probe: bool = True  # measure each axis's gradient shares before training (study/balance_probe.py)
    strict: bool = False  # refuse a study with a vacuous axis instead of warning
    slurm: Any = None  # study.slurm.SlurmOptions: submit the workers as one Slurm job array and exit


def run_study(path: Path, options: RunOptions, dry_run: bool = False) -> int:
    study = resolve_study(path, options.demo, options.overrides)          # 1. validate everything first
    for line in checks.torchvision_vgg_lines(study.path, [c.config for c in study.cells] or [study.base_config]):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    if options.slurm is not None:
        from ablation.study.slurm import check_shared_storage, dry_run_submission

        check_shared_storage(queue.storage_url(options.storage))
        if dry_run:
            print(dry_run_submission(path, study, options))
            return 0
    if dry_run:
        print("\n".join(dry_run_lines(study, planned_fuse(options.fuse, study))))  # never trains
        try:
            check_data_layout(study)
        except UserError as exc:  # a dry run lists the trials without data; only the probe needs it
            _say(options, f"balance probe: not run ({exc.lines[0]})")
            return 0
        check_balance(study, options)
        return 0
    check_data_layout(study)                                              # 2. data and weights present
    preflight_backbones(study)
    probe = check_balance(study, options)                                 # 3. every varied term acts
    started = time.time()
    url = queue.storage_url(options.storage)
    lock_path = queue.launcher_lock_path(url, study.spec.name)
    lock = queue.LocalLock(lock_path) if lock_path is not None else None
    if lock is not None and not lock.acquire():
        raise UserError(problem(lock.path, "lock", "no other `ablate run` of this study on this database (join "
                                "it with `ablate worker`)", "<held by a running process>"))
    try:
        tracker, ctx, opt = connect(study, path, options, create=True)    # 3. tracking + queue, once
        queue.reap_orphans(opt, tracker)                                        # 4. trials of dead processes
        added = queue.enqueue_missing(study, opt, options.rerun_failed, options.rerun_diverged)
        _say(options, f"study {study.spec.name}: {counts.count_line(study, opt)}; queued {len(added)} new")
        if probe is not None:  # the report's summary repeats the flags
            tracker.set_parent_tags(ctx.parent_run_id, {TAG_PROBE: probe.to_tag(TAG_LIMIT)})
        if options.demo:  # the report's setup names every way the demo differs from the faithful config
            tracker.set_parent_tags(ctx.parent_run_id, {TAG_DEMO: json.dumps(demo_changes(path, study, options))})
        if options.slurm is not None:                                     # 5. work: on Slurm, then leave
            from ablation.study.slurm import submit_array

            submit_array(path, study, options, tracker, ctx.parent_run_id)
            return 0
        if options.workers > 1 or options.devices:
            code = run_worker_processes(path, options, url, tracker.uri)
        else:
            code = run_in_process(study, opt, ctx, options)
        tracker.set_parent_tags(ctx.parent_run_id, {**counts.summary_tags(opt),
                                                    "ablate.wall_s_last": f"{time.time() - started:.0f}"})
        _say(options, f"study {study.spec.name}: {counts.count_line(study, opt)}")
    finally:
        if lock is not None:
            lock.release()
    if options.report and code == 0:                                      # 6. the answer
        from ablation.report.build import build_report

        out = build_report(study.spec.name, tracker, url, options.reports_dir, study)
        _say(options, f"report: {out}")
    return code


def check_balance(study: Study, options: RunOptions) -> ProbeResult | None:
    """The vacuous-axis probe: a warning line per flagged axis, or with `strict` a refusal. Not on a Slurm
    launcher: it trains, and a login node is no place for that (`--dry-run` on a compute node runs it)."""
    if not options.probe or options.slurm is not None:
        return None
    _say(options, f"study {study.spec.name}: probing each level's loss balance (first GAN step, seed "
                  f"{study.spec.seeds[0]}; the init phases it computes are stored for the trials)")
    result = probe_study(study, options.trials_dir)
    if result.flags and options.strict:
        raise UserError(*(f"{study.path}: {line} (--strict)" for line in result.flags))
    for line in result.flags:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    for name in result.unchecked:
        _say(options, f"balance probe: {name} varies fields that act through every term: not checked")
    return result


def demo_changes(path: Path, study: Study, options: RunOptions) -> list[str]:
    faithful = load_study(path, dict(options.overrides)).base_config
    return (demo_deviations(faithful.model_dump(mode="json"), study.base_config.model_dump(mode="json"))
            + offline_lines(study))


def connect(study: Study, path: Path, options: RunOptions, create: bool
            ) -> tuple[Tracker, TrialContext, optuna.Study]:
    """The study's MLflow experiment and parent run, and its Optuna queue (created by launchers only)."""
    url = queue.storage_url(options.storage)
    tracker = Tracker(options.tracking_uri, options.artifact_root)
    experiment_id = tracker.experiment_id(study.spec.name, {"mlflow.experimentKind": EXPERIMENT_KIND,
                                                            "mlflow.note.content": experiment_note(study)})
    parent_id = tracker.parent_run(experiment_id, study.spec.name, path, _provenance())
    opt = queue.open_study(study, queue.open_queue(url, tracker), create=create)
    queue.settle_heartbeat(opt, queue.Heartbeat.from_env(), queue.Heartbeat.env_given())
    ctx = TrialContext(study.spec.name, tracker, experiment_id, parent_id, options.trials_dir)
    return tracker, ctx, opt


def enqueue_study(path: Path, options: RunOptions, drop_stale: bool = False) -> int:
    """The launcher without work: create the study and parent run once, queue the missing trials; with
    `drop_stale`, first fail the waiting trials this study file no longer has (one line each)."""
    study = resolve_study(path, options.demo, options.overrides)
    tracker, ctx, opt = connect(study, path, options, create=True)
    for line in drop_stale_trials(study, opt) if drop_stale else []:
        _say(options, line)
    added = queue.enqueue_missing(study, opt, options.rerun_failed, options.rerun_diverged)
    _say(options, f"study {study.spec.name}: {counts.count_line(study, opt)}; queued {len(added)} new")
    return 0


def run_worker(path: Path, options: RunOptions, stopped_by: list[int] | None = None) -> int:
    """`ablate worker`: join a study created by a launcher and work until its queue is empty.

    `stopped_by` receives the signal that stopped a quiet worker (a Slurm task requeues itself on SIGUSR1)."""
    study = resolve_study(path, options.demo, options.overrides)
    check_data_layout(study)
    tracker, ctx, opt = connect(study, path, options, create=False)
    if os.environ.get(LAUNCHER_ENV) != str(os.getppid()):  # a child of `ablate run` has the launcher's file
        check_agrees(study, opt)
    if fraction := os.environ.get("ABLATE_MEMORY_FRACTION"):
        import torch

        if torch.cuda.is_available():  # several trials packed on one GPU: cap each process
            torch.cuda.set_per_process_memory_fraction(float(fraction))
    if options.quiet:
        with stop_on_signals(ctx.stop):
            work(study, opt, ctx, fuse=options.fuse)
        if stopped_by is not None and ctx.stop.signum is not None:
            stopped_by.append(ctx.stop.signum)
        return 130 if ctx.stop else 0
    return run_in_process(study, opt, ctx, options)


def run_in_process(study: Study, opt: optuna.Study, ctx: TrialContext, options: RunOptions) -> int:
    from ablation.console import study_progress

    fuse = resolve_fuse(options.fuse, study)  # this process is the worker that claims the arrays
    eta = study_eta(study, opt, ctx.trials_dir, fuse)
    # bars on a terminal; one plain line per finished trial in a file or pipe, where bars show nothing
    with study_progress(study.spec.name, counts.total(study, opt), counts.done(opt),
                        lambda: format_eta(eta.remaining_s())) as progress, stop_on_signals(ctx.stop):

        def on_progress(key: str, step: int, steps: int) -> None:
            if eta.followed is None or eta.followed_key != key:
                eta.follow(key)
            eta.step(step, steps)
            progress.step(step, steps)

        def on_trial_end(trial: optuna.trial.FrozenTrial | None) -> None:
            real = trial is not None and not trial.user_attrs.get("spurious")  # not an empty-queue ask
            if real and (key := queue.key_of(trial)) is not None:
                eta.ended(key)
            update_eta(eta, study, opt, ctx.trials_dir)
            progress.trial_done(trial_line(study, trial) if real else None, counts.done(opt),
                                counts.total(study, opt))

        ctx.on_progress = on_progress
        work(study, opt, ctx, on_trial_end=on_trial_end, fuse=fuse)
    return 130 if ctx.stop else 0


def trial_line(study: Study, trial: optuna.trial.FrozenTrial) -> str:
    """`style_weight=10 seed=1: finished, eval/style/kid_rand 0.0123, ... (42 s)`: one trial that ended."""
    attrs = trial.user_attrs
    name = attrs.get("label") or f"trial {trial.number}"
    seed = f" seed={attrs['seed']}" if "seed" in attrs else ""
    outcome = queue.outcome_of(trial)
    if outcome is Outcome.DIVERGED and "diverged_step" in attrs:
        outcome_text = f"diverged at step {attrs['diverged_step']}"
    else:
        outcome_text = outcome.value
    values = ""
    if trial.values is not None and outcome is not Outcome.DIVERGED:
        values = "".join(f", {o.metric} {v:.4g}" for o, v in zip(study.spec.objectives, trial.values, strict=False))
    seconds = f" ({trial.duration.total_seconds():.0f} s)" if trial.duration is not None else ""
    return f"{name}{seed}: {outcome_text}{values}{seconds}"


def run_worker_processes(path: Path, options: RunOptions, storage: str, tracking_uri: str) -> int:
    """One `ablate worker` process per device (x trials_per_device), or N CPU workers."""
    slots = [(d, k) for d in options.devices for k in range(options.trials_per_device)] or \
            [(None, k) for k in range(options.workers)]
    procs = []
    for device, _ in slots:
        # the storage URL may carry a database password: it goes by environment (the child's CLI reads
        # ABLATE_STORAGE when --storage is absent), since argv is public to anyone running `ps`
        env = dict(os.environ, ABLATE_STORAGE=storage, MLFLOW_TRACKING_URI=tracking_uri,
                   **{LAUNCHER_ENV: str(os.getpid())})
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device  # each trial sees only its device
            if options.trials_per_device > 1:
                env["ABLATE_MEMORY_FRACTION"] = f"{0.95 / options.trials_per_device:.3f}"
        cmd = [sys.executable, "-m", "ablation.cli", "worker", str(path),
               "--trials-dir", str(options.trials_dir), "--quiet"]
        cmd += ["--demo"] if options.demo else []
        cmd += ["--fuse", fuse_text(options.fuse)]  # each child resolves auto on its own device
        cmd += [arg for k, v in options.overrides for arg in ("--set", f"{k}={v}")]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c != 0), 0)


def _provenance() -> dict[str, str]:
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"ablate.git_commit": commit or "unknown", "ablate.host": os.uname().nodename}


def _say(options: RunOptions, text: str) -> None:
    if not options.quiet:
        print(text, flush=True)
