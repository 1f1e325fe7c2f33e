"""What `ablate run` prints while it works: plain lines per finished trial when stdout is a file or pipe."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scale_helpers import write_study

from ablation.console import LineProgress, study_progress
from ablation.data.demo import build_demo_dataset


def test_plain_line_per_finished_trial_when_piped(tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    build_demo_dataset(data_root, image_size=32, n_photo=8, n_style=8, n_ref=8, n_val=4)
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0, 6.0]}, [0], "lines",
                        schedule={"epochs": 1, "init_epochs": 0})
    cmd = [sys.executable, "-m", "ablation.cli", "run", str(study), "--storage", f"sqlite:///{tmp_path}/o.db",
           "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--trials-dir", str(tmp_path / "trials"), "--no-report"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("[")]
    # one line per trial, in the order they ended: the trial, its outcome, the objective values, the time
    assert len(lines) == 2, out.stdout
    for done, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"\[{done}/2\] style_weight=[36] seed=0: finished, loss/g/style [0-9.e+-]+, "
                            r"loss/g/content [0-9.e+-]+ \(\d+ s\) \[\d+\.\d min elapsed, eta \d+:\d\d "
                            r"\(measured step times; shared init phases counted once\)\]", line), line
    assert lines[-1].endswith("eta 0:00 (measured step times; shared init phases counted once)]")
    assert "━" not in out.stdout  # no rich bar drawn into the pipe


def test_terminal_gets_bars_and_a_file_gets_lines(tmp_path: Path) -> None:
    log = (tmp_path / "log.txt").open("w")
    with log as handle, study_progress("s", 3, 1, lambda: "eta 1:05", out=handle) as progress:
        assert isinstance(progress, LineProgress)
        progress.step(5, 10)  # per-step updates print nothing
        progress.trial_done("a seed=0: finished (1 s)", 2, 3)
        progress.trial_done(None, 2, 3)  # an empty-queue ask is not a trial
    text = (tmp_path / "log.txt").read_text().splitlines()
    assert text[0] == "s: 1/3 trials done"
    assert len(text) == 2 and text[1].startswith("[2/3] a seed=0: finished (1 s) [")
    assert text[1].endswith(" min elapsed, eta 1:05]")


@pytest.mark.parametrize("outcome", ["finished", "diverged", "pruned", "failed", "interrupted", "crashed"])
def test_outcome_text_is_the_mlflow_tag_value(outcome: str) -> None:
    from ablation.outcomes import Outcome

    member = Outcome(outcome)
    assert member == outcome and f"{member}" == outcome  # tags and report columns keep their text
    assert member.mlflow_status == {"finished": "FINISHED", "diverged": "FINISHED", "pruned": "FINISHED",
                                    "failed": "FAILED", "crashed": "FAILED", "interrupted": "KILLED"}[outcome]
    assert member.done == (outcome in ("finished", "diverged", "pruned"))
