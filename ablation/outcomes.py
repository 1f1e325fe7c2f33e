"""One vocabulary for how a trial ended, shared by the trainer, the queue, MLflow tags and the report.

At the top of the package (beside config and errors) because the trainer, the study layer and the report
all speak it. The values are the text of the `ablate.outcome` MLflow tag and of the report's columns.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    FINISHED = "finished"  # trained every step
    DIVERGED = "diverged"  # a loss turned NaN or infinite: a result, recorded with its step
    PRUNED = "pruned"  # stopped early by the search's pruner: a result
    FAILED = "failed"  # the training raised; retried while retries are left
    INTERRUPTED = "interrupted"  # stopped on SIGINT/SIGTERM with a checkpoint; re-queued
    CRASHED = "crashed"  # its worker died (no heartbeat, or the process is gone); re-queued
    # not outcomes yet: where a queued trial stands
    WAITING = "waiting"
    RUNNING = "running"

    @property
    def done(self) -> bool:
        """Never run again unless asked: the trial trained (to the end, to divergence, or until pruned)."""
        return self in (Outcome.FINISHED, Outcome.DIVERGED, Outcome.PRUNED)

    @property
    def pending(self) -> bool:
        return self in (Outcome.WAITING, Outcome.RUNNING)

    @property
    def mlflow_status(self) -> str:
        """The MLflow run status a trial run ends with."""
        if self.done:
            return "FINISHED"
        return "KILLED" if self is Outcome.INTERRUPTED else "FAILED"


TRAIN_STATUSES = (Outcome.FINISHED, Outcome.DIVERGED, Outcome.INTERRUPTED, Outcome.PRUNED)  # what train() returns
