"""`ablate stylize` never overwrites an input and never lets two inputs write one output: refused in one line,
exit 2, nothing written (issue 24 item 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_stylize import pixels, run, trial_folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("out", ["photos", "./photos/", "photos/../photos"])
def test_out_onto_the_input_folder_is_refused(tmp_path: Path, out: str) -> None:
    trial = trial_folder(tmp_path)
    (tmp_path / "photos").mkdir()
    Image.fromarray(pixels(1, 16, 24)).save(tmp_path / "photos" / "a.png")
    before = _snapshot(tmp_path)
    result = run("photos", "--model", str(trial / "generator.pt"), "--out", out, "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "would overwrite the input" in lines[0] and "a.png" in lines[0], result.stderr
    assert _snapshot(tmp_path) == before  # nothing written, nothing overwritten


def test_two_inputs_with_one_name_are_refused(tmp_path: Path) -> None:
    trial = trial_folder(tmp_path)
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        Image.fromarray(pixels(seed, 16, 24)).save(tmp_path / folder / "x.png")
    result = run("a/x.png", "b/x.png", "--model", str(trial / "generator.pt"), "--out", "out", "--device", "cpu",
                 cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "would both write" in lines[0] and "x.png" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_distinct_outputs_in_a_subfolder_of_the_input_are_fine(tmp_path: Path) -> None:
    trial = trial_folder(tmp_path)
    (tmp_path / "photos").mkdir()
    Image.fromarray(pixels(1, 16, 24)).save(tmp_path / "photos" / "a.png")
    result = run("photos/a.png", "--model", str(trial / "generator.pt"), "--out", "photos/styled", "--device", "cpu",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "photos" / "a.png")), pixels(1, 16, 24))
    assert (tmp_path / "photos" / "styled" / "a.png").exists()
