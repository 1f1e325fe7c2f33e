"""Offline demo data (evaluation.md §8): procedural paired scenes for tests, and a small real-photo dataset
stylised by a classical "anime" filter for demo runs. Everything is deterministic from a seed and needs no
network: the photos ship inside scikit-image and matplotlib.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ablation.errors import UserError, problem

# ---------------------------------------------------------------- tier 1: procedural paired scenes


def _value_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Multi-octave value noise in about [-1, 1]: random grids upsampled smoothly, halving amplitude."""
    total = np.zeros((size, size), np.float32)
    amplitude, weight = 1.0, 0.0
    for cells in (3, 6, 12, 24):
        grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
        total += amplitude * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        weight += amplitude
        amplitude *= 0.5
    return total / weight


def _label_map(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    """Sky (0) / ground (1) split by a tilted horizon, then 3-6 ellipses or convex polygons on top."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    horizon = rng.uniform(0.3, 0.65) * size + rng.uniform(-0.25, 0.25) * (xx - size / 2)
    labels = np.where(yy < horizon, 0, 1).astype(np.uint8)
    count = int(rng.integers(3, 7))
    for index in range(count):
        label = 2 + index
        centre = rng.uniform(0.1, 0.9, 2) * size
        radius = rng.uniform(0.08, 0.3, 2) * size
        if rng.random() < 0.5:
            cv2.ellipse(labels, (int(centre[0]), int(centre[1])), (max(2, int(radius[0])), max(2, int(radius[1]))),
                        float(rng.uniform(0, 180)), 0, 360, label, thickness=-1)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            points = np.stack([centre[0] + radius[0] * np.cos(angles), centre[1] + radius[1] * np.sin(angles)], 1)
            cv2.fillConvexPoly(labels, points.astype(np.int32), label)
    return labels, 2 + count


def procedural_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One exact (photo, anime) pair, uint8 RGB [size, size, 3]; the anime is the flat-shaded label map."""
    if size < 8:
        raise ValueError(f"size: expected >= 8, got {size}")
    labels, n_labels = _label_map(rng, size)
    palette = rng.uniform(30, 235, (n_labels, 3)).astype(np.float32)
    flat = palette[labels]  # [S, S, 3]

    # photo: lit by a linear gradient in a random direction, textured by value noise, slightly blurred, noisy
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)
    light = 1.0 + rng.uniform(0.2, 0.45) * ramp
    texture = rng.uniform(10, 35) * _value_noise(rng, size)
    photo = flat * light[..., None] + texture[..., None]
    photo = cv2.GaussianBlur(photo, (0, 0), 0.8)
    photo = photo + rng.normal(0.0, 4.0, photo.shape).astype(np.float32)

    # anime: flat palette colours with dark outlines where the label map changes (morphological gradient)
    kernel = np.ones((3, 3), np.uint8)
    boundary = cv2.morphologyEx(labels, cv2.MORPH_GRADIENT, kernel) > 0
    anime = flat.copy()
    anime[boundary] *= 0.25
    return (np.clip(np.rint(photo), 0, 255).astype(np.uint8), np.clip(np.rint(anime), 0, 255).astype(np.uint8))


def procedural_batch(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n procedural pairs from one seed: photos and animes, each uint8 [n, size, size, 3]."""
    rng = np.random.default_rng(seed)
    pairs = [procedural_pair(rng, size) for _ in range(n)]
    photos = np.stack([p for p, _ in pairs]) if pairs else np.zeros((0, size, size, 3), np.uint8)
    animes = np.stack([a for _, a in pairs]) if pairs else np.zeros((0, size, size, 3), np.uint8)
    return photos, animes


# ---------------------------------------------------------------- tier 2: classical stylizer

PALETTE_K = 12
PALETTE_SEED = 1234
KMEANS_SAMPLE = 8_000  # pixels used to fit the palette: the fit is the slow part, assignment is cheap
MIN_EDGE_PIXELS = 20
MEAN_SHIFT = (8, 24)  # pyrMeanShiftFiltering's spatial and colour radii
HSV_GAIN = (1.35, 1.08)  # saturation and value gains


def _sq_dist(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[N, K] squared distances via |x|² - 2x·c + |c|² (one matmul instead of an [N, K, 3] temporary)."""
    return (points ** 2).sum(1)[:, None] - 2.0 * points @ centres.T + (centres ** 2).sum(1)[None]


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 15) -> np.ndarray:
    """Plain Lloyd k-means with k-means++ seeding (numpy, so the result depends only on the seed)."""
    centres = np.empty((k, points.shape[1]), np.float64)
    centres[0] = points[rng.integers(len(points))]
    dist = _sq_dist(points, centres[:1])[:, 0].clip(min=0)
    for j in range(1, k):
        total = dist.sum()
        index = rng.choice(len(points), p=dist / total) if total > 0 else int(rng.integers(len(points)))
        centres[j] = points[index]
        dist = np.minimum(dist, _sq_dist(points, centres[j:j + 1])[:, 0].clip(min=0))
    for _ in range(iterations):
        assign = np.argmin(_sq_dist(points, centres), axis=1)
        counts = np.bincount(assign, minlength=k)
        for c in range(points.shape[1]):
            sums = np.bincount(assign, weights=points[:, c], minlength=k)
            centres[:, c] = np.where(counts > 0, sums / np.maximum(counts, 1), centres[:, c])  # keep empty ones
    return centres


