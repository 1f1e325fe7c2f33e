"""Every finished trial logs its generator as an MLflow model (issue 13): a real tiny study through `run_study` on
SQLite; the model loads with pyfunc here and in a fresh process (which needs nothing of this checkout), its run
is tagged with the URI, the report lists it per cell, and `ablate best --register` reuses it. A model that cannot
be logged leaves a tag and the trial; an MLflow outage past the tracker's bound is raised, not swallowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scale_helpers import local_options, write_study
from services import free_port
from test_report import tables_of

from ablation.config import TrainConfig
from ablation.data.demo import build_demo_dataset
from ablation.gan.generator import build_generator
from ablation.gan.inference import ImageStylizer, load_generator
from ablation.report.best import as_json, rank, register_best
from ablation.report.build import build_report
from ablation.report.model_ref import resolve_model
from ablation.study.outages import infrastructure_error
from ablation.study.runner import run_study
from ablation.study.spec.study import load_study
from ablation.study.tracking.client import TAG_MODEL_ERROR, TAG_MODEL_URI, Tracker, mlflow_unavailable
from ablation.study.tracking.logged_models import log_trial_model

# A fresh interpreter outside the checkout: loads the logged model with pyfunc and predicts; then what the CLI
# `mlflow models predict -m URI -i FILE -t json --env-manager local` runs (its whole body is this call); and
# says where `ablation` came from and whether the model's copy of it holds more than the generator needs.
FRESH = """
import json, sys
import mlflow, numpy as np
uri, folder = sys.argv[1], sys.argv[2]
model = mlflow.pyfunc.load_model(uri, dst_path=folder)
out = model.predict(np.random.default_rng(1).random((1, 27, 45, 3), dtype=np.float32))
with open(folder + "/input.json", "w") as handle:
    json.dump({"inputs": np.zeros((1, 16, 24, 3)).tolist()}, handle)
mlflow.models.predict(model_uri=uri, input_path=folder + "/input.json", content_type="json",
                      output_path=folder + "/output.json", env_manager="local")
import ablation, os
code = os.path.dirname(ablation.__file__)
print(json.dumps({"shape": list(out.shape), "ablation": ablation.__file__, "study": os.path.isdir(code + "/study")}))
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tracker, list]:
    """Two cells x one seed of the tiny training, finished, with the report built."""
    tmp = tmp_path_factory.mktemp("logged")
    data = tmp / "data"
    build_demo_dataset(data, image_size=32, n_photo=8, n_style=8, n_ref=8, n_val=4)
    path = write_study(tmp / "study.yaml", data, {"loss.style_weight": [3.0, 9.0]}, [0], name="logged")
    cwd = Path.cwd()
    os.chdir(tmp)  # the runner's relative defaults (.ablate/) stay in tmp
    try:
        assert run_study(path, local_options(tmp)) == 0
    finally:
        os.chdir(cwd)
    tracker = Tracker(f"sqlite:///{tmp / 'mlflow.db'}")
    build_report("logged", tracker, f"sqlite:///{tmp / 'optuna.db'}", tmp / "reports", load_study(path))
    return tmp, tracker, tracker.trial_runs("logged")


def test_each_finished_trial_logged_its_generator(study: tuple[Path, Tracker, list]) -> None:
    import mlflow

    tmp, tracker, runs = study
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    mlflow.set_tracking_uri(tracker.uri)
    image = np.random.default_rng(3).random((2, 37, 21, 3), dtype=np.float32)  # sides not multiples of 8
    for run in runs:
        uri = run.data.tags[TAG_MODEL_URI]
        logged = tracker.client.get_logged_model(uri.removeprefix("models:/"))
        assert logged.name == "generator" and logged.source_run_id == run.info.run_id and logged.status == "READY"
        assert logged.creation_timestamp <= run.info.end_time  # logged before the run ended: its duration holds
        assert run.outputs.model_outputs[0].model_id == logged.model_id  # the run page lists it
        assert TAG_MODEL_ERROR not in run.data.tags
        # model/generator.pt stays for `ablate stylize` and `ablate export`; the model computes what it does
        weights = tracker.download(run.info.run_id, "model/generator.pt", tmp / "weights" / run.info.run_id)
        assert weights is not None
        # dst_path: mlflow would otherwise leave its download (G's size) in a temp folder nobody removes
        (tmp / "pyfunc").mkdir(exist_ok=True)
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/generator", dst_path=str(tmp / "pyfunc"))
        assert model.metadata.get_input_schema() is not None and model.metadata.get_output_schema() is not None
        assert model.metadata.saved_input_example_info is not None  # `mlflow models predict` has an example
        predicted = model.predict(image)
        generator = load_generator(weights, TrainConfig(), torch.device("cpu"))
        with torch.no_grad():
            expected = ImageStylizer(generator, "").eval()(torch.from_numpy(image)).numpy()
        assert predicted.shape == image.shape and np.allclose(predicted, expected, atol=1e-5)


