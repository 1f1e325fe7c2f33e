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


def torchvision_vgg_lines(path: Path, configs: list[TrainConfig]) -> list[str]:
    """A warning when a study's loss network is torchvision's ImageNet VGG19 under ImageNet mean/std: AnimeGAN's
    weights were tuned for the caffe VGG19 on 0-255 BGR, under which (one random VGG19, measured: reference
    loss_balance.md) content holds 57x and style 3,000x larger shares of G's gradient."""
    if not any(c.backbone.arch == "vgg19" and c.backbone.weights == "imagenet" for c in configs):
        return []
    return [f"{path}: backbone: torchvision's ImageNet VGG19 under ImageNet mean/std, not the original's caffe "
            "VGG19: content and style get about 57x and 3,000x smaller shares of G's gradient than the official "
            "weights were tuned for; for the original's balance: `ablate data fetch vgg19 DIR`, `ablate weights "
            "convert caffe-vgg19 DIR/vgg19.npy vgg19_caffe.pt`, then backbone.weights: vgg19_caffe.pt"]
