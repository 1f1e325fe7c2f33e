"""The config a queued trial trains: the one its launcher resolved and stored with it, never a rebuild.

A worker's own study file may differ from the launcher's (an older copy, another host); rebuilding a cell from
it once trained an arm with the base config under that arm's key. So the launcher stores each trial's resolved
config (user attr `config`, `queue.enqueue_missing`), workers train exactly that, and `ablate worker` refuses
to start, in one line, when its study file resolves a queued trial differently (`check_agrees`).

The runtime section (device, threads, autocast, compile) is the worker's own, as it is no part of a cell's
identity (`config.cell_hash`): a queued trial may run on a CPU or on any GPU.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import TrialState

from ablation.config import NON_IDENTITY_SECTIONS, TrainConfig
from ablation.errors import UserError
from ablation.study.queue import CONFIG_ATTR
from ablation.study.spec.study import Cell, Study, TrialSpec, search_cell


def local_cell(study: Study, attrs: dict[str, Any], index: dict[str, Cell] | None = None) -> Cell | None:
    """The cell of this study file that a queued trial names: by key, else by its varied values (arm name and
    axis levels), which is how a study file that changed under the same names is caught."""
    index = index if index is not None else cell_index(study)
    return index.get(f"key:{attrs.get('cell')}") or index.get(_varied_key(attrs.get("overrides")))


def cell_index(study: Study) -> dict[str, Cell]:
    index = {f"key:{cell.key}": cell for cell in study.cells}
    index.update({_varied_key(dict(cell.varied)): cell for cell in study.cells})
    return index


def _varied_key(varied: Any) -> str:
    return "varied:" + json.dumps(varied, sort_keys=True, default=str)


def trial_spec(study: Study, attrs: dict[str, Any], seed: int) -> TrialSpec:
    """What a claimed grid trial trains: its stored config (with this worker's runtime section)."""
    stored = attrs.get(CONFIG_ATTR)
    if stored is None:  # queued before configs were stored: the study file is all there is
        cell = local_cell(study, attrs) or search_cell(
            study, {k: v for k, v in attrs["overrides"].items() if k != "arm"})
        return TrialSpec.of(cell, seed)
    config = with_local_runtime(study, TrainConfig.model_validate(stored))
    cell = Cell(attrs["cell"], attrs.get("label", attrs["cell"]), tuple(attrs.get("overrides", {}).items()),
                config)
    return TrialSpec(cell, seed, config.model_copy(update={"seed": seed}))


def with_local_runtime(study: Study, config: TrainConfig) -> TrainConfig:
    runtime = study.cells[0].config.runtime if study.cells else study.base_config.runtime
    return config.model_copy(update={"runtime": runtime})


def first_difference(queued: Any, local: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted path (in key order) where two config dumps differ, with both values."""
    if isinstance(queued, dict) and isinstance(local, dict):
        for key in sorted(set(queued) | set(local)):
            if key in NON_IDENTITY_SECTIONS and not path:
                continue
            found = first_difference(queued.get(key, "<absent>"), local.get(key, "<absent>"),
                                     f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    return None if queued == local else (path, queued, local)


def check_agrees(study: Study, opt: optuna.Study) -> None:
    """Refuse, in one line, a study file that resolves a queued (pending) grid trial differently from the
    launcher: the trial key, the first differing field and both values. Ended trials are history: a grid
    that was edited since they ran has other keys, and that is fine."""
    if study.spec.method == "search":
        _check_search_agrees(study, opt)
        return
    index = cell_index(study)
    for trial in opt.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        attrs = trial.user_attrs
        stored, key = attrs.get(CONFIG_ATTR), attrs.get("trial_key")
        if stored is None or key is None:
            continue
        cell = local_cell(study, attrs, index)
        where = f"{study.path}: trial {key} [{attrs.get('label', '?')} seed={attrs.get('seed')}]"
        if cell is None:
            raise UserError(f"{where}: expected a cell of this study file, as the launcher queued it, got <no such "
                            "cell>; start workers with the launcher's study file")
        local = TrialSpec.of(cell, int(attrs["seed"])).config.model_dump(mode="json")
        found = first_difference(stored, local)
        if found is not None:
            field, queued, mine = found
            raise UserError(f"{where}: {field}: expected {queued!r} (as the launcher queued it), got {mine!r} in this "
                            "study file; start workers with the launcher's study file")


def _check_search_agrees(study: Study, opt: optuna.Study) -> None:
    """A search worker samples its new points from its own file: refuse, in one line, a file whose search space
    or base would resolve a point already asked differently from the config stored with it (any state: the
    next point continues the same search)."""
    assert study.spec.search is not None
    space = sorted(study.spec.search.space)
    for trial in sorted(opt.get_trials(deepcopy=False), key=lambda t: t.number):
        stored = trial.user_attrs.get(CONFIG_ATTR)
        if stored is None:
            continue
        where = f"{study.path}: trial {trial.number} [{trial.user_attrs.get('trial_key', '?')}]"
        if sorted(trial.params) != space:
            raise UserError(f"{where}: search.space: expected {sorted(trial.params)} (as the launcher asked it), "
                            f"got {space} in this study file; start workers with the launcher's study file")
        local = search_cell(study, dict(trial.params)).config.model_dump(mode="json")
        found = first_difference(stored, local)
        if found is not None:
            field, queued, mine = found
            raise UserError(f"{where}: {field}: expected {queued!r} (as the launcher asked it), got {mine!r} in "
                            "this study file; start workers with the launcher's study file")
        return  # one asked point settles it: every point is the same base with the space's values
