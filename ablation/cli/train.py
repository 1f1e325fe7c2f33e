"""`ablate train`: one AnimeGAN run."""

from __future__ import annotations

from pathlib import Path

import typer

from ablation.cli.apps import app


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
