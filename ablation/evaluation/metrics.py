"""Pure evaluation metrics (reference: shared/reference/evaluation.md §5).

Everything here is a function of arrays only: no models, no global RNG, no I/O. Images are uint8 RGB,
[H, W, 3] for one image or [N, H, W, 3] for a set. The operator choices that the calibration source left
open (§5.3) are fixed once as module constants below and exported by `operator_constants()` so that runs
can log them next to their numbers.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from scipy import ndimage, sparse
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.stats import wasserstein_distance
from skimage.metrics import structural_similarity

# Gap closure (§5.7) lives in a module without torch or OpenCV, so the report can import it; re-exported here.
from ablation.evaluation.gaps import gap_closure, gap_closure_reason  # noqa: F401

# --- operator choices (§5.3, §5.4): changing any of these changes every logged number ---
FLAT_SOBEL_KSIZE = 3  # cv2.Sobel 3×3, unnormalised (a unit ramp gives 8): matches §6's noise flat fraction ≈ 0.03
FLAT_THRESHOLD = 8.0  # |∇luma| below this counts as flat
PALETTE_BITS = 3  # 3 bits per channel = 8×8×8 bins
PALETTE_COVER = 95  # percent of pixels the palette must cover
CANNY_LOW, CANNY_HIGH = 100, 200  # cv2.Canny on uint8 BT.601 luma, aperture 3, L1 gradient
CONTENT_BLUR_SIGMA = 2.0  # SSIM on blurred luma measures structure, not texture (§5.4)
EDGE_TOLERANCE_PX = 2
PSNR_MAX_DB = 100.0  # identical images would give +inf; MLflow and averages need a finite value


def operator_constants() -> dict[str, str]:
    """The operator choices above as strings, to log as run tags/params."""
    return {
        "flat": f"cv2.Sobel k{FLAT_SOBEL_KSIZE} unnormalised |grad| < {FLAT_THRESHOLD:g} on uint8 BT.601 luma",
        "palette": f"{2 ** PALETTE_BITS}^3 RGB bins covering {PALETTE_COVER}% of pixels",
        "saturation": "mean HSV S = (max-min)/max in [0, 1]",
        "edges": f"cv2.Canny({CANNY_LOW}, {CANNY_HIGH}) on uint8 BT.601 luma",
        "ssim_luma_blur": f"skimage SSIM (win 7, data_range 255) on luma blurred with sigma {CONTENT_BLUR_SIGMA:g}",
        "edge_f1": f"Canny edges, one-to-one matching within {EDGE_TOLERANCE_PX} px (Euclidean; maximum bipartite "
                   "matching, BSDS convention)",
        "psnr_cap_db": f"{PSNR_MAX_DB:g}",
    }


# --- distribution distances on features ---

def kid(x: np.ndarray, y: np.ndarray, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """Kernel Inception Distance with the cubic kernel k(a, b) = (aᵀb / d + 1)³, as (mean, std) over subsets.

    Per subset, m = min(subset_size, n_x, n_y) rows are drawn from each set without replacement and the
    unbiased MMD² is [Σ_{i≠j} k(x_i,x_j) + Σ_{i≠j} k(y_i,y_j)] / (m(m−1)) − 2 Σ_{i,j} k(x_i,y_j) / m².
    The estimator is unbiased, so values slightly below 0 are expected for identical distributions.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: expected [n, d] feature arrays with equal d, got {x.shape} and {y.shape}")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"kid: needs at least 2 samples per set, got {len(x)} and {len(y)}")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    # When both sets are used whole, every subset is the same set: one evaluation gives the exact answer.
    subsets = 1 if m == len(x) == len(y) else subsets
    values = np.empty(subsets, dtype=np.float64)
    for s in range(subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        k_xx = (xs @ xs.T / d + 1.0) ** 3
        k_yy = (ys @ ys.T / d + 1.0) ** 3
        k_xy = (xs @ ys.T / d + 1.0) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[s] = within - 2.0 * k_xy.sum() / (m * m)
    return float(values.mean()), float(values.std())


def gram_matrices(feats: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> per-image Grams [N, C, C] = F Fᵀ / (H·W), returned in float64.

    The product runs in the features' own precision (float32: a float64 product costs as much as the
    network itself on CPU); the result is float64 so set means over many images lose nothing further.
    """
    f = feats.detach().flatten(2)
    f = f if f.is_floating_point() else f.float()
    return (f @ f.transpose(1, 2) / f.shape[-1]).to(torch.float64)


def relative_gram_distance(mean_grams_x: list[torch.Tensor], mean_grams_y: list[torch.Tensor]) -> float:
    """§5.2: mean over layers of ‖Ḡ_x − Ḡ_y‖_F / ‖Ḡ_y‖_F for set-mean Grams Ḡ (y is the reference).

    A ratio: scaling both sets alike leaves it unchanged, so no evaluator's feature scale enters the number.
    """
    if len(mean_grams_x) != len(mean_grams_y) or not mean_grams_x:
        raise ValueError("relative_gram_distance: expected the same, non-zero number of layers on both sides")
    ratios = [float(torch.linalg.norm(gx - gy) / torch.linalg.norm(gy))
              for gx, gy in zip(mean_grams_x, mean_grams_y, strict=True)]
    return float(np.mean(ratios))


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two empirical 1-D distributions (equal weights per sample; sizes may differ)."""
    return float(wasserstein_distance(np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()))


# --- learning-free cartoon statistics (§5.3), per image ---

def _check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}")


