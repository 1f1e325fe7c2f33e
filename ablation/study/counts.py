"""How a study stands, counted from Optuna's record: the totals a launcher prints and tags its parent run with."""

from __future__ import annotations

from collections import Counter

import optuna

from ablation.outcomes import Outcome
from ablation.study import queue
from ablation.study.spec.study import Study


def total(study: Study, opt: optuna.Study) -> int:
    if study.spec.method == "search" and study.spec.search is not None:
        return study.spec.search.n_trials
    return len(study.trials)


def outcomes(opt: optuna.Study) -> Counter[Outcome]:
    """How each trial key stands now (its newest attempt)."""
    return Counter(queue.outcome_of(t) for t in queue.latest_by_key(opt).values())


def done(opt: optuna.Study) -> int:
    return sum(n for outcome, n in outcomes(opt).items() if outcome.done)


def count_line(study: Study, opt: optuna.Study) -> str:
    parts = ", ".join(f"{n} {k}" for k, n in sorted(outcomes(opt).items())) or "nothing run yet"
    return f"{total(study, opt)} trials ({parts})"


def summary_tags(opt: optuna.Study) -> dict[str, str]:
    return {f"ablate.trials_{k}": str(n) for k, n in outcomes(opt).items()}
