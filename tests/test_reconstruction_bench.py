"""benchmarks/reconstruction.py, the README's evidence for the demo's pseudo-ground-truth criterion, at 2 steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_reconstruction_benchmark_scores_anchors_and_curves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABLATE_DEMO_DIR", str(tmp_path / "demo"))
    out = tmp_path / "reconstruction.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reconstruction.py"), "--steps", "2",
                           "--every", "1", "--generators", "v2", "--objectives", "pixel L1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    anchors = {row["mapping"]: row for row in result["anchors"]}
    copy = anchors["identity (copy)"]
    assert copy["psnr_photo"] == 100.0  # metrics.PSNR_MAX_DB: the copy is exact
    assert 10.0 < copy["pgt_psnr"] < 40.0
    # noisier copies are further from the target, and the stylizer's own colour step is nearer than the copy
    noisy = [anchors[f"copy + noise sigma {s}"]["pgt_psnr"] for s in (4, 8, 16, 32)]
    assert noisy == sorted(noisy, reverse=True) and noisy[0] < copy["pgt_psnr"]
    assert anchors["stylizer's colour boost"]["pgt_psnr"] > copy["pgt_psnr"]
    [curve] = result["curves"]
    assert (curve["generator"], curve["objective"]) == ("v2", "pixel L1")
    assert [row["step"] for row in curve["rows"]] == [1, 2]
    assert all(0.0 < row["pgt_psnr"] < copy["pgt_psnr"] for row in curve["rows"])
    assert "v2  pixel L1 step     2" in done.stdout


def test_reconstruction_benchmark_refuses_an_unknown_objective(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reconstruction.py"), "--objectives", "ssim",
                           "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "invalid choice: 'ssim'" in done.stderr and "'pixel L1'" in done.stderr
    assert not (tmp_path / "r.json").exists()