def mean_shift(bgr: np.ndarray) -> np.ndarray:
    """The stylizer's flattening step: flat, edge-aligned colour regions (BGR uint8 in and out)."""
    return cv2.pyrMeanShiftFiltering(bgr, sp=MEAN_SHIFT[0], sr=MEAN_SHIFT[1])


def boost_colours(bgr: np.ndarray) -> np.ndarray:
    """The stylizer's colour step: HSV saturation and value times HSV_GAIN (BGR uint8 in and out)."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 1] *= HSV_GAIN[0]
    hsv[..., 2] *= HSV_GAIN[1]
    return cv2.cvtColor(np.clip(np.rint(hsv), 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)


def stylize(rgb: np.ndarray) -> np.ndarray:
    """The classical "anime" filter: mean-shift flatten, 12-colour Lab palette, boosted HSV, thin outlines."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    flat = mean_shift(bgr)
    lab = cv2.cvtColor(flat, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64)
    rng = np.random.default_rng(PALETTE_SEED)
    sample = lab[rng.choice(len(lab), min(KMEANS_SAMPLE, len(lab)), replace=False)]
    centres = _kmeans(sample, min(PALETTE_K, len(sample)), rng)
    assign = np.argmin(_sq_dist(lab, centres), axis=1)
    palette_bgr = cv2.cvtColor(np.clip(np.rint(centres), 0, 255).astype(np.uint8)[None], cv2.COLOR_LAB2BGR)[0]
    quant = palette_bgr[assign].reshape(bgr.shape)

    boosted = boost_colours(quant)

    # outlines from the flattened image (texture-free), small edge fragments dropped, drawn at 1/4 the colour
    edges = cv2.Canny(cv2.cvtColor(flat, cv2.COLOR_BGR2GRAY), 60, 160)
    count, comp, stats, _ = cv2.connectedComponentsWithStats((edges > 0).astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= MIN_EDGE_PIXELS
    lines = keep[comp]
    out = boosted.astype(np.float32)
    out[lines] *= 0.25
    return np.ascontiguousarray(np.rint(out).astype(np.uint8)[..., ::-1])


# ---------------------------------------------------------------- tier 2: the demo dataset

PHOTO_SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "grace_hopper")
# Whole images held out for val, never cropped for training: val photos share no pixels with training photos
# or style images, and two sources keep the evaluation from resting on one scene.
HELD_OUT = ("coffee", "rocket")
MANIFEST = "demo.json"
MANAGED = ("train_photo", "demo", "val", "val_target")  # folders this module owns under out_dir
FORMAT_VERSION = 2  # 2: val from two held-out photos, per-image provenance in the manifest


def bundled_photos() -> dict[str, np.ndarray]:
    """The offline photo pool (evaluation.md §7), RGB uint8, in a fixed order."""
    import skimage.data
    from matplotlib import cbook

    photos = {name: np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in PHOTO_SOURCES[:4]}
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    photos["grace_hopper"] = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return {name: photos[name] for name in PHOTO_SOURCES}


