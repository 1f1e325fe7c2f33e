"""Four worker processes racing `queue.claim_waiting` on one SQLite study: every queued trial is claimed by
exactly one of them (issue 12, item 1). tests/study/test_claims.py races threads of one process; here each
racer is its own process with its own connection, as `ablate run --workers 4` starts them, released together
by a barrier so that their first claims collide.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from scale_helpers import race_processes

from ablation.study import queue

RACERS = 4
TRIALS = 60


def _racer(url: str, barrier: Any, results: Any) -> None:
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        opt = optuna.load_study(study_name="race", storage=storage)
        barrier.wait(timeout=120)
        claimed = []
        while batch := queue.claim_waiting(opt, 1, lambda frozen: "all"):
            claimed.extend(trial.number for trial in batch)
        results.put(("ok", claimed))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def test_racing_processes_claim_each_trial_once_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url)
    opt = optuna.create_study(study_name="race", storage=storage)
    for i in range(TRIALS):
        opt.enqueue_trial({"x": float(i)})
    storage.engine.dispose()  # no pooled connection crosses the fork
    # fork: the racers start with optuna and ablation already imported (spawn re-imports torch in each, ~10 s);
    # they open their own connections after the fork
    ctx = multiprocessing.get_context("fork")
    answers = race_processes(ctx, _racer, [(url,)] * RACERS)

    counts = Counter(number for _, claimed in answers for number in claimed)
    assert sorted(counts) == list(range(TRIALS)), "every trial claimed"
    assert [n for n, c in counts.items() if c > 1] == [], "no trial claimed twice"
    assert sum(bool(claimed) for _, claimed in answers) > 1, "the racers overlapped (else nothing was tested)"
    trials = optuna.load_study(study_name="race", storage=url).get_trials()
    assert {t.state for t in trials} == {TrialState.RUNNING} and len(trials) == TRIALS
