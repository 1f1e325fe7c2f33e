"""`ablate best`: cells ranked by their mean over finished seeds, trials with run ids and weights; JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import grid_store

from ablation.errors import UserError
from ablation.report.best import rank


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
    from ablation.study.tracking import Tracker

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
                                "value", "run", "id", "weights"]
    first, second = lines[2].split(), lines[4].split()
    assert first[:4] == ["1", "style_weight=3", "content_weight=1.5", "2"] and first[4:6] == ["1.05", "[0.4147,"]
    assert first[7:9] == ["0", "1"] and first[10] == f"runs:/{first[9]}/model/generator.pt"  # seed 0, kid 1.0
    assert second[:4] == ["2", "style_weight=3", "content_weight=3", "1"] and "1.3 (one seed)" in lines[4]
    assert len(lines) == 5  # --top 2: two cells, three trials
    data = json.loads(cli(store, "--json").stdout)
    assert data["metric"] == "eval/style/kid_rand" and [c["rank"] for c in data["cells"]] == [1, 2, 3, 4]
    assert data["cells"][3]["trials"][0]["weights"].endswith("/model/generator.pt")
    assert data["cells"][3]["trials"][0]["model"] is None  # these runs logged no MLflow model


def test_an_unknown_metric_is_one_line(store: Path) -> None:
    from ablation.study.tracking import Tracker

    with pytest.raises(UserError) as info:
        rank(Tracker(f"sqlite:///{store / 'mlflow.db'}"), "grid2x2", metric="eval/style/nope")
    assert "--metric" in str(info.value) and "eval/style/nope" in str(info.value)
    out = cli(store, "--metric", "eval/style/nope")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.strip()]) == 1, out.stderr
