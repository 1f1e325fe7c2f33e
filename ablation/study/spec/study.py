"""Study files: schema, validation before any training, and expansion into (cell, seed) trials.

A cell is one resolved training config without its seed (identified by `cell_hash`); a trial is a
(cell, seed) pair. Grid cells come from the product of the axes, times the named arms if any.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ablation.config import (
    TrainConfig,
    apply_overrides,
    build_config,
    cell_hash,
    field_paths,
    read_yaml,
    with_overrides,
)
from ablation.data.presets import prepare_demo
from ablation.errors import UserError, from_validation_error, problem
from ablation.gan import imagenet_on_disk
from ablation.study.spec import checks
from ablation.study.spec.schema import StudySpec


@dataclass(frozen=True)
class Cell:
    key: str  # cell_hash of the resolved config
    label: str  # short text from the varied values: "style_weight=6 fake=2.5"
    varied: tuple[tuple[str, Any], ...]  # (dotted path or "arm", value), in axis order
    config: TrainConfig  # resolved, seed left at the base value


@dataclass(frozen=True)
class TrialSpec:
    cell: Cell
    seed: int
    config: TrainConfig  # the cell's config with this seed

    @property
    def key(self) -> str:
        return f"{self.cell.key}-s{self.seed}"

    @property
    def run_name(self) -> str:
        return f"{self.cell.label} seed={self.seed}"

    @classmethod
    def of(cls, cell: Cell, seed: int) -> TrialSpec:
        """The trial of `cell` at `seed`: the seed is written into the config, which is what the trainer reads."""
        return cls(cell, seed, cell.config.model_copy(update={"seed": seed}))


@dataclass(frozen=True)
class Study:
    spec: StudySpec
    path: Path
    base: dict[str, Any]  # base config data with the study overrides applied (validated)
    cells: tuple[Cell, ...]
    # offline (--demo): ImageNet weights not on disk became random; each arm that thereby equals an earlier
    # one is not run: (its label, the label of the cell it equals)
    offline_random: bool = False
    merged: tuple[tuple[str, str], ...] = ()

    @property
    def trials(self) -> list[TrialSpec]:
        return [TrialSpec.of(cell, seed) for cell in self.cells for seed in self.spec.seeds]

    @property
    def base_config(self) -> TrainConfig:
        return build_config(_copy(self.base), self.path, "base.")


def short_name(path: str) -> str:
    """loss.d_weights.fake -> fake; loss.style_weight -> style_weight."""
    return path.rsplit(".", 1)[-1]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def resolve_study(path: Path, demo: bool = False, overrides: Iterable[tuple[str, Any]] = ()) -> Study:
    """The study at `path` as every command reads it: with the demo preset (`--demo`: demo data, a short CPU
    schedule, offline) and then the `--set` overrides."""
    merged = {**(prepare_demo() if demo else {}), **dict(overrides)}
    return load_study(path, merged, name_suffix="-demo" if demo else "", offline=demo)


def load_study(path: Path, extra_overrides: dict[str, Any] | None = None, name_suffix: str = "",
               offline: bool = False) -> Study:
    """Read, validate and expand a study; every problem is reported before any training starts.

    `offline` (the demo downloads nothing): a cell asking for ImageNet weights that are not on disk gets random
    weights, and a cell that thereby equals an earlier one is merged into it (`Study.merged`)."""
    raw = read_yaml(path)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, path) from None
    if name_suffix:
        spec = spec.model_copy(update={"name": spec.name + name_suffix})
    base = _base_data(spec, path)
    errors: list[str] = []
    _collect(errors, lambda: apply_overrides(base, spec.overrides, path))
    _collect(errors, lambda: apply_overrides(base, dict(extra_overrides or {}), "--set"))
    if errors:
        raise UserError(*errors)
    _collect(errors, lambda: build_config(_copy(base), path, "base."))
    errors += _check_axes(spec, base, path)
    if errors:
        raise UserError(*errors)
    cells, merged, substituted = _expand(spec, base, path, offline) if spec.method == "grid" else ((), (), False)
    configs = [cell.config for cell in cells] or [build_config(_copy(base), path, "base.")]
    errors += checks.seed_problems(path, spec.seeds, configs)
    errors += checks.objective_problems(path, [o.metric for o in spec.objectives], configs)
    if errors:
        raise UserError(*errors)
    return Study(spec=spec, path=path, base=base, cells=cells, offline_random=substituted, merged=merged)


def _collect(errors: list[str], action: Any) -> Any:
    try:
        return action()
    except UserError as exc:
        errors.extend(exc.lines)
        return None


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _base_data(spec: StudySpec, path: Path) -> dict[str, Any]:
    if isinstance(spec.base, dict):
        return _copy(spec.base)
    base_path = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
    if not base_path.exists():
        raise UserError(problem(path, "base", "a training config file (path relative to the study)", spec.base))
    return read_yaml(base_path)


def _check_axes(spec: StudySpec, base: dict[str, Any], path: Path) -> list[str]:
    """Each axis value, arm and search range on its own, so an error names its exact YAML key."""
    known = field_paths()
    errors: list[str] = []
    for axis, values in spec.axes.items():
        if axis not in known:
            errors.append(problem(path, f"axes.{axis}", "a config field path such as loss.style_weight", "<unknown>"))
            continue
        if len(set(map(repr, values))) != len(values):
            errors.append(problem(path, f"axes.{axis}", "distinct levels", values))
        for i, value in enumerate(values):
            _collect(errors, lambda axis=axis, value=value, i=i: _validate_with(base, {axis: value}, path,
                                                                          f"axes.{axis}[{i}]"))
    for arm, overrides in spec.arms.items():
        _collect(errors, lambda arm=arm, overrides=overrides: _validate_with(base, overrides, path, f"arms.{arm}"))
    if spec.search is not None:
        for name, param in spec.search.space.items():
            if name not in known:
                errors.append(problem(path, f"search.space.{name}", "a config field path", "<unknown>"))
                continue
            probe = param.choices[0] if param.choices else param.low
            _collect(errors, lambda name=name, probe=probe: _validate_with(base, {name: probe}, path,
                                                                           f"search.space.{name}"))
    if spec.positive_control is not None:
        for key, value in spec.positive_control.level.items():
            levels = list(spec.arms) if key == "arm" else spec.axes.get(key)
            if levels is None or value not in levels:
                errors.append(problem(path, f"positive_control.level.{key}", f"an axis and one of its levels "
                                      f"({', '.join(['arm', *spec.axes])})", value))
    if spec.baseline:
        for key, value in spec.baseline.items():
            levels = list(spec.arms) if key == "arm" else spec.axes.get(key)
            if levels is None:
                errors.append(problem(path, f"baseline.{key}", f"one of the axes {list(spec.axes)}", key))
            elif value not in levels:
                errors.append(problem(path, f"baseline.{key}", f"one of the levels {levels}", value))
    return errors


def _validate_with(base: dict[str, Any], overrides: dict[str, Any], path: Path, where: str) -> TrainConfig:
    data = apply_overrides(_copy(base), overrides, path)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        lines = from_validation_error(exc, None).lines
        raise UserError(*(f"{path}: {where}: {line}" for line in lines)) from None


def _expand(spec: StudySpec, base: dict[str, Any], path: Path, offline: bool = False
            ) -> tuple[tuple[Cell, ...], tuple[tuple[str, str], ...], bool]:
    """The cells; with `offline`, also the cells merged into an earlier one and whether weights were replaced."""
    arms = list(spec.arms.items()) or [(None, {})]
    axes = list(spec.axes.items())
    cells: dict[str, Cell] = {}
    merged: list[tuple[str, str]] = []
    substituted: set[str] = set()  # keys of cells whose ImageNet weights became random
    errors: list[str] = []
    for arm, arm_overrides in arms:
        for combo in itertools.product(*(values for _, values in axes)):
            named = [(p, v) for (p, _), v in zip(axes, combo, strict=True)]  # one value per axis
            varied = ([("arm", arm)] if arm is not None else []) + named
            overrides = {**arm_overrides, **{p: v for p, v in varied if p != "arm"}}
            where = " ".join(f"{p}={format_value(v)}" for p, v in varied)
            config = _collect(errors, lambda overrides=overrides, where=where: _validate_with(base, overrides, path,
                                                                                              f"cell [{where}]"))
            if config is None:
                continue
            label = re.sub(r"^arm=", "", " ".join(f"{short_name(p) if p != 'arm' else 'arm'}={format_value(v)}"
                                                  for p, v in varied))
            replaced = offline and config.backbone.weights == "imagenet" and not imagenet_on_disk(config.backbone)
            if replaced:
                config = with_overrides(config, {"backbone.weights": "random"})
            key = cell_hash(config)
            if replaced:
                substituted.add(key)
            if key in cells and key in substituted:
                merged.append((label, cells[key].label))
                continue
            if key in cells:
                errors.append(problem(path, f"cell [{where}]", "a distinct configuration",
                                      f"<the same config as cell [{cells[key].label}]>"))
                continue
            cells[key] = Cell(key, label, tuple(varied), config)
    if errors:
        raise UserError(*errors)
    return tuple(cells.values()), tuple(merged), bool(substituted)


def search_cell(study: Study, params: dict[str, Any]) -> Cell:
    """A cell for one Optuna-sampled point of a search study."""
    config = _validate_with(study.base, params, study.path, "search point")
    label = " ".join(f"{short_name(p)}={format_value(v)}" for p, v in params.items())
    return Cell(cell_hash(config), label, tuple(params.items()), config)
