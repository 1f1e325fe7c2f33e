"""An earlier run is never overwritten by accident (issue 24 item 3): `ablate train --out EXISTING` without
`--resume` refuses before touching a file, and a refused `--resume` leaves config.yaml describing the old weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_trainer import domains, tiny  # noqa: F401  (domains is a fixture)

from ablation.config import to_yaml
from ablation.data.streams import Domains
from ablation.errors import UserError
from ablation.gan.trainer import train


def _ablate_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablation.cli", "train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_train_over_an_earlier_run_refuses_before_touching_it(tmp_path: Path, domains: Domains) -> None:  # noqa: F811
    run = tmp_path / "run"
    logged: list[int] = []
    train(tiny(), run, lambda metrics, step: logged.append(step), domains=domains)
    from ablation.console import MetricsFile

    metrics = MetricsFile(run / "metrics.jsonl", resume=False)  # what `ablate train` logs beside the run
    metrics.write({"loss/g/total": 1.0}, 1)
    before = _files(run)
    assert (run / "generator.pt").exists() and before["metrics.jsonl"]
    # a missing dataset: before the fix metrics.jsonl was emptied first, then the dataset error came
    out = _ablate_train("--out", "run", "--set", "data.root=nowhere", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out" in lines[0] and "--resume" in lines[0] and "metrics.jsonl" in lines[0], \
        out.stderr
    assert _files(run) == before


@pytest.mark.slow
def test_refused_resume_keeps_the_runs_config(tmp_path: Path, domains: Domains) -> None:  # noqa: F811
    first = tiny(**{"schedule.epochs": 2})
    train(first, tmp_path, lambda metrics, step: None, domains=domains)
    written = (tmp_path / "config.yaml").read_text()
    assert written == to_yaml(first)
    other = tiny(**{"schedule.epochs": 2, "model.generator": "v2"})
    with pytest.raises(UserError, match="a different config"):
        train(other, tmp_path, lambda metrics, step: None, domains=domains, resume=True)
    assert (tmp_path / "config.yaml").read_text() == written  # stylize still builds the generator the weights fit
