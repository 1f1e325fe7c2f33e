"""`build_report` on a real MLflow store (SQLite + local artifacts) filled through the Tracker, as trials do."""

from __future__ import annotations

import base64
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import yaml

from ablation.outcomes import Outcome
from ablation.report.build import build_report
from ablation.study.spec.study import Study, load_study
from ablation.study.tracking.client import Tracker

XSS = "<script>alert(1)</script>"
STEPS = list(range(10, 210, 10))
GRID_YAML = {
    "name": "grid2x2", "question": "Does a larger style weight change the style distance?",
    "base": {"backbone": {"weights": "random"}},  # the default (imagenet) would need a download
    "method": "grid", "axes": {"loss.style_weight": [3.0, 10.0], "loss.content_weight": [1.5, 3.0]},
    "seeds": [0, 1], "objectives": [{"metric": "eval/style/kid_rand", "direction": "minimize"},
                                    {"metric": "eval/content/ssim_luma_blur", "direction": "maximize"}],
}


def kid(style: float, content: float, seed: int) -> float:
    """Constructed so that style 10 - style 3 is 1 for seed 0 and 3 for seed 1 in every content context."""
    return 1.0 + (style == 10.0) * (1 + 2 * seed) + 0.3 * (content == 3.0) * (1 + seed) + 0.1 * seed


def write_images(folder: Path, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    # as gan/samples.py writes it for val_count 2 at 32 px: 2 rows of [photo | output]; photos equal in every run
    photos = np.random.default_rng(99).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    outputs = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    rows = [np.concatenate(pair, axis=1) for pair in zip(photos, outputs, strict=True)]
    iio.imwrite(folder / "final.png", np.concatenate(rows))
    frames = rng.integers(0, 255, (3, 32, 64, 3), dtype=np.uint8)
    iio.imwrite(folder / "evolution.gif", frames, extension=".gif", duration=200, loop=0)
    return [folder / "final.png", folder / "evolution.gif"]


def log_trial(tracker: Tracker, exp: str, parent: str, name: str, tmp: Path, cell: str, label: str,
              params: dict, seed: int, outcome: str, metrics_at: dict[int, dict[str, float]],
              optuna_number: int | None = None) -> str:
    folder = tmp / "runs" / f"{cell}-{seed}-{outcome}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"root": "dataset", "style": "demo", "image_size": 32, "val_count": 2},
         "schedule": {"epochs": 2, "init_epochs": 1, "batch_size": 2, "steps_per_epoch": 100}}))
    run_id = tracker.start_trial_run(exp, parent, study=name, run_name=f"{label} seed={seed}", cell=cell, seed=seed,
                                     key=f"{cell}-s{seed}", label=label, params=params, optuna_number=optuna_number,
                                     config_yaml=folder / "config.yaml")
    logger = tracker.metric_logger(run_id)
    for step, metrics in metrics_at.items():
        logger.log(metrics, step)
    logger.close()
    tracker.log_artifacts(run_id, write_images(folder / "samples", seed), "samples")
    extra = {"ablate.diverged_step": "150"} if outcome == "diverged" else {}
    tracker.finish_run(run_id, Outcome(outcome), {"ablate.steps": str(STEPS[-1]), **extra})
    return run_id


def curves(style: float, content: float, seed: int, diverged: bool) -> dict[int, dict[str, float]]:
    """V-shaped adversarial loss turning at step 120 (130 for style 10); evaluation at 100 and 200."""
    turn = 130 if style == 10.0 else 120
    out: dict[int, dict[str, float]] = {}
    for step in STEPS:
        if diverged and step > 150:
            break
        out[step] = {"loss/g/adv": abs(step - turn) / 10 + 0.05 * seed, "loss/g/style": 5.0 - step / 100 + seed,
                     "loss/d/total": float("nan") if diverged and step == 150 else 1.0 + seed * 0.1}
        if step in (100, 200) and not diverged:
            out[step].update({"eval/style/kid_rand": kid(style, content, seed) + (0.5 if step == 100 else 0.0),
                              "eval/content/ssim_luma_blur": 0.8 - 0.05 * (style == 10.0) + 0.01 * seed})
    return out


