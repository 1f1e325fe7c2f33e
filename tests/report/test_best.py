"""`ablate best`: cells ranked by their mean over finished seeds, trials with run ids and weights; JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_report import grid_store, tables_of

from ablation.config import TrainConfig, to_yaml
from ablation.errors import UserError
from ablation.gan.generator import build_generator
from ablation.outcomes import Outcome
from ablation.report.best import rank, register_best, table_lines
from ablation.report.build import build_report
from ablation.study.spec.schema import StudySpec
from ablation.study.spec.study import load_study
from ablation.study.tracking.client import Tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("best")
    grid_store(tmp)
    return tmp


def cli(store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablation.cli", "best", "grid2x2", *args,
                           "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}"], cwd=store, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_cells_are_ranked_by_their_mean_over_finished_seeds(store: Path) -> None:
    from ablation.study.tracking.client import Tracker

    tracker = Tracker(f"sqlite:///{store / 'mlflow.db'}")
    # the study's first objective (from the YAML its parent run kept): kid_rand, minimised; final values are
    # 1 + (style 10) (1 + 2 seed) + 0.3 (content 3) (1 + seed) + 0.1 seed (tests/report/test_report.py `kid`)
    metric, direction, cells = rank(tracker, "grid2x2")
    assert (metric, direction) == ("eval/style/kid_rand", "minimize")
    assert [c.label for c in cells] == ["style_weight=3 content_weight=1.5", "style_weight=3 content_weight=3",
                                        "style_weight=10 content_weight=1.5", "style_weight=10 content_weight=3"]
    assert [round(c.mean, 6) for c in cells] == [1.05, 1.3, 3.05, 3.5]
    # style 3 / content 3 seed 1 diverged: one finished seed, no interval; the crashed newer attempt of
    # style 10 / content 1.5 seed 0 (kid 999) is superseded by its finished run
    assert len(cells[1].trials) == 1 and cells[1].ci_low == cells[1].ci_high == 1.3
    assert [(t.seed, round(t.value, 6)) for t in cells[2].trials] == [(0, 2.0), (1, 4.1)]
    assert cells[0].ci_low < 1.05 < cells[0].ci_high
    assert all(t.weights == f"runs:/{t.run_id}/model/generator.pt" for c in cells for t in c.trials)
    # any registry metric, with its own direction: SSIM is maximised, so style 3 ranks first again
    _, direction, by_ssim = rank(tracker, "grid2x2", metric="eval/content/ssim_luma_blur", top=2)
    assert direction == "maximize" and len(by_ssim) == 2 and by_ssim[0].label.startswith("style_weight=3")


def test_cli_table_and_json(store: Path) -> None:
    out = cli(store, "--top", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "eval/style/kid_rand (minimize; cells by their mean over seeds)"
    assert lines[1].split() == ["rank", "cell", "seeds", "mean", "eval/style/kid_rand", "[95%", "CI]", "seed",
                                "value", "run", "id", "weights", "note"]
    first, second = lines[2].split(), lines[4].split()
    assert first[:4] == ["1", "style_weight=3", "content_weight=1.5", "2"] and first[4:6] == ["1.05", "[0.4147,"]
    assert first[7:9] == ["0", "1"] and first[10] == f"runs:/{first[9]}/model/generator.pt"  # seed 0, kid 1.0
    assert second[:4] == ["2", "style_weight=3", "content_weight=3", "1"] and "1.3 (one seed)" in lines[4]
    assert lines[4].endswith("1 of 2 seeds diverged; one seed on one side: cannot be told apart from rank 1")
    assert lines[5] == ("rank 1 (style_weight=3 content_weight=1.5) vs rank 2 (style_weight=3 content_weight=3): one "
                        "seed on one side: cannot be told apart from rank 1 - the order at the top is within the "
                        "seeds' noise")
    assert len(lines) == 6  # --top 2: two cells, three trials, and whether their order means anything
    data = json.loads(cli(store, "--json").stdout)
    assert data["metric"] == "eval/style/kid_rand" and [c["rank"] for c in data["cells"]] == [1, 2, 3, 4]
    assert data["cells"][3]["trials"][0]["weights"].endswith("/model/generator.pt")
    assert data["cells"][3]["trials"][0]["model"] is None  # these runs logged no MLflow model


def test_an_unknown_metric_is_one_line(store: Path) -> None:
    from ablation.study.tracking.client import Tracker

    with pytest.raises(UserError) as info:
        rank(Tracker(f"sqlite:///{store / 'mlflow.db'}"), "grid2x2", metric="eval/style/nope")
    assert "--metric" in str(info.value) and "eval/style/nope" in str(info.value)
    out = cli(store, "--metric", "eval/style/nope")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.strip()]) == 1, out.stderr


DIVERGED_STUDY = {"name": "div", "question": "Which style weight?", "base": {"backbone": {"weights": "random"}},
                  "method": "grid", "axes": {"loss.style_weight": [1.0, 3.0, 10.0]}, "seeds": [0, 1, 2],
                  "objectives": [{"metric": "eval/style/kid_rand", "direction": "minimize"}]}


@pytest.fixture(scope="module")
def diverged_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StudySpec]:
    """style 1 ranks first on its 2 survivors (seed 2 diverged); style 3's seed 1 diverged and a re-run
    (--rerun-diverged) finished it; style 10 never diverged but is worse on every seed."""
    tmp = tmp_path_factory.mktemp("best-diverged")
    (tmp / "div.yaml").write_text(yaml.safe_dump(DIVERGED_STUDY, sort_keys=False))
    study = load_study(tmp / "div.yaml")
    tracker = Tracker(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "mlartifacts")
    experiment = tracker.experiment_id("div")
    parent = tracker.parent_run(experiment, "div", tmp / "div.yaml", {})
    (tmp / "config.yaml").write_text(to_yaml(TrainConfig()))
    for trial in study.trials:
        style = dict(trial.cell.varied)["loss.style_weight"]
        attempts = [Outcome.DIVERGED, Outcome.FINISHED] if (style, trial.seed) == (3.0, 1) else \
            [Outcome.DIVERGED] if (style, trial.seed) == (1.0, 2) else [Outcome.FINISHED]
        for outcome in attempts:
            run_id = tracker.start_trial_run(experiment, parent, study="div", run_name=trial.run_name,
                                             cell=trial.cell.key, seed=trial.seed, key=trial.key,
                                             label=trial.cell.label, params=dict(trial.cell.varied),
                                             optuna_number=None, config_yaml=tmp / "config.yaml")
            if outcome == Outcome.FINISHED:
                tracker.client.log_metric(run_id, "eval/style/kid_rand",
                                          {1.0: 0.5, 3.0: 0.55, 10.0: 2.0}[style] + 0.1 * trial.seed
                                          + (0.02 * trial.seed ** 2 if style == 10.0 else 0.0), step=10)
                if style != 10.0:  # a metric only the two diverged cells logged: nothing eligible ranks on it
                    tracker.client.log_metric(run_id, "eval/content/ssim_luma_blur", 0.5, step=10)
            if outcome == Outcome.FINISHED and (style == 10.0 or (style, trial.seed) == (1.0, 0)):
                # the weights `--register` logs as a model: only the trials a registration below may pick
                folder = tmp / trial.key
                folder.mkdir()
                torch.save(build_generator("v1").state_dict(), folder / "generator.pt")
                tracker.log_artifacts(run_id, [folder / "generator.pt"], "model")
            tracker.finish_run(run_id, outcome)
            time.sleep(0.02)  # attempts are told apart by their start time
    return tmp, study.spec


def test_best_shows_divergence_and_whether_rank_1_is_distinguishable(diverged_store: tuple[Path, StudySpec]
                                                                     ) -> None:
    tmp, spec = diverged_store
    _, _, cells = rank(Tracker(f"sqlite:///{tmp / 'mlflow.db'}"), "div", spec)
    assert [(c.label, c.seeds, c.diverged, c.eligible) for c in cells] == [
        ("style_weight=1", 3, 1, False), ("style_weight=3", 3, 0, False), ("style_weight=10", 3, 0, True)]
    assert cells[0].divergence() == "1 of 3 seeds diverged"
    assert cells[1].retried == ["seed 1 diverged on attempt 1, finished on attempt 2"]
    # style 3 - style 1 on seeds 0, 1: +0.05 on both, identical: no interval, so no order claimed
    assert cells[1].versus_first == ("2 paired seed(s), identical differences on every seed (zero variance): "
                                     "cannot be told apart from rank 1")
    # style 10 - style 1: +1.5, +1.52: the interval [1.383, 1.637] is above 0
    assert cells[2].versus_first == ("Δ vs rank 1 +1.51 [1.383, 1.637] (paired by seed, 2 seeds, unadjusted 95% "
                                     "t-interval): worse than rank 1")
    lines = table_lines("eval/style/kid_rand", "minimize", cells)
    assert lines[-1].startswith("rank 1 (style_weight=1) vs rank 2 (style_weight=3): 2 paired seed(s)")
    assert lines[-1].endswith("the order at the top is within the seeds' noise")


@pytest.mark.slow
def test_register_passes_over_a_diverged_champion(diverged_store: tuple[Path, StudySpec]) -> None:
    tmp, spec = diverged_store
    tracker = Tracker(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "mlartifacts")
    # style 1 ranks first on its survivors and style 3 was retried after diverging: style 10 is the champion
    cell, version, _ = register_best(tracker, "div", spec, "anime-g", tmp / "reports")
    assert (cell.label, cell.trials[0].seed, version) == ("style_weight=10", 0, 1)
    champion = tracker.client.get_model_version_by_alias("anime-g", "champion")
    assert champion.tags["ablate.cell_label"] == "style_weight=10"
    # --allow-diverged: the first-ranked cell, on its best surviving seed
    cell, version, _ = register_best(tracker, "div", spec, "anime-g", tmp / "reports", allow_diverged=True)
    assert (cell.label, cell.trials[0].seed, version) == ("style_weight=1", 0, 2)


def test_register_with_no_eligible_cell_is_one_line(diverged_store: tuple[Path, StudySpec]) -> None:
    tmp, spec = diverged_store
    with pytest.raises(UserError) as info:
        register_best(Tracker(f"sqlite:///{tmp / 'mlflow.db'}"), "div", spec, "other", tmp / "reports",
                      "eval/content/ssim_luma_blur")
    assert str(info.value) == ("study div: --register: expected a ranked cell none of whose seeds diverged (or "
                               "--allow-diverged), got 'style_weight=1: 1 of 3 seeds diverged; style_weight=3: "
                               "seed 1 diverged on attempt 1, finished on attempt 2'")


def test_rerun_keeps_the_earlier_divergence_in_the_report(diverged_store: tuple[Path, StudySpec]) -> None:
    tmp, spec = diverged_store
    tracker = Tracker(f"sqlite:///{tmp / 'mlflow.db'}")
    html = build_report("div", tracker, f"sqlite:///{tmp / 'optuna.db'}", tmp / "reports",
                        load_study(tmp / "div.yaml")).read_text()
    rows = {(r[0], r[1]): r[2] for r in tables_of(html)["trial-table"]}
    assert rows[("style_weight=3", "1")] == "finished (diverged on attempt 1, finished on attempt 2)"
    assert rows[("style_weight=3", "0")] == "finished"