@pytest.mark.slow  # a fresh interpreter importing mlflow and torch: about 30 s here
def test_the_model_loads_in_a_fresh_process_without_the_checkout(study: tuple[Path, Tracker, list]) -> None:
    """The model carries the ablation modules it needs (code_paths): a fresh interpreter started outside this
    checkout, without PYTHONPATH, loads and predicts with that copy; so does what `mlflow models predict` runs."""
    tmp, tracker, runs = study
    uri = runs[0].data.tags[TAG_MODEL_URI]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = tracker.uri
    out = subprocess.run([sys.executable, "-c", FRESH, uri, str(tmp)], cwd=tmp, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["shape"] == [1, 27, 45, 3]
    assert "/code/ablation/" in answer["ablation"]  # the model's own copy, not this checkout's
    assert not answer["study"]  # only the modules the generator imports travel with it (study.tracking.logged_models)
    predictions = np.asarray(json.loads((tmp / "output.json").read_text())["predictions"])
    assert predictions.shape == (1, 16, 24, 3) and 0.0 <= predictions.min() <= predictions.max() <= 1.0


def test_the_report_lists_each_cells_model(study: tuple[Path, Tracker, list]) -> None:
    tmp, _, runs = study
    rows = {row[0]: row for row in tables_of((tmp / "reports" / "logged" / "index.html").read_text())["cells-table"]}
    assert len(rows) == 2
    for run in runs:
        assert rows[run.data.tags["ablate.cell_label"]][-1] == f"0: {run.data.tags[TAG_MODEL_URI]}"


def test_best_names_each_trials_model(study: tuple[Path, Tracker, list]) -> None:
    _, tracker, runs = study
    _, _, cells = rank(tracker, "logged")
    uris = {run.info.run_id: run.data.tags[TAG_MODEL_URI] for run in runs}
    assert sorted(t.run_id for c in cells for t in c.trials) == sorted(uris)
    assert all(t.model == uris[t.run_id] and t.model.startswith("models:/") for c in cells for t in c.trials)
    assert as_json("m", "minimize", cells)["cells"][0]["trials"][0]["model"] == cells[0].trials[0].model


def test_register_reuses_the_trials_model(study: tuple[Path, Tracker, list]) -> None:
    import mlflow

    tmp, tracker, runs = study
    experiment = runs[0].info.experiment_id
    before = len(tracker.client.search_logged_models([experiment]))
    cell, version, model_uri = register_best(tracker, "logged", None, "logged-g", tmp / "reports")
    best = tracker.client.get_run(cell.trials[0].run_id)
    assert model_uri == best.data.tags[TAG_MODEL_URI] and version == 1
    assert len(tracker.client.search_logged_models([experiment])) == before  # nothing logged again
    mlflow.set_tracking_uri(tracker.uri)
    (tmp / "registered").mkdir(exist_ok=True)
    model = mlflow.pyfunc.load_model("models:/logged-g@champion", dst_path=str(tmp / "registered"))
    predicted = model.predict(np.zeros((1, 8, 8, 3), np.float32))
    assert predicted.shape == (1, 8, 8, 3)


def test_loading_a_model_leaves_the_import_path_as_it_was(study: tuple[Path, Tracker, list], tmp_path: Path) -> None:
    """mlflow put the model's code folder (a partial copy of ablation) first on sys.path and left it there: the
    slow run's next spawned worker imported that copy and died (No module named 'ablation.gan.backbone')."""
    _, tracker, runs = study
    before = list(sys.path)
    weights, _, where = resolve_model(runs[0].data.tags[TAG_MODEL_URI], tracker, tmp_path, trust_code=True)
    assert weights.is_file() and where.startswith("model models:/")
    assert sys.path == before
    spawned = subprocess.run([sys.executable, "-c", "import ablation.study.spec, ablation; print(ablation.__file__)"],
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True,
                             text=True, timeout=300)  # a spawned child starts from the parent's sys.path
    assert spawned.returncode == 0, spawned.stderr[-2000:]
    assert "/code/ablation/" not in spawned.stdout


def test_a_model_that_cannot_be_logged_is_a_tag(study: tuple[Path, Tracker, list], tmp_path: Path) -> None:
    _, tracker, runs = study
    run_id = tracker.client.create_run(runs[0].info.experiment_id).info.run_id  # not a trial: the study is untouched
    (tmp_path / "generator.pt").write_bytes(b"not a state dict")
    (tmp_path / "config.yaml").write_text("{}\n")
    tags = log_trial_model(tracker, run_id, tmp_path / "generator.pt", tmp_path / "config.yaml")
    # the loader's one-line refusal of a file that is no state dict (gan/checkpoint.py load_torch_file)
    assert list(tags) == [TAG_MODEL_ERROR] and tags[TAG_MODEL_ERROR].startswith("UserError: ")
    assert "generator.pt: weights: expected" in tags[TAG_MODEL_ERROR]
    assert TAG_MODEL_URI not in tracker.client.get_run(run_id).data.tags


def test_an_mlflow_outage_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No server at the tracking URI for longer than the tracker waits: the trial's worker must see it (the
    trial goes back to the queue), not a model_error tag on a run that cannot be reached anyway."""
    monkeypatch.setattr("ablation.study.tracking.client.RETRY_SECONDS", 0.2)
    monkeypatch.setattr("ablation.study.tracking.client.GIVE_UP_S", 1.0)
    tracker = Tracker(f"http://127.0.0.1:{free_port()}")
    torch.save(build_generator("v1").state_dict(), tmp_path / "generator.pt")
    (tmp_path / "config.yaml").write_text("{}\n")
    with pytest.raises(Exception) as info:
        log_trial_model(tracker, "0" * 32, tmp_path / "generator.pt", tmp_path / "config.yaml")
    assert infrastructure_error(info.value, mlflow_unavailable) is not None
