"""AnimeGAN's edge smoothing (animegan.md §1.7, `tools/edge_smooth.py`): blur the style images only around
their edges, giving D a "clear edges removed" negative. Built once per style folder into `<style>/smooth/`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ablation.data.images import list_images
from ablation.errors import UserError, problem
from ablation.files import atomic_write_bytes

# cv2.getGaussianKernel(5, 0) uses OpenCV's fixed table for ksize 5: [1, 4, 6, 4, 1] / 16. Integer weights keep
# the sum exact, so the final truncation to uint8 matches the original float64 computation bit for bit.
KERNEL_1D = np.array([1, 4, 6, 4, 1], np.int64)
DILATE_KERNEL = np.ones((5, 5), np.uint8)


def edge_mask(gray: np.ndarray) -> np.ndarray:
    """Pixels that get blurred: Canny(100, 200) edges dilated once by a 5×5 square."""
    return cv2.dilate(cv2.Canny(gray, 100, 200), DILATE_KERNEL, iterations=1) > 0


def edge_smooth(rgb: np.ndarray, gray: np.ndarray | None = None) -> np.ndarray:
    """Gaussian-blur (5×5, reflect-101 padding) only inside the dilated edge mask; truncate to uint8.

    `gray` lets callers pass the separately decoded grayscale image as the original does; by default it is
    OpenCV's luma of `rgb`.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if gray is None:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    mask = edge_mask(gray)
    if not mask.any():
        return rgb.copy()
    h, w = rgb.shape[:2]
    padded = np.pad(rgb.astype(np.int64), ((2, 2), (2, 2), (0, 0)), mode="reflect")  # numpy reflect = REFLECT_101
    rows = sum(KERNEL_1D[k] * padded[:, k:k + w] for k in range(5))
    full = sum(KERNEL_1D[k] * rows[k:k + h] for k in range(5))
    out = rgb.copy()
    out[mask] = (full[mask] // 256).astype(np.uint8)  # floor division: the original's float→uint8 truncation
    return out


def _read(path: Path, flags: int) -> np.ndarray | None:
    data = np.fromfile(str(path), np.uint8)  # fromfile + imdecode: unlike imread, copes with non-ASCII paths
    return cv2.imdecode(data, flags) if data.size else None


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header only, so the up-to-date check stays cheap."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.size
    except Exception:  # noqa: BLE001 - any unreadable file is simply stale
        return None


def _write_image(path: Path, bgr: np.ndarray) -> None:
    ok, data = cv2.imencode(path.suffix or ".png", bgr)
    if not ok:
        raise UserError(problem(path, "<file>", "a suffix OpenCV can encode (.png, .jpg, .bmp, .webp)", path.suffix))
    atomic_write_bytes(path, data.tobytes())  # readers (parallel workers) never see a half-written image


def build_smooth_dir(style_dir: Path, smooth_dir: Path, image_size: int, progress: bool = True,
                     missing_only: bool = False) -> int:
    """Smooth every image of `style_dir` into `smooth_dir` at image_size² under the same file name.

    Skips outputs that are newer than their source and already image_size² (or, with `missing_only`, any that
    exist: training must not rewrite a dataset's own 256 px smooth/ to its run size). Returns the count written.
    """
    style_dir, smooth_dir = Path(style_dir), Path(smooth_dir)
    sources = list_images(style_dir)
    if not sources:
        raise UserError(problem(style_dir, "style folder", "a folder of style images", "<missing or empty>"))
    smooth_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for src in sources:
        dst = smooth_dir / src.name
        if dst.exists() and (missing_only or (dst.stat().st_mtime >= src.stat().st_mtime
                                              and _image_size(dst) == (image_size, image_size))):
            continue
        todo.append(src)
    iterator = todo
    if progress and todo:
        from rich.progress import track

        iterator = track(todo, description=f"smoothing {style_dir}")
    for src in iterator:
        bgr, gray = _read(src, cv2.IMREAD_COLOR), _read(src, cv2.IMREAD_GRAYSCALE)
        if bgr is None or gray is None:
            raise UserError(problem(src, "<image>", "a readable image", "<undecodable>"))
        # the original resizes colour and gray separately, bilinear, to img_size²
        size = (image_size, image_size)
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_LINEAR)
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        _write_image(smooth_dir / src.name, np.ascontiguousarray(edge_smooth(rgb, gray)[..., ::-1]))
    return len(todo)
