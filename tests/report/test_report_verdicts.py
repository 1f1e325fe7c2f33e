"""Verdicts, power and warnings on a rendered report: one store whose effects, divergences, precisions, KID set
sizes and gap anchors are constructed so that every number and sentence below is known in advance."""

from __future__ import annotations

import math

import pytest
import yaml
from scipy import stats as sps
from scipy.optimize import brentq
from test_report import tables_of
from test_stats import power_at

from ablation.evaluation import registry
from ablation.outcomes import Outcome
from ablation.report import plots
from ablation.report.build import build_report
from ablation.report.stats import paired_effect
from ablation.report.text import fmt
from ablation.report.verdicts import Runs, verdict
from ablation.study.spec.study import load_study
from ablation.study.tracking.client import Tracker

SPEC = {
    "name": "verdicts", "question": "Does the style weight matter?", "base": {"backbone": {"weights": "random"}},
    "method": "grid", "axes": {"loss.style_weight": [1.0, 10.0, 30.0]}, "seeds": [0, 1, 2],
    "objectives": [{"metric": "eval/style/kid_rand", "direction": "minimize"},
                   {"metric": "eval/content/ssim_luma_blur", "direction": "maximize"}],
}
TAG_REASON = "anchors inverted: no-op 0.2 is closer to the style set than the reference 0.25"


def metrics_of(style: float, seed: int) -> dict[str, float]:
    """Per seed vs the baseline (style 1):
    style 10: kid -1.000, -1.001 (seeds 0, 1; seed 2 diverges): a clear gain on the survivors; ssim +-0.01.
    style 30: kid +1, +2, +3 (mean 2, sd 1: the hand case of test_stats); ssim -0.01, 0, +0.01."""
    kid = 1.0 + seed + {1.0: 0.0, 10.0: -(1 + 0.001 * seed), 30.0: seed + 1.0}[style]
    ssim = 0.8 + 0.01 * seed + {1.0: 0.0, 10.0: 0.01 if seed == 0 else -0.01, 30.0: 0.01 * (seed - 1)}[style]
    return {"eval/style/kid_rand": kid, "eval/content/ssim_luma_blur": ssim, registry.N_IMAGES: 16.0,
            # kid_rand: inverted anchors; stats_flat: 0.005 apart, below its floor 0.01; gram_rand: the tag says
            "eval/anchor/noop/style/kid_rand": 0.1, "eval/anchor/ref/style/kid_rand": 0.3,
            "eval/style/stats_flat": 0.2, "eval/anchor/noop/style/stats_flat": 0.105,
            "eval/anchor/ref/style/stats_flat": 0.1, "eval/style/gram_rand": 0.5}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("verdicts")
    study_path = tmp / "verdicts.yaml"
    study_path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    study = load_study(study_path)
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({"eval": {"max_images": 16, "image_size": 32}}))
    tracker = Tracker(uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_root=tmp / "mlartifacts")
    exp = tracker.experiment_id("verdicts")
    parent = tracker.parent_run(exp, "verdicts", study_path, {})
    for trial in study.trials:
        varied = dict(trial.cell.varied)
        style = varied["loss.style_weight"]
        diverged = (style, trial.seed) == (10.0, 2)
        run_id = tracker.start_trial_run(
            exp, parent, study="verdicts", run_name=f"{trial.cell.label} seed={trial.seed}", cell=trial.cell.key,
            seed=trial.seed, key=f"{trial.cell.key}-s{trial.seed}", label=trial.cell.label,
            params={**varied, "precision": "bf16" if trial.seed == 2 else "fp32"}, optuna_number=None,
            config_yaml=config)
        logger = tracker.metric_logger(run_id)
        logger.log({"loss/g/adv": math.nan} if diverged else metrics_of(style, trial.seed), 100)
        logger.close()
        tags = {"ablate.diverged_step": "100"} if diverged else {"eval/gap/style/gram_rand": TAG_REASON}
        tracker.finish_run(run_id, Outcome.DIVERGED if diverged else Outcome.FINISHED, tags)
    return build_report("verdicts", tracker, f"sqlite:///{tmp / 'optuna.db'}", tmp / "reports", study).read_text()


def effect(page: str, level: str, metric: str) -> list[str]:
    return next(r for r in tables_of(page)["effects-table"] if r[1] == level and r[3] == metric)


def test_a_gain_on_two_surviving_seeds_is_shown_but_not_tested(page: str) -> None:
    row = effect(page, "10", "eval/style/kid_rand")
    # diffs -1.000, -1.001 on the 2 seeds that finished: shown per seed, with its interval, but 1 df is no test
    # (it used to read "better" at p = 3.18e-4) and it is not in the Holm family
    assert row[5] == "2" and row[7] == "[-1.007, -0.9941]" and row[8] == "-1, -1.001" and row[9] == "2 of 2"
    assert row[10:13] == ["–", "–", "–"]
    assert row[13] == "not tested: 2 paired seeds, fewer than 3 (2 of 3 seeds; 1 of 3 seeds diverged)"
    assert effect(page, "10", "eval/content/ssim_luma_blur")[8:10] == ["0.01, -0.01", "1 of 2"]


def test_holm_family_is_the_tested_comparisons(page: str) -> None:
    # 4 comparisons, 2 with a p (style 30): Holm over 2, and the page says 2, not 4
    assert "Holm correction across the 2 tested comparisons" in page
    assert float(effect(page, "30", "eval/style/kid_rand")[12]) == pytest.approx(2 * 0.07418, abs=1e-3)
    assert "rules out" not in page and "rule out" not in page


