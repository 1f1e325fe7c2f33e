"""Atomic checkpoints: a crash while writing never leaves a half-written file behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ablation.files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save through the one temp file + fsync + rename discipline of `ablation.files`."""
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    # our own files: they hold RNG states and plain containers, so the full unpickler is needed
    return torch.load(path, map_location="cpu", weights_only=False)
