"""The study YAML's schema: objectives, the search space, the positive control, the study spec itself; each
field validated as it is read (study.spec.study expands a valid spec into cells and trials)."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ablation.config import (
    Frozen,
)
from ablation.evaluation import registry


def _objective_entry(metric: Any) -> registry.Metric | None:
    """The registry entry of a metric a study may optimise; None for an unknown key or a diagnostic."""
    entry = registry.find(metric) if isinstance(metric, str) else None
    return entry if entry is not None and entry.objective else None


class Objective(Frozen):
    """A metric from `ablation.evaluation.registry`, checked before any training: a typo would otherwise
    train every trial and end as ±inf objective values and a note in the report."""

    metric: str
    direction: Literal["minimize", "maximize"] = "minimize"  # when omitted: the registry's (see below)

    @model_validator(mode="before")
    @classmethod
    def _registered_direction_by_default(cls, data: Any) -> Any:
        # an omitted direction is the metric's own, so a higher-is-better metric is never minimised by default
        if isinstance(data, dict) and "direction" not in data and (entry := _objective_entry(data.get("metric"))):
            return {**data, "direction": entry.direction}
        return data

    @field_validator("metric")
    @classmethod
    def _registered(cls, metric: str) -> str:
        if _objective_entry(metric) is None:
            try:  # a known key deserves to hear why it is refused, a typo the name it probably meant
                why = f" ({registry.resolve(metric)} is logged, but as a diagnostic)"
            except registry.UnknownMetric:
                close = difflib.get_close_matches(metric, registry.objective_names(), n=1)
                why = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"a logged metric key that can be an objective{why}, one of "
                             + ", ".join(registry.objective_names()))
        return metric

    @field_validator("direction")
    @classmethod
    def _agrees_with_registry(cls, direction: str, info: ValidationInfo) -> str:
        entry = _objective_entry(info.data.get("metric"))  # no metric here: its own error says enough
        if entry is not None and direction != entry.direction:
            raise ValueError(f"{entry.direction}, the registered direction of {info.data['metric']}")
        return direction


class SearchParam(Frozen):
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    int: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchParam:
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("either choices: [...] or low: and high:")
        if self.choices is None and self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low < high (got low={self.low}, high={self.high})")
        return self


class SearchSpec(Frozen):
    sampler: Literal["tpe", "random", "cmaes", "gp"] = "tpe"
    sampler_seed: int = 0
    n_trials: int = Field(20, ge=1)
    pruner: Literal["none", "median", "hyperband", "successive_halving"] = "none"
    space: dict[str, SearchParam]


class PositiveControl(Frozen):
    """A comparison stated in the study file before it runs that must show an effect, and why: if it does not,
    the study cannot detect what it was built to detect, and its nulls say nothing. The report tests it alone
    (one pre-stated hypothesis: unadjusted alpha 0.05) and states the result whatever it is."""

    level: dict[str, Any]  # the cell compared with the baseline: {arm: NAME} or {AXIS: VALUE}
    metric: str  # a registered metric; `expect` says which way
    expect: Literal["lower", "higher"]
    why: str = Field(min_length=1)

    @field_validator("metric")
    @classmethod
    def _registered(cls, metric: str) -> str:
        if registry.find(metric) is None:
            close = difflib.get_close_matches(metric, list(registry.METRICS), n=1)
            raise ValueError("a logged metric key" + (f" (did you mean {close[0]}?)" if close else ""))
        return metric


class StudySpec(Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    question: str = ""
    description: str = ""
    base: str | dict[str, Any] = {}  # a training config path (relative to the study file) or inline
    overrides: dict[str, Any] = {}
    method: Literal["grid", "search"] = "grid"
    axes: dict[str, list[Any]] = {}
    arms: dict[str, dict[str, Any]] = {}
    baseline: dict[str, Any] | None = None  # level per axis (and `arm`); default: first level of each
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    objectives: list[Objective] = [Objective(metric="loss/g/style"), Objective(metric="loss/g/content")]
    search: SearchSpec | None = None
    max_retries: int = Field(1, ge=0)  # automatic re-runs of a trial that failed with an exception
    positive_control: PositiveControl | None = None

    @model_validator(mode="after")
    def _method_needs(self) -> StudySpec:
        if self.method == "search" and self.search is None:
            raise ValueError("method: search needs a search: section (sampler, n_trials, space)")
        if self.method == "grid" and not (self.axes or self.arms):
            raise ValueError("method: grid needs axes: or arms:")
        if len(self.objectives) > 1 and self.search is not None and self.search.pruner != "none":
            raise ValueError("pruner: none with several objectives (Optuna cannot prune multi-objective)")
        return self
