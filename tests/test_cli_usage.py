"""Usage errors (a missing argument, a bad value, an unknown option or command) are one line on stderr and exit
2 whatever typer raises them as: typer >= 0.29 raises its vendored click's exceptions, older typer click's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def ablate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("args", "line"), [
    (["run"], "error: Missing argument 'study'. (ablate run --help)"),
    (["run", "--workers", "abc", "s.yaml"],
     "error: Invalid value for '--workers': Input should be a valid integer, unable to parse string as an integer "
     "(ablate run --help)"),
    (["best", "--top", "0", "s"],
     "error: Invalid value for '--top': Input should be greater than or equal to 1 (ablate best --help)"),
    (["bogus"], "error: No such command 'bogus'. (ablate --help)"),
    (["data", "bogus"], "error: No such command 'bogus'. (ablate data --help)"),
])
def test_usage_error_is_one_line_exit_2(tmp_path: Path, args: list[str], line: str) -> None:
    out = ablate(*args, cwd=tmp_path)
    assert (out.returncode, out.stderr.splitlines(), out.stdout) == (2, [line], "")


def test_unknown_option_names_the_option_and_the_help(tmp_path: Path) -> None:
    out = ablate("run", "--bogus", "s.yaml", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: No such option: --bogus") and out.stderr.endswith("(ablate run --help)\n")
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_bare_command_prints_its_help_and_exits_2(tmp_path: Path) -> None:
    out = ablate(cwd=tmp_path)
    shown = out.stdout + out.stderr  # rich help goes to stdout, plain click help to stderr
    assert out.returncode == 2 and "Traceback" not in shown
    assert "Usage: ablate" in shown and " run " in shown and " data " in shown


def _cut_short(path: Path) -> Path:
    """A torch file cut at half its length: a copy or a disk that failed mid-file."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(64, 64)}, buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.mark.slow  # each command opens the default MLflow store first: ~10 s apiece on a busy CI machine
@pytest.mark.parametrize(("damage", "args"), [
    ("empty", ["export", "generator.pt", "--out", "g.onnx"]),
    ("truncated", ["stylize", "x.png", "--model", "generator.pt", "--out", "styled"]),
])
def test_a_damaged_generator_file_is_one_line_exit_2(tmp_path: Path, damage: str, args: list[str]) -> None:
    weights = tmp_path / "generator.pt"
    if damage == "empty":
        weights.write_bytes(b"")
    else:
        _cut_short(weights)
    size = weights.stat().st_size
    out = ablate(*args, "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)  # a local file asks no server
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.strip().startswith(f"error: generator.pt: weights: expected a complete torch file (written "
                                         f"by torch.save), got <{size} bytes, truncated or damaged: "), out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt"]  # no output was started
