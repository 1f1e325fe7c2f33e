"""A search study's record in Optuna: objective values per trial, the best trials, parameter importances.

Only searches have it (a grid's cells are all in MLflow): build.py calls this for searches alone and optuna is
imported inside `collect_search`, so a grid report neither imports optuna nor opens, let alone creates, a storage.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from ablation.report import plots
from ablation.report.data import ReportData
from ablation.study.spec.schema import StudySpec


def search_section(data: ReportData, storage_url: str) -> dict[str, Any]:
    assert data.spec is not None
    found = collect_search(data.name, storage_url, data.spec)
    if not found["numbers"]:
        return {"history": None, "importance": None, "notes": found["notes"]}
    directions = [o.direction for o in data.spec.objectives]
    return {"history": plots.history_plot(found["numbers"], found["values"], found["best"], directions),
            "importance": plots.importance_plot(found["importances"]) if found["importances"] else None,
            "importances": found["importances"], "notes": found["notes"]}


def collect_search(name: str, storage_url: str, spec: StudySpec) -> dict[str, Any]:
    """Optuna's record of a search: objective values per trial, the best trials, parameter importances.

    Diverged trials carry +-inf objectives (so samplers avoid them); they are kept out of the importance
    evaluator, which cannot handle infinities, and failures of the evaluator become notes on the page.
    """
    import optuna

    from ablation.study import queue

    names = [o.metric for o in spec.objectives]
    found: dict[str, Any] = {"numbers": [], "values": {}, "best": [], "importances": {}, "notes": []}
    if storage_url.startswith("sqlite:///") and not Path(storage_url[len("sqlite:///"):]).exists():
        found["notes"].append(f"No Optuna storage at {storage_url}: pass --storage to show the search history.")
        return found
    try:
        with warnings.catch_warnings():  # the heartbeat argument is "experimental": noise in a report
            warnings.simplefilter("ignore")
            opt = optuna.load_study(study_name=name,
                                    storage=queue.open_storage(storage_url, queue.Heartbeat(), None))
    except Exception as exc:  # wrong URL, missing study: the rest of the report still stands
        found["notes"].append(f"Optuna study {name} not loaded from the storage ({type(exc).__name__}).")
        return found
    complete = [t for t in opt.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE and t.values]
    best = {t.number for t in _safe(lambda: opt.best_trials, [])}
    found["numbers"] = [t.number for t in complete]
    found["values"] = {n: [t.values[i] for t in complete] for i, n in enumerate(names)}
    found["best"] = [t.number in best for t in complete]
    finite = [t for t in complete if all(math.isfinite(v) for v in t.values)]
    if len(finite) < len(complete):
        found["notes"].append(f"{len(complete) - len(finite)} diverged trial(s) scored ±inf (infeasible) are "
                              "not plotted.")
    if len(finite) < 2:
        found["notes"].append(f"Parameter importances need at least 2 finite completed trials ({len(finite)} now).")
        return found
    clean = optuna.create_study(directions=opt.directions)
    clean.add_trials(finite)
    for i, objective in enumerate(spec.objectives):
        sign = 1.0 if objective.direction == "minimize" else -1.0  # PED-ANOVA ranks params for LOW targets
        try:
            with warnings.catch_warnings():  # it warns that it wants low targets: the sign above sees to that
                warnings.simplefilter("ignore")
                found["importances"][objective.metric] = optuna.importance.get_param_importances(
                    clean, target=lambda t, i=i, sign=sign: sign * t.values[i])
        except Exception as exc:  # too few trials, a single distinct value, ...
            found["notes"].append(f"Importances for {objective.metric} unavailable: {type(exc).__name__}: {exc}"[:300])
    return found


def _safe(action: Any, default: Any) -> Any:
    try:
        return action()
    except Exception:  # e.g. best_trials with every trial infeasible
        return default
