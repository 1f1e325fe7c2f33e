"""Sample images: the generator's output on fixed validation photos after every epoch.

Frames are written to disk as they are made (not kept in the checkpoint), so a resumed run's GIF still
shows every epoch.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from ablation.files import atomic_write_bytes


def tile_row(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] -> [H, N*W, 3]."""
    return np.concatenate(list(images), axis=1)


def _write_png(path: Path, image: np.ndarray) -> None:
    atomic_write_bytes(path, iio.imwrite("<bytes>", image, extension=".png"))


def write_epoch_frame(sample_dir: Path, epoch: int, fake_anime: np.ndarray) -> Path:
    path = sample_dir / f"epoch_{epoch:04d}.png"
    _write_png(path, tile_row(fake_anime))
    return path


def epoch_frames(sample_dir: Path) -> list[Path]:
    return sorted(sample_dir.glob("epoch_*.png"))


def write_gif(sample_dir: Path, real_photo: np.ndarray, duration_ms: int = 400) -> Path | None:
    """Animated GIF of the samples' evolution: input row on top, that epoch's outputs below."""
    frames = epoch_frames(sample_dir)
    if not frames:
        return None
    top = tile_row(real_photo)
    stacked = [np.concatenate([top, iio.imread(f)[..., :3]], axis=0) for f in frames]
    path = sample_dir / "evolution.gif"
    data = iio.imwrite("<bytes>", np.stack(stacked), extension=".gif", duration=duration_ms, loop=0)
    atomic_write_bytes(path, data)
    return path


def write_side_by_side(sample_dir: Path, real_photo: np.ndarray, fake_anime: np.ndarray,
                       name: str = "final.png") -> Path:
    """Final PNG: one row per validation image, input | output."""
    rows = [np.concatenate([photo, fake], axis=1) for photo, fake in zip(real_photo, fake_anime, strict=True)]
    path = sample_dir / name
    _write_png(path, np.concatenate(rows, axis=0))
    return path
