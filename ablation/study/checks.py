"""Cross-field study checks, run by `load_study` after the cells are resolved: what no single field's
validator can see (a training seed that equals an evaluator seed; an objective no cell will log)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ablation.config import TrainConfig
from ablation.errors import problem
from ablation.evaluation import registry
from ablation.evaluation.seeds import evaluator_seed_collisions

KID_EFF = "eval/style/kid_eff"


def seed_problems(path: Path, seeds: Sequence[int], configs: Iterable[TrainConfig]) -> list[str]:
    """A trial seed or `backbone.seed` that clashes with an evaluator: its number (which a reader would take for
    a shared network) or the salted 64-bit stream seed that would rebuild the evaluator's weights."""
    errors: list[str] = []
    for config in configs:
        evaluator_seeds = sorted(config.eval.evaluator_seeds)
        if clash := evaluator_seed_collisions(seeds, evaluator_seeds):
            errors.append(problem(path, "seeds", f"training seeds distinct from eval.evaluator_seeds "
                                  f"{evaluator_seeds} and their salted streams", clash))
        if config.backbone.seed is not None and evaluator_seed_collisions([config.backbone.seed], evaluator_seeds):
            errors.append(problem(path, "backbone.seed", f"a seed distinct from eval.evaluator_seeds "
                                  f"{evaluator_seeds} and their salted streams", config.backbone.seed))
    return sorted(set(errors))


def objective_problems(path: Path, metrics: Sequence[str], configs: Iterable[TrainConfig]) -> list[str]:
    """An evaluation objective in a study whose cells do not evaluate: every trial would end without a value."""
    errors: list[str] = []
    for i, metric in enumerate(metrics):
        group = registry.lookup(metric).group
        for config in configs:
            if group in ("style", "content") and not config.eval.enabled:
                errors.append(problem(path, f"objectives.{i}.metric", "a metric the trials log (eval.enabled is "
                                      "false: use a loss/ metric or enable evaluation)", metric))
            elif metric.startswith(KID_EFF) and not config.eval.efficientnet:
                errors.append(problem(path, f"objectives.{i}.metric", "a metric the trials log (eval.efficientnet "
                                      "is false)", metric))
    return sorted(set(errors))
