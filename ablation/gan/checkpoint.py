"""Atomic checkpoints: a crash while writing never leaves a half-written file behind. And the checks that a
checkpoint may be resumed by this run: same config and seed, same precision."""

from __future__ import annotations

import errno
import pickle
from pathlib import Path
from typing import Any

import torch

from ablation.config import TrainConfig, cell_hash
from ablation.errors import UserError, problem
from ablation.files import atomic_write, remove_stale_temps

CHECKPOINT_NAME = "checkpoint.pt"
# Checkpoints written before the trainer recorded its precision: taken as fp32. That is what every CPU run and
# every `runtime.amp: false` run computed in; an old bf16 CUDA checkpoint would be misread, a risk accepted as
# those runs predate precision being a recorded part of a run.
LEGACY_PRECISION = "fp32"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save through the one temp file + fsync + rename discipline of `ablation.files`."""
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint's dict, read with torch's restricted unpickler: tensors, RNG states and plain containers
    load; a pickle that would run code (a `__reduce__` to any other callable) is refused in one line, since
    anyone who can write the trials folder (a shared volume) could otherwise run code in every worker.

    Loading is where a trial resumes: the temp file of a save killed mid-write (as large as a checkpoint) is
    removed here, once it is old enough that no live save can still be writing it."""
    remove_stale_temps(path)
    if not path.exists():
        return None
    return load_torch_file(path, "checkpoint")


class TruncatedFile(UserError):
    """A `.pt` file that is not a whole torch file: empty, cut short (a copy or a disk that failed), or
    overwritten in the middle. A trial restarts from step 0 instead (study.work.trial); a command stops in one line."""


def load_torch_file(path: Path, field: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, a file that is not a complete torch file or whose
    pickle would run code refused in one line naming `path` and `field`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = (str(exc).strip().splitlines() or ["unpickling refused"])[0][:200]
        noun = "checkpoint" if field == "checkpoint" else "file"
        raise UserError(problem(path, field, f"a {noun} of tensors and plain containers (loaded with "
                                "torch.load(weights_only=True))", f"<refused: {detail}>")) from None
    except (EOFError, RuntimeError, OSError) as exc:
        # EOFError: an empty file; RuntimeError or EINVAL: torch's zip reader on a file cut short or damaged.
        # Other OS errors (EIO, ESTALE: a failing disk or mount) are the machine's, not the file's: kept.
        if isinstance(exc, OSError) and exc.errno != errno.EINVAL:
            raise
        size = path.stat().st_size
        detail = (" ".join(str(exc).split()) or type(exc).__name__)[:120]
        raise TruncatedFile(problem(path, field, "a complete torch file (written by torch.save)",
                                    f"<{size} bytes, truncated or damaged: {detail}>")) from None


def checkpoint_precision(state: dict[str, Any]) -> str:
    return str(state.get("precision", LEGACY_PRECISION))


def check_resumable(state: dict[str, Any], config: TrainConfig, precision: str, path: Path) -> None:
    """Refuse, in one line, a checkpoint this run must not continue: another config or seed, or another
    precision (bf16 and fp32 losses differ, so one trial would mix two numerics)."""
    if state.get("cell") != cell_hash(config) or state["config"].get("seed") != config.seed:
        raise UserError(problem(path, "config", "the config this checkpoint was written with (same cell "
                                "and seed); use a new --out folder for a changed config", "<a different config>"))
    written = checkpoint_precision(state)
    if written != precision:
        how = "runtime.amp: false" if written == "fp32" else "runtime.amp: true on a CUDA device with bf16"
        raise UserError(problem(path, "runtime.amp / precision", f"{written!r} (the precision this checkpoint was "
                                f"written in: resume with {how}, or use a new --out folder)", precision))
