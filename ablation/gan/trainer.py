"""The AnimeGAN training loop: plain torch, a `log(metrics, step)` callback, no tracking library.

    result = train(config, out_dir, log=print)   # runs in a notebook as well as under `ablate`

Order per batch (official v1): init epochs run only the content step; afterwards one D step (every
`g_steps_per_d` batches) on the detached G(p), then one G step. G runs once per step and both use its output:
G's weights do not change between D's update and G's, so this is the original's fresh G(p) without the
second forward (with `model.generator_sn` the spectral norm's power iteration also runs once, not twice).

One trial is the array of one: `train` runs `gan.array.train_array`, whose loop trains any number of
compatible trials fused on one device, each writing this run folder and calling its own `log`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ablation.config import TrainConfig
from ablation.data.streams import Domains
from ablation.evaluation.protocol import TrialEvaluator
from ablation.gan.array import Joiner, train_array
from ablation.gan.member import build_evaluator, build_models
from ablation.gan.run_contract import (
    BACKBONE_INFO,
    EVAL_INFO,
    RUN_INFO,
    EvalHook,
    LogFn,
    MetricWindow,
    StopFlag,
    TrainResult,
    stop_on_signals,
)

__all__ = ["BACKBONE_INFO", "EVAL_INFO", "RUN_INFO", "EvalHook", "LogFn", "MetricWindow", "StopFlag", "TrainResult",
           "build_evaluator", "build_models", "stop_on_signals", "train"]


def train(config: TrainConfig, out_dir: Path, log: LogFn, *, domains: Domains | None = None,
          resume: bool = False, stop: StopFlag | None = None, on_eval: EvalHook | None = None,
          progress: Callable[[int, int], None] | None = None,
          evaluator: TrialEvaluator | None = None, init_cache: Path | None = None) -> TrainResult:
    """Train one run into `out_dir`. `domains` and `evaluator` may be passed in so that a worker decodes
    the data and computes the evaluation references once for many trials; `init_cache`: a folder of stored init
    phases to continue from and store into (gan/init_cache.py)."""
    return train_array([Joiner(config, out_dir, log, on_eval, progress)], domains=domains, resume=resume, stop=stop,
                       evaluator=evaluator, init_cache=init_cache)[0]
