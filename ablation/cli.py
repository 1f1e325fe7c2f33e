"""`ablate` command line. The only module that imports typer; errors a user can fix exit with code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ablation.errors import EXIT_USER_ERROR, UserError
from ablation.process import configure_process

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AnimeGAN loss-weight ablations: train, run studies, report.")
data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Datasets: demo, smoothing, download.")
app.add_typer(data_app, name="data")
weights_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Backbone weight files: convert published weights for backbone.weights.")
app.add_typer(weights_app, name="weights")


@app.command()
def train(
    config: Path | None = typer.Argument(None, help="training config YAML (defaults: official AnimeGAN v1)"),
    set_: list[str] = typer.Option([], "--set", help="override a field: --set loss.style_weight=6"),
    out: Path | None = typer.Option(None, help="run folder (default runs/<config name>)"),
    resume: bool = typer.Option(False, help="continue from the run folder's checkpoint"),
    print_config: bool = typer.Option(False, "--print-config", help="print the resolved config and exit"),
    demo: bool = typer.Option(False, help="embedded demo data, 64 px, a short CPU schedule"),
) -> None:
    """Train one AnimeGAN run."""
    from ablation.config import load_train_config, parse_set_options, to_yaml
    from ablation.console import TrainConsole
    from ablation.data.presets import prepare_demo
    from ablation.gan import train as run_training
    from ablation.outcomes import Outcome

    overrides = parse_set_options(set_)
    if demo:
        overrides = {**prepare_demo(), **overrides}
    cfg = load_train_config(config, overrides)
    if print_config:
        typer.echo(to_yaml(cfg), nl=False)
        return
    out_dir = out or Path("runs") / (config.stem if config else "default")
    with TrainConsole(out_dir, resume) as console:
        result = run_training(cfg, out_dir, console.log, resume=resume, progress=console.progress)
    typer.echo(f"{result.status_text}: {result.step}/{result.total_steps} steps, outputs in {out_dir}")
    if result.status is Outcome.INTERRUPTED:
        raise typer.Exit(130)


def _run_options(demo: bool, set_: list[str], storage: str | None, tracking_uri: str | None,
                 trials_dir: Path | None, **extra: object):
    from ablation.config import parse_set_options
    from ablation.study.runner import RunOptions

    fields = {"demo": demo, "overrides": tuple(parse_set_options(set_).items()), "storage": storage,
              "tracking_uri": tracking_uri, **extra}
    if trials_dir is not None:
        fields["trials_dir"] = trials_dir
    return RunOptions(**fields)


FUSE_HELP = "trials trained together as one fused model: a count, or auto (CUDA: by free memory; CPU: see README)"


def _fuse(text: str) -> int | None:
    """`--fuse 4` -> 4, `--fuse auto` -> None: parsed here once, then passed on as is (study.work.grid)."""
    from ablation.study.work.grid import parse_fuse

    return parse_fuse(text)


STORAGE_HELP = "Optuna storage URL (default $ABLATE_STORAGE or sqlite:///optuna.db)"
TRACKING_HELP = "MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
TRUST_HELP = ("models:/ only: load the MLflow model itself (unpickles it and runs its bundled code: trust whoever "
              "can write to the tracking server); default: the source run's generator.pt, weights only")


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
    from ablation.study.spec.schema import resolve_study
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
    from ablation.study.spec.schema import resolve_study

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
) -> None:
    """Create the study and its parent MLflow run once and queue the missing trials (for workers)."""
    from ablation.study.runner import enqueue_study

    raise typer.Exit(enqueue_study(study, _run_options(demo, set_, storage, tracking_uri, None,
                                                       rerun_failed=rerun_failed, rerun_diverged=rerun_diverged)))


@app.command()
def report(
    study: str = typer.Argument(..., help="study name or study YAML"),
    demo: bool = typer.Option(False, help="the --demo variant of the study"),
    storage: str | None = typer.Option(None, help=STORAGE_HELP),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
    out: Path = typer.Option(Path("reports"), help="reports folder"),
) -> None:
    """Render reports/<study>/index.html from MLflow and the Optuna storage (no training)."""
    from ablation.report.build import build_report
    from ablation.study.queue import storage_url
    from ablation.study.spec.schema import resolve_study
    from ablation.study.tracking.client import Tracker

    spec = None
    name = study
    if study.endswith((".yaml", ".yml")):
        spec = resolve_study(Path(study), demo)
        name = spec.spec.name
    elif demo:
        name = f"{study}-demo"
    path = build_report(name, Tracker(tracking_uri), storage_url(storage), out, spec)
    typer.echo(f"report: {path}")


@app.command()
def best(
    study: str = typer.Argument(..., help="study name or study YAML"),
    metric: str | None = typer.Option(None, help="rank by this metric (default: the study's first objective)"),
    top: int | None = typer.Option(None, min=1, help="only the N best cells"),
    json_out: bool = typer.Option(False, "--json", help="print JSON for scripts"),
    demo: bool = typer.Option(False, help="the --demo variant of the study"),
    register: str | None = typer.Option(None, help="register the best trial's model under this name (alias "
                                        "champion)"),
    reports: Path = typer.Option(Path("reports"), help="reports folder (its path is tagged on a registration)"),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
    allow_diverged: bool = typer.Option(False, help="--register may pick a cell with a diverged seed"),
) -> None:
    """Rank the finished trials: cells by their mean over seeds (95% interval), with run ids and weights."""
    import json

    from ablation.report.best import as_json, rank, table_lines
    from ablation.study.spec.schema import resolve_study
    from ablation.study.tracking.client import Tracker

    spec, name = None, f"{study}-demo" if demo else study
    if study.endswith((".yaml", ".yml")):
        resolved = resolve_study(Path(study), demo)
        spec, name = resolved.spec, resolved.spec.name
    tracker = Tracker(tracking_uri)
    chosen, direction, cells = rank(tracker, name, spec, metric, top)
    if register is not None:
        from ablation.report.best import register_best

        cell, version, model_uri = register_best(tracker, name, spec, register, reports, metric, allow_diverged)
        skipped = [c.label for c in cells if c.rank < cell.rank]
        typer.echo(f"registered {register} version {version} (alias champion): {cell.label} seed "
                   f"{cell.trials[0].seed}, {model_uri}" + (f" (passed over for diverged seeds: {', '.join(skipped)};"
                                                           " --allow-diverged to allow)" if skipped else ""),
                   err=json_out)
    if json_out:
        typer.echo(json.dumps(as_json(chosen, direction, cells), indent=2))
    else:
        typer.echo("\n".join(table_lines(chosen, direction, cells)))


@app.command("stylize")
def stylize_command(
    sources: list[Path] = typer.Argument(..., help="images, folders (searched recursively) and videos"),
    model: str = typer.Option(..., help="a generator .pt, an MLflow run id, runs:/<run id>/..., or STUDY:best"),
    out: Path = typer.Option(..., help="output folder (the input's relative paths and names are kept)"),
    side_by_side: bool = typer.Option(False, help="write input | output"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
    tile: int = typer.Option(1024, min=0, help="run larger images in overlapping tiles of this side (bounds memory; "
                             "0: whole images)"),
    max_pixels: int = typer.Option(50_000_000, min=1, help="refuse an image or video frame with more pixels"),
    trust_model_code: bool = typer.Option(False, "--trust-model-code", help=TRUST_HELP),
) -> None:
    """Stylize images and videos with a trained generator; output sizes, frame rates and audio are kept."""
    import tempfile

    from ablation.config import RuntimeConfig
    from ablation.data.media import list_sources
    from ablation.gan import Bounds, load_generator, planned_outputs, resolve_device, stylize_sources
    from ablation.report.model_ref import resolve_model
    from ablation.study.tracking.client import Tracker

    if 0 < tile < 64:  # a tile must hold the generator's padding and context
        from ablation.errors import UserError, problem

        raise UserError(problem(None, "--tile", "0 (no tiles) or at least 64 pixels", tile))
    planned_outputs(list_sources(sources), sources, out)  # refuses overwriting or colliding outputs before any work
    target = resolve_device(RuntimeConfig(device=device))
    with tempfile.TemporaryDirectory(prefix="ablate-model-") as tmp:
        weights, config, where = resolve_model(model, Tracker(tracking_uri), Path(tmp), trust_model_code)
        generator = load_generator(weights, config, target)
    typer.echo(f"model: {where}; generator {config.model.generator}; device {target}")
    failed = stylize_sources(sources, generator, target, out, side_by_side,
                             bounds=Bounds(tile=tile, max_pixels=max_pixels))
    typer.echo(f"outputs in {out}" + (f"; {failed} source(s) skipped" if failed else ""))
    raise typer.Exit(1 if failed else 0)


@app.command("export")
def export_command(
    model: str = typer.Argument(..., help="a generator .pt, an MLflow run id, runs:/<run id>/..., models:/..., "
                                          "or STUDY:best"),
    fmt: str = typer.Option("onnx", "--format", help="onnx (opset 18), pt2 (torch.export) or torchscript (traced)"),
    out: Path = typer.Option(..., help="the file to write"),
    tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP),
    trust_model_code: bool = typer.Option(False, "--trust-model-code", help=TRUST_HELP),
) -> None:
    """Export a trained generator for other runtimes: any batch size, height and width; RGB in [0, 1]."""
    import tempfile

    import torch

    from ablation.config import to_yaml
    from ablation.gan import export_generator, load_generator
    from ablation.report.model_ref import resolve_model
    from ablation.study.tracking.client import Tracker

    with tempfile.TemporaryDirectory(prefix="ablate-model-") as tmp:
        weights, config, where = resolve_model(model, Tracker(tracking_uri), Path(tmp), trust_model_code)
        generator = load_generator(weights, config, torch.device("cpu"))
    export_generator(generator, fmt, out, to_yaml(config))
    typer.echo(f"{out}: {fmt} of {where} (generator {config.model.generator}); input 'image' float32 "
               "[N, 3, H, W] RGB in [0, 1], H and W >= 16, output 'anime' the same shape")


@app.command()
def ui(tracking_uri: str | None = typer.Option(None, help=TRACKING_HELP), port: int = typer.Option(5000)) -> None:
    """Open the MLflow UI on the study runs (mlflow ui)."""
    import os
    import subprocess

    from ablation.study.tracking.client import tracking_uri as resolve

    # the store's URL may carry a password: through the environment (readable by this user only), never on a
    # command line (/proc/PID/cmdline and `ps` show it to every user of the machine)
    store = resolve(tracking_uri)
    environment = {**os.environ, "MLFLOW_BACKEND_STORE_URI": store, "MLFLOW_TRACKING_URI": store}
    command = [sys.executable, "-m", "mlflow", "ui", "--port", str(port)]
    # the UI opens in its GenAI view unless told otherwise (ablation/study/tracking/experiment_note.py runs_page)
    typer.echo(f"MLflow UI: http://127.0.0.1:{port}/#/experiments?workflowType=machine_learning "
               "(the 'Model training' switch at the top left; open a study's experiment, expand its parent run)")
    raise typer.Exit(subprocess.call(command, env=environment))


@data_app.command("smooth")
def data_smooth(style_dir: Path = typer.Argument(..., help="folder of style images (<style>/style)"),
                size: int = typer.Option(256, help="output size (the original: 256)"),
                out: Path | None = typer.Option(None, help="default: the sibling smooth/ folder")) -> None:
    """Build <style>/smooth with the original edge-smoothing algorithm."""
    from ablation.data.smooth import build_smooth_dir

    target = out or style_dir.parent / "smooth"
    count = build_smooth_dir(style_dir, target, size)
    typer.echo(f"wrote {count} smoothed images to {target}")


@data_app.command("demo")
def data_demo(out_dir: Path = typer.Argument(...), size: int = typer.Option(128), seed: int = typer.Option(0)) -> None:
    """Build the embedded demo dataset (no network)."""
    from ablation.data.demo import build_demo_dataset

    root = build_demo_dataset(out_dir, image_size=size, seed=seed)
    typer.echo(f"demo dataset in {root} (style name: demo)")


@data_app.command("fetch")
def data_fetch(name: str = typer.Argument(..., help="dataset name, e.g. animegan"), dest: Path = typer.Argument(...),
               url: str | None = typer.Option(None, help="mirror URL"),
               sha256: str | None = typer.Option(None, help="expected SHA-256 of the archive")) -> None:
    """Download a public dataset release (resumable, verified)."""
    from ablation.data.fetch import fetch_dataset

    root = fetch_dataset(name, dest, url=url, sha256=sha256)
    typer.echo(f"dataset ready in {root}")


@weights_app.command("convert")
def weights_convert(
    converter: str = typer.Argument(..., help="converter name: keras-mobilenet-v2 or caffe-vgg19"),
    source: Path = typer.Argument(..., help="published weights, e.g. "
                                  "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.3_224_no_top.h5, or the "
                                  "original AnimeGAN's vgg19.npy (a pickle: convert only the published file)"),
    out: Path = typer.Argument(..., help="the .pt file to write (then backbone.weights: OUT)"),
    width: float = typer.Option(1.3, help="width multiplier (Keras alpha) the file was trained at"),
) -> None:
    """Convert a published weights file into one `backbone.weights` loads (with its numerics)."""
    from ablation.gan import convert_weights

    typer.echo(convert_weights(converter, source, out, width))


def main() -> None:
    configure_process()  # this process is ablate's own; library imports stay side-effect free
    try:
        # without standalone mode click *returns* the code of a typer.Exit instead of raising it
        code = app(standalone_mode=False, prog_name="ablate")  # also when run as python -m ablation.cli
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except _usage_errors() as exc:  # a bad option, argument or command: a user error too
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `ablate` or `ablate data`: the help is the answer
            exc.show()
        else:
            print(_usage_line(exc), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _usage_errors() -> tuple[type[Exception], ...]:
    """The base classes of the parser's usage errors: typer >= 0.29 raises those of its own vendored click
    (typer.TyperException), older typer those of click itself (click.ClickException)."""
    bases: list[type[Exception]] = []
    vendored = getattr(typer, "TyperException", None)
    if isinstance(vendored, type) and issubclass(vendored, Exception):
        bases.append(vendored)
    try:
        import click
    except ImportError:  # typer >= 0.29 does not need click, and nothing else may have installed it
        pass
    else:
        bases.append(click.ClickException)
    return tuple(bases)


def _usage_line(exc: Exception) -> str:
    """`error: No such option: --bogus (ablate run --help)`: the parser's message on one line, and where the
    command's help is (the parser's own display is the usage block, a hint and the message on three lines)."""
    format_message = getattr(exc, "format_message", None)
    text = " ".join((format_message() if callable(format_message) else str(exc)).split())
    context = getattr(exc, "ctx", None)
    command = getattr(context, "command_path", None)
    return f"error: {text} ({command} --help)" if command else f"error: {text}"


if __name__ == "__main__":
    main()