def grid_store(tmp: Path) -> tuple[Tracker, Study]:
    """2x2 grid x 2 seeds; one crashed attempt superseded by its re-run; one diverged trial."""
    study_path = tmp / "grid.yaml"
    study_path.write_text(yaml.safe_dump(GRID_YAML, sort_keys=False))
    study = load_study(study_path)
    tracker = Tracker(uri=f"sqlite:///{tmp / 'mlflow.db'}", artifact_root=tmp / "mlartifacts")
    exp = tracker.experiment_id(study.spec.name)
    parent = tracker.parent_run(exp, study.spec.name, study_path, {"ablate.git_commit": "abc123"})
    for trial in study.trials:
        varied = dict(trial.cell.varied)
        style, content = varied["loss.style_weight"], varied["loss.content_weight"]
        diverged = (style, content, trial.seed) == (3.0, 3.0, 1)
        args = (tracker, exp, parent, study.spec.name, tmp, trial.cell.key, trial.cell.label, varied, trial.seed)
        log_trial(*args, "diverged" if diverged else "finished", curves(style, content, trial.seed, diverged))
        if (style, content, trial.seed) == (10.0, 1.5, 0):  # an abandoned attempt, newer than the finished run
            log_trial(*args, "crashed", {10: {"eval/style/kid_rand": 999.0}})
    return tracker, study


