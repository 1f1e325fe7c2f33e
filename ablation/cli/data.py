"""Files a study needs: `ablate data smooth|demo|fetch`, `ablate weights convert`."""

from __future__ import annotations

from pathlib import Path

import typer

from ablation.cli.apps import data_app, weights_app


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
