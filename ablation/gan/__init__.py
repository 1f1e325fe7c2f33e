"""The AnimeGAN engine: networks, the training loop (one trial or an array of K fused trials), and using a trained
generator (inference, stylize, export). Plain torch: usable in a notebook without the study harness.

Its public surface is `__all__`: the study harness and the CLI import the engine from here only
(tests/test_layout.py); the modules behind it are the engine's own business. Each name is loaded from its module
when first used, not at `import ablation.gan`: importing one engine module (the generator an MLflow model carries,
study.tracking.logged_models.package_files) must not import every other.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the engine module that defines it
_HOMES: dict[str, str] = {
    "EndHook": "array", "Joiner": "array", "Refill": "array", "train_array": "array",
    "array_key": "array_rules",
    "build_backbone": "backbone", "imagenet_on_disk": "backbone",
    "metric_name": "balance",
    "CHECKPOINT_NAME": "checkpoint", "TruncatedFile": "checkpoint", "load_checkpoint": "checkpoint",
    "effective_precision": "device", "resolve_device": "device",
    "export_generator": "export",
    "ImageStylizer": "inference", "load_generator": "inference",
    "INIT_DIR": "init_cache", "init_key": "init_cache", "shareable": "init_cache",
    "convert_weights": "keras_weights",
    "build_evaluator": "member", "build_models": "member",
    "BACKBONE_INFO": "run_contract", "EVAL_INFO": "run_contract", "RUN_INFO": "run_contract",
    "EvalHook": "run_contract", "LogFn": "run_contract",
    "MetricWindow": "run_contract", "ProgressFn": "run_contract", "StopFlag": "run_contract",
    "TrainResult": "run_contract", "stop_on_signals": "run_contract",
    "Bounds": "stylize", "planned_outputs": "stylize", "stylize_sources": "stylize",
    "train": "trainer",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:  # also how `from ablation.gan import balance` finds the submodule instead
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # once: later lookups find it here
    return value
