"""A study's answer: `ablate report`, `ablate best`."""

from __future__ import annotations

from pathlib import Path

import typer

from ablation.cli.apps import STORAGE_HELP, TRACKING_HELP, app


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
    from ablation.study.spec.study import resolve_study
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
    from ablation.study.spec.study import resolve_study
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
