"""Every Tracker call a worker or a report makes waits out an MLflow outage (real server, stopped and restarted).

Found by the chaos test (postgresql, CI of 6fbd956): a worker that joined while MLflow was down crashed with a
traceback in `parent_run` (its search, create and artifact calls were not retried), although every other call
of a worker waits the outage out."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from services import MlflowServer

from ablation.study.tracking import client as tracking
from ablation.study.tracking.client import TAG_ROLE, TAG_STUDY, Tracker

pytestmark = [pytest.mark.slow, pytest.mark.services]  # an MLflow server restarted 6 times: ~100 s
DOWN_S = 3.0  # longer than a few retries of RETRY_SECONDS, far shorter than GIVE_UP_S


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    monkeypatch.setattr(tracking, "RETRY_SECONDS", 0.2)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the client's own backoff would add minutes
    mlflow = MlflowServer(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts", tmp_path / "server.log")
    mlflow.start()
    yield mlflow
    mlflow.stop()


def down_for_a_while(server: MlflowServer) -> threading.Timer:
    """Stop the server now and start it again (same port, same stores) DOWN_S later; join before stopping again."""
    server.stop()
    restart = threading.Timer(DOWN_S, server.start)
    restart.start()
    return restart


def test_joining_a_study_while_mlflow_is_away_waits_and_creates_one_parent(
        server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text("name: away\n")
    tracker = Tracker(server.url)
    experiment_id = tracker.experiment_id("away")

    restart = down_for_a_while(server)
    parent_id = tracker.parent_run(experiment_id, "away", study_yaml, {"ablate.host": "h"})
    restart.join()

    err = capsys.readouterr().err
    assert f"MLflow at {server.url} unreachable" in err and "is back; find parent run done" in err, err
    client = MlflowClient(server.url)
    parents = client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = 'parent'")
    assert [r.info.run_id for r in parents] == [parent_id]
    assert parents[0].data.tags[TAG_STUDY] == "away" and parents[0].data.tags["ablate.host"] == "h"
    assert [a.path for a in client.list_artifacts(parent_id, "study")] == ["study/study.yaml"]
    # a second worker joining finds the same parent and does not log the study file again
    assert tracker.parent_run(experiment_id, "away", study_yaml, {}) == parent_id
    assert len(client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = 'parent'")) == 1


def test_a_parent_left_without_its_study_file_gets_it(server: MlflowServer, tmp_path: Path) -> None:
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text("name: half\n")
    tracker = Tracker(server.url)
    experiment_id = tracker.experiment_id("half")
    client = MlflowClient(server.url)
    # a launcher stopped between creating the parent and logging the study file
    orphan = client.create_run(experiment_id, tags={TAG_ROLE: "parent", TAG_STUDY: "half"}).info.run_id
    assert tracker.parent_run(experiment_id, "half", study_yaml, {}) == orphan
    assert [a.path for a in client.list_artifacts(orphan, "study")] == ["study/study.yaml"]


def test_report_queries_wait_out_an_outage(server: MlflowServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text("name: q\n")
    tracker = Tracker(server.url)
    experiment_id = tracker.experiment_id("q")
    parent_id = tracker.parent_run(experiment_id, "q", study_yaml, {})
    client = MlflowClient(server.url)
    trial = client.create_run(experiment_id, tags={TAG_ROLE: "trial", TAG_STUDY: "q"}).info.run_id
    for step in range(3):
        client.log_metric(trial, "loss/g/total", float(step) / 2, step=step)

    queries = {"trials": lambda: [r.info.run_id for r in tracker.trial_runs("q")],
               "parent": lambda: tracker.parent_run_of("q").info.run_id,
               "history": lambda: tracker.history(trial, "loss/g/total"),
               "download": lambda: tracker.download(parent_id, "study", tmp_path / "got")}
    answers = {}
    for name, query in queries.items():
        restart = down_for_a_while(server)
        answers[name] = query()
        restart.join()  # up again before the next stop
    assert answers["trials"] == [trial] and answers["parent"] == parent_id
    assert answers["history"] == [(0, 0.0), (1, 0.5), (2, 1.0)]
    folder = answers["download"]
    assert folder is not None and (folder / "study.yaml").read_text() == "name: q\n"
    err = capsys.readouterr().err
    for what in ("get experiment", "get metric history", "download artifact"):
        assert f"is back; {what} done" in err, err
