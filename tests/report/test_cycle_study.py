"""studies/cycle.yaml end to end on the demo data (tiny schedule): the three objectives train, are logged and are
compared in one report."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_report import E2E_TINY, tables_of

from ablation.study.tracking.client import Tracker

CYCLE = Path(__file__).resolve().parents[2] / "studies" / "cycle.yaml"


@pytest.mark.slow
def test_the_cycle_study_compares_the_three_objectives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ablation.study.runner import RunOptions, run_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABLATE_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ImageNet weights: the demo substitutes random
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = RunOptions(demo=True, overrides=tuple(E2E_TINY.items()), storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                         tracking_uri=tracking, trials_dir=tmp_path / "trials",
                         artifact_root=tmp_path / "mlartifacts", reports_dir=tmp_path / "reports", quiet=True)
    assert run_study(CYCLE, options) == 0
    html = (tmp_path / "reports" / "cycle-demo" / "index.html").read_text()
    assert "CycleGAN would suit photo-to-anime better" in html  # the question, in the write-up's words
    trials = tables_of(html)["trial-table"]
    assert sorted(row[0] for row in trials) == sorted(["animegan", "animegan+cycle", "cyclegan"] * 3)
    effects = tables_of(html)["effects-table"]
    compared = {(row[1], row[3]) for row in effects}  # level, metric: each arm against the baseline (animegan)
    for arm in ("animegan+cycle", "cyclegan"):
        assert {(arm, "eval/style/kid_eff"), (arm, "eval/content/ssim_luma_blur")} <= compared
    # exp1's init phase is computed once per seed and continued by its cycle arm; CycleGAN has none
    assert "shared init phases: 3 of 9 trial runs continued a stored init phase instead of computing it" in html
    tracker = Tracker(tracking)
    runs = {(r.data.tags["ablate.cell_label"], r.data.params["seed"]): r for r in tracker.trial_runs("cycle-demo")}
    assert len(runs) == 9
    cyclegan = runs[("cyclegan", "0")]
    assert cyclegan.data.params["arm"] == "cyclegan"
    config = yaml.safe_load(tracker.download(cyclegan.info.run_id, "config/config.yaml", tmp_path / "dl").read_text())
    assert (config["model"]["objective"], config["optim"]["pool_size"], config["schedule"]["init_epochs"]) == \
        ("cyclegan", 50, 0)
    history = [v for _, v in tracker.history(cyclegan.info.run_id, "loss/g/cycle")]
    assert history and all(v > 0 for v in history)
    assert tracker.history(cyclegan.info.run_id, "loss/g/content") == []  # CycleGAN reads no backbone loss
    assert "loss/init/content" not in tracker.client.get_run(cyclegan.info.run_id).data.metrics
    for label in ("animegan+cycle", "cyclegan"):  # the anime -> photo direction is logged as a sheet of its own
        files = [f.path for f in tracker.client.list_artifacts(runs[(label, "1")].info.run_id, "samples")]
        assert "samples/anime_to_photo.png" in files and "samples/final.png" in files
    files = [f.path for f in tracker.client.list_artifacts(runs[("animegan", "1")].info.run_id, "samples")]
    assert "samples/anime_to_photo.png" not in files
