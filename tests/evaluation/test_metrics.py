"""Pure metric functions against hand-computed values (reference §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ablation.evaluation import metrics as M


def _image(colours: list[tuple[tuple[int, int, int], int]], width: int = 10) -> np.ndarray:
    """An image whose rows are filled with the given colours in the given pixel counts (multiples of width)."""
    rows = [np.tile(np.array(rgb, np.uint8), (count // width, width, 1)) for rgb, count in colours]
    return np.concatenate(rows, axis=0)


def _rectangle(left: int, size: int = 32) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[8:24, left:24] = 200
    return image


# --- KID ---

def test_kid_matches_hand_computation_on_three_1d_vectors() -> None:
    # d = 1, k(a, b) = (ab + 1)^3; x = [0, 1, 2], y = [0, 0, 1]; subset_size = n = 3, so no sampling.
    # Σ_{i≠j} k(x_i, x_j) = 2·(k(0,1) + k(0,2) + k(1,2)) = 2·(1 + 1 + 27) = 58
    # Σ_{i≠j} k(y_i, y_j) = 2·(k(0,0) + k(0,1) + k(0,1)) = 2·(1 + 1 + 1) = 6
    # Σ_{i,j} k(x_i, y_j) = (1+1+1) + (1+1+8) + (1+1+27) = 42
    # MMD² = (58 + 6) / (3·2) − 2·42 / 3² = 32/3 − 28/3 = 4/3
    x = np.array([[0.0], [1.0], [2.0]])
    y = np.array([[0.0], [0.0], [1.0]])
    mean, std = M.kid(x, y, subsets=5, subset_size=3, seed=0)
    assert mean == pytest.approx(4 / 3, abs=1e-12)
    assert std == 0.0
    # subset_size above n is clipped to n: the same exact answer.
    assert M.kid(x, y, subsets=5, subset_size=100, seed=1)[0] == pytest.approx(4 / 3, abs=1e-12)


def test_kid_near_zero_for_a_split_set_and_positive_for_a_shifted_one() -> None:
    x = np.random.default_rng(0).normal(size=(200, 16))
    same, same_sd = M.kid(x[:100], x[100:], subsets=20, subset_size=50, seed=0)
    shifted, _ = M.kid(x[:100], x[100:] + 0.5, subsets=20, subset_size=50, seed=0)
    assert abs(same) < 0.05 and same_sd > 0  # unbiased: scatters around 0, may be negative
    assert shifted > 0.5
    # Seeded: the same call gives the same numbers.
    assert M.kid(x[:100], x[100:], 20, 50, 0) == (same, same_sd)


def test_kid_rejects_mismatched_features() -> None:
    with pytest.raises(ValueError):
        M.kid(np.zeros((4, 3)), np.zeros((4, 2)), 1, 4, 0)


# --- Gram distance ---

def test_gram_distance_is_zero_for_equal_sets_and_scale_aware() -> None:
    feats = [torch.rand(3, 4, 5, 5), torch.rand(3, 2, 3, 3)]

    def mean_grams(layers: list[torch.Tensor]) -> list[torch.Tensor]:
        return [M.gram_matrices(f).mean(0) for f in layers]

    assert M.relative_gram_distance(mean_grams(feats), mean_grams(feats)) == pytest.approx(0.0, abs=1e-12)
    # Features ×2 -> Grams ×4 -> ‖4G − G‖ / ‖G‖ = 3 on every layer.
    doubled = mean_grams([2 * f for f in feats])
    assert M.relative_gram_distance(doubled, mean_grams(feats)) == pytest.approx(3.0, rel=1e-6)
    # Both sets scaled alike: the ratio does not move.
    other = [torch.rand(3, 4, 5, 5), torch.rand(3, 2, 3, 3)]
    assert M.relative_gram_distance(doubled, mean_grams([2 * f for f in other])) == pytest.approx(
        M.relative_gram_distance(mean_grams(feats), mean_grams(other)), rel=1e-6)
    with pytest.raises(ValueError):
        M.relative_gram_distance(mean_grams(feats), mean_grams(feats[:1]))


# --- gap closure ---

def test_gap_closure_hand_values() -> None:
    assert M.gap_closure(noop=1.0, ref=0.2, value=0.6, floor=1e-3) == pytest.approx(0.5)
    assert M.gap_closure(1.0, 0.2, 1.0, 1e-3) == pytest.approx(0.0)
    assert M.gap_closure(1.0, 0.2, 0.2, 1e-3) == pytest.approx(1.0)
    assert M.gap_closure(1.0, 0.2, 1.4, 1e-3) == pytest.approx(-0.5)  # worse than doing nothing
    assert M.gap_closure_reason(1.0, 0.2, 0.6, 1e-3) == (pytest.approx(0.5), "")


def test_gap_closure_is_missing_when_anchors_are_inverted() -> None:
    # A distance metric whose no-op anchor is closer to the style set than the reference: the old ratio gave
    # (0.12 − 0.5) / (0.12 − 0.30) = +2.1 to an output that moved away from the style (0.5 > 0.12).
    gap, why = M.gap_closure_reason(noop=0.12, ref=0.30, value=0.5, floor=1e-3)
    assert gap is None
    assert why == "anchors inverted: no-op 0.12 is closer to the style set than the reference 0.3"
    assert M.gap_closure(0.2, 1.0, 0.6, 1e-3) is None


def test_gap_closure_is_missing_when_anchors_coincide() -> None:
    assert M.gap_closure_reason(0.5, 0.5004, 0.3, floor=1e-3) == (
        None, "anchors not separated: |no-op - reference| 0.0004 < floor 0.001")
    assert M.gap_closure_reason(0.5004, 0.5, 0.3, floor=1e-3)[0] is None  # right sign, but within the floor
    assert M.gap_closure_reason(0.5, 0.25, 0.3, floor=0.25)[1].endswith("0.25 = floor 0.25")  # more than, not equal
    assert M.gap_closure(0.5, float("nan"), 0.3, 1e-3) is None
    assert M.gap_closure_reason(0.5, 0.2, float("inf"), 1e-3)[0] is None


# --- cartoon statistics ---

def test_palette95_counts_bins_covering_95_percent() -> None:
    three = _image([((250, 10, 10), 50), ((10, 250, 10), 30), ((10, 10, 250), 20)])
    assert M.palette95(three) == 3  # 50 + 30 = 80 % < 95 %
    assert M.palette95(_image([((250, 10, 10), 97), ((10, 250, 10), 3)])) == 1
    assert M.palette95(_image([((250, 10, 10), 950), ((10, 250, 10), 50)])) == 1  # exactly 95 % suffices
    # Colours in one 32-wide bin per channel count once.
    assert M.palette95(_image([((200, 200, 200), 50), ((210, 220, 215), 50)])) == 1


def test_flat_fraction() -> None:
    assert M.flat_fraction(np.full((10, 10, 3), 77, np.uint8)) == 1.0
    step = np.zeros((10, 10, 3), np.uint8)
    step[:, 5:] = 100  # the 3×3 Sobel sees the step in columns 4 and 5 only
    assert M.flat_fraction(step) == pytest.approx(0.8)


def test_saturation() -> None:
    assert M.saturation(np.full((4, 4, 3), (255, 0, 0), np.uint8)) == 1.0
    assert M.saturation(np.full((4, 4, 3), 128, np.uint8)) == 0.0
    assert M.saturation(np.zeros((4, 4, 3), np.uint8)) == 0.0  # black: max = 0
    assert M.saturation(np.full((4, 4, 3), (200, 100, 50), np.uint8)) == pytest.approx(0.75)


def test_edge_density_and_cartoon_stats_shapes() -> None:
    assert M.edge_density(np.zeros((16, 16, 3), np.uint8)) == 0.0
    assert 0 < M.edge_density(_rectangle(8)) < 0.2
    stats = M.cartoon_stats(np.stack([_rectangle(8), np.zeros((32, 32, 3), np.uint8)]))
    assert set(stats) == {"flat", "palette", "saturation", "edges"}
    assert all(v.shape == (2,) and v.dtype == np.float64 for v in stats.values())
    assert stats["palette"][1] == 1 and stats["flat"][1] == 1.0


def test_wasserstein_1d_hand_values() -> None:
    assert M.wasserstein_1d(np.array([0.0, 1.0, 3.0]), np.array([5.0, 6.0, 8.0])) == pytest.approx(5.0)
    assert M.wasserstein_1d(np.array([0.0]), np.array([1.0, 3.0])) == pytest.approx(2.0)
    assert M.wasserstein_1d(np.array([2.0, 0.0]), np.array([0.0, 2.0])) == 0.0


# --- content metrics ---

def test_content_metrics_of_identity_are_one() -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image[8:24, 8:24] = 255
    assert M.ssim_luma_blur(image, image) == pytest.approx(1.0)
    assert M.edge_f1(image, image) == 1.0
    assert M.ssim_rgb(image, image) == pytest.approx(1.0)
    assert M.psnr(image, image) == M.PSNR_MAX_DB


def test_edge_f1_tolerates_a_one_pixel_shift_only_with_tolerance() -> None:
    a, b = _rectangle(10), _rectangle(11)
    n_a, n_b = int(M.canny(a).sum()), int(M.canny(b).sum())
    assert n_a > n_b  # the shifted rectangle is one column narrower: its outline has fewer pixels
    # within 2 px every pixel of the shorter outline finds its own partner: 2·min / (n_a + n_b)
    assert M.edge_f1(a, b, tolerance=2) == pytest.approx(2 * n_b / (n_a + n_b))
    assert M.edge_f1(a, b, tolerance=0) < 0.8  # the shifted vertical edge no longer matches
    assert M.ssim_luma_blur(a, b) < 1.0


def _lines(columns: list[int], size: int = 20, rows: range = range(5, 15)) -> np.ndarray:
    edges = np.zeros((size, size), bool)
    for column in columns:
        edges[rows.start:rows.stop, column] = True
    return edges


def test_edge_f1_matches_one_to_one() -> None:
    single, double = _lines([10]), _lines([10, 12])  # 10 true pixels; 20 predicted, all within 2 px of them
    # One-to-one: 10 matches -> precision 10/20, recall 10/10, F1 = 2·10 / (20 + 10) = 2/3. The relaxed
    # many-to-one rule let both lines claim the one true edge: precision = recall = 1.
    assert M.edge_map_f1(double, single, tolerance=2) == pytest.approx(2 / 3)
    assert M.edge_map_f1(single, double, tolerance=2) == pytest.approx(2 / 3)  # symmetric in the counts
    assert M.edge_map_f1(single, single) == 1.0 and M.edge_map_f1(double, double) == 1.0
    # Maximum, not greedy: p0 (2, 2) is near t0 (2, 3) and t1 (2, 0); p1 (2, 5) only near t0. A greedy pass
    # taking p0 -> t0 leaves p1 alone (F1 = 2·1/4); the maximum matching pairs p0 -> t1, p1 -> t0: F1 = 1.
    pred, truth = np.zeros((5, 8), bool), np.zeros((5, 8), bool)
    pred[2, [2, 5]] = True
    truth[2, [3, 0]] = True
    assert M.edge_map_f1(pred, truth, tolerance=2) == 1.0
    assert M.edge_map_f1(pred, truth, tolerance=1) == pytest.approx(2 * 1 / 4)  # only p0 -> t0 within 1 px


def test_edge_f1_of_images_uses_one_to_one_matching(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through `edge_f1` itself, with the edge detector replaced by the maps drawn into the images."""
    monkeypatch.setattr(M, "canny", lambda image: image[..., 0] > 0)
    single = np.repeat(_lines([10])[..., None], 3, axis=2).astype(np.uint8) * 255
    double = np.repeat(_lines([10, 12])[..., None], 3, axis=2).astype(np.uint8) * 255
    assert M.edge_f1(double, single) == pytest.approx(2 / 3)  # relaxed matching: 1.0
    assert M.edge_f1(single, single) == 1.0


def test_edge_f1_empty_maps() -> None:
    flat = np.full((16, 16, 3), 90, np.uint8)
    assert M.edge_f1(flat, flat.copy()) == 1.0  # nothing to keep, nothing invented
    assert M.edge_f1(flat, _rectangle(8, 16)) == 0.0


def test_psnr_hand_value() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    assert M.psnr(a, a + 1) == pytest.approx(10 * math.log10(255.0 ** 2))  # MSE = 1


def test_metrics_reject_wrong_inputs() -> None:
    with pytest.raises(ValueError):
        M.palette95(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        M.edge_f1(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(ValueError):
        M.edge_map_f1(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
