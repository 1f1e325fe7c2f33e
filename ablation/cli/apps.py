"""The `ablate` command tree and what its commands share: option help texts, the study options."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AnimeGAN loss-weight ablations: train, run studies, report.")
data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Datasets: demo, smoothing, download.")
app.add_typer(data_app, name="data")
weights_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Backbone weight files: convert published weights for backbone.weights.")
app.add_typer(weights_app, name="weights")


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
