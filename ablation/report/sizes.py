"""How many images each evaluation metric was computed on, and why at that resolution (issue 23): the setup's
two evaluation lines, both read from what the trials logged and their config, never written in advance.

The sizes come from the evaluator's run tags (`eval/n/outputs`, `eval/n/style_ref`, `eval/n/style_anchor`, and
`eval/op/split`, which says how the style set was split: ablation/evaluation/evaluator.py); a range where trials
differ.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ablation.evaluation.registry import CALIBRATION_SIZE, EFFNET_SIZE

TRAINS_ON = "the style images G trains on"  # what S_ref is under the evaluator's ANCHOR_RULE (real data)


def n_per_metric(trials: pd.DataFrame) -> list[str]:
    """One line per metric family: its n and what it is compared with; empty when no trial logged the sizes."""
    if trials.empty or "eval_n" not in trials:
        return []
    logged = [n for n in trials["eval_n"] if isinstance(n, dict) and n.get("outputs")]
    if not logged:
        return []
    outputs, ref, anchor = (_span(n.get(k) for n in logged) for k in ("outputs", "style_ref", "style_anchor"))
    splits = {str(s) for s in trials["eval_split"] if s} if "eval_split" in trials else set()
    what = (f"{TRAINS_ON} (the held-out split is the reference anchor)" if any(TRAINS_ON in s for s in splits)
            else "every other image of the held-out style reference split")
    lines = [f"style distances (eval/style/kid_eff, kid_rand, gram_rand, stats_*): n = {outputs} outputs against "
             f"{ref} reference style images, {what}",
             f"gap closures (eval/style/*_gap): anchors of n = {outputs} input photos (no-op) and {anchor} held-out "
             "style images (reference)",
             f"content (eval/content/ssim_luma_blur, edge_f1, kid_photo, pgt_* on demo data): n = {outputs} "
             "photo/output pairs"]
    return lines


def _span(values: Any) -> str:
    numbers = sorted({int(v) for v in values if v not in (None, "")})
    if not numbers:
        return "?"
    return str(numbers[0]) if len(numbers) == 1 else f"{numbers[0]}–{numbers[-1]}"


def resolution_sentence(config: dict[str, Any]) -> str:
    """Why the images are scored at this size, in one sentence from the trial config's data and eval sections."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    evaluation = config.get("eval") if isinstance(config.get("eval"), dict) else {}
    size, train = evaluation.get("image_size"), data.get("image_size")
    if not isinstance(size, int) or not isinstance(train, int):
        return ""
    if size == train:
        how = "scored as generated, with no resampling"
    elif size < train:
        how = f"downscaled to {size} px for scoring"
    else:
        how = f"upscaled to {size} px for scoring (no detail beyond the {train} px G produced)"
    calibrated = (f"{size} px is the size the random-VGG evaluators' orderings were calibrated at"
                  if size == CALIBRATION_SIZE else
                  f"the random-VGG evaluators' orderings were calibrated at {CALIBRATION_SIZE} px, not at {size}")
    effnet = (f", and EfficientNet-Lite0 (kid_eff) resamples them to its ImageNet input of {EFFNET_SIZE} px"
              if evaluation.get("efficientnet", True) else "")
    return (f"G's outputs are generated at the training size {train} px (data.image_size) and {how} "
            f"(eval.image_size); {calibrated}{effnet}.")
