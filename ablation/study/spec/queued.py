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
from optuna.trial import FrozenTrial, TrialState

from ablation.config import NON_IDENTITY_SECTIONS, TrainConfig
from ablation.errors import UserError
from ablation.study import queue
from ablation.study.queue import CONFIG_ATTR
from ablation.study.spec.study import Cell, Study, TrialSpec, search_cell

NO_CELL = "<no such cell>"  # a difference's "study file" side when the file lacks the trial's cell


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


def queued_difference(study: Study, attrs: dict[str, Any], index: dict[str, Cell] | None = None
                      ) -> tuple[str, Any, Any] | None:
    """How a queued grid trial's stored config differs from what this study file resolves it to: the first
    differing field, its queued value and this file's (`cell` and `<no such cell>` when the file lacks its cell);
    None when they agree or the trial stored no config."""
    stored = attrs.get(CONFIG_ATTR)
    if stored is None or attrs.get("trial_key") is None:
        return None
    cell = local_cell(study, attrs, index)
    if cell is None:
        return "cell", attrs.get("label", "?"), NO_CELL
    return first_difference(stored, TrialSpec.of(cell, int(attrs["seed"])).config.model_dump(mode="json"))


def stale_waiting(study: Study, opt: optuna.Study) -> list[tuple[FrozenTrial, tuple[str, Any, Any]]]:
    """The waiting grid trials this study file no longer has (an edited base, a removed arm), with how each
    differs: what `ablate enqueue --drop-stale` drops."""
    if study.spec.method == "search":
        return []
    index = cell_index(study)
    found = []
    for trial in opt.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        difference = queued_difference(study, trial.user_attrs, index)
        if difference is not None:
            found.append((trial, difference))
    return found


def drop_stale(study: Study, opt: optuna.Study) -> list[str]:
    """Fail every stale waiting trial (`stale_waiting`) so that no worker claims it, and say so, one line each.
    Nothing else is touched: running and ended trials, and waiting trials of this file's cells, stay as they are."""
    lines = []
    for trial, (field, queued, mine) in stale_waiting(study, opt):
        why = f"{field}: queued {queued!r}, study file {mine!r}"
        if queue.drop_waiting(opt, trial, f"stale: {why}"):  # False: a worker claimed it meanwhile
            attrs = trial.user_attrs
            lines.append(f"dropped stale trial {attrs['trial_key']} [{attrs.get('label', '?')} seed="
                         f"{attrs.get('seed')}] (Optuna trial {trial.number}): {why}")
    return lines


def check_agrees(study: Study, opt: optuna.Study) -> None:
    """Refuse, in one line, a study file that resolves a queued (pending) grid trial differently from the
    launcher: the trial key, the first differing field and both values. Ended trials are history: a grid
    that was edited since they ran has other keys, and that is fine. A waiting trial may be stale instead (the
    file was edited on purpose): the line then also names `ablate enqueue --drop-stale`, or a restarting worker
    (compose's `restart: on-failure`) would refuse again and again."""
    if study.spec.method == "search":
        _check_search_agrees(study, opt)
        return
    index = cell_index(study)
    for trial in opt.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        attrs = trial.user_attrs
        found = queued_difference(study, attrs, index)
        if found is None:
            continue
        where = f"{study.path}: trial {attrs['trial_key']} [{attrs.get('label', '?')} seed={attrs.get('seed')}]"
        remedy = "start workers with the launcher's study file"
        if trial.state == TrialState.WAITING:
            remedy += (f", or, if {study.path} was edited on purpose, drop the waiting trials it no longer has with "
                       f"`ablate enqueue {study.path} --drop-stale` (with this worker's options)")
        field, queued, mine = found
        if mine == NO_CELL:
            raise UserError(f"{where}: expected a cell of this study file, as the launcher queued it, got <no such "
                            f"cell>; {remedy}")
        raise UserError(f"{where}: {field}: expected {queued!r} (as the launcher queued it), got {mine!r} in this "
                        f"study file; {remedy}")


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
