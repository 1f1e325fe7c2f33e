"""`ablate best --register`: the best trial's generator as an MLflow model (signature, input example, pyfunc
predict), registered with the study's tags and the alias champion, and usable by `ablate stylize`. A run from
before every finished trial logged its model gets one logged; a trial's own model is reused, also through a
real `mlflow server` on SQLite or PostgreSQL (the compose stack's backend)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from services import MlflowServer

from ablation.config import TrainConfig, to_yaml
from ablation.gan.generator import build_generator
from ablation.gan.inference import ImageStylizer, load_generator
from ablation.outcomes import Outcome
from ablation.report.best import register_best
from ablation.report.model_ref import resolve_model
from ablation.study.spec.study import load_study
from ablation.study.tracking.client import TAG_MODEL_URI, Tracker
from ablation.study.tracking.logged_models import log_generator

STUDY = {"name": "reg", "question": "Which style weight?", "base": {"backbone": {"weights": "random"}},
         "method": "grid", "axes": {"loss.style_weight": [3.0, 10.0]}, "seeds": [0, 1],
         "objectives": [{"metric": "eval/style/kid_eff", "direction": "minimize"},
                        {"metric": "eval/content/ssim_luma_blur", "direction": "maximize"}]}


def finished_study(tracker: Tracker, tmp: Path, log_models: bool) -> dict[str, Path]:
    """The study's trials as finished runs with generator.pt and config.yaml; style 10 seed 1 is the best trial.
    `log_models`: each also logs its MLflow model as a finishing trial does (study.work.trial); else the runs are
    as older versions left them, without one."""
    (tmp / "reg.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    study = load_study(tmp / "reg.yaml")
    experiment = tracker.experiment_id("reg")
    parent = tracker.parent_run(experiment, "reg", tmp / "reg.yaml", {})
    weights: dict[str, Path] = {}
    for trial in study.trials:
        folder = tmp / trial.key
        folder.mkdir()
        (folder / "config.yaml").write_text(to_yaml(TrainConfig()))
        torch.manual_seed(trial.seed)
        torch.save(build_generator("v1").state_dict(), folder / "generator.pt")
        run_id = tracker.start_trial_run(experiment, parent, study="reg", run_name=trial.run_name, cell=trial.cell.key,
                                         seed=trial.seed, key=trial.key, label=trial.cell.label,
                                         params=dict(trial.cell.varied), optuna_number=None,
                                         config_yaml=folder / "config.yaml")
        style = dict(trial.cell.varied)["loss.style_weight"]
        tracker.client.log_metric(run_id, "eval/style/kid_eff", 2.0 - (style == 10.0) - 0.5 * trial.seed, step=10)
        tracker.client.log_metric(run_id, "eval/content/ssim_luma_blur", 0.6, step=10)
        tracker.log_artifacts(run_id, [folder / "generator.pt"], "model")
        if log_models:
            log_generator(tracker, run_id, folder / "generator.pt", folder / "config.yaml")
        tracker.finish_run(run_id, Outcome.FINISHED)
        weights[trial.key] = folder / "generator.pt"
    (tmp / "reports" / "reg").mkdir(parents=True)
    (tmp / "reports" / "reg" / "index.html").write_text("<html></html>")
    return weights


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tracker, Path, dict[str, Path]]:
    """Runs from before every finished trial logged its model: `--register` logs the best one's."""
    tmp = tmp_path_factory.mktemp("registry")
    tracker = Tracker(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "mlartifacts")
    return tracker, tmp, finished_study(tracker, tmp, log_models=False)


