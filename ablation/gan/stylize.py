"""`ablate stylize`: a trained generator over the user's images and videos, with a frames-per-second bar.

An unreadable or undecodable source gets one line and the others go on; the exit code says whether any failed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from ablation.config import RuntimeConfig
from ablation.data.media import frame_writer, is_video, list_sources, probe, read_frames, read_image, write_image
from ablation.errors import UserError, problem
from ablation.gan.inference import stylize, stylize_tiled

BATCH_CUDA = 8  # video frames per forward pass on a GPU; a CPU gains nothing from batching
# A whole-image pass needs ~1.5 KB per pixel (issue 24: ~18 GB for 12 MP); larger images run in overlapping tiles
# of this side (~1.5 GB each), cross-faded over TILE_OVERLAP pixels. Images within one tile are untouched by it.
TILE_SIDE = 1024
TILE_OVERLAP = 64
# Pixels of one image or video frame: the photo and the tile accumulators take ~22 bytes a pixel (1.1 GB here)
MAX_PIXELS = 50_000_000


def output_path(source: Path, roots: list[Path], out_dir: Path) -> Path:
    """out_dir/<path below the folder it was found in>, or out_dir/<name> for a file given directly."""
    for root in roots:
        if root.is_dir() and source.is_relative_to(root):
            return out_dir / source.relative_to(root)
    return out_dir / source.name


def planned_outputs(files: list[Path], roots: list[Path], out_dir: Path) -> list[Path]:
    """Each source's output path; refused (one line, nothing written yet) when an output would overwrite an input
    or two inputs would write one output: both lose a file the user has. Paths are resolved first, so
    `DIR --out DIR`, `--out ./DIR` and a symlinked folder are all seen."""
    inputs = {path.resolve(): path for path in files}
    taken: dict[Path, Path] = {}
    targets = []
    for path in files:
        target = output_path(path, roots, out_dir)
        # an RGBA image bound for a JPEG is written as a PNG beside it (media.write_image): check that name too
        for written in {target, target.with_suffix(".png")} if not is_video(path) else {target}:
            resolved = written.resolve()
            if resolved in inputs:
                raise UserError(problem("--out", str(out_dir), "a folder where no output overwrites an input",
                                        f"<{written} would overwrite the input {inputs[resolved]}>"))
            if written == target and resolved in taken:
                raise UserError(problem("--out", str(out_dir), "one output per input",
                                        f"<{taken[resolved]} and {path} would both write {written}>"))
        taken[target.resolve()] = path
        targets.append(target)
    return targets


@dataclass(frozen=True)
class Bounds:
    """How much memory one source may take: tiles above `tile` pixels a side (0: never tile), `max_pixels`."""

    tile: int = TILE_SIDE
    overlap: int = TILE_OVERLAP
    max_pixels: int = MAX_PIXELS


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ValueError(f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
                         "(raise it with --max-pixels N)")


def stylize_sources(sources: list[Path], generator: nn.Module, device: torch.device, out_dir: Path,
                    side_by_side: bool = False, say: Callable[[str], None] | None = None,
                    bounds: Bounds = Bounds()) -> int:
    """Stylize every image and video found in `sources`; returns the number that failed."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    files = list_sources(sources)
    targets = planned_outputs(files, sources, out_dir)
    failed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[fps]}"))
    with Progress(*columns) as bar:
        for path, target in zip(files, targets, strict=True):
            task = bar.add_task(path.name[:40], total=None, fps="")
            try:
                if is_video(path):
                    _video(path, target, generator, device, side_by_side, bar, task, bounds)
                else:
                    _image(path, target, generator, device, side_by_side, bounds)
                    bar.update(task, total=1, completed=1)
            except Exception as exc:  # one line per unreadable file; the others go on
                failed += 1
                detail = (str(exc).strip().splitlines() or [""])[-1]
                say(f"ablate stylize: {path}: skipped ({type(exc).__name__}: {detail})")
            finally:
                bar.remove_task(task)
    return failed


def _apply(generator: nn.Module, frames: list[np.ndarray], device: torch.device, bounds: Bounds
           ) -> list[np.ndarray]:
    photos = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # [N, H, W, 3] -> [N, 3, H, W]
    if bounds.tile and max(photos.shape[-2:]) > bounds.tile:  # one frame at a time, in tiles
        anime = torch.cat([stylize_tiled(generator, photo[None], device, bounds.tile, min(bounds.overlap,
                                                                                         bounds.tile // 4),
                                         RuntimeConfig()) for photo in photos])
    else:
        anime = stylize(generator, photos, device, RuntimeConfig())
    return list(anime.permute(0, 2, 3, 1).numpy())


def _image(path: Path, target: Path, generator: nn.Module, device: torch.device, side_by_side: bool,
           bounds: Bounds) -> None:
    rgb, alpha = read_image(path, bounds.max_pixels)
    anime = _apply(generator, [rgb], device, bounds)[0]
    if side_by_side:
        anime = np.concatenate([rgb, anime], axis=1)
        alpha = np.concatenate([alpha, alpha], axis=1) if alpha is not None else None
    write_image(target, anime, alpha)


def _video(path: Path, target: Path, generator: nn.Module, device: torch.device, side_by_side: bool,
           bar: Progress, task: int, bounds: Bounds) -> None:
    info = probe(path)
    check_pixels(*info.size, bounds.max_pixels)
    bar.update(task, total=info.frames)
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = frame_writer(target, info, path, info.size[0] * (2 if side_by_side else 1))
    batch_size = BATCH_CUDA if device.type == "cuda" else 1
    done, pending = 0, []
    try:
        for frame in read_frames(path):
            pending.append(frame)
            if len(pending) == batch_size:
                done += _write(writer, generator, pending, device, side_by_side, bounds)
                pending = []
                bar.update(task, completed=done, fps=_fps(bar, task, done))
        if pending:
            done += _write(writer, generator, pending, device, side_by_side, bounds)
            bar.update(task, completed=done, fps=_fps(bar, task, done))
    finally:
        writer.close()


def _write(writer: object, generator: nn.Module, frames: list[np.ndarray], device: torch.device,
           side_by_side: bool, bounds: Bounds) -> int:
    for source, anime in zip(frames, _apply(generator, frames, device, bounds), strict=True):
        out = np.concatenate([source, anime], axis=1) if side_by_side else anime
        writer.send(np.ascontiguousarray(out))  # type: ignore[attr-defined]
    return len(frames)


def _fps(bar: Progress, task: int, done: int) -> str:
    elapsed = bar.tasks[[t.id for t in bar.tasks].index(task)].elapsed or 0.0
    return f"{done / elapsed:.1f} frames/s" if elapsed > 0 else ""