def luma(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 BT.601 luma [H, W] (OpenCV's RGB2GRAY)."""
    _check_rgb(image)
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def flat_fraction(image: np.ndarray) -> float:
    """Share of pixels whose Sobel gradient magnitude on 8-bit luma is below FLAT_THRESHOLD."""
    y = luma(image).astype(np.float32)
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=FLAT_SOBEL_KSIZE, borderType=cv2.BORDER_REFLECT_101)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=FLAT_SOBEL_KSIZE, borderType=cv2.BORDER_REFLECT_101)
    return float(np.mean(np.hypot(gx, gy) < FLAT_THRESHOLD))


def palette95(image: np.ndarray) -> int:
    """Fewest bins of an 8×8×8 RGB quantisation that together hold ≥ 95 % of the pixels."""
    _check_rgb(image)
    q = (image >> (8 - PALETTE_BITS)).astype(np.int64)
    index = (q[..., 0] << (2 * PALETTE_BITS)) | (q[..., 1] << PALETTE_BITS) | q[..., 2]
    counts = np.sort(np.bincount(index.ravel(), minlength=1 << (3 * PALETTE_BITS)))[::-1]
    # Integer arithmetic so that an exact 95 % boundary is not lost to float rounding.
    needed = -(-PALETTE_COVER * index.size // 100)
    return int(np.searchsorted(np.cumsum(counts), needed) + 1)


def saturation(image: np.ndarray) -> float:
    """Mean HSV saturation (max − min) / max in [0, 1]; black pixels count as 0."""
    _check_rgb(image)
    rgb = image.astype(np.float64)
    high, low = rgb.max(-1), rgb.min(-1)
    s = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    return float(s.mean())


def canny(image: np.ndarray) -> np.ndarray:
    """Boolean Canny edge map of the image's luma with the module thresholds."""
    return cv2.Canny(luma(image), CANNY_LOW, CANNY_HIGH) > 0


def edge_density(image: np.ndarray) -> float:
    """Share of pixels that are Canny edges."""
    return float(canny(image).mean())


STAT_FUNCTIONS = {"flat": flat_fraction, "palette": palette95, "saturation": saturation, "edges": edge_density}


def cartoon_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [N, H, W, 3] -> {flat, palette, saturation, edges}: one float64 value per image each."""
    if images.ndim != 4:
        raise ValueError(f"cartoon_stats: expected [N, H, W, 3], got {images.shape}")
    return {name: np.array([fn(img) for img in images], dtype=np.float64) for name, fn in STAT_FUNCTIONS.items()}


# --- content preservation (§5.4) and pseudo-ground truth (§5.5), per image pair ---

def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    _check_rgb(a)
    _check_rgb(b)
    if a.shape != b.shape:
        raise ValueError(f"expected images of equal shape, got {a.shape} and {b.shape}")


def ssim_luma_blur(out: np.ndarray, inp: np.ndarray, sigma: float = CONTENT_BLUR_SIGMA) -> float:
    """SSIM between the Gaussian-blurred (σ) float luma of output and input; identity = 1.0."""
    _check_pair(out, inp)
    blurred = [ndimage.gaussian_filter(luma(im).astype(np.float64), sigma, mode="reflect") for im in (out, inp)]
    return float(structural_similarity(blurred[0], blurred[1], data_range=255.0))


def edge_map_f1(pred: np.ndarray, truth: np.ndarray, tolerance: int = EDGE_TOLERANCE_PX) -> float:
    """F1 of two boolean edge maps with one-to-one matching within `tolerance` px (Euclidean), as in BSDS.

    Each predicted pixel matches at most one true pixel and vice versa (a maximum bipartite matching over the
    pairs within the tolerance), so F1 = 2·matched / (|pred| + |truth|). A relaxed many-to-one match would let a
    doubled or smeared edge claim every pixel of one true edge and score 1.0. Both empty = 1.0, one empty = 0.0.
    """
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"edge_map_f1: expected two 2-D maps of equal shape, got {pred.shape} and {truth.shape}")
    pred, truth = pred.astype(bool), truth.astype(bool)
    n_pred, n_truth = int(pred.sum()), int(truth.sum())
    if n_pred == 0 and n_truth == 0:
        return 1.0
    if n_pred == 0 or n_truth == 0:
        return 0.0
    # Candidate pairs: every offset within the disc, applied to every predicted pixel.
    truth_index = np.full(truth.shape, -1, np.int64)
    truth_index[truth] = np.arange(n_truth)
    ys, xs = np.nonzero(pred)
    rows, cols = [], []
    for dy in range(-tolerance, tolerance + 1):
        for dx in range(-tolerance, tolerance + 1):
            if dy * dy + dx * dx > tolerance * tolerance:
                continue
            ty, tx = ys + dy, xs + dx
            inside = (ty >= 0) & (ty < truth.shape[0]) & (tx >= 0) & (tx < truth.shape[1])
            hit = np.full(len(ys), -1, np.int64)
            hit[inside] = truth_index[ty[inside], tx[inside]]
            keep = hit >= 0
            rows.append(np.nonzero(keep)[0])
            cols.append(hit[keep])
    row, col = np.concatenate(rows), np.concatenate(cols)
    graph = sparse.csr_matrix((np.ones(len(row), np.int8), (row, col)), shape=(n_pred, n_truth))
    matched = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())  # Hopcroft-Karp
    return 2.0 * matched / (n_pred + n_truth)


def edge_f1(out: np.ndarray, inp: np.ndarray, tolerance: int = EDGE_TOLERANCE_PX) -> float:
    """F1 of the output's Canny edges (predicted) against the input's (truth), one-to-one within `tolerance` px."""
    _check_pair(out, inp)
    return edge_map_f1(canny(out), canny(inp), tolerance)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB for uint8 images (peak 255), capped at PSNR_MAX_DB so identity stays finite."""
    _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_MAX_DB
    return min(PSNR_MAX_DB, 10.0 * math.log10(255.0 ** 2 / mse))


def ssim_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM over the RGB channels (skimage, win 7, data_range 255), averaged over channels."""
    _check_pair(a, b)
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))
