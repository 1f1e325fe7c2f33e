"""What ImageNet-trained trunks share, wherever they serve: their input normalisation, and the hash that names
which weights a run really used. Used by the evaluators (evaluation/features.py) and by the GAN's frozen loss
backbone (gan/backbone.py), a floor above: here, so that no arrow points up from evaluation to gan."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def state_hash(module: nn.Module) -> str:
    """sha256[:12] over the state dict (names, dtypes, shapes, bytes): which weights a run really used."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]
