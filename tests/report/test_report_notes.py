"""The setup notes on small hand-built frames: old runs without a precision, KID set sizes from their fallbacks,
the gap-closure reasons, and inferred axes that must not include the precision."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ablation.evaluation import registry
from ablation.report.data import M, P, _axes
from ablation.report.notes import _gap_reason, gap_notes, kid_images, precision_summary

KID = M + "eval/style/kid_rand"


def test_old_runs_have_unknown_precision_and_do_not_count_as_a_mix() -> None:
    old = pd.DataFrame({"label": ["a", "b", "c"], P + "precision": [None, "fp32", "fp32"]})
    assert precision_summary(old) == (
        "fp32 (2 trials), unknown (1 trial); unknown = logged before runs recorded their precision", "")
    assert precision_summary(pd.DataFrame({"label": ["a"]}))[0].startswith("unknown (1 trial)")  # no column at all
    mixed = pd.DataFrame({"label": ["a", "b"], P + "precision": ["fp32", "bf16"]})
    assert precision_summary(mixed)[1].startswith("This study mixes precisions (bf16 (1 trial), fp32 (1 trial))")


def test_kid_set_size_falls_back_to_the_max_images_param_then_the_config() -> None:
    logged = pd.DataFrame({KID: [0.1, 0.2], M + registry.N_IMAGES: [120.0, 120.0]})
    assert kid_images(logged, 16) == ("120", "")  # the logged count wins over a small cap
    param = pd.DataFrame({KID: [0.1, 0.2], P + "eval.max_images": ["64", "200"]})
    text, warning = kid_images(param, 256)
    assert text == "64–200 (for 2 trial(s) the cap eval.max_images: they did not log eval/n_images)"
    assert warning.startswith("KID is computed on 64 images per set in at least one trial (fewer than 100)")
    assert kid_images(pd.DataFrame({KID: [0.1]}), 256) == (
        "256 (for 1 trial(s) the cap eval.max_images: they did not log eval/n_images)", "")
    assert kid_images(pd.DataFrame({KID: [0.1]}), None) == ("unknown", "")
    # no KID logged (evaluation off): nothing to warn about, whatever the cap
    assert kid_images(pd.DataFrame({M + "loss/g/adv": [1.0]}), 8) == ("–", "")


@pytest.mark.parametrize(("noop", "ref", "floor", "reason"), [
    (0.1, 0.3, 1e-3, "anchors inverted: no-op 0.1 is closer to the style set than the reference 0.3"),
    (0.105, 0.1, 0.01, "anchors not separated: |no-op - reference| 0.005 < floor 0.01"),
    (0.75, 0.5, 0.25, "anchors not separated: |no-op - reference| 0.25 = floor 0.25"),  # exact in binary
    (math.nan, 0.1, 0.01, "anchors not finite: no-op nan, reference 0.1"),
    (0.5, 0.1, 0.01, ""),  # separated and in order: the gap is defined
])
def test_gap_reason_hand_cases(noop: float, ref: float, floor: float, reason: str) -> None:
    assert _gap_reason(noop, ref, floor) == reason


def test_gap_notes_only_for_scored_trials_without_a_gap() -> None:
    noop, ref = (M + registry.anchor_key(which, "eval/style/kid_rand") for which in ("noop", "ref"))
    trials = pd.DataFrame({"label": ["a", "b", "c"], KID: [0.2, 0.2, math.nan], M + "eval/style/kid_rand_gap":
                           [math.nan, 0.4, math.nan], noop: [0.1, 0.5, 0.1], ref: [0.3, 0.1, 0.3]})
    # a: missing with inverted anchors; b: has its gap; c: never scored kid_rand (no reason to give)
    assert gap_notes(trials) == [{"metric": "eval/style/kid_rand_gap", "missing": 1, "scored": 2, "cells": ["a"],
                                  "reason": "anchors inverted: no-op 0.1 is closer to the style set than the "
                                            "reference 0.3"}]


def test_inferred_axes_skip_the_precision_param() -> None:
    """A report by name without a study YAML infers axes from params: fp32/bf16 is how it ran, not an axis."""
    trials = pd.DataFrame({P + "loss.style_weight": ["1", "3"], P + "precision": ["fp32", "bf16"],
                           P + "seed": ["0", "0"]})
    assert [a.name for a in _axes(None, trials)] == ["loss.style_weight"]
