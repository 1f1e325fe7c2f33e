"""The queue decides what a trial trains, not the worker's copy of the study file (issue 12, item 5): each
queued trial stores its resolved config, a worker trains exactly that, and a worker whose study file resolves a
queued trial differently refuses to start, in one line.

Real Optuna and MLflow on SQLite in tmp_path; tiny 32 px trials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from scale_helpers import OBJECTIVES, TINY_BASE, local_options

from ablation.config import TrainConfig, read_yaml
from ablation.errors import UserError
from ablation.study.runner import RunOptions, enqueue_study, run_worker
from ablation.study.spec.study import load_study

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")



def options(tmp: Path) -> RunOptions:
    return local_options(tmp, fuse=1)


def write_arms(path: Path, data_root: Path, arms: dict[str, dict[str, Any]]) -> Path:
    base = json.loads(json.dumps(TINY_BASE))
    base["data"]["root"] = str(data_root)
    path.write_text(yaml.safe_dump({"name": "arms", "base": base, "arms": arms, "seeds": [0],
                                    "objectives": OBJECTIVES}))
    return path


def trials(tmp: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="arms", storage=f"sqlite:///{tmp}/optuna.db").get_trials()


def drop_stale_hint(study: Path) -> str:
    """What a refusal over a waiting trial adds: the study file may have been edited on purpose."""
    return (f", or, if {study} was edited on purpose, drop the waiting trials it no longer has with "
            f"`ablate enqueue {study} --drop-stale` (with this worker's options)")


LAUNCHER_ARMS = {"a": {"loss.style_weight": 9.0}, "b": {"loss.style_weight": 2.0}}


def test_queued_trials_store_their_config_and_a_worker_trains_it(tmp_path: Path, data_root: Path) -> None:
    study = write_arms(tmp_path / "study.yaml", data_root, LAUNCHER_ARMS)
    enqueue_study(study, options(tmp_path))
    expected = {t.key: t.config.model_dump(mode="json") for t in load_study(study).trials}
    assert {t.user_attrs["trial_key"]: t.user_attrs["config"] for t in trials(tmp_path)} == expected

    assert run_worker(study, options(tmp_path)) == 0
    for key, config in expected.items():
        trained = TrainConfig.model_validate(read_yaml(tmp_path / "trials" / "arms" / key / "config.yaml"))
        assert trained.model_dump(mode="json") == config
    assert sorted(t.state.name for t in trials(tmp_path)) == ["COMPLETE", "COMPLETE"]


def test_a_worker_whose_study_file_resolves_a_queued_trial_differently_refuses(tmp_path: Path,
                                                                               data_root: Path) -> None:
    launcher = write_arms(tmp_path / "launcher.yaml", data_root, LAUNCHER_ARMS)
    enqueue_study(launcher, options(tmp_path))
    key_a = next(t.user_attrs["trial_key"] for t in trials(tmp_path) if t.user_attrs["label"] == "a")
    mine = write_arms(tmp_path / "worker.yaml", data_root, {"a": {"loss.style_weight": 5.0},
                                                            "b": {"loss.style_weight": 2.0}})
    with pytest.raises(UserError) as raised:
        run_worker(mine, options(tmp_path))
    assert raised.value.lines == [f"{mine}: trial {key_a} [a seed=0]: loss.style_weight: expected 9.0 (as the "
                                  "launcher queued it), got 5.0 in this study file; start workers with the "
                                  f"launcher's study file{drop_stale_hint(mine)}"]
    assert [t.state.name for t in trials(tmp_path)] == ["WAITING", "WAITING"]  # nothing was trained


def test_a_worker_whose_study_file_lacks_a_queued_cell_refuses(tmp_path: Path, data_root: Path) -> None:
    launcher = write_arms(tmp_path / "launcher.yaml", data_root, LAUNCHER_ARMS)
    enqueue_study(launcher, options(tmp_path))
    key_b = next(t.user_attrs["trial_key"] for t in trials(tmp_path) if t.user_attrs["label"] == "b")
    mine = write_arms(tmp_path / "worker.yaml", data_root, {"a": {"loss.style_weight": 9.0},
                                                            "c": {"loss.style_weight": 4.0}})
    with pytest.raises(UserError) as raised:
        run_worker(mine, options(tmp_path))
    assert raised.value.lines == [f"{mine}: trial {key_b} [b seed=0]: expected a cell of this study file, as the "
                                  "launcher queued it, got <no such cell>; start workers with the launcher's "
                                  f"study file{drop_stale_hint(mine)}"]
    assert [t.state.name for t in trials(tmp_path)] == ["WAITING", "WAITING"]


def write_search(path: Path, data_root: Path, content_weight: float) -> Path:
    base = json.loads(json.dumps(TINY_BASE))
    base["data"]["root"] = str(data_root)
    base["loss"] = {"content_weight": content_weight}
    path.write_text(yaml.safe_dump({
        "name": "search", "base": base, "method": "search", "seeds": [0], "objectives": OBJECTIVES,
        "search": {"sampler": "random", "n_trials": 1, "pruner": "none",
                   "space": {"loss.style_weight": {"low": 1.0, "high": 10.0}}}}))
    return path


def test_a_search_worker_whose_study_file_has_another_base_refuses(tmp_path: Path, data_root: Path) -> None:
    from ablation.study.runner import run_study

    launcher = write_search(tmp_path / "launcher.yaml", data_root, 1.5)
    assert run_study(launcher, options(tmp_path)) == 0
    first = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path}/optuna.db").trials[0]
    mine = write_search(tmp_path / "worker.yaml", data_root, 2.5)
    with pytest.raises(UserError) as raised:
        run_worker(mine, options(tmp_path))
    assert raised.value.lines == [f"{mine}: trial 0 [{first.user_attrs['trial_key']}]: loss.content_weight: expected "
                                  "1.5 (as the launcher asked it), got 2.5 in this study file; start workers with "
                                  "the launcher's study file"]
    assert run_worker(launcher, options(tmp_path)) == 0  # the launcher's own file is accepted (budget spent)
