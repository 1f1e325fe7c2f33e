"""Issue 12 items 8 and 9: infrastructure errors are not the trial's failure.

A full disk (ENOSPC) or MLflow away for longer than the tracker waits stops the worker with one line and
puts the trial back in the queue, retries untouched; the next run resumes it and loses no metric. An error
raised while recording a failure does not escape the error handler.
"""

import errno
from pathlib import Path

import optuna
import pytest
from scale_helpers import local_options, metrics_rows, write_study
from services import MlflowServer

from ablation.errors import UserError
from ablation.study.runner import RunOptions, run_study
from ablation.study.tracking.client import Tracker


def _trials(tmp: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    opt = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/optuna.db")
    return sorted(opt.get_trials(deepcopy=False), key=lambda t: t.number)


def test_a_full_disk_stops_the_worker_and_requeues_the_trial(tmp_path: Path, data_root: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import ablation.gan.steps

    monkeypatch.chdir(tmp_path)
    real_g_losses = ablation.gan.steps.g_losses

    def disk_full_for_weight_6(config, terms, d_fake):  # an injected fault: the machine's, not the trial's
        if config.loss.style_weight == 6.0:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "trials"))
        return real_g_losses(config, terms, d_fake)

    monkeypatch.setattr("ablation.gan.steps.g_losses", disk_full_for_weight_6)
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [6.0, 3.0]}, [0], "disk")
    with pytest.raises(UserError) as stopped:
        run_study(study, local_options(tmp_path, fuse=1))
    assert str(stopped.value) == (
        f"worker stopped by an infrastructure error: ENOSPC: No space left on device: {tmp_path / 'trials'}; its "
        "trial went back to the queue with its retries untouched (fix the machine, then run the worker again)")

    first, untouched, again = _trials(tmp_path, "disk")  # trials 0 and 1 queued, 2 re-queues 0
    assert untouched.state.name == "WAITING" and "retry_of" not in untouched.user_attrs  # the worker stopped
    assert (first.state.name, first.user_attrs["outcome"]) == ("FAIL", "interrupted")
    reason = f"infrastructure error: ENOSPC: No space left on device: {tmp_path / 'trials'}"
    assert first.user_attrs["error"] == reason
    assert again.state.name == "WAITING" and again.user_attrs["retry_of"] == first.number
    assert again.user_attrs["requeue_reason"] == reason
    assert again.user_attrs["retries_left"] == first.user_attrs["retries_left"] == 1  # no retry used
    (run,) = Tracker(f"sqlite:///{tmp_path}/mlflow.db").trial_runs("disk")
    assert run.info.status == "FAILED" and run.data.tags["ablate.abandoned"] == reason

    monkeypatch.setattr("ablation.gan.steps.g_losses", real_g_losses)  # the disk has room again
    assert run_study(study, local_options(tmp_path, fuse=1)) == 0
    complete = [t for t in _trials(tmp_path, "disk") if t.state.name == "COMPLETE"]
    assert sorted(t.number for t in complete) == [untouched.number, again.number]


def test_an_error_while_recording_a_failure_does_not_escape(tmp_path: Path, data_root: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import ablation.gan.steps
    import ablation.study.work.trial

    monkeypatch.chdir(tmp_path)
    real_note = ablation.study.work.trial._note

    def bug(config, terms, d_fake):
        raise RuntimeError("injected fault")

    def note_refused_after_the_fault(path: Path, text: str) -> None:  # the log became unwritable meanwhile
        if text.startswith("failed:"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real_note(path, text)

    monkeypatch.setattr("ablation.gan.steps.g_losses", bug)
    monkeypatch.setattr("ablation.study.work.trial._note", note_refused_after_the_fault)
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [6.0]}, [0], "handler")
    assert run_study(study, local_options(tmp_path, fuse=1)) == 0  # before: the PermissionError escaped

    trials = _trials(tmp_path, "handler")
    assert [(t.state.name, t.user_attrs["outcome"]) for t in trials] == [("FAIL", "failed")] * 2  # + its retry
    for trial in trials:
        assert "RuntimeError: injected fault" in trial.user_attrs["error"]
        log = tmp_path / "trials" / "handler" / trial.user_attrs["trial_key"] / "train.log"
        assert trial.user_attrs["error"].rstrip().endswith(
            f"while recording that failure: EACCES: Permission denied: {log}")


