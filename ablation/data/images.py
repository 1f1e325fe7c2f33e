"""Image files and the one pixel convention: uint8 [0, 255] on disk and in memory, float [-1, 1] in the networks.

torch is imported for type checking only: smoothing and the demo build list images without paying for torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # AnimeGANv2 #40: style sets come as .jpeg too


def list_images(folder: Path) -> list[Path]:
    """Image files of `folder`, sorted, suffix case-insensitive; [] when the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def to_signed(images_u8: Tensor) -> Tensor:
    """uint8 [N, 3, H, W] in [0, 255] -> float32 in [-1, 1], as the original's `/127.5 - 1`."""
    return images_u8.float() / 127.5 - 1.0


def to_uint8(images_signed: Tensor) -> Tensor:
    """float [N, 3, H, W] in [-1, 1] (any float dtype, e.g. bf16 under autocast) -> uint8, same layout.

    Clamped first because an out-of-range float wraps around in the uint8 cast; rounded to nearest (not
    truncated) so that `to_uint8(to_signed(x)) == x` for every uint8 value.
    """
    return ((images_signed.float().clamp(-1, 1) + 1) * 127.5).round().byte()
