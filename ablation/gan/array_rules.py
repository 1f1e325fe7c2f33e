"""Which trials can train as one array (`gan/array.py`): the fields members share, the key that says so, and
which frozen backbone each member's losses use."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ablation.config import TrainConfig, get_path

# What members of one array must share (dotted config paths); every other field may differ per member.
ARRAY_FIELDS: tuple[str, ...] = (
    "model", "backbone", "data.root", "data.style", "data.image_size", "schedule.epochs", "schedule.init_epochs",
    "schedule.batch_size", "schedule.steps_per_epoch", "runtime",
)


def array_key(config: TrainConfig) -> str:
    """Two configs can train fused in one array iff their keys are equal: a hash of the `ARRAY_FIELDS`."""
    dump = config.model_dump(mode="json")
    payload = json.dumps({path: get_path(dump, path) for path in ARRAY_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _leaves(value: Any, path: str) -> dict[str, Any]:
    """{"model": {"d_ch": 8}} at "model" -> {"model.d_ch": 8}: the dotted paths a user writes."""
    if not isinstance(value, dict):
        return {path: value}
    return {leaf: v for key, item in value.items() for leaf, v in _leaves(item, f"{path}.{key}").items()}


def check_compatible(configs: Sequence[TrainConfig]) -> None:
    """Raise ValueError naming the fields in which the configs cannot be fused."""
    shared = [{leaf: v for path in ARRAY_FIELDS for leaf, v in _leaves(get_path(c.model_dump(mode="json"), path),
                                                                      path).items()} for c in configs]
    differ = [path for path in shared[0] if any(other[path] != shared[0][path] for other in shared[1:])]
    if differ:
        raise ValueError(f"train_array: the configs differ in {', '.join(differ)}; only configs with equal "
                         "array_key() train as one array")


def backbone_key(config: TrainConfig) -> str:
    """Which frozen backbone a trial's losses use: random weights are drawn from its seed unless backbone.seed
    fixes them; loaded weights do not depend on the seed."""
    bb = config.backbone
    seed = (bb.seed if bb.seed is not None else config.seed) if bb.weights == "random" else None
    return json.dumps({**bb.model_dump(mode="json"), "seed": seed}, sort_keys=True)
