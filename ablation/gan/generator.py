"""AnimeGAN generators: v1 (official TF1 `net/generator.py`) and v2 (AnimeGANv2), rebuilt from the tables.

Both map an NCHW photo in [-1, 1] to an anime image in [-1, 1] of the same H×W. Every conv is bias-free
except the v2 inverted-residual depthwise conv, which is what the parameter counts (v1 3,956,096;
v2 2,143,552) pin down. Upsampling resizes to the exact size recorded on the way down, so any input size
(even or odd, not only multiples of 4) comes back at its own size. Both originals resize with TF1
`tf.image.resize_images` (v1 down and up, v2 up), which `Resize("tf1")` reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from ablation.gan.cyclegan_nets import ResnetGenerator

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


ResizeMode = Literal["tf1", "half_pixel"]


def _tf1_axis(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TF1 legacy bilinear sampling along one axis: source = dst * (in / out), no half-pixel offset.

    Returns the lower and upper source indices and the weight of the upper one. The arithmetic is float32 as in
    TF's kernel, so the fractional weights (and where floor lands) are TF's own. Built on `device` directly: no
    host-device copy or sync per call.
    """
    scale = in_size / out_size
    src = torch.arange(out_size, dtype=torch.float32, device=device) * torch.tensor(scale, dtype=torch.float32)
    lower = src.floor()
    upper = (lower + 1).clamp(max=in_size - 1)  # the last source pixel is repeated, not extrapolated
    return lower.long(), upper.long(), src - lower


