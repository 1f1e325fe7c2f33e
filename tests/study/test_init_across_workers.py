"""Issue 11: two workers that start the same init phase at the same moment compute it once.

Two `ablate worker` processes on one SQLite study, each claiming one of two cells that share an init identity
(two style weights, one seed). Before: both computed the init phase (neither run continued a stored one).
Now the second waits for the first's `<key>.lead` lock and continues from its entry, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scale_helpers import Procs, optuna_trials, worker_env, write_study

from ablation.study.tracking.client import Tracker

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

LONG_INIT = {"epochs": 32, "init_epochs": 30}  # 60 init steps: long enough that both workers start inside it


def test_two_workers_starting_one_init_phase_compute_it_once(tmp_path: Path, data_root: Path,
                                                            procs: Procs) -> None:
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [1.0, 3.0]}, [0], "twins",
                        schedule=LONG_INIT)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    env = worker_env(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "trials")
    procs.run("enqueue", ["enqueue", str(study), "--storage", storage], env)
    workers = [procs.start(f"w{i}", ["worker", str(study), "--storage", storage, "--quiet", "--fuse", "1"], env)
               for i in range(2)]
    for worker in workers:
        assert worker.wait(600) == 0, worker.tails()

    trials = optuna_trials(storage, "twins")
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]
    owners = {t.user_attrs["owner"]["pid"] for t in trials}
    assert len(owners) == 2, "each worker trained one trial"
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    runs = tracker.trial_runs("twins")
    continued = [r for r in runs if "ablate.init_reused_s" in r.data.tags]
    assert len(runs) == 2 and len(continued) == 1, "one computed the init phase, the other continued it"
    curves = [tracker.history(r.info.run_id, "loss/init/content") for r in runs]
    assert len(curves[0]) == 60 and curves[0] == curves[1]  # the follower's init curve is the leader's, exactly
    assert len(list((tmp_path / "trials" / "_init").glob("*.json"))) == 1
    assert "drew random numbers" not in procs.tails()
