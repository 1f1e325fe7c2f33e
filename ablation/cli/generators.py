"""Using a trained generator: `ablate stylize`, `ablate export`."""

from __future__ import annotations

from pathlib import Path

import typer

from ablation.cli.apps import TRACKING_HELP, TRUST_HELP, app


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
