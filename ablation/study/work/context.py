"""What the trials of one worker share (`TrialContext`: its tracker, its trials folder, its stop flag, the data and
evaluator it decoded once) and what one trial comes to (`TrialOutcome`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablation.config import DataConfig, TrainConfig
from ablation.data.streams import Domains, load_domains
from ablation.evaluation.protocol import TrialEvaluator
from ablation.gan import StopFlag, TrainResult, build_evaluator, resolve_device
from ablation.outcomes import Outcome
from ablation.study.tracking.client import Tracker


class WorkerStop(StopFlag):
    """A worker's stop flag, read after every training step: set by SIGINT/SIGTERM, and also up while a trial
    of this worker has gone without a recorded heartbeat for longer than the grace period (`watch`): another
    worker may re-queue it by now, so the trainer stops it with a checkpoint. The worker leaves such a trial
    unrecorded (`given_up`; study.work.grid, study.work.search) and goes on once the database answers again.
    `halt` stops the worker for good: the machine or a service failed (study.outages.infrastructure_error)."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: Any = None  # the Storage that tracks this worker's claims (`Storage.lost_trials`)
        self.given_up: list[int] = []  # Optuna numbers of the trials this worker gave up
        self.halted: str | None = None  # why this worker stops: the first infrastructure error

    def halt(self, why: str) -> None:
        self.halted = self.halted or why

    def watch(self, storage: Any) -> None:
        self.claims = storage if hasattr(storage, "lost_trials") else None

    def __bool__(self) -> bool:
        lost = self.claims is not None and bool(self.claims.lost_trials())
        return super().__bool__() or self.halted is not None or lost


@dataclass
class TrialContext:
    """What every trial of one worker shares."""

    study_name: str
    tracker: Tracker
    experiment_id: str
    parent_run_id: str
    trials_dir: Path  # a path every worker can read: checkpoints and samples live here
    stop: WorkerStop = field(default_factory=WorkerStop)
    on_progress: Callable[[str, int, int], None] | None = None  # (trial key, steps done, total steps)
    domains_cache: dict[str, Domains] = field(default_factory=dict)
    evaluator_cache: dict[str, TrialEvaluator | None] = field(default_factory=dict)

    def domains(self, data: DataConfig) -> Domains:
        """Decode a dataset once per worker process, not once per trial."""
        key = data.model_dump_json()
        if key not in self.domains_cache:
            self.domains_cache = {key: load_domains(data)}  # keep one: memory, not speed, is the limit
        return self.domains_cache[key]

    def evaluator(self, config: TrainConfig) -> TrialEvaluator | None:
        """Evaluation references depend on the data and eval settings only: compute them once (None: eval off)."""
        key = config.data.model_dump_json() + config.eval.model_dump_json() + config.runtime.device
        if key not in self.evaluator_cache:
            device = resolve_device(config.runtime)
            self.evaluator_cache = {key: build_evaluator(config, self.domains(config.data), device)}
        return self.evaluator_cache[key]


@dataclass
class TrialOutcome:
    outcome: Outcome
    metrics: dict[str, float]
    run_id: str
    result: TrainResult | None = None
    error: str | None = None
    array_failed: bool = False  # failed with its whole array (one exception fails the fused model)
    infra: str | None = None  # stopped by the machine or a service, not by itself: re-queued, retries untouched
    tracking_down: bool = False  # ... and that was MLflow: its run cannot be marked now