def _tf1_axis_symbolic(in_size: torch.SymInt, out_size: torch.SymInt, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_tf1_axis` for sizes known only when the exported model runs (`ablate export`): the same float64 ratio
    rounded to float32 and the same float32 products, in tensor ops instead of Python arithmetic, which
    would fix the sizes seen while exporting. Equal to `_tf1_axis` element for element (tests/gan/test_export.py)."""
    scale = (torch.full((), in_size, dtype=torch.float64, device=device) / out_size).to(torch.float32)
    src = torch.arange(out_size, dtype=torch.float32, device=device) * scale
    lower = src.floor()
    upper = torch.minimum(lower + 1, torch.full_like(lower, in_size - 1))
    return lower.long(), upper.long(), src - lower


def _lerp_axis(x: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    in_size = x.shape[dim]  # an int, or a symbolic size while exporting (no branch on its value then)
    if not (isinstance(in_size, int) and isinstance(out_size, int)):
        lower, upper, frac = _tf1_axis_symbolic(in_size, out_size, x.device)
    else:
        lower, upper, frac = _tf1_axis(in_size, out_size, x.device)
        if in_size % out_size == 0:
            return x.index_select(dim, lower)  # integer scale (halving): every weight is 0, a pure subsample
    x_lower = x.index_select(dim, lower)
    shape = [1] * x.dim()
    shape[dim] = out_size
    # weights in the input's dtype: a bf16 activation stays bf16 (0 and 0.5 are exact there)
    weight_upper = frac.to(x.dtype).view(shape)
    return x_lower + (x.index_select(dim, upper) - x_lower) * weight_upper


def resize_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 `tf.image.resize_images` (bilinear, align_corners=False, half_pixel_centers=False) on NCHW.

    Halving keeps every other pixel; doubling [a, b] gives [a, (a+b)/2, b, b]. Differentiable (index_select
    and lerp), any device and dtype. TF blends along W first, then H; so does this.
    """
    return _lerp_axis(_lerp_axis(x, -1, size[1]), -2, size[0])


def resize_half_pixel(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PyTorch's bilinear with half-pixel centres (halving averages 2×2 blocks); not what either original ran."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


RESIZES: dict[str, Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]] = {
    "tf1": resize_tf1, "half_pixel": resize_half_pixel,
}


class Resize(nn.Module):
    """The generators' bilinear resize, chosen by `model.resize` (a module so that it shows in the repr)."""

    def __init__(self, mode: ResizeMode) -> None:
        super().__init__()
        if mode not in RESIZES:
            raise ValueError(f"unknown resize {mode!r}; valid: {', '.join(sorted(RESIZES))}")
        self.mode = mode
        self._fn = RESIZES[mode]

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self._fn(x, size)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def tf_fan_in(conv: nn.Conv2d) -> int:
    """fan_in as TF counts it for this conv's kernel: kh * kw * all input channels.

    TF stores a depthwise kernel as [kh, kw, C, multiplier], so its fan_in is kh*kw*C; PyTorch's weight
    [C, 1, kh, kw] would give kh*kw alone, a sqrt(C) (about 20x at C=512) larger init std.
    """
    kh, kw = conv.kernel_size
    return kh * kw * conv.in_channels


def tf_variance_scaling_(weight: torch.Tensor, fan_in: int, factor: float = 2.0) -> torch.Tensor:
    """tf.contrib.layers.variance_scaling_initializer() defaults (factor 2, FAN_IN, uniform=False).

    TF draws tf.truncated_normal with stddev sqrt(1.3 * factor / fan_in), re-drawing beyond 2 stddev; the 1.3
    makes up for the truncation, so the resulting std is about sqrt(factor / fan_in).
    """
    std = math.sqrt(1.3 * factor / fan_in)
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def _hw(x: torch.Tensor) -> tuple[int, int]:
    return x.shape[-2], x.shape[-1]  # no int(): an exported model keeps its sizes symbolic


class GeneratorV1(nn.Module):
    """Official AnimeGAN v1 generator (reference §1.2): IN, reflect padding, 8 inverted residual blocks."""

    def __init__(self, resize: ResizeMode = "tf1") -> None:
        super().__init__()
        self.resize = Resize(resize)
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
                # contrib's xavier_initializer (uniform, fan_avg): its bound depends on fan_in + fan_out only,
                # which is the same for TF's depthwise [3, 3, C, 1] and PyTorch's [C, 1, 3, 3] (9C + 9)
                nn.init.xavier_uniform_(module.weight)
        # The IRB depthwise kernels alone use truncated normal std 0.02 in the TF code.
        for block in self.middle:
            if isinstance(block, InvertedResidual):
                nn.init.trunc_normal_(block.depthwise[1].weight, std=0.02, a=-0.04, b=0.04)

    def _down(self, x: torch.Tensor, strided: nn.Module, resized: nn.Module) -> torch.Tensor:
        """SepConv(stride 2) + [bilinear resize to the same size -> SepConv], summed."""
        x_strided = strided(x)
        return x_strided + resized(self.resize(x, _hw(x_strided)))

    def forward(self, photo: torch.Tensor) -> torch.Tensor:
        feat_full = self.b1(photo)  # [B, 64, H, W]
        feat_half = self.b2(self._down(feat_full, self.down1_strided, self.down1_resized))  # [B, 128, H/2, W/2]
        feat_quarter = self.middle(self._down(feat_half, self.down2_strided, self.down2_resized))  # [B, 256, H/4, W/4]
        up_half = self.u2(self.resize(feat_quarter, _hw(feat_half)))  # [B, 128, H/2, W/2]
        up_full = self.u1(self.resize(up_half, _hw(feat_full)))  # [B, 64, H, W]
        return torch.tanh(self.out(up_full))  # [B, 3, H, W]


class GeneratorV2(nn.Module):
    """AnimeGANv2 generator (reference §2): layer norm, 7×7 stem, strided convs, 4 inverted residual blocks."""

    def __init__(self, resize: ResizeMode = "tf1") -> None:
        super().__init__()
        self.resize = Resize(resize)  # the original's `Unsample` is TF1 resize_images too
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
                # every v2 conv, the depthwise ones included, uses tf.contrib variance_scaling_initializer()
                tf_variance_scaling_(module.weight, tf_fan_in(module))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, photo: torch.Tensor) -> torch.Tensor:
        size_full = _hw(photo)
        feat_half = self.block_a(photo)  # [B, 64, H/2, W/2]
        feat_quarter = self.block_c(self.block_b(feat_half))  # [B, 128, H/4, W/4]
        up_half = self.block_d(self.resize(feat_quarter, _hw(feat_half)))  # [B, 128, H/2, W/2]
        up_full = self.block_e(self.resize(up_half, size_full))  # [B, 32, H, W]
        return torch.tanh(self.out(up_full))  # [B, 3, H, W]


GENERATORS: dict[str, type[nn.Module]] = {"v1": GeneratorV1, "v2": GeneratorV2, "resnet9": ResnetGenerator}


def add_spectral_norm(model: nn.Module) -> nn.Module:
    """Wrap every conv in spectral norm (1 power iteration); it adds buffers only, so the count is unchanged."""
    for module in list(model.modules()):
        if isinstance(module, nn.Conv2d):
            _spectral_norm(module)
    return model


def build_generator(version: str, spectral_norm: bool = False, resize: ResizeMode = "tf1") -> nn.Module:
    """Build generator `version` ("v1", "v2" or "resnet9", CycleGAN's) with `resize` ("tf1", the originals', or
    "half_pixel"; resnet9 ignores it), initialised from the global RNG (the caller seeds it)."""
    try:
        generator_cls = GENERATORS[version]
    except KeyError:
        raise ValueError(f"unknown generator {version!r}; valid: {', '.join(sorted(GENERATORS))}") from None
    model = generator_cls(resize)
    return add_spectral_norm(model) if spectral_norm else model
