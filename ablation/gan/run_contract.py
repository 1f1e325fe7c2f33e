"""What one training run reports and how it is stopped: shared by the one-trial API (gan/trainer.py) and the
array trainer (gan/array.py), which runs every trial as a member of an array."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ablation.gan.device import Precision
from ablation.outcomes import Outcome

EVAL_INFO = "eval_info.json"
BACKBONE_INFO = "backbone.json"
RUN_INFO = "run.json"  # what the run computed in: {"precision": "fp32" | "bf16", "device": "cpu" | "cuda"}
LogFn = Callable[[dict[str, float], int], None]
# called after each evaluation with (metrics, step); returning True stops the run (pruned)
EvalHook = Callable[[dict[str, float], int], bool]
ProgressFn = Callable[[int, int], None]  # (steps done, total steps)


@dataclass
class TrainResult:
    status: Outcome  # one of TRAIN_STATUSES
    step: int  # steps completed
    total_steps: int
    diverged_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # last logged value of every key
    out_dir: Path = Path(".")
    artifacts: dict[str, Path] = field(default_factory=dict)
    backbone_info: dict[str, str] = field(default_factory=dict)  # FrozenBackbone.describe(), as in backbone.json
    precision: Precision = "fp32"  # effective_precision(): what the losses saw, as in run.json and the checkpoint
    init_reused_s: float | None = None  # continued a stored init phase (gan/init_cache.py): its compute time

    @property
    def status_text(self) -> str:
        if self.status is Outcome.DIVERGED:
            return f"diverged at step {self.diverged_step}"
        return self.status


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopFlag:
    """Set by SIGINT/SIGTERM/SIGUSR1 (or by a caller) to end the run after the current step with a checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only live in the main thread
        return
    # SIGUSR1 is Slurm's (and submitit's, as ablate sets it) warning before preemption or the time limit
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in previous:
        signal.signal(s, lambda signum, _frame: flag.set(signum))
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class MetricWindow:
    """Sums loss tensors between log points without a device sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.images = 0
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums[key] + value.float() if key in self.sums else value.float()
            self.counts[key] = self.counts.get(key, 0) + 1

    def flush(self) -> dict[str, float]:
        keys = list(self.sums)
        means = torch.stack([self.sums[k] / self.counts[k] for k in keys]).tolist() if keys else []
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        out = dict(zip(keys, means, strict=True))
        out["perf/step_s"] = elapsed / max(self.steps, 1)
        out["perf/images_per_s"] = self.images / elapsed
        self.sums, self.counts, self.images, self.steps = {}, {}, 0, 0
        self.started = time.perf_counter()
        return out

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "counts": dict(self.counts),
                "images": self.images, "steps": self.steps}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.counts, self.images, self.steps = dict(state["counts"]), state["images"], state["steps"]
