"""The report's setup states n per evaluation metric and why the evaluation runs at its resolution (issue 23),
both from what the trials logged (the evaluator's eval/n/* tags) and their config, on a real MLflow store."""

from __future__ import annotations

import pytest
import yaml

from ablation.config import to_yaml
from ablation.evaluation.evaluator import ANCHOR_RULE
from ablation.outcomes import Outcome
from ablation.report.build import build_report
from ablation.study.spec.study import load_study
from ablation.study.tracking.client import Tracker

OBJECTIVES = [{"metric": "eval/style/kid_eff", "direction": "minimize"},
              {"metric": "eval/content/ssim_luma_blur", "direction": "maximize"}]
# what the evaluator logs on the public Hayao data: 1613 training style images, 179 held out, 128 outputs
TAGS = {"eval/n/outputs": "128", "eval/n/photos": "128", "eval/n/style_ref": "1613", "eval/n/style_anchor": "128",
        "eval/n/size": "128", "eval/op/split": ANCHOR_RULE}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("sizes")
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "sizes", "base": {"backbone": {"weights": "random"}},
                                    "axes": {"loss.style_weight": [3.0, 10.0]}, "seeds": [0, 1],
                                    "objectives": OBJECTIVES}))
    study = load_study(path)
    tracker = Tracker(uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_root=tmp / "mlartifacts")
    exp = tracker.experiment_id(study.spec.name)
    parent = tracker.parent_run(exp, study.spec.name, path, {})
    for trial in study.trials:
        config = tmp / trial.key / "config.yaml"  # logged as config/config.yaml, as trials log it
        config.parent.mkdir()
        config.write_text(to_yaml(trial.config))  # data 256 px, eval 128 px, EfficientNet on: the defaults
        run_id = tracker.start_trial_run(exp, parent, study=study.spec.name, run_name=trial.run_name,
                                         cell=trial.cell.key, seed=trial.seed, key=trial.key, label=trial.cell.label,
                                         params=dict(trial.cell.varied), optuna_number=None,
                                         config_yaml=config)
        logger = tracker.metric_logger(run_id)
        logger.log({"eval/style/kid_eff": 1.0 + trial.seed, "eval/content/ssim_luma_blur": 0.5,
                    "eval/n_images": 128.0}, 10)
        logger.close()
        tracker.finish_run(run_id, Outcome.FINISHED, {"ablate.steps": "10", **TAGS})
    return build_report(study.spec.name, tracker, f"sqlite:///{tmp / 'optuna.db'}", tmp / "reports",
                        study).read_text()


def test_setup_states_n_per_metric(page: str) -> None:
    block = page[page.index('<ul id="eval-n">'):page.index("</ul>", page.index('<ul id="eval-n">'))]
    assert ("n = 128 outputs against 1613 reference style images, the style images G trains on (the held-out "
            "split is the reference anchor)") in block
    assert "anchors of n = 128 input photos (no-op) and 128 held-out style images (reference)" in block
    assert "n = 128 photo/output pairs" in block
    assert "fewer than 100" not in page  # no noisy-KID warning at n = 128


def test_setup_justifies_the_resolution_from_the_config(page: str) -> None:
    assert ('<td id="eval-resolution">G&#39;s outputs are generated at the training size 256 px (data.image_size) '
            "and downscaled to 128 px for scoring (eval.image_size); 128 px is the size the random-VGG evaluators&#39; "
            "orderings were calibrated at, and EfficientNet-Lite0 (kid_eff) resamples them to its ImageNet input of "
            "224 px.</td>") in page
