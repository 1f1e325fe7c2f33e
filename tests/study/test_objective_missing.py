"""Issue 12 item 10: an objective a finished trial never logged is an error, not a feasible worst value.

The case: `eval/content/pgt_psnr` needs pseudo ground truth (`val_target/` in the data); a dataset without
it trains and evaluates fine, but never logs that metric. Before the fix the trial was COMPLETE with value
-inf (the objective maximises): a real, feasible result to Optuna and to the report.
"""

import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from scale_helpers import TINY_BASE, local_options

from ablation.study.runner import run_study
from ablation.study.tracking.client import Tracker

pytestmark = pytest.mark.slow

EVAL = {"enabled": True, "image_size": 32, "max_images": 8, "evaluator_seeds": [1001], "kid_subsets": 2,
        "kid_subset_size": 4, "efficientnet": False}


def _study(tmp_path: Path, data_root: Path, extra: dict) -> Path:
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    shutil.rmtree(data / "val_target")  # no pseudo ground truth: pgt metrics are never logged
    base = yaml.safe_load(yaml.safe_dump(TINY_BASE))
    base["data"]["root"] = str(data)
    base["eval"] = EVAL
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "nopgt", "base": base, "seeds": [0], **extra,
                                    "objectives": [{"metric": "eval/content/pgt_psnr"},
                                                   {"metric": "eval/content/ssim_luma_blur"}]}))
    return path


@pytest.mark.parametrize("method", ["grid", "search"])
def test_objective_never_logged_is_an_error(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], method: str) -> None:
    monkeypatch.chdir(tmp_path)
    extra = {"axes": {"loss.style_weight": [3.0]}} if method == "grid" else {
        "method": "search", "search": {"sampler": "random", "n_trials": 1, "pruner": "none",
                                       "space": {"loss.style_weight": {"low": 1.0, "high": 10.0}}}}
    assert run_study(_study(tmp_path, data_root, extra), local_options(tmp_path)) == 0  # failures: reported, not fatal

    trials = optuna.load_study(study_name="nopgt", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    # a grid trial's automatic retry resumes the final checkpoint and measures nothing either
    assert [t.state.name for t in trials] == (["FAIL", "FAIL"] if method == "grid" else ["FAIL"])
    for trial in trials:
        assert trial.values is None and trial.user_attrs["outcome"] == "failed"
        assert trial.user_attrs["error"].startswith("ObjectiveNotLogged: objective eval/content/pgt_psnr was "
                                                    "never logged as a finite value (logged: {'eval/content/"
                                                    "ssim_luma_blur': ")
    err = capsys.readouterr().err
    assert "failed: ObjectiveNotLogged: objective eval/content/pgt_psnr was never logged" in err
    assert "(log in " in err and "traceback in" not in err  # no exception: nothing to look up but the log

    runs = Tracker(f"sqlite:///{tmp_path}/mlflow.db").trial_runs("nopgt")
    assert len(runs) == len(trials) and {r.info.status for r in runs} == {"FAILED"}
    for run in runs:
        assert run.data.tags["ablate.outcome"] == "failed"
        assert run.data.tags["ablate.error"].startswith("ObjectiveNotLogged: objective eval/content/pgt_psnr")
        assert "eval/content/pgt_psnr" not in run.data.metrics and "eval/content/ssim_luma_blur" in run.data.metrics
