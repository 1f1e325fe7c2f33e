"""`ablate export`: the generator as ONNX (run in onnxruntime), as a torch.export program and as TorchScript,
each with any batch size, height and width, equal to PyTorch; the export path of the TF1 resize equals the
training path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ablation.config import TrainConfig, to_yaml, with_overrides
from ablation.gan import generator as G
from ablation.gan.export import ExportedStylizer, export_generator
from ablation.gan.generator import build_generator

SIZES = [(1, 64, 48), (2, 37, 53), (3, 100, 72)]  # batch, H, W: a multiple of 8, odd sides, larger than traced


def _reference(generator: torch.nn.Module, image: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return ExportedStylizer(generator).eval()(image).numpy()


@pytest.mark.parametrize(("in_size", "out_size"), [(64, 32), (37, 19), (19, 37), (32, 64), (17, 16), (5, 11),
                                                   (100, 50), (50, 100), (8, 8)])
def test_symbolic_tf1_axis_equals_the_training_one(in_size: int, out_size: int) -> None:
    eager = G._tf1_axis(in_size, out_size, torch.device("cpu"))
    symbolic = G._tf1_axis_symbolic(in_size, out_size, torch.device("cpu"))
    for a, b in zip(eager, symbolic, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_exported_stylizer_equals_inference_padding() -> None:
    from ablation.gan.inference import ImageStylizer

    torch.manual_seed(0)
    generator = build_generator("v1").eval()
    image = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        nhwc = ImageStylizer(generator, "").eval()(image.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.equal(torch.from_numpy(_reference(generator, image)), nhwc)


@pytest.mark.slow
def test_cli_exports_onnx_that_onnxruntime_runs_at_any_size(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    generator = build_generator("v1").eval()
    torch.save(generator.state_dict(), tmp_path / "generator.pt")
    config = with_overrides(TrainConfig(), {"model.generator": "v1"})
    (tmp_path / "config.yaml").write_text(to_yaml(config))

    done = subprocess.run([sys.executable, "-m", "ablation.cli", "export", str(tmp_path / "generator.pt"),
                           "--format", "onnx", "--out", "g.onnx"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("input 'image' float32 [N, 3, H, W] RGB in [0, 1], H and W >= 16, output "
                                        "'anime' the same shape")
    model = onnx.load(str(tmp_path / "g.onnx"))
    assert model.opset_import[0].version >= 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert yaml.safe_load(meta["ablate.config"]) == yaml.safe_load(to_yaml(config))
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    for batch, height, width in SIZES:
        image = torch.rand(batch, 3, height, width)
        (anime,) = session.run(None, {"image": image.numpy()})
        assert anime.shape == (batch, 3, height, width)
        assert float(np.abs(anime - _reference(generator, image)).max()) <= 1e-4


@pytest.mark.slow
def test_pt2_export_runs_at_any_size(tmp_path: Path) -> None:
    torch.manual_seed(1)
    generator = build_generator("v2").eval()
    export_generator(generator, "pt2", tmp_path / "g.pt2", "model:\n  generator: v2\n")
    extra = {"ablate.config.yaml": ""}
    loaded = torch.export.load(str(tmp_path / "g.pt2"), extra_files=extra).module()
    assert extra["ablate.config.yaml"] == "model:\n  generator: v2\n"
    for batch, height, width in SIZES:
        image = torch.rand(batch, 3, height, width)
        with torch.no_grad():
            anime = loaded(image).numpy()
        assert float(np.abs(anime - _reference(generator, image)).max()) <= 1e-5


@pytest.mark.slow  # about 15 s per generator on one core
@pytest.mark.parametrize("arch", ["v1", "v2"])
def test_torchscript_export_runs_at_any_size(tmp_path: Path, arch: str) -> None:
    torch.manual_seed(2)
    generator = build_generator(arch).eval()
    export_generator(generator, "torchscript", tmp_path / "g.ts", f"model:\n  generator: {arch}\n")
    extra = {"ablate.config.yaml": ""}
    loaded = torch.jit.load(str(tmp_path / "g.ts"), _extra_files=extra)
    assert extra["ablate.config.yaml"] == f"model:\n  generator: {arch}\n".encode()
    for batch, height, width in [*SIZES, (1, 16, 16)]:
        image = torch.rand(batch, 3, height, width)
        with torch.no_grad():
            anime = loaded(image).numpy()
        assert anime.shape == (batch, 3, height, width)
        assert float(np.abs(anime - _reference(generator, image)).max()) <= 1e-5


def test_unknown_format_is_one_line(tmp_path: Path) -> None:
    from ablation.errors import UserError

    with pytest.raises(UserError, match=r"--format: format: expected one of onnx, pt2, torchscript, got 'tflite'"):
        export_generator(build_generator("v2"), "tflite", tmp_path / "g.tflite", "")
