"""What a trial needs from an evaluator, as a typing Protocol: importing it loads neither torch nor numpy.

`ablation.evaluation.evaluator.Evaluator` is the implementation; the trainer and the trial context depend
only on this interface, so a test can pass a small stand-in and the evaluator is imported only when a config
enables evaluation (`eval.enabled`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # for the annotations only: the heavy modules stay unloaded at run time
    import numpy as np
    import torch


class TrialEvaluator(Protocol):
    """Scores a generator's outputs on the held-out photos against the held-out style split."""

    def evaluate(self, outputs: torch.Tensor | np.ndarray) -> dict[str, float]:
        """outputs[i] = G(photos[i]), uint8 ([N, 3, H, W] tensor or [N, H, W, 3] array) -> MLflow metrics."""
        ...

    def info(self) -> dict[str, str]:
        """What produced the numbers (evaluator hashes, scales, set sizes), logged as run tags."""
        ...

    def anchors(self) -> dict[str, float]:
        """The anchors' own metric values, logged once so that the gap metrics can be read."""
        ...
