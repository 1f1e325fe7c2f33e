"""Gap closure (reference §5.7), pure and import-light: the evaluator decides with it, the report explains with it.

Kept apart from `metrics` (which loads torch, OpenCV and scikit-image) so that `ablation.report` can give the
same reason for a missing gap without those imports; `metrics` re-exports both functions.
"""

from __future__ import annotations

import math


def gap_closure_reason(noop: float, ref: float, value: float, floor: float) -> tuple[float | None, str]:
    """§5.7 for a distance metric: (gap, "") or (None, why the gap is undefined), the why in report words.

    gap = (m(no-op) − m(G)) / (m(no-op) − m(ref)): 0 = as far as the photos, 1 = as close as the style split.
    Defined only when the no-op anchor is farther from the style set than the reference anchor by more than
    `floor`: with inverted anchors the ratio flips sign, so an output that moved away from the style would score
    a large positive gap; with anchors closer than the floor the ratio is noise.
    """
    if not (math.isfinite(noop) and math.isfinite(ref)):
        return None, f"anchors not finite: no-op {noop:.4g}, reference {ref:.4g}"
    separation = noop - ref
    if abs(separation) <= floor:
        relation = "<" if abs(separation) < floor else "="
        return None, f"anchors not separated: |no-op - reference| {abs(separation):.4g} {relation} floor {floor:g}"
    if separation < 0:
        return None, (f"anchors inverted: no-op {noop:.4g} is closer to the style set than the reference "
                      f"{ref:.4g}")
    if not math.isfinite(value):
        return None, f"output value not finite: {value}"
    return (noop - value) / separation, ""


def gap_closure(noop: float, ref: float, value: float, floor: float) -> float | None:
    """`gap_closure_reason` without the reason: the gap, or None where it is undefined."""
    return gap_closure_reason(noop, ref, value, floor)[0]
