"""The generators as the TF originals compute them: TF1 `resize_images` (bilinear, no half-pixel centres) in
both generators' resizes, and TF's variance_scaling init with TF's fan_in for v2 (depthwise kernels included).

Expected values are worked by hand from the TF definitions (reference animegan.md §1.2, §2, §7.1, §7.5).
"""

from __future__ import annotations

import math

import pytest
import torch

from ablation.gan.generator import InvertedResidual, build_generator, resize_half_pixel, resize_tf1


def images(size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1  # [B, 3, S, S] in [-1, 1]


def grid(rows: list[list[float]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype).view(1, 1, len(rows), len(rows[0]))  # [1, 1, H, W]


FOUR = [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0], [12.0, 13.0, 14.0, 15.0]]


def test_tf1_resize_halving_keeps_every_other_pixel() -> None:
    # TF1: source = dst * 2 exactly, so rows/cols 0 and 2 are taken as they are
    assert resize_tf1(grid(FOUR), (2, 2)).flatten().tolist() == [0.0, 2.0, 8.0, 10.0]
    # PyTorch half-pixel: source = (dst + 0.5) * 2 - 0.5 = 0.5, 2.5: the mean of each 2x2 block
    assert resize_half_pixel(grid(FOUR), (2, 2)).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_tf1_resize_doubling_repeats_the_last_pixel() -> None:
    # [a, b] -> [a, (a+b)/2, b, b] on each axis: source = dst / 2, the upper neighbour clamped to the last pixel
    doubled = resize_tf1(grid([[0.0, 4.0], [8.0, 12.0]]), (4, 4))
    assert doubled[0, 0].tolist() == [[0.0, 2.0, 4.0, 4.0], [4.0, 6.0, 8.0, 8.0],
                                      [8.0, 10.0, 12.0, 12.0], [8.0, 10.0, 12.0, 12.0]]
    # half-pixel: source = (dst + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)
    half = resize_half_pixel(grid([[0.0, 4.0]]), (1, 4))
    assert half.flatten().tolist() == [0.0, 1.0, 3.0, 4.0]


def test_tf1_resize_non_integer_ratios() -> None:
    # 3 -> 2: scale 1.5, sources 0 and 1.5 -> [a, (b+c)/2]
    assert resize_tf1(grid([[2.0, 4.0, 8.0]]), (1, 2)).flatten().tolist() == [2.0, 6.0]
    # 2 -> 3: scale 2/3, sources 0, 2/3, 4/3 (upper clamped) -> [a, a + 2/3 (b - a), b]
    upsized = resize_tf1(grid([[0.0, 3.0]]), (1, 3)).flatten()
    torch.testing.assert_close(upsized, torch.tensor([0.0, 2.0, 3.0]))
    # 5 -> 2 (odd sizes, as the v1 down path takes them): scale 2.5, sources 0 and 2.5
    assert resize_tf1(grid([[0.0, 10.0, 20.0, 30.0, 40.0]]), (1, 2)).flatten().tolist() == [0.0, 25.0]
    # both axes at once: 3x3 -> 2x2 picks rows/cols 0 and 1.5 and blends
    nine = grid([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    assert resize_tf1(nine, (2, 2)).flatten().tolist() == [0.0, 1.5, 4.5, 6.0]


def test_tf1_resize_is_differentiable_and_keeps_bf16() -> None:
    photo = grid(FOUR).requires_grad_(True)
    resize_tf1(photo, (2, 2)).sum().backward()
    # halving reads only the even rows and columns: gradient 1 there, 0 elsewhere
    assert photo.grad is not None
    assert photo.grad[0, 0].tolist() == [[1.0, 0.0, 1.0, 0.0], [0.0] * 4, [1.0, 0.0, 1.0, 0.0], [0.0] * 4]
    doubled = resize_tf1(grid([[0.0, 4.0], [8.0, 12.0]], torch.bfloat16), (4, 4))
    assert doubled.dtype == torch.bfloat16
    assert doubled[0, 0, 1].tolist() == [4.0, 6.0, 8.0, 8.0]


def tf1_resize_by_loop(image: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """TF1's legacy resize_bilinear written pixel by pixel from its definition (float32 scale, no offset)."""
    in_h, in_w = image.shape

    def source(dst: int, in_size: int, out_size: int) -> tuple[int, int, float]:
        src = float(torch.tensor(dst, dtype=torch.float32) * torch.tensor(in_size / out_size, dtype=torch.float32))
        low = math.floor(src)
        return low, min(low + 1, in_size - 1), src - low

    out = torch.empty(out_h, out_w)
    for y in range(out_h):
        top, bottom, fy = source(y, in_h, out_h)
        for x in range(out_w):
            left, right, fx = source(x, in_w, out_w)
            upper = image[top, left] + (image[top, right] - image[top, left]) * fx
            lower = image[bottom, left] + (image[bottom, right] - image[bottom, left]) * fx
            out[y, x] = upper + (lower - upper) * fy
    return out


@pytest.mark.parametrize(("in_size", "out_size"), [((5, 7), (3, 4)), ((3, 4), (8, 9)), ((6, 6), (3, 3))])
def test_tf1_resize_matches_the_pixel_loop(in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
    image = torch.rand(*in_size, generator=torch.Generator().manual_seed(1))
    expected = tf1_resize_by_loop(image, *out_size)
    torch.testing.assert_close(resize_tf1(image.view(1, 1, *in_size), out_size)[0, 0], expected)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_default_generator_resizes_as_tf1(version: str) -> None:
    photo = images(32)
    outputs = {}
    for mode in ("default", "tf1", "half_pixel"):
        torch.manual_seed(0)
        gen = build_generator(version) if mode == "default" else build_generator(version, resize=mode)
        assert gen.resize.mode == ("tf1" if mode == "default" else mode)
        with torch.no_grad():
            outputs[mode] = gen(photo)
    torch.testing.assert_close(outputs["default"], outputs["tf1"], rtol=0, atol=0)
    assert (outputs["tf1"] - outputs["half_pixel"]).abs().max() > 1e-3  # same weights, the resize differs


def test_v2_depthwise_init_is_tf_variance_scaling_over_kh_kw_c() -> None:
    """TF's variance_scaling_initializer() on a depthwise kernel [3, 3, C, 1]: fan_in = 9C, truncated normal
    with stddev sqrt(1.3 * 2 / 9C) cut at 2 stddev (std of the result: 0.8796 of that). PyTorch's own fan_in
    (9) would give a sqrt(C) larger std: 0.47 instead of 0.021 at C = 512."""
    torch.manual_seed(0)
    blocks = [m for m in build_generator("v2").modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 4
    for block in blocks:
        weight = block.depthwise[1].weight.detach()  # [C, 1, 3, 3]
        channels = weight.shape[0]
        sigma = math.sqrt(1.3 * 2.0 / (9 * channels))
        assert weight.std().item() == pytest.approx(0.87962566 * sigma, rel=0.05)
        assert weight.abs().max().item() <= 2 * sigma  # truncated, as tf.truncated_normal is
        assert block.depthwise[1].bias.abs().max().item() == 0.0


def test_v2_regular_conv_init_is_tf_variance_scaling() -> None:
    torch.manual_seed(0)
    gen = build_generator("v2")
    stem = gen.block_a[0][1].weight.detach()  # 7x7, 3 -> 32: fan_in 147
    wide = gen.block_c[5][1].weight.detach()  # 3x3, 256 -> 128: fan_in 2304
    for weight, fan_in in ((stem, 147), (wide, 2304)):
        sigma = math.sqrt(1.3 * 2.0 / fan_in)
        assert weight.std().item() == pytest.approx(0.87962566 * sigma, rel=0.05)
        assert weight.abs().max().item() <= 2 * sigma
