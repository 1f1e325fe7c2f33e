"""`ablate export --out` replaces the last export only with a complete file (issue 24 item 5): a writer that
fails mid-file (a full disk) leaves the previous export loadable and no temp file behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from ablation.gan import export as export_module
from ablation.gan.export import ExportedStylizer, export_generator


def _tiny() -> torch.nn.Module:
    """Any module exports the same way; a 3x3 conv keeps the trace to a fraction of a second."""
    return torch.nn.Conv2d(3, 3, 3, padding=1).eval()


def _disk_full_after_half(model: ExportedStylizer, out: Path, config_yaml: str) -> None:
    """The real TorchScript writer, then the file cut in half and ENOSPC: what a full disk leaves."""
    export_module._to_torchscript(model, out, config_yaml)
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(out))


def test_failed_export_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    target = tmp_path / "g.ts"
    export_generator(_tiny(), "torchscript", target, "first\n")
    previous = target.read_bytes()
    monkeypatch.setitem(export_module.FORMATS, "torchscript", _disk_full_after_half)
    with pytest.raises(OSError, match="No space left"):
        export_generator(_tiny(), "torchscript", target, "second\n")
    assert target.read_bytes() == previous
    extra = {"ablate.config.yaml": ""}
    torch.jit.load(str(target), _extra_files=extra)  # still a whole, loadable export
    assert extra["ablate.config.yaml"] == b"first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.ts"]  # no temp file left


def test_export_replaces_the_previous_file_whole(tmp_path: Path) -> None:
    torch.manual_seed(0)
    target = tmp_path / "g.ts"
    export_generator(_tiny(), "torchscript", target, "first\n")
    export_generator(_tiny(), "torchscript", target, "second\n")
    extra = {"ablate.config.yaml": ""}
    torch.jit.load(str(target), _extra_files=extra)
    assert extra["ablate.config.yaml"] == b"second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.ts"]