class Tables(HTMLParser):
    """Rows of every <table> by id: [[cell text, ...], ...] (stdlib only; no lxml in the image)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.cell: list[str] | None = None
        self.in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.current = dict(attrs).get("id") or f"table{len(self.tables)}"
            self.tables[self.current] = []
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.current and self.in_body:
            self.tables[self.current].append([])
        elif tag in ("td", "th") and self.current and self.in_body:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None and self.current:
            self.tables[self.current][-1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tbody":
            self.in_body = False

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def tables_of(html: str) -> dict[str, list[list[str]]]:
    parser = Tables()
    parser.feed(html)
    return parser.tables


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("grid")
    tracker, study = grid_store(tmp)
    return build_report(study.spec.name, tracker, f"sqlite:///{tmp / 'optuna.db'}", tmp / "reports", study)


def test_report_file_and_trial_table(grid_report: Path) -> None:
    assert grid_report.name == "index.html" and grid_report.parent.name == "grid2x2"
    html = grid_report.read_text()
    rows = tables_of(html)["trial-table"]
    assert len(rows) == 8
    assert not any("999" in cell for row in rows for cell in row)  # the abandoned attempt does not count
    assert sum(1 for row in rows if row[2] == "diverged at step 150") == 1
    assert "Does a larger style weight change the style distance?" in html


def test_effects_table_has_the_constructed_effect(grid_report: Path) -> None:
    rows = tables_of(grid_report.read_text())["effects-table"]
    row = next(r for r in rows if r[0] == "style_weight" and r[1] == "10" and r[3] == "eval/style/kid_rand")
    # per-seed differences 1 and 3: mean 2, sd sqrt 2, CI 2 +- t(0.975, 1) * sqrt2 / sqrt2 = 2 +- 12.706
    assert row[2] == "3" and row[5] == "2" and row[6] == "2"
    assert row[7] == "[-10.71, 14.71]"
    # per seed: differences 1 and 3 (kid_rand rises: 0 of 2 improve); 2 pairs are shown, not tested
    assert row[8] == "1, 3" and row[9] == "0 of 2" and row[10:13] == ["–", "–", "–"]
    assert len(rows) == 4  # 2 axes x 1 non-baseline level x 2 objectives
    assert all(float(r[12]) >= float(r[11]) for r in rows if r[12] != "–")  # Holm never lowers a p-value
    # style 3 (the baseline) diverged on seed 1 with content 3: 1 of its 4 trials (2 seeds x 2 content cells)
    assert row[13] == "not tested: 2 paired seeds, fewer than 3 (2 of 2 seeds; baseline: 1 of 4 trials diverged)"


def test_sample_sheet_is_a_grid(grid_report: Path) -> None:
    html = grid_report.read_text()
    head = html[html.index('id="sample-grid"'):html.index("</thead>", html.index('id="sample-grid"'))]
    assert head.count('alt="validation photo ') == 2  # the photos once, as the header row
    rows = tables_of(html)["sample-grid"]
    # one row per cell and seed, the baseline cell (style 3, content 1.5) first; the crashed attempt superseded
    assert [r[0] for r in rows] == [f"style_weight={s} content_weight={c} · seed {seed}{d}" for s, c, seed, d in (
        (3, 1.5, 0, ""), (3, 1.5, 1, ""), (3, 3, 0, ""), (3, 3, 1, " · diverged"), (10, 1.5, 0, ""),
        (10, 1.5, 1, ""), (10, 3, 0, ""), (10, 3, 1, ""))]
    start = html.index('id="sample-grid"')
    body = html[html.index("<tbody>", start):html.index("</tbody>", start)]
    trs = body.split("<tr")[1:]
    assert [tr.count('class="tile"') for tr in trs] == [2] * 8  # each run's output under each photo
    assert [tr.count('class="gif"') for tr in trs] == [1, 0] * 4  # the cell's GIF beside its first row
    assert all('rowspan="2"' in tr for tr in trs[::2])
    first = re.search(r'alt="style_weight=3 content_weight=1.5 seed 1 output 2" src="data:image/png;base64,([^"]+)"',
                      html)
    tile = iio.imread(base64.b64decode(first.group(1)))
    assert tile.shape == (32, 32, 3)
    expected = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)[1]
    assert np.array_equal(tile, expected)  # seed 1's second output, cut out of its final.png


def test_embedded_gif_decodes_with_frames(grid_report: Path) -> None:
    html = grid_report.read_text()
    gifs = re.findall(r'src="data:image/gif;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(gifs) == 4  # one per cell
    frames = iio.imread(base64.b64decode(gifs[0]), index=None, extension=".gif")
    assert frames.shape[0] > 1


def test_no_external_urls_and_turning_point(grid_report: Path) -> None:
    html = grid_report.read_text()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert refs and not [r for r in refs if r.startswith(("http://", "https://", "//"))]
    assert "http://" not in html and "https://" not in html
    assert "style_weight=3 content_weight=1.5: step 120" in html
    assert "style_weight=10 content_weight=1.5: step 130" in html


def test_script_names_are_escaped_and_eval_fallback(tmp_path: Path) -> None:
    """Experiment name and arm name `<script>…`; no Study object (report by name); no eval metrics."""
    spec = {"name": "xss", "question": f"Is {XSS} escaped?", "base": {}, "method": "grid",
            "arms": {"base": {}, XSS: {"loss.style_weight": 5.0}}, "seeds": [0],
            "objectives": [{"metric": "eval/style/kid_rand"}, {"metric": "eval/content/ssim_luma_blur",
                                                                "direction": "maximize"}]}
    study_path = tmp_path / "xss.yaml"
    study_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    tracker = Tracker(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "mlartifacts")
    exp = tracker.experiment_id(XSS)
    parent = tracker.parent_run(exp, XSS, study_path, {})
    for arm, seed_shift in (("base", 0.0), (XSS, 1.0)):
        metrics = {s: {"loss/g/style": 3.0 - s / 100 + seed_shift, "loss/g/content": 1.0 + s / 1000} for s in STEPS}
        log_trial(tracker, exp, parent, XSS, tmp_path, f"cell{int(seed_shift)}", arm, {"arm": arm}, 0,
                  "finished", metrics)
    out = build_report(XSS, tracker, f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "reports")
    html = out.read_text()
    assert out.parent.parent == tmp_path / "reports"
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "using loss/g/style, loss/g/content" in html
    effects = tables_of(html)["effects-table"]
    assert effects[0][5] == "1" and effects[0][7] == "1 seed: no interval"
    assert math.isclose(float(effects[0][6]), 1.0)
    assert not (tmp_path / "optuna.db").exists()  # a grid report never creates an Optuna storage


def test_search_study_history_and_importances(tmp_path: Path) -> None:
    """A search: Optuna history and importances from the storage; a diverged (inf) trial does not break them."""
    import optuna

    spec = {"name": "srch", "base": {}, "method": "search", "seeds": [0],
            "search": {"n_trials": 6, "space": {"loss.style_weight": {"low": 1.0, "high": 30.0, "log": True},
                                                "loss.content_weight": {"low": 0.5, "high": 3.0}}},
            "objectives": [{"metric": "eval/style/kid_rand"},
                           {"metric": "eval/content/ssim_luma_blur", "direction": "maximize"}]}
    study_path = tmp_path / "srch.yaml"
    study_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    opt = optuna.create_study(study_name="srch", storage=storage, directions=["minimize", "maximize"])
    dists = {"loss.style_weight": optuna.distributions.FloatDistribution(1.0, 30.0, log=True),
             "loss.content_weight": optuna.distributions.FloatDistribution(0.5, 3.0)}
    tracker = Tracker(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "mlartifacts")
    exp = tracker.experiment_id("srch")
    parent = tracker.parent_run(exp, "srch", study_path, {})
    for i in range(6):
        params = {"loss.style_weight": 1.0 + 5 * i, "loss.content_weight": 0.5 + 0.4 * i}
        kid_value, ssim = (math.inf, -math.inf) if i == 5 else (1.0 / (1 + i), 0.9 - 0.05 * i)
        opt.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=[kid_value, ssim]))
        metrics = {10: {"loss/g/adv": 1.0}} if i == 5 else {10: {"eval/style/kid_rand": kid_value,
                                                                 "eval/content/ssim_luma_blur": ssim}}
        label = f"style_weight={params['loss.style_weight']:g} content_weight={params['loss.content_weight']:g}"
        log_trial(tracker, exp, parent, "srch", tmp_path, f"c{i}", label, params, 0,
                  "diverged" if i == 5 else "finished", metrics, optuna_number=i)
    html = build_report("srch", tracker, storage, tmp_path / "reports").read_text()
    assert 'id="search"' in html and 'alt="optimisation history"' in html
    assert 'alt="parameter importances"' in html or "Importances for" in html
    rows = tables_of(html)["trial-table"]
    assert [r[0] for r in rows][:2] == ["style_weight=1 content_weight=0.5", "style_weight=6 content_weight=0.9"]
    assert len(rows) == 6 and "1 diverged trial(s) scored ±inf" in html
    assert "No levels to compare" in html  # a search has no baseline


E2E_TINY = {
    "data.image_size": 32, "data.val_count": 2, "model.d_ch": 8, "schedule.epochs": 2, "schedule.init_epochs": 1,
    "schedule.steps_per_epoch": 2, "schedule.batch_size": 2, "schedule.log_every": 1, "schedule.eval_every": 0,
    "eval.image_size": 32, "eval.max_images": 8, "eval.kid_subsets": 2, "eval.kid_subset_size": 4,
    "runtime.device": "cpu", "backbone.weights": "random",  # the default (imagenet) would need a download
}


@pytest.mark.slow
def test_end_to_end_tiny_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real (tiny) study through run_study on the demo data, then its report."""
    from ablation.study.runner import RunOptions, run_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABLATE_DEMO_DIR", str(tmp_path / "demo"))
    study_path = tmp_path / "tiny.yaml"
    study_path.write_text(yaml.safe_dump({
        "name": "tiny", "question": "Does the tiny study produce a report?", "base": {}, "method": "grid",
        "axes": {"loss.style_weight": [3.0, 10.0]}, "seeds": [0, 1],
        "objectives": [{"metric": "eval/style/kid_rand"},
                       {"metric": "eval/content/ssim_luma_blur", "direction": "maximize"}]}))
    options = RunOptions(demo=True, overrides=tuple(E2E_TINY.items()), storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", trials_dir=tmp_path / "trials",
                         artifact_root=tmp_path / "mlartifacts", reports_dir=tmp_path / "reports", quiet=True, fuse=4)
    assert run_study(study_path, options) == 0
    html = (tmp_path / "reports" / "tiny-demo" / "index.html").read_text()
    assert len(tables_of(html)["trial-table"]) == 4
    assert len(re.findall(r'src="data:image/gif;base64,', html)) == 2
    assert len(tables_of(html)["effects-table"]) == 2
    # what the trial itself logs reaches the report: its precision param and the evaluator's eval/n_images
    assert "fp32 (4 trials)" in html
    # --fuse 4: the four trials trained as one fused array, and the setup says so
    assert ("1 trial array(s) (one fused model each):<ul><li>style_weight=3 seed=0 + style_weight=3 seed=1 + "
            "style_weight=10 seed=0 + style_weight=10 seed=1</li></ul>") in html
    assert "KID is computed on" in html and "images per set in at least one trial (fewer than 100)" in html
    # the demo's deviations from the faithful config, each with its reason (overrides of this test excluded)
    assert "<li>optim.init_lr 0.001 instead of 0.0001: so that 100 init steps reconstruct" in html
    assert "<li>backbone.arch efficientnet_lite1 instead of vgg19: EfficientNet-Lite1 with the ImageNet weights" in html
    assert "data.image_size" not in html.split("demo preset")[1].split("</ul>")[0]  # --set 32 for both: not one
    # the style weight is not read by the init phase: one per seed, continued by the other level; the balance
    # probe computed seed 0's before the trials, so only one trial computes its own
    assert "shared init phases: 3 of 4 trial runs continued a stored init phase instead of computing it" in html
    # the loss balance: G's and D's shares at the first and last GAN step of each cell, a figure per cell, and
    # the probe's flag (this test's random EfficientNet-Lite1 is silent: the style axis cannot act) in the summary
    balance_rows = tables_of(html)["balance-table"]
    assert [row[:2] for row in balance_rows] == [
        ["style_weight=3", "first GAN step"], ["style_weight=3", "last GAN step"],
        ["style_weight=10", "first GAN step"], ["style_weight=10", "last GAN step"]]
    assert len(re.findall(r'alt="gradient shares ', html)) == 2
    summary = html.split('id="summary"')[1].split("</ul>")[0]
    assert "Vacuous axis: loss.style_weight: the style term is" in summary
