"""The AnimeGAN engine: networks, the training loop (one trial or an array of K fused trials), and using a trained
generator (inference, stylize, export). Plain torch: usable in a notebook without the study harness.

This is its public surface (`__all__`): the study harness and the CLI import the engine from here only
(tests/test_layout.py); the modules behind it are the engine's own business.
"""

from ablation.gan.array import EndHook, Joiner, Refill, train_array
from ablation.gan.array_rules import array_key
from ablation.gan.backbone import build_backbone, imagenet_on_disk
from ablation.gan.balance import metric_name
from ablation.gan.checkpoint import CHECKPOINT_NAME, TruncatedFile, load_checkpoint
from ablation.gan.device import effective_precision, resolve_device
from ablation.gan.export import export_generator
from ablation.gan.inference import ImageStylizer, load_generator
from ablation.gan.init_cache import INIT_DIR, init_key, shareable
from ablation.gan.keras_weights import convert_weights
from ablation.gan.member import build_evaluator, build_models
from ablation.gan.run import (
    BACKBONE_INFO,
    EVAL_INFO,
    RUN_INFO,
    EvalHook,
    LogFn,
    MetricWindow,
    ProgressFn,
    StopFlag,
    TrainResult,
    stop_on_signals,
)
from ablation.gan.stylize import Bounds, planned_outputs, stylize_sources
from ablation.gan.trainer import train

__all__ = [
    "BACKBONE_INFO", "CHECKPOINT_NAME", "EVAL_INFO", "INIT_DIR", "RUN_INFO", "Bounds", "EndHook", "EvalHook",
    "ImageStylizer", "Joiner", "LogFn", "MetricWindow", "ProgressFn", "Refill", "StopFlag", "TrainResult",
    "TruncatedFile", "array_key", "build_backbone", "build_evaluator", "build_models", "convert_weights",
    "effective_precision", "export_generator", "imagenet_on_disk", "init_key", "load_checkpoint", "load_generator",
    "metric_name", "planned_outputs", "resolve_device", "shareable", "stop_on_signals", "stylize_sources", "train",
    "train_array",
]
