"""A trial whose checkpoint is cut short (a disk or copy that failed) restarts from step 0 with a warning line,
instead of failing the same way on every retry; the damaged file is kept aside, not deleted."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from scale_helpers import local_options, write_study

from ablation.study.runner import run_study
from ablation.study.spec.study import load_study
from ablation.study.tracking.client import Tracker


@pytest.mark.slow  # one tiny trial: ~40 s on a busy CI machine
def test_a_truncated_checkpoint_restarts_the_trial_from_step_0(tmp_path: Path, data_root: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    study_file = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0], "cut")
    (trial,) = load_study(study_file).trials
    folder = tmp_path / "trials" / "cut" / trial.key
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    torch.save({"step": 3, "generator": {"w": torch.zeros(64, 64)}}, buffer)
    damaged = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    (folder / "checkpoint.pt").write_bytes(damaged)  # a worker's disk failed while the file was copied

    assert run_study(study_file, local_options(tmp_path)) == 0
    runs = Tracker(f"sqlite:///{tmp_path}/mlflow.db").trial_runs("cut")
    assert [(r.info.status, r.data.tags["ablate.outcome"]) for r in runs] == [("FINISHED", "finished")]
    assert (folder / "checkpoint.pt.damaged").read_bytes() == damaged
    warning = (f"warning: {folder / 'checkpoint.pt'}: checkpoint: expected a complete torch file (written by "
               f"torch.save), got <{len(damaged)} bytes, truncated or damaged: ")
    assert f"ablate: {warning}" in capsys.readouterr().err
    log = (folder / "train.log").read_text()
    assert warning in log and "set aside as checkpoint.pt.damaged, the trial restarts from step 0" in log
    assert "resume from step" not in log
