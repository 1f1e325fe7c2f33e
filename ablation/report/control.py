"""The study's positive control (`positive_control:` in the study file, stated before it ran): one comparison
that must show an effect. It is tested alone, as the one pre-stated hypothesis it is (unadjusted alpha 0.05,
seed-paired t), and its result is stated whatever it is: a control that shows nothing says the study could not
have detected what it was built for."""

from __future__ import annotations

from typing import Any

from ablation.outcomes import Outcome
from ablation.report.data import ReportData
from ablation.report.stats import ALPHA, min_detectable_effect, paired_effect
from ablation.report.text import fmt
from ablation.report.verdicts import _per_seed
from ablation.study.spec.study import format_value


def control_line(data: ReportData) -> dict[str, Any] | None:
    """{"text": one sentence, "met": bool}; None when the study states no positive control."""
    control = data.spec.positive_control if data.spec is not None else None
    if control is None or len(control.level) != 1:
        return None
    (axis_name, value), = control.level.items()
    axis = next((a for a in data.axes if a.name == axis_name), None)
    shown = format_value(value)
    head = (f"Positive control (stated in the study file before it ran): {axis_name}={shown} vs {axis_name}="
            f"{axis.baseline if axis else '?'} should make {control.metric} {control.expect}, because {control.why}")
    done = data.trials[data.trials["outcome"] == Outcome.FINISHED] if not data.trials.empty else data.trials
    if axis is None:
        return {"text": f"{head}. Not tested: the axis is not in the logged runs.", "met": False}
    others = [a.name for a in data.axes if a is not axis]
    base, level = _per_seed(done, axis.name, axis.baseline, shown, others, control.metric)
    effect = paired_effect(base, level)
    if not effect.tested:
        return {"text": f"{head}. Not tested: {effect.untested or 'no paired seeds'}.", "met": False}
    mde = min_detectable_effect(effect.n, effect.sd)  # one pre-stated test: alpha 0.05, no family
    right_way = (effect.mean < 0) == (control.expect == "lower")
    met = right_way and effect.p < ALPHA
    result = "met" if met else "NOT met: the study could not detect the effect it was built to detect"
    return {"met": met, "text": f"{head}. Result: Δ {fmt(effect.mean)} [{fmt(effect.lo)}, {fmt(effect.hi)}] "
                                f"(95% CI, n = {effect.n} seeds), p {fmt(effect.p, 3)}, MDE {fmt(mde, 3)}: "
                                f"{result}."}