@pytest.mark.services
@pytest.mark.slow
def test_mlflow_away_longer_than_the_tracker_waits_requeues_and_loses_no_metric(
        tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ablation.gan.steps

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ablation.study.tracking.client.RETRY_SECONDS", 0.2)
    monkeypatch.setattr("ablation.study.tracking.client.GIVE_UP_S", 2.0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the client's own backoff would add minutes
    server = MlflowServer(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts", tmp_path / "server.log")
    server.start()
    real_g_losses = ablation.gan.steps.g_losses
    calls = [0]

    def g_losses_stopping_mlflow_at_step_3(config, terms, d_fake):
        calls[0] += 1
        if calls[0] == 3:
            server.stop()  # away for the rest of this run: longer than the tracker waits (2 s)
        return real_g_losses(config, terms, d_fake)

    monkeypatch.setattr("ablation.gan.steps.g_losses", g_losses_stopping_mlflow_at_step_3)
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0], "away",
                        schedule={"epochs": 15})
    options = RunOptions(**{**local_options(tmp_path, fuse=1).__dict__, "tracking_uri": server.url})
    try:
        with pytest.raises(UserError, match=r"^worker stopped by an infrastructure error: MLflow unreachable for "
                                            r"longer than the tracker waits \("):
            run_study(study, options)
        stopped, again = _trials(tmp_path, "away")
        assert (stopped.state.name, stopped.user_attrs["outcome"]) == ("FAIL", "interrupted")
        assert again.state.name == "WAITING" and again.user_attrs["retry_of"] == stopped.number
        assert again.user_attrs["retries_left"] == 1
        assert again.user_attrs["mlflow_unsynced"]["run_id"] == stopped.user_attrs["mlflow_run_id"]

        server.start()  # MLflow is back
        monkeypatch.setattr("ablation.gan.steps.g_losses", real_g_losses)
        assert run_study(study, options) == 0  # resume, replay metrics.jsonl, finish
        key, folder = stopped.user_attrs["trial_key"], tmp_path / "trials" / "away" / stopped.user_attrs["trial_key"]
        log = (folder / "train.log").read_text()
        assert "stopped by an infrastructure error: ConnectionError: " in log and "resume from step" in log
        tracker = Tracker(server.url)
        runs = {r.info.status: r for r in tracker.trial_runs("away") if r.data.tags["ablate.trial_key"] == key}
        assert sorted(runs) == ["FAILED", "FINISHED"]  # the stopped attempt's run, marked by the next launch
        assert runs["FAILED"].data.tags["ablate.abandoned"].startswith("infrastructure error: ConnectionError: ")
        history = tracker.history(runs["FINISHED"].info.run_id, "loss/g/total")
        local = [row["step"] for row in metrics_rows(folder) if "loss/g/total" in row]
        assert [step for step, _ in history] == local == sorted(set(local))  # every step once, none lost
        assert local[-1] == 30  # 15 epochs x 2 steps
    finally:
        server.stop()


def test_an_error_while_recording_an_ended_trial_is_not_swallowed(tmp_path: Path, data_root: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the trainer's error handler took it for a training failure of a member that had already ended,
    skipped it, and the worker went on with the trial RUNNING in Optuna and its folder locked until exit."""
    monkeypatch.chdir(tmp_path)

    def tell_with_a_bug(*args: object) -> None:
        raise RuntimeError("a bug while recording")

    monkeypatch.setattr("ablation.study.queue.lease.tell", tell_with_a_bug)
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [6.0]}, [0], "record")
    with pytest.raises(RuntimeError, match="^a bug while recording$"):
        run_study(study, local_options(tmp_path, fuse=1))
    assert [t.state.name for t in _trials(tmp_path, "record")] == ["RUNNING"]  # for a reaper, as after a crash


@pytest.mark.parametrize(("error", "expected"), [
    (OSError(errno.ENOSPC, "No space left on device", "/data/c.pt"), "ENOSPC: No space left on device: /data/c.pt"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "EDQUOT: Disk quota exceeded"),
    (OSError(errno.ESTALE, "Stale file handle", "/nfs/trials"), "ESTALE: Stale file handle: /nfs/trials"),
    (OSError(errno.EIO, "Input/output error"), "EIO: Input/output error"),
    (MemoryError(), "MemoryError"),
])
def test_infrastructure_errors_are_told_by_type_and_errno(error: BaseException, expected: str) -> None:
    import torch

    from ablation.study.outages import infrastructure_error, one_line

    try:
        try:
            raise error
        except BaseException as inner:
            raise RuntimeError("while saving a checkpoint") from inner  # the chain is searched, not just the top
    except RuntimeError as outer:
        assert one_line(infrastructure_error(outer)) == expected
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    assert infrastructure_error(oom("CUDA out of memory. Tried to allocate 2.00 GiB")) is not None
    for own_fault in (RuntimeError("CUDA out of memory"), ValueError("bad shape"),  # text never decides
                      OSError(errno.ENOENT, "No such file or directory"), PermissionError(errno.EACCES, "denied")):
        assert infrastructure_error(own_fault) is None