def test_the_best_trial_is_registered_with_tags_and_alias(store: tuple[Tracker, Path, dict[str, Path]]) -> None:
    import mlflow

    tracker, tmp, weights = store
    spec = load_study(tmp / "reg.yaml").spec
    cell, version, model_uri = register_best(tracker, "reg", spec, "anime-g", tmp / "reports")
    assert version == 1 and cell.label == "style_weight=10" and cell.trials[0].seed == 1
    run = tracker.client.get_run(cell.trials[0].run_id)
    champion = tracker.client.get_model_version_by_alias("anime-g", "champion")
    assert int(champion.version) == 1
    assert champion.tags == {"ablate.study": "reg", "ablate.cell": cell.cell, "ablate.cell_label": "style_weight=10",
                             "ablate.seed": "1", "ablate.run_id": run.info.run_id,
                             "ablate.ranked_by": "eval/style/kid_eff", "objective/eval/style/kid_eff": "0.5",
                             "objective/eval/content/ssim_luma_blur": "0.6",
                             "ablate.report": str((tmp / "reports" / "reg" / "index.html").resolve())}
    assert run.info.status == "FINISHED"  # logging into the finished run left it finished
    assert run.data.tags[TAG_MODEL_URI] == model_uri  # tagged like a trial that logged its own
    # pyfunc: float HWC images in [0, 1] of any size -> the same size, equal to the generator's output
    mlflow.set_tracking_uri(tracker.uri)
    (tmp / "pyfunc").mkdir(exist_ok=True)
    model = mlflow.pyfunc.load_model("models:/anime-g@champion", dst_path=str(tmp / "pyfunc"))
    assert model.metadata.get_input_schema() is not None and model.metadata.get_output_schema() is not None
    image = np.random.default_rng(3).random((2, 40, 24, 3), dtype=np.float32)
    predicted = model.predict(image)
    generator = load_generator(weights[f"{cell.cell}-s1"], TrainConfig(), torch.device("cpu"))
    with torch.no_grad():
        expected = ImageStylizer(generator, "").eval()(torch.from_numpy(image)).numpy()
    assert predicted.shape == (2, 40, 24, 3) and np.allclose(predicted, expected, atol=1e-6)


def test_stylize_loads_a_registered_model_by_alias(store: tuple[Tracker, Path, dict[str, Path]]) -> None:
    tracker, tmp, weights = store
    spec = load_study(tmp / "reg.yaml").spec
    if not tracker.client.search_model_versions("name='anime-g'"):
        register_best(tracker, "reg", spec, "anime-g", tmp / "reports")
    work = tmp / "resolve"
    work.mkdir(exist_ok=True)
    path, config, where = resolve_model("models:/anime-g@champion", tracker, work)
    assert where.startswith("model models:/anime-g@champion (run ") and where.endswith(", weights only)")
    assert config.model.generator == "v1"
    best = [k for k in weights if k.endswith("-s1")]
    state = torch.load(path, weights_only=True)
    assert any(all(torch.equal(state[n], t) for n, t in torch.load(weights[k], weights_only=True).items())
               for k in best)


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_register_and_load_by_alias_through_a_server(backend: str, mlflow_server: Callable[..., MlflowServer],
                                                     request: pytest.FixtureRequest, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """As on the compose stack: a real `mlflow server` (PostgreSQL backend, proxied artifacts) behind the
    tracking URI. The trials log their models through it, `--register` reuses the best one's, and the alias
    loads through the server with pyfunc and with `ablate stylize`'s resolver."""
    import mlflow

    store = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    server = mlflow_server(store)
    tracker = Tracker(server.url)
    weights = finished_study(tracker, tmp_path, log_models=True)
    logged = len(tracker.client.search_logged_models([tracker.experiment_id("reg")]))
    spec = load_study(tmp_path / "reg.yaml").spec
    cell, version, model_uri = register_best(tracker, "reg", spec, "anime-g", tmp_path / "reports")
    assert version == 1 and cell.trials[0].seed == 1
    assert model_uri == tracker.client.get_run(cell.trials[0].run_id).data.tags[TAG_MODEL_URI]
    assert len(tracker.client.search_logged_models([tracker.experiment_id("reg")])) == logged == 4  # reused
    mlflow.set_tracking_uri(server.url)
    image = np.random.default_rng(5).random((1, 30, 50, 3), dtype=np.float32)
    predicted = mlflow.pyfunc.load_model("models:/anime-g@champion", dst_path=str(tmp_path)).predict(image)
    generator = load_generator(weights[f"{cell.cell}-s1"], TrainConfig(), torch.device("cpu"))
    with torch.no_grad():
        expected = ImageStylizer(generator, "").eval()(torch.from_numpy(image)).numpy()
    assert predicted.shape == image.shape and np.allclose(predicted, expected, atol=1e-6)
    (tmp_path / "resolve").mkdir()
    # through a server mlflow downloads the model (G's size, and its code) into a mkdtemp folder nobody removed:
    # every `ablate stylize --model models:/...` left one in /tmp
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path, config, where = resolve_model("models:/anime-g@champion", tracker, tmp_path / "resolve", trust_code=True)
    assert list(scratch.iterdir()) == []
    assert where == "model models:/anime-g@champion (unpickled, its code trusted)"
    assert config.model.generator == "v1"
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(state[n], t) for n, t in torch.load(weights[f"{cell.cell}-s1"], weights_only=True).items())
