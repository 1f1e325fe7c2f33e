"""A retry keeps its trial's identity however early the attempt died: a worker killed between its claim and its
`suggest` calls left the attempt with only some of the enqueued params set (CI's chaos run: the retry sampled a
random seed, and its MLflow run was tagged with a key no trial has, so the trial counted as lost)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from scale_helpers import write_study

from ablation.study import queue
from ablation.study.queue import storage
from ablation.study.spec.study import load_study
from ablation.study.work.grid import CELL_ID_MAX, _spec


@pytest.mark.parametrize("suggested", [(), ("cell_id",)])  # died right after the claim / between two suggests
def test_a_retry_of_an_attempt_killed_before_its_suggests_keeps_its_seed(tmp_path: Path,
                                                                          suggested: tuple[str, ...]) -> None:
    path = write_study(tmp_path / "study.yaml", tmp_path / "data", {"loss.style_weight": [3.0, 10.0]}, [0, 1],
                       "retry-params")
    study = load_study(path)
    opt = queue.open_study(study, storage.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", storage.Heartbeat(),
                                                       None), create=True)
    queue.enqueue_missing(study, opt)
    claimed = [t for t in queue.claim_waiting(opt, 10, lambda t: "all") if t.user_attrs["seed"] == 1][:1]
    assert claimed, "a trial with seed 1 is queued"
    attempt = claimed[0]
    if "cell_id" in suggested:
        attempt.suggest_int("cell_id", 0, CELL_ID_MAX)
    opt.tell(attempt, state=TrialState.FAIL)  # what the reaper records for the dead worker's attempt
    dead = opt.get_trials(deepcopy=False)[attempt.number]
    assert "seed" not in dead.params

    queue.requeue(opt, dead, "worker died", consume_retry=True)
    (retry,) = queue.claim_waiting(opt, 10, lambda t: "all", busy=lambda t: t.user_attrs.get("retry_of") is None)
    spec = _spec(study, retry)
    assert retry.user_attrs["retry_of"] == attempt.number
    assert spec.seed == 1 and spec.key == attempt.user_attrs["trial_key"]
    assert optuna.load_study(study_name=study.spec.name, storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials[
        retry.number].params == {"cell_id": int(spec.cell.key, 16), "seed": 1}