def _shrink(rgb: np.ndarray, short_side: int) -> np.ndarray:
    """Downscale so the short side is at most `short_side` (a half-size crop then still needs no upscaling)."""
    h, w = rgb.shape[:2]
    scale = short_side / min(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def source_images(image_size: int) -> dict[str, np.ndarray]:
    """The photo pool at twice the crop size, as every crop is cut from it: crops then need no upscaling, and
    the stylizer's outlines keep a visible width after a crop is resized (evaluation.md §8)."""
    return {name: _shrink(image, 2 * image_size) for name, image in bundled_photos().items()}


def crop_plan(sources: dict[str, tuple[int, int]], count: int, seed: int, stream: int) -> list[dict]:
    """Where each crop comes from: {source, box [y, x, side] in the shrunk source, flip}; sources round-robin.

    Random squares of side U(0.5, 1)·min(H, W). Planned apart from the pixels so that the manifest (which
    records every image's provenance) is known before anything is stylised.
    """
    rng = np.random.default_rng([seed, stream])
    names = list(sources)
    plan = []
    for index in range(count):
        name = names[index % len(names)]
        h, w = sources[name]
        side = int(round(rng.uniform(0.5, 1.0) * min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        plan.append({"source": name, "box": [y, x, side], "flip": bool(rng.random() < 0.5)})
    return plan


def cut(image: np.ndarray, crop: dict, size: int) -> np.ndarray:
    """One planned crop of the (shrunk) source image: INTER_AREA to size², then the h-flip if planned."""
    y, x, side = crop["box"]
    out = cv2.resize(image[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out[:, ::-1]) if crop["flip"] else out


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    path.write_bytes(data.tobytes())


def _write_all(folder: Path, images: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        _write_png(folder / f"{index:04d}.png", image)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Serialise concurrent builders (parallel study workers all call prepare_demo) with a lock file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".demo.lock", "w") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # no flock (Windows): builds are still deterministic, only not serialised
            pass
        yield


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_demo_dataset(out_dir: Path, image_size: int = 128, n_photo: int = 96, n_style: int = 96, n_ref: int = 64,
                       n_val: int = 16, seed: int = 0) -> Path:
    """Write the demo dataset in the original layout (style name `demo`); a no-op when demo.json matches.

    demo.json records each image's provenance under "files" (folder -> [{file, source, box, flip}]): val photos
    come only from the HELD_OUT sources, training photos and style images only from the others.
    """
    from ablation.data.smooth import build_smooth_dir

    out_dir = Path(out_dir)
    train_names = [n for n in PHOTO_SOURCES if n not in HELD_OUT]
    with _locked(out_dir):
        photos = source_images(image_size)
        shapes = {name: image.shape[:2] for name, image in photos.items()}
        train_shapes = {n: shapes[n] for n in train_names}
        plans = {"train_photo": crop_plan(train_shapes, n_photo, seed, 0),
                 "demo/style": crop_plan(train_shapes, n_style, seed, 1),
                 "demo/style_ref": crop_plan(train_shapes, n_ref, seed, 2),
                 "val": crop_plan({n: shapes[n] for n in HELD_OUT}, n_val, seed, 3)}
        manifest = {"format": FORMAT_VERSION, "seed": seed, "image_size": image_size,
                    "counts": {"train_photo": n_photo, "style": n_style, "style_ref": n_ref, "val": n_val},
                    "sources": {"train": train_names, "val": list(HELD_OUT)},
                    "stylizer": {"mean_shift": list(MEAN_SHIFT), "palette_k": PALETTE_K, "palette_seed": PALETTE_SEED,
                                 "hsv_gain": list(HSV_GAIN), "canny": [60, 160], "min_edge_pixels": MIN_EDGE_PIXELS},
                    "files": {folder: [{"file": f"{i:04d}.png", **crop} for i, crop in enumerate(plan)]
                              for folder, plan in plans.items()}}
        path = out_dir / MANIFEST
        if path.exists() and _read_json(path) == manifest:
            return out_dir
        if not path.exists() and any((out_dir / name).exists() for name in MANAGED):
            # no manifest = not ours: never delete what may be a user's real dataset
            raise UserError(problem(out_dir, "out_dir", f"an empty folder or an earlier demo build ({MANIFEST})",
                                    "<a folder with data not built by `ablate data demo`>"))
        # stylise whole photos once, then crop (evaluation.md §8 "stylise the full photos once")
        styled = {n: stylize(photos[n]) for n in train_names}
        val = [cut(photos[c["source"]], c, image_size) for c in plans["val"]]

        staging = out_dir / f".building-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        _write_all(staging / "train_photo", [cut(photos[c["source"]], c, image_size) for c in plans["train_photo"]])
        for folder in ("demo/style", "demo/style_ref"):
            _write_all(staging / folder, [cut(styled[c["source"]], c, image_size) for c in plans[folder]])
        _write_all(staging / "val", val)
        _write_all(staging / "val_target", [stylize(v) for v in val])
        build_smooth_dir(staging / "demo" / "style", staging / "demo" / "smooth", image_size, progress=False)

        # swap in: mark the build unfinished first so an interrupted swap is rebuilt, never trusted
        path.write_text(json.dumps({"format": FORMAT_VERSION, "building": True}) + "\n")
        for name in MANAGED:
            shutil.rmtree(out_dir / name, ignore_errors=True)
            os.replace(staging / name, out_dir / name)
        shutil.rmtree(staging, ignore_errors=True)
        path.write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir
