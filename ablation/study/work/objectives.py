"""What a trial reports to Optuna: its objective values, or an error when one was never measured.

A finished trial without a finite value for an objective did not measure it (evaluation switched off, an
evaluator that could not run, a metric that came out NaN): recording the objective's worst value would
tell the sampler a real, feasible result. It is recorded as an error instead, in Optuna and in MLflow.
A diverged trial is different: it is a result (the loss blew up), recorded as worst and infeasible.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ablation.outcomes import Outcome
from ablation.study.spec.study import Study
from ablation.study.work.context import TrialContext, TrialOutcome


def objective_values(study: Study, outcome: TrialOutcome) -> list[float]:
    values = []
    for objective in study.spec.objectives:
        worst = math.inf if objective.direction == "minimize" else -math.inf
        value = outcome.metrics.get(objective.metric)
        if outcome.outcome is Outcome.DIVERGED or value is None or not math.isfinite(value):
            value = worst  # an infinite value is COMPLETE for Optuna; NaN would turn it into FAIL
        values.append(float(value))
    return values


def unmeasured(study: Study, outcome: TrialOutcome) -> list[str]:
    """The objectives a finished trial has no finite value for."""
    if outcome.outcome is not Outcome.FINISHED:
        return []
    return [o.metric for o in study.spec.objectives
            if not isinstance(value := outcome.metrics.get(o.metric), int | float) or not math.isfinite(value)]


def checked(study: Study, ctx: TrialContext, outcome: TrialOutcome) -> TrialOutcome:
    """The outcome to record: FAILED, with the reason, when an objective was never measured (see the module
    doc); its MLflow run, already ended as finished, is marked failed with the same reason."""
    missing = unmeasured(study, outcome)
    if not missing:
        return outcome
    found = {o.metric: outcome.metrics.get(o.metric) for o in study.spec.objectives if o.metric in outcome.metrics}
    error = (f"ObjectiveNotLogged: objective {', '.join(missing)} was never logged as a finite value"
             f"{f' (logged: {found})' if found else ''}; the trial's final metrics: "
             f"{', '.join(sorted(outcome.metrics)) or 'none'}")
    if outcome.run_id:
        ctx.tracker.finish_run(outcome.run_id, Outcome.FAILED, {"ablate.error": error})
    return replace(outcome, outcome=Outcome.FAILED, error=error)
