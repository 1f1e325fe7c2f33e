"""Running a study: `ablate run`, `status`, `k8s-manifest`, `worker`, `enqueue`."""

from __future__ import annotations

from pathlib import Path

import typer

from ablation.cli.apps import FUSE_HELP, STORAGE_HELP, TRACKING_HELP, _fuse, _run_options, app


@app.command()
def run(
    study: Path = typer.Argument(..., help="study YAML, e.g. studies/style_weight.yaml"),
    demo: bool = typer.Option(False, help="demo data, small images, short schedule (CPU, minutes)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved trials and their count, then exit"),
    set_: list[str] = typer.Option([], "--set", help="override a base config field for every trial"),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
    trials_dir: Path | None = typer.Option(None, envvar="ABLATE_TRIALS_DIR",
                                            help="checkpoints and samples (default .ablate/trials)"),
    workers: int = typer.Option(1, help="local worker processes (CPU)"),
    devices: str | None = typer.Option(None, help="CUDA devices, one worker each: 0,1,2,3"),
    trials_per_device: int = typer.Option(1, help="pack K trials on each GPU"),
    rerun_failed: bool = typer.Option(False, help="run failed trials again"),
    rerun_diverged: bool = typer.Option(False, help="run diverged trials again"),
    report: bool = typer.Option(True, help="render reports/<study>/index.html at the end"),
    fuse: str = typer.Option("auto", help=FUSE_HELP),
    probe: bool = typer.Option(True, help="before training, measure each axis's gradient shares and warn about an "
                               "axis whose varied terms cannot move the networks (also with --dry-run)"),
    strict: bool = typer.Option(False, help="refuse (exit 2) a study whose probe flags a vacuous axis"),
    launcher: str = typer.Option("local", help="local (processes here) or slurm (one job array, then exit)"),
    partition: str | None = typer.Option(None, help="slurm: the partition"),
    gpus_per_worker: int = typer.Option(0, help="slurm: GPUs per array task (GRES)"),
    time: float = typer.Option(240, "--time", help="slurm: each task's time limit in minutes (requeued after)"),
    array_parallelism: int | None = typer.Option(None, help="slurm: at most this many tasks at once"),
    slurm_arg: list[str] = typer.Option([], "--slurm-arg", help="slurm: any sbatch option, key=value"),
    submitit_folder: Path = typer.Option(Path(".ablate/submitit"), help="slurm: submitit's folder (shared)"),
) -> None:
    """Run a study: every missing trial of a grid, or an Optuna search; log to MLflow; render the report."""
    from ablation.study.runner import run_study

    slurm = _slurm_options(launcher, workers, partition, gpus_per_worker, time, array_parallelism, slurm_arg,
                           submitit_folder)
    options = _run_options(demo, set_, storage, tracking_uri, trials_dir, workers=workers, fuse=_fuse(fuse),
                           devices=tuple(d.strip() for d in devices.split(",") if d.strip()) if devices else (),
                           trials_per_device=trials_per_device, rerun_failed=rerun_failed,
                           rerun_diverged=rerun_diverged, report=report, probe=probe, strict=strict,
                           slurm=slurm)
    raise typer.Exit(run_study(study, options, dry_run=dry_run))


def _slurm_options(launcher: str, workers: int, partition: str | None, gpus: int, time_min: float,
                   parallelism: int | None, pairs: list[str], folder: Path):
    from ablation.errors import UserError, problem
    from ablation.study.slurm import SlurmOptions, parse_slurm_args

    if launcher not in ("local", "slurm"):
        raise UserError(problem(None, "--launcher", "local or slurm", launcher))
    if launcher == "local":
        return None
    if workers < 1 or gpus < 0 or time_min <= 0 or (parallelism is not None and parallelism < 1):
        raise UserError(problem(None, "--workers/--gpus-per-worker/--time/--array-parallelism", "positive numbers",
                                f"{workers}/{gpus}/{time_min}/{parallelism}"))
    return SlurmOptions(workers=workers, folder=folder, partition=partition, gpus_per_worker=gpus,
                        time_min=time_min, array_parallelism=parallelism, extra=parse_slurm_args(pairs))


@app.command()
def status(
    study: Path = typer.Argument(...),
    demo: bool = typer.Option(False, help="the --demo variant of the study"),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
    wait: bool = typer.Option(False, help="wait until nothing is waiting or running, then render the report"),
    reports_dir: Path = typer.Option(Path("reports"), "--out", help="reports folder (with --wait)"),
) -> None:
    """Where a study stands: the queue per cell, live workers, and the Slurm array's tasks."""
    from ablation.study.spec.study import resolve_study
    from ablation.study.status import study_status

    options = _run_options(demo, [], storage, tracking_uri, None, reports_dir=reports_dir)
    raise typer.Exit(study_status(resolve_study(study, options.demo, options.overrides), options, wait=wait))


@app.command("k8s-manifest")
def k8s_manifest(
    study: Path = typer.Argument(..., help="study YAML, as the pods see it (baked into the image or mounted)"),
    workers: int = typer.Option(..., min=1, help="pods working at once (one Indexed Job index each)"),
    image: str = typer.Option("ablate:latest", help="container image with ablate installed"),
    secret: str = typer.Option("ablate-services", help="Secret with ABLATE_STORAGE and MLFLOW_TRACKING_URI"),
    claim: str = typer.Option("ablate-shared", help="ReadWriteMany PersistentVolumeClaim for the trials folder"),
    gpus_per_worker: int = typer.Option(0, min=0, help="nvidia.com/gpu per pod"),
    demo: bool = typer.Option(False),
) -> None:
    """Print a Kubernetes Indexed Job of N workers (preemption is not counted as a failure)."""
    from ablation.study.k8s import indexed_job, manifest_text
    from ablation.study.spec.study import resolve_study

    resolved = resolve_study(study, demo)
    typer.echo(manifest_text(indexed_job(resolved.spec.name, str(study), workers, image, secret, claim,
                                         gpus_per_worker, ("--demo",) if demo else ())), nl=False)


@app.command()
def worker(
    study: Path = typer.Argument(...),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
    trials_dir: Path | None = typer.Option(None, envvar="ABLATE_TRIALS_DIR",
                                            help="checkpoints: a path every worker can read"),
    demo: bool = typer.Option(False),
    set_: list[str] = typer.Option([], "--set"),
    quiet: bool = typer.Option(False, help="no progress bars (for background workers)"),
    fuse: str = typer.Option("auto", help=FUSE_HELP),
) -> None:
    """Join a study from any host and run queued trials until none is left."""
    from ablation.study.runner import run_worker

    raise typer.Exit(run_worker(study, _run_options(demo, set_, storage, tracking_uri, trials_dir, quiet=quiet,
                                                    fuse=_fuse(fuse))))


@app.command()
def enqueue(
    study: Path = typer.Argument(...),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
    demo: bool = typer.Option(False),
    set_: list[str] = typer.Option([], "--set"),
    rerun_failed: bool = typer.Option(False),
    rerun_diverged: bool = typer.Option(False),
    drop_stale: bool = typer.Option(False, "--drop-stale", help="first fail the waiting trials whose stored config "
                                    "no longer matches a cell of this study file (it was edited), one line each"),
) -> None:
    """Create the study and its parent MLflow run once and queue the missing trials (for workers)."""
    from ablation.study.runner import enqueue_study

    options = _run_options(demo, set_, storage, tracking_uri, None, rerun_failed=rerun_failed,
                           rerun_diverged=rerun_diverged)
    raise typer.Exit(enqueue_study(study, options, drop_stale=drop_stale))
