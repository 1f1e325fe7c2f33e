"""A trained generator applied to images of any size (`ablate stylize`): plain torch.

The generator halves the resolution twice and doubles it back, so a side that is not a multiple of 4 would
come back a few pixels off. Inputs are reflect-padded to a multiple of `PAD_MULTIPLE` and the output is cropped
back: the output always has the input's size. Inference runs in bf16 autocast on CUDA and fp32 on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ablation.config import RuntimeConfig, TrainConfig
from ablation.data.images import to_signed, to_uint8
from ablation.gan.checkpoint import load_torch_file
from ablation.gan.device import autocast
from ablation.gan.generator import build_generator

PAD_MULTIPLE = 8  # two stride-2 stages need 4; 8 keeps the reflect padding identical for v1 and v2


def load_generator(weights: Path, config: TrainConfig, device: torch.device) -> nn.Module:
    """G as the trial built it (its version, SN and resize mode from `config`) with the saved state dict."""
    generator = build_generator(config.model.generator, config.model.generator_sn, config.model.resize)
    state = load_torch_file(weights, "weights")  # an empty or cut-short file: one line, not a traceback
    if isinstance(state, dict) and "generator" in state and isinstance(state["generator"], dict):
        state = state["generator"]  # a training checkpoint rather than generator.pt
    generator.load_state_dict(state)
    return generator.to(device).eval()


def padded(photo: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """[N, 3, H, W] -> reflect-padded to multiples of PAD_MULTIPLE, with the original H and W."""
    height, width = photo.shape[-2:]
    pad_h, pad_w = -height % PAD_MULTIPLE, -width % PAD_MULTIPLE
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"  # reflect needs pad < size
        photo = F.pad(photo, (0, pad_w, 0, pad_h), mode=mode)
    return photo, height, width


@torch.no_grad()
def stylize(generator: nn.Module, photos_u8: torch.Tensor, device: torch.device,
            runtime: RuntimeConfig | None = None) -> torch.Tensor:
    """uint8 [N, 3, H, W] photos (one size) -> uint8 [N, 3, H, W] anime, the same size."""
    real_photo, height, width = padded(to_signed(photos_u8.to(device)))
    with autocast(device, runtime or RuntimeConfig()):
        fake_anime = generator(real_photo)
    return to_uint8(fake_anime[..., :height, :width].float()).cpu()


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Offsets of tiles of side `tile` covering [0, size), neighbours sharing at least `overlap` pixels."""
    if size <= tile:
        return [0]
    step = tile - overlap
    return sorted({*range(0, size - tile, step), size - tile})


def _ramp(size: int, start: int, tile: int, overlap: int) -> torch.Tensor:
    """Blend weight along one axis of a tile: rising over the overlap on the sides that have a neighbour,
    so overlapping tiles cross-fade instead of meeting at a seam. Never 0: every pixel has a weight."""
    weight = torch.ones(tile)
    fade = torch.linspace(0.0, 1.0, overlap + 2)[1:-1]  # strictly inside (0, 1)
    if start > 0:
        weight[:overlap] = fade
    if start + tile < size:
        weight[-overlap:] = torch.minimum(weight[-overlap:], fade.flip(0))
    return weight


@torch.no_grad()
def stylize_tiled(generator: nn.Module, photo_u8: torch.Tensor, device: torch.device, tile: int, overlap: int,
                  runtime: RuntimeConfig | None = None) -> torch.Tensor:
    """uint8 [1, 3, H, W] -> uint8 [1, 3, H, W], the generator run on overlapping `tile` x `tile` pieces and
    cross-faded: memory is bounded by the tile, not the photo. The norm layers see one tile's statistics, so the
    result differs slightly from the whole-image one (tests/test_stylize_tiles.py states by how much)."""
    height, width = photo_u8.shape[-2:]
    if height <= tile and width <= tile:
        return stylize(generator, photo_u8, device, runtime)
    side_h, side_w = min(tile, height), min(tile, width)
    total = torch.zeros(3, height, width)  # weighted sum of tile outputs in [-1, 1], float32 on the CPU
    weights = torch.zeros(1, height, width)
    for top in tile_starts(height, side_h, overlap):
        for left in tile_starts(width, side_w, overlap):
            real_photo, _, _ = padded(to_signed(photo_u8[..., top:top + side_h, left:left + side_w].to(device)))
            with autocast(device, runtime or RuntimeConfig()):
                fake_anime = generator(real_photo)[0, :, :side_h, :side_w].float().clamp(-1.0, 1.0).cpu()
            weight = (_ramp(height, top, side_h, overlap)[:, None] * _ramp(width, left, side_w, overlap)[None, :])
            total[:, top:top + side_h, left:left + side_w] += fake_anime * weight
            weights[:, top:top + side_h, left:left + side_w] += weight
    return to_uint8((total / weights)[None])


class ImageStylizer(nn.Module):
    """What the MLflow model holds: float32 [N, H, W, 3] RGB in [0, 1] -> the same, any H and W (the generator's
    padding rule inside), plus the trial's config so that `ablate stylize` can rebuild the generator alone."""

    def __init__(self, generator: nn.Module, config_yaml: str) -> None:
        super().__init__()
        self.generator = generator
        self.config_yaml = config_yaml

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        real_photo, height, width = padded(image.permute(0, 3, 1, 2) * 2.0 - 1.0)  # [N, H, W, 3] -> [N, 3, H', W']
        fake_anime = self.generator(real_photo)[..., :height, :width]
        return ((fake_anime.clamp(-1.0, 1.0) + 1.0) / 2.0).permute(0, 2, 3, 1)  # back to [N, H, W, 3]
