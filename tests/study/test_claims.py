"""Claiming K compatible WAITING trials at once (trial arrays): atomic on SQLite and on PostgreSQL, never
twice, never mixing groups."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from ablation.study import queue


def _group(trial: FrozenTrial) -> str:
    return trial.user_attrs["group"]


def _fill(url: str, n: int) -> None:
    opt = optuna.create_study(study_name="claims", storage=url)
    for i in range(n):  # two interleaved groups, as cells of two architectures would be
        opt.enqueue_trial({"x": float(i)}, user_attrs={"group": "ab"[i % 2], "i": i})


def _claim_until_empty(url: str, limit: int, batches: list[list[tuple[int, str]]]) -> None:
    opt = optuna.load_study(study_name="claims", storage=optuna.storages.RDBStorage(url))  # own connection
    while claimed := queue.claim_waiting(opt, limit, _group):
        frozen = {t.number: t for t in opt.get_trials(deepcopy=False)}
        batches.append([(t.number, frozen[t.number].user_attrs["group"]) for t in claimed])


def _race(url: str, n: int, limit: int, workers: int) -> list[list[tuple[int, str]]]:
    _fill(url, n)
    batches: list[list[tuple[int, str]]] = []
    threads = [threading.Thread(target=_claim_until_empty, args=(url, limit, batches)) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return batches


def _check(url: str, batches: list[list[tuple[int, str]]], n: int, limit: int) -> None:
    numbers = [number for batch in batches for number, _ in batch]
    assert sorted(numbers) == list(range(n))  # every trial claimed, none twice
    assert all(1 <= len(batch) <= limit and len({g for _, g in batch}) == 1 for batch in batches)
    opt = optuna.load_study(study_name="claims", storage=url)
    assert {t.state for t in opt.get_trials()} == {TrialState.RUNNING}


def test_claims_are_disjoint_and_grouped_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    batches = _race(url, n=24, limit=4, workers=3)
    _check(url, batches, 24, 4)


def test_a_claim_takes_the_oldest_trials_of_the_first_group(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    _fill(url, 7)
    opt = optuna.load_study(study_name="claims", storage=url)
    assert [t.number for t in queue.claim_waiting(opt, 3, _group)] == [0, 2, 4]
    assert [t.number for t in queue.claim_waiting(opt, 3, _group)] == [1, 3, 5]
    assert [t.number for t in queue.claim_waiting(opt, 3, _group)] == [6]
    assert queue.claim_waiting(opt, 3, _group) == []


def test_a_claimed_trial_suggests_its_enqueued_params(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    _fill(url, 2)
    opt = optuna.load_study(study_name="claims", storage=url)
    (trial,) = queue.claim_waiting(opt, 1, _group)
    assert trial.suggest_float("x", 0.0, 10.0) == 0.0
    opt.tell(trial, 1.0)
    assert opt.trials[0].state == TrialState.COMPLETE and opt.trials[0].value == 1.0


@pytest.mark.services
def test_claims_are_disjoint_and_grouped_on_postgresql(postgres_url: str) -> None:
    batches = _race(postgres_url, n=24, limit=4, workers=3)
    _check(postgres_url, batches, 24, 4)
