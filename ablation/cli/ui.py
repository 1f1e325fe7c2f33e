"""`ablate ui`: the MLflow UI on the study runs."""

from __future__ import annotations

import sys

import typer

from ablation.cli.apps import TRACKING_HELP, app


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
