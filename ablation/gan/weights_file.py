"""A local backbone weights file (`backbone.weights: PATH`): read with torch's weights-only loader, unwrapped to its
state dict, cut to the trunk's keys, and the preprocessing and numerics it says it was trained with
(gan/backbone.py builds the trunk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ablation.config import BackboneConfig
from ablation.errors import UserError, problem
from ablation.gan.caffe_weights import CAFFE_FORMAT
from ablation.gan.keras_weights import KERAS_FORMAT

FIELD = "backbone.weights"


def unwrap(raw: Any) -> Any:
    """Checkpoints often nest the weights (Lightning `state_dict`, trainers' `model`)."""
    for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            return raw[key]
    return raw


def select_trunk_state(state: Any, trunk: nn.Module, source: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """Find the key prefix (`features.`, `trunk.`, `module.`, ...) under which every trunk key is present.

    Extra keys (classifier, later blocks) are ignored; every trunk key must be there with its shape.
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(problem(source, FIELD, "a state dict (name -> tensor)", f"<{type(state).__name__}>"))
    wanted = trunk.state_dict()
    first = next(iter(wanted))
    prefixes = {k[: -len(first)] for k in state if k.endswith(first)}
    prefixes = {p for p in prefixes if p == "" or p.endswith(".")} or {""}
    best_missing: list[str] = list(wanted)
    best_prefix = ""
    for prefix in sorted(prefixes, key=len):
        missing = [k for k in wanted if prefix + k not in state]
        if len(missing) < len(best_missing):
            best_missing, best_prefix = missing, prefix
    if best_missing:
        shown = ", ".join(best_missing[:3]) + (f" (+{len(best_missing) - 3} more)" if len(best_missing) > 3 else "")
        raise UserError(problem(source, FIELD, f"{arch} weights with every trunk key; missing {shown}",
                                f"<{len(state)} keys>"))
    selected = {k: state[best_prefix + k] for k in wanted}
    for key, tensor in selected.items():
        if tensor.shape != wanted[key].shape:
            raise UserError(problem(source, FIELD, f"{key} of shape {tuple(wanted[key].shape)} (another width?)",
                                    f"<shape {tuple(tensor.shape)}>"))
    return selected


def load_local(path: Path) -> Any:
    if not path.is_file():
        raise UserError(problem(path, FIELD, "an existing weights file (a torch.save'd state dict), "
                                "'random' or 'imagenet'", "<missing>"))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/unsupported-object errors all mean the file is not a usable state dict
        reason = f"<unreadable: {type(exc).__name__}: {exc}>"
        raise UserError(problem(path, FIELD, "a torch.save'd state dict", reason)) from None


def file_preprocess(raw: Any, path: Path, cfg: BackboneConfig) -> str | None:
    """The preprocessing a converted caffe VGG19 file was trained on; None for any other file."""
    if not (isinstance(raw, dict) and raw.get("format") == CAFFE_FORMAT):
        return None
    if raw.get("arch") != cfg.arch:
        raise UserError(problem(path, FIELD, f"weights for {cfg.arch} (backbone.arch)",
                                f"<converted for {raw.get('arch')}>"))
    return str(raw["preprocess"])


def converted_numerics(raw: Any, path: Path, cfg: BackboneConfig) -> dict[str, Any] | None:
    """A converted Keras file's numerics ({bn_eps, padding, source_sha256}); None for a plain state dict."""
    if not (isinstance(raw, dict) and raw.get("format") == KERAS_FORMAT):
        return None
    # Checked before the shapes: a width mismatch that happens to give equal shapes would still be the wrong model.
    if raw.get("arch") != cfg.arch or raw.get("width") != cfg.width:
        raise UserError(problem(path, FIELD, f"weights for {cfg.arch} at width {cfg.width:g} (backbone.arch, "
                                "backbone.width)", f"<converted for {raw.get('arch')} at width {raw.get('width')}>"))
    return {"bn_eps": float(raw["bn_eps"]), "padding": str(raw["padding"]),
            "source_sha256": str(raw.get("source_sha256", ""))}
