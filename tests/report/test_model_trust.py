"""`--model models:/NAME@ALIAS` reads the registered version's source run's generator.pt with torch's
weights-only reader: a model pickle on the tracking server that would run code is never unpickled, unless the
user asks for it with --trust-model-code. A real `mlflow server` with proxied artifacts, as in compose."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from services import MlflowServer

from ablation.config import TrainConfig, to_yaml
from ablation.gan.generator import build_generator
from ablation.outcomes import Outcome
from ablation.report.model_ref import resolve_model
from ablation.study.tracking.client import Tracker
from ablation.study.tracking.logged_models import log_generator

pytestmark = [pytest.mark.slow, pytest.mark.services]  # a server, a logged model, two loads: ~1 min


class TouchOnLoad:
    """Unpickling it creates `marker`: stands for any code a writer of the tracking server could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[Path]]:
        return Path.touch, (self.marker,)


def test_a_registered_model_is_read_as_weights_unless_its_code_is_trusted(
        mlflow_server: Callable[..., MlflowServer], tmp_path: Path) -> None:
    server = mlflow_server()
    tracker = Tracker(server.url)
    experiment = tracker.experiment_id("trust")
    run_id = tracker.client.create_run(experiment).info.run_id
    (tmp_path / "config.yaml").write_text(to_yaml(TrainConfig()))
    torch.manual_seed(7)
    torch.save(build_generator("v1").state_dict(), tmp_path / "generator.pt")
    tracker.log_artifacts(run_id, [tmp_path / "generator.pt"], "model")
    tracker.log_artifacts(run_id, [tmp_path / "config.yaml"], "config")
    model_uri = log_generator(tracker, run_id, tmp_path / "generator.pt", tmp_path / "config.yaml")
    tracker.finish_run(run_id, Outcome.FINISHED)
    assert tracker.register_model(model_uri, "anime-g", {}, "champion") == 1

    # someone who can write to the server's artifact store replaces the model's pickle
    (pickled,) = [p for p in server.artifacts_dir.rglob("*.pth") if p.is_file()]
    marker = tmp_path / "code-ran"
    torch.save(TouchOnLoad(marker), pickled)  # torch's format: what mlflow.pytorch's full unpickler reads

    (tmp_path / "plain").mkdir()
    weights, config, where = resolve_model("models:/anime-g@champion", tracker, tmp_path / "plain")
    assert where == f"model models:/anime-g@champion (run {run_id}, weights only)"
    assert config.model.generator == "v1" and not marker.exists()
    loaded = torch.load(weights, weights_only=True)
    expected = torch.load(tmp_path / "generator.pt", weights_only=True)
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    (tmp_path / "by-number").mkdir()
    assert resolve_model("models:/anime-g/1", tracker, tmp_path / "by-number")[2].endswith(f"(run {run_id}, "
                                                                                          "weights only)")

    (tmp_path / "logged").mkdir()  # the logged model's own URI (a trial run's ablate.model_uri tag)
    _, _, where = resolve_model(model_uri, tracker, tmp_path / "logged")
    assert where == f"model {model_uri} (run {run_id}, weights only)"
    assert not marker.exists()

    # the trust boundary, shown: loading the MLflow model itself runs what its pickle says
    (tmp_path / "trusted").mkdir()
    with pytest.raises(Exception):  # noqa: B017, PT011 - the pickle held no model; what matters is the marker
        resolve_model("models:/anime-g@champion", tracker, tmp_path / "trusted", trust_code=True)
    assert marker.exists()