def test_a_null_result_says_no_difference_detected_with_its_mde(page: str) -> None:
    row = effect(page, "30", "eval/style/kid_rand")
    # diffs 1, 2, 3: unadjusted CI 2 +- 4.3027 / sqrt 3
    assert row[6] == "2" and row[7] == "[-0.4841, 4.484]" and row[9] == "0 of 3"
    # MDE at Holm's first step (0.05 / 2) on 3 seeds, from kid_rand's sd pooled over both comparisons
    # (sd 1 on 2 df, sd 0.000707 on 1 df), with the chi-square 95 % range of that sd on 3 df
    d = brentq(lambda x: power_at(x, 3, 0.025) - 0.8, 0.5, 100.0)
    pooled = math.sqrt((2 * 1.0 + 1 * 0.0005 ** 2 * 2) / 3)
    low, high = (pooled * math.sqrt(3 / sps.chi2.ppf(q, 3)) for q in (0.975, 0.025))
    assert row[10] == f"{fmt(d * pooled, 3)} ({fmt(d * low, 3)}–{fmt(d * high, 3)})" == "3.78 (2.14–14.1)"
    assert row[13] == "no difference detected (n = 3 seeds)"
    assert "does not differ" not in page and "No level differs" not in page


def test_verdicts_for_untested_merged_and_diverged_comparisons() -> None:
    runs = Runs("seeds", 4, 4, 1, 4, 0)
    same = paired_effect({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.5, 1: 2.5, 2: 3.5})  # +0.5 on every seed: used to be p 0
    assert verdict(same, False, "minimize", Runs("seeds", 3, 3, 0, 3, 0)) == \
        ("", "not tested: identical differences on every seed (zero variance) (n = 3 seeds)")
    gain = paired_effect({0: 2.0, 1: 3.0, 2: 4.0}, {0: 1.0, 1: 1.9, 2: 3.1})
    assert verdict(gain, True, "minimize", runs) == ("better", "better (3 of 4 seeds; 1 of 4 seeds diverged)")
    assert verdict(paired_effect({}, {}), False, "minimize", Runs("seeds", 3, 0, 0, 3, 0), "exp3") == \
        ("", "identical to exp3 in this run (no ImageNet file)")


def test_pareto_points_carry_their_divergence(page: str) -> None:
    points = {r[0]: r for r in tables_of(page)["pareto-table"]}
    # style 10: mean kid of seeds 0, 1 = (0 + 0.999) / 2, ssim (0.81 + 0.80) / 2; it is on the front
    assert points["style_weight=10"][1:] == ["2", "0.4995", "0.805", "yes", "1 of 3 seeds diverged"]
    assert points["style_weight=1"][4:] == ["yes", ""] and points["style_weight=30"][4:] == ["", ""]
    assert "Pareto front: style_weight=1, style_weight=10 (1 of 3 seeds diverged)" in page


def test_setup_shows_precisions_and_warns_on_the_mix(page: str) -> None:
    setup = dict(tables_of(page)["setup-table"])
    assert setup["precision"] == "bf16 (3 trials), fp32 (6 trials)"
    assert ("This study mixes precisions (bf16 (3 trials), fp32 (6 trials)). bf16 autocast changes what the "
            "losses see") in page
    assert "bf16: style_weight=1, style_weight=10, style_weight=30; fp32: style_weight=1" in page


def test_kid_on_few_images_is_warned(page: str) -> None:
    assert "images per scored set (KID) 16" in page
    assert "KID is computed on 16 images per set in at least one trial (fewer than 100)" in page


def test_missing_gap_closures_say_why(page: str) -> None:
    notes = page[page.index('<ul id="gap-notes">'):]
    notes = notes[:notes.index("</ul>")]
    assert ("eval/style/kid_rand_gap</code> missing on 8 of 8 scored trials (style_weight=1, style_weight=10, "
            "style_weight=30): anchors inverted: no-op 0.1 is closer to the style set than the reference 0.3") in notes
    assert "eval/style/stats_flat_gap</code> missing on 8 of 8" in notes
    assert "anchors not separated: |no-op - reference| 0.005 &lt; floor 0.01" in notes
    assert f"eval/style/gram_rand_gap</code> missing on 8 of 8 scored trials (style_weight=1, style_weight=10, " \
           f"style_weight=30): {TAG_REASON}" in notes


def test_glossary_lists_what_each_metric_responds_to(page: str) -> None:
    rows = {r[0]: r for r in tables_of(page)["metrics-table"]}
    for key in ("eval/style/kid_rand", "eval/content/ssim_luma_blur", "eval/style/kid_rand_gap"):
        metric = registry.METRICS[key]
        assert rows[key][1:] == [metric.direction, metric.description, metric.responds_to or "–"]
    assert registry.METRICS["eval/style/kid_rand"].responds_to  # the registry documents it: the page shows it
    assert "loss/g/adv" not in rows  # losses are not quality metrics: only the ones the tables compare


def test_effects_plot_has_a_dot_per_seed(page: str) -> None:
    rows = [{"axis": "style_weight", "level": level, "metric": metric, "direction": "minimize",
             "significant": False, "effect": paired_effect({0: 1.0, 1: 2.0, 2: 3.0}, dict(enumerate(values)))}
            for level, metric, values in (("10", "kid", (1.5, 2.0)), ("30", "kid", (2.0, 2.5, 4.0)),
                                          ("30", "ssim", (1.0, 2.0, 3.0)))]
    fig = plots.effects_figure(rows)
    assert len(fig.axes) == 2  # one panel per metric
    dots = [c.get_offsets()[:, 0].tolist() for ax in fig.axes for c in ax.collections if len(c.get_offsets()) > 1]
    assert dots == [[0.5, 0.0], [1.0, 0.5, 1.0], [0.0, 0.0, 0.0]]  # each seed's difference, in seed order
    assert 'id="effects-plot"' in page
