"""`ablate export`: a trained generator as a file other runtimes load, any batch size and any H and W.

The exported graph is `ExportedStylizer`: float32 RGB [N, 3, H, W] in [0, 1] in, the same size out, with the
generator's padding rule inside (reflect to a multiple of 8, crop back), so a caller needs nothing of this
package. Sizes stay symbolic while exporting: the TF1-exact resize has a tensor-op path for that
(`generator._tf1_axis_symbolic`); otherwise the trace would fix H and W at the example's.

Formats (a registry; a miss lists the names):
- `onnx`: torch.onnx's dynamo exporter, opset 18, dynamic batch, height and width, checked by `onnx.checker`;
  the trial's config travels in the model's metadata (`ablate.config`).
- `pt2`: a `torch.export` ExportedProgram (`torch.export.load(path).module()`), the successor of TorchScript
  for ahead-of-time graphs, with the same dynamic sizes.
- `torchscript`: a traced `torch.jit` module (`torch.jit.load(path)`, also from C++ libtorch), config in its
  extra file `ablate.config.yaml`. PyTorch deprecates TorchScript; it is here for runtimes that only load it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ablation.errors import UserError, problem
from ablation.files import atomic_path
from ablation.gan.inference import PAD_MULTIPLE

MIN_SIDE = 16  # reflect padding needs pad < side; PAD_MULTIPLE - 1 < 16 keeps it valid for every side >= 16
MAX_SIDE = 8192
OPSET = 18


class ExportedStylizer(nn.Module):
    """float32 [N, 3, H, W] in [0, 1] -> the generator's output, the same shape, in [0, 1]."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2], image.shape[-1]
        pad_h = (PAD_MULTIPLE - height % PAD_MULTIPLE) % PAD_MULTIPLE  # as inference.padded, in symbolic sizes
        pad_w = (PAD_MULTIPLE - width % PAD_MULTIPLE) % PAD_MULTIPLE
        real_photo = F.pad(image * 2.0 - 1.0, (0, pad_w, 0, pad_h), mode="reflect")  # [N, 3, H', W'] in [-1, 1]
        fake_anime = self.generator(real_photo)
        # cropped by index, not by slicing: a slice makes the tracer assume padded != unpadded (a guard that a
        # multiple of 8 breaks at run time); the values are those of `inference.padded`'s crop
        rows = torch.arange(height, device=image.device)
        cols = torch.arange(width, device=image.device)
        fake_anime = fake_anime.index_select(-2, rows).index_select(-1, cols)
        return (fake_anime.clamp(-1.0, 1.0) + 1.0) / 2.0


def _dynamic_shapes() -> dict[str, dict[int, torch.export.Dim]]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    return {"image": {0: batch, 2: height, 3: width}}


def _example() -> torch.Tensor:
    # not a multiple of 8 and not square: no size coincidence can be mistaken for a rule while tracing
    return torch.rand(2, 3, 44, 60)


def _to_onnx(model: ExportedStylizer, out: Path, config_yaml: str) -> None:
    try:
        import onnx
    except ImportError:
        raise UserError(problem("--format", "onnx", "the onnx and onnxscript packages (pip install -e '.[export]')",
                                "not installed")) from None
    program = torch.onnx.export(model, (_example(),), dynamo=True, opset_version=OPSET,
                                dynamic_shapes=_dynamic_shapes(), input_names=["image"], output_names=["anime"],
                                verbose=False)
    program.model.metadata_props["ablate.config"] = config_yaml
    program.save(str(out))
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def _to_pt2(model: ExportedStylizer, out: Path, config_yaml: str) -> None:
    program = torch.export.export(model, (_example(),), dynamic_shapes=_dynamic_shapes())
    torch.export.save(program, str(out), extra_files={"ablate.config.yaml": config_yaml})


def _to_torchscript(model: ExportedStylizer, out: Path, config_yaml: str) -> None:
    with warnings.catch_warnings():
        # torch's deprecation notice, and TracerWarnings from instance norm's own input checks (not our graph)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (_example(),), check_trace=False)
    # a trace keeps whatever a Python value fixed: prove the sizes stayed symbolic on another batch, H and W
    other = torch.rand(1, 3, 37, 53)
    difference = float((traced(other) - model(other)).abs().max())
    if difference > 1e-5:
        raise RuntimeError(f"the traced generator differs from the eager one at 37x53 (max abs {difference:.3g})")
    torch.jit.save(traced, str(out), _extra_files={"ablate.config.yaml": config_yaml})


FORMATS: dict[str, Callable[[ExportedStylizer, Path, str], None]] = {
    "onnx": _to_onnx, "pt2": _to_pt2, "torchscript": _to_torchscript,
}


def export_generator(generator: nn.Module, fmt: str, out: Path, config_yaml: str) -> Path:
    """Write `generator` (on the CPU, eval mode) as `fmt` to `out`; the trial's config rides along."""
    if fmt not in FORMATS:
        raise UserError(problem("--format", "format", f"one of {', '.join(FORMATS)}", fmt))
    model = ExportedStylizer(generator.cpu().float().eval()).eval()
    # written beside `out` and renamed over it only when complete: a failed export leaves the last one intact
    with torch.no_grad(), atomic_path(out) as partial:
        FORMATS[fmt](model, partial, config_yaml)
    return out
