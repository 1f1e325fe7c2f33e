"""CycleGAN's own networks (Zhu et al. 2017), laid out as the official pytorch-CycleGAN-and-pix2pix defaults.

Source layout: `models/networks.py` of junyanz/pytorch-CycleGAN-and-pix2pix, `ResnetGenerator(3, 3, ngf=64,
norm_layer=InstanceNorm2d, use_dropout=False, n_blocks=9, padding_type="reflect")` (`--netG resnet_9blocks
--norm instance --no_dropout`) and `NLayerDiscriminator(3, ndf=64, n_layers=3, norm_layer=InstanceNorm2d)`
(`--netD basic`, the 70×70 PatchGAN). Instance norm is `affine=False, track_running_stats=False`, so every conv
carries a bias (`use_bias = norm_layer == InstanceNorm2d`); `init_weights(init_type="normal", init_gain=0.02)`
draws every conv weight from N(0, 0.02) and zeroes its bias. Weights come from the global RNG (the caller seeds
it). Activations are not in place (the official ones are; the values are the same). Parameter counts:
G 11,378,179; D (ch=64, n_layers=3) 2,764,737.
"""

from __future__ import annotations

import torch
from torch import nn

INIT_GAIN = 0.02  # CycleGAN's --init_gain for --init_type normal
LRELU_SLOPE = 0.2  # NLayerDiscriminator's LeakyReLU(0.2)


def _instance_norm(ch: int) -> nn.InstanceNorm2d:
    # CycleGAN's get_norm_layer("instance"): no affine parameters, no running statistics
    return nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)


def _init_normal(model: nn.Module) -> None:
    """CycleGAN's init_weights(init_type="normal"): conv and transposed-conv weights N(0, gain), biases 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(module.weight, 0.0, INIT_GAIN)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class ResnetBlock(nn.Module):
    """Reflect-pad 1, conv 3×3, IN, ReLU, reflect-pad 1, conv 3×3, IN; added to the input (no dropout)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=True), _instance_norm(ch), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=True), _instance_norm(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """resnet_9blocks, ngf=64: 7×7 stem, two stride-2 downsamplings, 9 residual blocks at 256 channels, two
    transposed-conv upsamplings, 7×7 output conv and tanh. [B, 3, H, W] in [-1, 1] -> same shape in [-1, 1];
    H and W must be multiples of 4 (the transposed convs double exactly what the strided convs halved)."""

    def __init__(self, resize: str = "tf1", ngf: int = 64, n_blocks: int = 9) -> None:
        # `resize` is accepted and ignored: the GENERATORS registry builds every generator as generator_cls(resize),
        # and this network upsamples with transposed convs, not with a resize.
        super().__init__()
        del resize
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=True), _instance_norm(ngf), nn.ReLU(),
        ]
        for i in range(2):  # downsampling: 64 -> 128 -> 256
            in_ch, out_ch = ngf * 2**i, ngf * 2 ** (i + 1)
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=True), _instance_norm(out_ch), nn.ReLU()]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):  # upsampling: 256 -> 128 -> 64
            in_ch, out_ch = ngf * 2 ** (2 - i), ngf * 2 ** (1 - i)
            layers += [nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1, bias=True),
                       _instance_norm(out_ch), nn.ReLU()]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7, bias=True), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        _init_normal(self)

    def forward(self, photo: torch.Tensor) -> torch.Tensor:
        # only H and W are checked: a fused array runs this forward on K members' channels stacked
        height, width = photo.shape[-2:]
        if height % 4 or width % 4:
            raise ValueError(f"resnet9 generator: input size {height}x{width} is not a multiple of 4 in H and W")
        return self.model(photo)  # [B, 3, H, W]


class PatchDiscriminator(nn.Module):
    """The 70×70 PatchGAN (n_layers=3): k4 convs, stride 2 then stride 1 at the end, IN after all but the first
    and last, LReLU 0.2. [B, 3, H, W] -> [B, 1, H/2**n_layers - 2, W/2**n_layers - 2] logits (30×30 at 256 px)."""

    def __init__(self, ch: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ch, 4, stride=2, padding=1), nn.LeakyReLU(LRELU_SLOPE)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ch * prev, ch * mult, 4, stride=2, padding=1, bias=True),
                       _instance_norm(ch * mult), nn.LeakyReLU(LRELU_SLOPE)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ch * prev, ch * mult, 4, stride=1, padding=1, bias=True),
                   _instance_norm(ch * mult), nn.LeakyReLU(LRELU_SLOPE)]
        layers.append(nn.Conv2d(ch * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        _init_normal(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)  # [B, 1, h, w] logits
