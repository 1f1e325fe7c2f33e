"""The chaos test, short: 12 tiny trials, 3 `ablate worker` processes, a few faults at random (seeded) moments:
SIGKILL or SIGTERM of a worker, the MLflow server killed for a few seconds, PostgreSQL stopped for a few
seconds. Then nothing is lost, nothing ran twice, every retry resumed from its checkpoint, the metrics have no
gaps or duplicates and the report renders (tests/study/chaos_helpers.py: `Chaos`, `verify`).
benchmarks/chaos.py is the long version (20 faults, outages of 5-40 s).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from chaos_helpers import Chaos, Plan, verify
from scale_helpers import tiny_demo_data
from services import MlflowServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

# seed 1 draws sigkill, sigkill, mlflow, postgres, sigterm (on SQLite: sigkill, sigkill, sigterm, sigkill, mlflow);
# the fault clock starts with the first trial. 8 steps per trial (a checkpoint after steps 2, 4, 6, 8); a grace
# period well above the outages, so that a worker whose database was away is still alive to the others after it.
# About 5-6 min per storage on one busy core, most of it starting processes (pytest, enqueue, workers, report).
PLAN = Plan(seed=1, faults=5, gap_s=(3.0, 9.0), mlflow_down_s=(2.0, 5.0), postgres_down_s=(2.0, 5.0),
            epochs=4, steps_per_epoch=2, heartbeat_s=1, grace_s=15, timeout_s=600.0)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chaos-data")
    tiny_demo_data(root)
    return root


@pytest.mark.parametrize("storage", [pytest.param("postgresql", marks=pytest.mark.services), "sqlite"])
def test_no_trial_is_lost_or_run_twice_under_random_faults(storage: str, tmp_path: Path, data_root: Path,
                                                            mlflow_server: Callable[..., MlflowServer],
                                                            request: pytest.FixtureRequest) -> None:
    postgres, url = None, f"sqlite:///{tmp_path / 'optuna.db'}"
    if storage == "postgresql":
        postgres, url = request.getfixturevalue("postgres_server"), request.getfixturevalue("postgres_url")
    chaos = Chaos(tmp_path, data_root, url, mlflow_server(), postgres, PLAN)
    record = chaos.run()
    result = verify(chaos)
    summary = (f"faults {[(f['kind'], f['at_s'], f['target']) for f in record['faults']]}\nexits {record['exits']}\n"
               f"result {result}")
    assert len(record["faults"]) == PLAN.faults, f"the study ended before every fault was injected\n{summary}"
    assert result["problems"] == [], summary
    assert result["lost"] == [] and result["duplicated"] == [] and result["finished_once"] == 12, summary
