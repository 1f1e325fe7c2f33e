"""AnimeGAN generators: v1 (official TF1 `net/generator.py`) and v2 (AnimeGANv2), rebuilt from the tables.

Both map an NCHW photo in [-1, 1] to an anime image in [-1, 1] of the same H×W. Every conv is bias-free
except the v2 inverted-residual depthwise conv, which is what the parameter counts (v1 3,956,096;
v2 2,143,552) pin down. Upsampling resizes to the exact size recorded on the way down, so any input size
(even or odd, not only multiples of 4) comes back at its own size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

NormFactory = Callable[[int], nn.Module]

LRELU_SLOPE = 0.2  # both official nets use leaky_relu(alpha=0.2); the discriminator imports it from here


def _instance_norm(eps: float) -> NormFactory:
    # TF `ops.instance_norm` is affine (center=True, scale=True); PyTorch's default is not.
    return lambda ch: nn.InstanceNorm2d(ch, eps=eps, affine=True)


def _layer_norm(ch: int) -> nn.Module:
    # tf.contrib layer_norm normalises over (H, W, C) per sample with per-channel gamma/beta = GroupNorm(1, C);
    # eps 1e-12 is TF's value (PyTorch's GroupNorm default would be 1e-5).
    return nn.GroupNorm(1, ch, eps=1e-12, affine=True)


def _pad(kernel: int, stride: int) -> nn.Module:
    """Reflect padding as the TF code does it: symmetric at stride 1, bottom/right only at stride 2."""
    if kernel == 1:
        return nn.Identity()
    if stride == 1:
        return nn.ReflectionPad2d(kernel // 2)
    # TF pads [0, 1] on H and W, then runs VALID: output = floor(H / 2) for k=3, like a resize by half.
    return nn.ReflectionPad2d((0, 1, 0, 1))  # (left, right, top, bottom)


def conv_norm_lrelu(in_ch: int, out_ch: int, norm: NormFactory, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        _pad(kernel, stride),
        nn.Conv2d(in_ch, out_ch, kernel, stride, bias=False),
        norm(out_ch),
        nn.LeakyReLU(LRELU_SLOPE),
    )


def sep_conv(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """v1 SepConv: depthwise 3×3 -> pointwise 1×1 (no biases) -> one IN (contrib default eps 1e-6) -> LReLU."""
    return nn.Sequential(
        _pad(3, stride),
        nn.Conv2d(in_ch, in_ch, 3, stride, groups=in_ch, bias=False),
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
        nn.InstanceNorm2d(out_ch, eps=1e-6, affine=True),
        nn.LeakyReLU(LRELU_SLOPE),
    )


class InvertedResidual(nn.Module):
    """pw 1×1 + norm + LReLU -> dw 3×3 + norm + LReLU -> pw 1×1 + norm (linear); residual only when in == out."""

    def __init__(self, in_ch: int, out_ch: int, hidden_ch: int, norm: NormFactory, dw_bias: bool) -> None:
        super().__init__()
        self.use_residual = in_ch == out_ch
        self.expand = conv_norm_lrelu(in_ch, hidden_ch, norm, kernel=1)
        self.depthwise = nn.Sequential(
            _pad(3, 1),
            nn.Conv2d(hidden_ch, hidden_ch, 3, groups=hidden_ch, bias=dw_bias),
            norm(hidden_ch),
            nn.LeakyReLU(LRELU_SLOPE),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden_ch, out_ch, 1, bias=False), norm(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # PyTorch half-pixel bilinear, not TF1's corner-aligned sampling; only matters for porting TF weights (§7.1).
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _hw(x: torch.Tensor) -> tuple[int, int]:
    return int(x.shape[-2]), int(x.shape[-1])


class GeneratorV1(nn.Module):
    """Official AnimeGAN v1 generator (reference §1.2): IN, reflect padding, 8 inverted residual blocks."""

    def __init__(self) -> None:
        super().__init__()
        norm = _instance_norm(1e-5)
        self.b1 = nn.Sequential(conv_norm_lrelu(3, 64, norm), conv_norm_lrelu(64, 64, norm))
        self.down1_strided, self.down1_resized = sep_conv(64, 128, stride=2), sep_conv(64, 128)
        self.b2 = nn.Sequential(conv_norm_lrelu(128, 128, norm), sep_conv(128, 128))
        self.down2_strided, self.down2_resized = sep_conv(128, 256, stride=2), sep_conv(128, 256)
        self.middle = nn.Sequential(
            conv_norm_lrelu(256, 256, norm),
            *[InvertedResidual(256, 256, 512, norm, dw_bias=False) for _ in range(8)],
            conv_norm_lrelu(256, 256, norm),
        )
        self.u2 = nn.Sequential(sep_conv(256, 128), sep_conv(128, 128), conv_norm_lrelu(128, 128, norm))
        # The paper figure shows 64 channels for this SepConv; the code (and the parameter count) uses 128.
        self.u1 = nn.Sequential(sep_conv(128, 128), conv_norm_lrelu(128, 64, norm), conv_norm_lrelu(64, 64, norm))
        self.out = nn.Conv2d(64, 3, 1, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
        # The IRB depthwise kernels alone use truncated normal std 0.02 in the TF code.
        for block in self.middle:
            if isinstance(block, InvertedResidual):
                nn.init.trunc_normal_(block.depthwise[1].weight, std=0.02, a=-0.04, b=0.04)

    @staticmethod
    def _down(x: torch.Tensor, strided: nn.Module, resized: nn.Module) -> torch.Tensor:
        """SepConv(stride 2) + [bilinear resize to the same size -> SepConv], summed."""
        x_strided = strided(x)
        return x_strided + resized(_resize(x, _hw(x_strided)))

    def forward(self, photo: torch.Tensor) -> torch.Tensor:
        feat_full = self.b1(photo)  # [B, 64, H, W]
        feat_half = self.b2(self._down(feat_full, self.down1_strided, self.down1_resized))  # [B, 128, H/2, W/2]
        feat_quarter = self.middle(self._down(feat_half, self.down2_strided, self.down2_resized))  # [B, 256, H/4, W/4]
        up_half = self.u2(_resize(feat_quarter, _hw(feat_half)))  # [B, 128, H/2, W/2]
        up_full = self.u1(_resize(up_half, _hw(feat_full)))  # [B, 64, H, W]
        return torch.tanh(self.out(up_full))  # [B, 3, H, W]


class GeneratorV2(nn.Module):
    """AnimeGANv2 generator (reference §2): layer norm, 7×7 stem, strided convs, 4 inverted residual blocks."""

    def __init__(self) -> None:
        super().__init__()
        norm = _layer_norm
        self.block_a = nn.Sequential(
            conv_norm_lrelu(3, 32, norm, kernel=7),
            conv_norm_lrelu(32, 64, norm, stride=2),
            conv_norm_lrelu(64, 64, norm),
        )
        self.block_b = nn.Sequential(conv_norm_lrelu(64, 128, norm, stride=2), conv_norm_lrelu(128, 128, norm))
        self.block_c = nn.Sequential(
            conv_norm_lrelu(128, 128, norm),
            # r1 widens 128 -> 256 (bottleneck = 2 × 128), so it has no residual; r2-r4 keep 256 with residual.
            InvertedResidual(128, 256, 256, norm, dw_bias=True),
            *[InvertedResidual(256, 256, 512, norm, dw_bias=True) for _ in range(3)],
            conv_norm_lrelu(256, 128, norm),
        )
        self.block_d = nn.Sequential(conv_norm_lrelu(128, 128, norm), conv_norm_lrelu(128, 128, norm))
        self.block_e = nn.Sequential(
            conv_norm_lrelu(128, 64, norm),
            conv_norm_lrelu(64, 64, norm),
            conv_norm_lrelu(64, 32, norm, kernel=7),
        )
        self.out = nn.Conv2d(32, 3, 1, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # TF variance_scaling default (factor 2, fan_in) = He normal.
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, photo: torch.Tensor) -> torch.Tensor:
        size_full = _hw(photo)
        feat_half = self.block_a(photo)  # [B, 64, H/2, W/2]
        feat_quarter = self.block_c(self.block_b(feat_half))  # [B, 128, H/4, W/4]
        up_half = self.block_d(_resize(feat_quarter, _hw(feat_half)))  # [B, 128, H/2, W/2]
        up_full = self.block_e(_resize(up_half, size_full))  # [B, 32, H, W]
        return torch.tanh(self.out(up_full))  # [B, 3, H, W]


GENERATORS: dict[str, type[nn.Module]] = {"v1": GeneratorV1, "v2": GeneratorV2}


def add_spectral_norm(model: nn.Module) -> nn.Module:
    """Wrap every conv in spectral norm (1 power iteration); it adds buffers only, so the count is unchanged."""
    for module in list(model.modules()):
        if isinstance(module, nn.Conv2d):
            _spectral_norm(module)
    return model


def build_generator(version: str, spectral_norm: bool = False) -> nn.Module:
    """Build generator `version` ("v1" or "v2"), initialised from the global RNG (the caller seeds it)."""
    try:
        generator_cls = GENERATORS[version]
    except KeyError:
        raise ValueError(f"unknown generator {version!r}; valid: {', '.join(sorted(GENERATORS))}") from None
    model = generator_cls()
    return add_spectral_norm(model) if spectral_norm else model
