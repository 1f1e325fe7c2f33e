"""AnimeGAN patch discriminator (official `net/discriminator.py`, `D_net(x, ch, n_dis, sn)`), rebuilt from the table.

Layout for n_layers = n_dis: conv(ch/2) -> LReLU, then n_layers-1 times [stride-2 conv(2c) -> LReLU ->
conv(4c) -> IN -> LReLU] doubling c, then last conv(2c) -> IN -> LReLU and a 1-channel logit conv.
At ch=64, n_layers=3 that is the reference table: 32, 64, 128, 128, 256, 256, 1 channels, 1,128,800
parameters, logits at H/4 (H / 2**(n_layers-1) in general). arch "patchgan" builds CycleGAN's instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from ablation.gan.cyclegan_nets import PatchDiscriminator
from ablation.gan.generator import LRELU_SLOPE, add_spectral_norm


class Discriminator(nn.Module):
    """Bias-free convs with zero padding, N(0, 0.02) init, affine IN, LReLU 0.2, optional SN and Dropout2d."""

    def __init__(self, ch: int = 64, n_layers: int = 3, spectral_norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.spectral_norm = spectral_norm
        self.dropout = dropout
        channel = ch // 2
        layers: list[nn.Module] = [*self._conv(3, channel, stride=1), *self._act()]
        in_ch = channel  # the TF loop names only output widths; track what each conv receives
        for _ in range(1, n_layers):
            layers += [*self._conv(in_ch, channel * 2, stride=2), *self._act()]
            layers += [*self._conv(channel * 2, channel * 4, stride=1), self._norm(channel * 4), *self._act()]
            in_ch = channel * 4
            channel *= 2
        layers += [*self._conv(in_ch, channel * 2, stride=1), self._norm(channel * 2), *self._act()]
        layers += self._conv(channel * 2, 1, stride=1)
        self.net = nn.Sequential(*layers)

    def _conv(self, in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
        # TF `ops.conv` pads top/left 1 and bottom/right (kernel - stride - 1) = 0 at stride 2; symmetric at
        # stride 1. Conv2d(padding=1) is symmetric, so the padding is explicit.
        pad = nn.ZeroPad2d((1, 0, 1, 0) if stride == 2 else 1)  # (left, right, top, bottom)
        conv = nn.Conv2d(in_ch, out_ch, 3, stride, bias=False)
        nn.init.normal_(conv.weight, mean=0.0, std=0.02)
        # Wrap after init: the SN power-iteration vectors are drawn from the initialised weight.
        return [pad, _spectral_norm(conv) if self.spectral_norm else conv]

    @staticmethod
    def _norm(ch: int) -> nn.Module:
        return nn.InstanceNorm2d(ch, eps=1e-5, affine=True)

    def _act(self) -> list[nn.Module]:
        act: list[nn.Module] = [nn.LeakyReLU(LRELU_SLOPE)]
        if self.dropout > 0:
            act.append(nn.Dropout2d(self.dropout))
        return act

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)  # [B, 3, H, W] -> [B, 1, H/4, W/4] logits (n_layers=3)


def _patchgan(ch: int, n_layers: int, spectral_norm: bool, dropout: float) -> nn.Module:
    if dropout:
        raise ValueError(f"the patchgan discriminator (CycleGAN's) has no dropout: got dropout={dropout}; set it to 0")
    # CycleGAN's has no spectral norm (model.d_sn: false); with it, an SN-PatchGAN for studies
    net = PatchDiscriminator(ch, n_layers)
    return add_spectral_norm(net) if spectral_norm else net


DISCRIMINATORS: dict[str, Callable[[int, int, bool, float], nn.Module]] = {
    "animegan": Discriminator, "patchgan": _patchgan,
}


def build_discriminator(ch: int = 64, n_layers: int = 3, spectral_norm: bool = True,
                        dropout: float = 0.0, arch: str = "animegan") -> nn.Module:
    """Build D `arch` ("animegan", or "patchgan": CycleGAN's 70×70 PatchGAN), initialised from the global RNG
    (the caller seeds it)."""
    try:
        builder = DISCRIMINATORS[arch]
    except KeyError:
        raise ValueError(f"unknown discriminator {arch!r}; valid: {', '.join(sorted(DISCRIMINATORS))}") from None
    return builder(ch, n_layers, spectral_norm, dropout)
