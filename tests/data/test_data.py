"""Data pipeline: procedural pairs, edge smoothing, folder loading, streams, and the demo dataset."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ablation.config import DataConfig
from ablation.data.demo import (
    HELD_OUT,
    build_demo_dataset,
    bundled_photos,
    cut,
    procedural_batch,
    procedural_pair,
    source_images,
)
from ablation.data.images import list_images, to_signed, to_uint8
from ablation.data.smooth import build_smooth_dir, edge_smooth
from ablation.data.streams import (
    DataStreams,
    ImageStream,
    domains_from_arrays,
    load_domains,
    load_folder,
    to_gray,
    val_photos,
)
from ablation.errors import UserError


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[..., ::-1])


@pytest.mark.parametrize("size", [32, 64])
def test_procedural_pair_sizes_and_determinism(size: int) -> None:
    photo, anime = procedural_pair(np.random.default_rng(7), size)
    assert photo.shape == anime.shape == (size, size, 3)
    assert photo.dtype == anime.dtype == np.uint8
    again = procedural_pair(np.random.default_rng(7), size)
    assert np.array_equal(photo, again[0]) and np.array_equal(anime, again[1])
    # the anime is flat: far fewer distinct colours than the noisy photo
    assert len(np.unique(anime.reshape(-1, 3), axis=0)) < len(np.unique(photo.reshape(-1, 3), axis=0)) / 4
    photos, animes = procedural_batch(3, size, seed=5)
    assert photos.shape == (3, size, size, 3) and animes.shape == (3, size, size, 3)
    assert np.array_equal(procedural_batch(3, size, seed=5)[0], photos)
    assert not np.array_equal(procedural_batch(3, size, seed=6)[0], photos)


def test_edge_smooth_changes_only_masked_pixels() -> None:
    _, anime = procedural_pair(np.random.default_rng(3), 64)
    out = edge_smooth(anime)
    gray = cv2.cvtColor(anime, cv2.COLOR_RGB2GRAY)
    mask = cv2.dilate(cv2.Canny(gray, 100, 200), np.ones((5, 5), np.uint8)) > 0
    changed = (out != anime).any(-1)
    assert changed.any()
    assert not (changed & ~mask).any()
    # inside the mask the value is the truncated 5x5 [1,4,6,4,1]/16 blur with reflect-101 borders
    k = cv2.getGaussianKernel(5, 0)
    blur = cv2.filter2D(anime.astype(np.float64), -1, k @ k.T, borderType=cv2.BORDER_REFLECT_101)
    assert np.array_equal(out[mask], np.floor(blur[mask] + 1e-9).astype(np.uint8))


def test_build_smooth_dir_same_names_and_skips(tmp_path: Path) -> None:
    _, animes = procedural_batch(3, 40, seed=1)
    style, smooth = tmp_path / "style", tmp_path / "smooth"
    for i, a in enumerate(animes):
        _write(style / f"f{i}.png", a)
    assert build_smooth_dir(style, smooth, 32, progress=False) == 3
    assert [p.name for p in list_images(smooth)] == ["f0.png", "f1.png", "f2.png"]
    assert cv2.imread(str(smooth / "f0.png")).shape == (32, 32, 3)
    assert build_smooth_dir(style, smooth, 32, progress=False) == 0  # up to date
    assert build_smooth_dir(style, smooth, 48, progress=False) == 3  # new size: stale


def test_load_folder_resizes_and_crops(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write(tmp_path / "a.png", rng.integers(0, 255, (40, 70, 3), dtype=np.uint8))
    _write(tmp_path / "b.JPG", rng.integers(0, 255, (90, 50, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    images = load_folder(tmp_path, 32, "data.root")
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    # a solid colour survives resize + crop exactly, channel order RGB
    _write(tmp_path / "solid" / "c.png", np.tile(np.array([200, 10, 60], np.uint8), (33, 77, 1)))
    solid = load_folder(tmp_path / "solid", 16, "data.root")
    assert solid[0, :, 5, 5].tolist() == [200, 10, 60]


def test_load_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError) as err:
        load_folder(tmp_path / "bad", 32, "data.root")
    assert "broken.png" in str(err.value) and len(err.value.lines) == 1
    with pytest.raises(UserError) as err:
        load_folder(tmp_path / "nowhere", 32, "data.root")
    text = str(err.value)
    assert "nowhere" in text and "data.root" in text and "ablate data fetch" in text and "--demo" in text
    with pytest.raises(UserError) as err:
        load_domains(DataConfig(root=tmp_path / "nothing", image_size=32))
    assert "data.root" in str(err.value) and "--demo" in str(err.value)


def test_to_gray_pure_colours() -> None:
    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [100, 150, 200]],
                           dtype=torch.uint8)
    images = colours[:, :, None, None].expand(-1, -1, 2, 2).contiguous()
    gray = to_gray(images)
    assert gray.shape == images.shape and gray.dtype == torch.uint8
    assert gray[:, 0, 0, 0].tolist() == [76, 150, 29, 255, 0, 141]  # 0.299*100 + 0.587*150 + 0.114*200 = 140.9
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 0], gray[:, 2])
    rgb = np.random.default_rng(0).integers(0, 256, (1, 3, 9, 9), dtype=np.uint8)
    ref = cv2.cvtColor(np.ascontiguousarray(rgb[0].transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
    assert np.array_equal(to_gray(torch.from_numpy(rgb))[0, 0].numpy(), ref)


def test_image_stream_passes_and_resume() -> None:
    stream = ImageStream(10, seed=3, name="photo")
    first = torch.cat([stream.next_indices(5), stream.next_indices(5)])
    assert sorted(first.tolist()) == list(range(10))
    second = torch.cat([stream.next_indices(4) for _ in range(5)])  # 20 indices, batches span passes
    assert sorted(second[:10].tolist()) == list(range(10)) and sorted(second[10:].tolist()) == list(range(10))
    assert not torch.equal(first, second[:10])  # reshuffled each pass

    torch.manual_seed(0)
    a = ImageStream(7, seed=1, name="anime")
    a.next_indices(3)
    state = a.state_dict()
    expected = [a.next_indices(4).tolist() for _ in range(5)]
    torch.manual_seed(99)  # the global RNG must not matter
    b = ImageStream(7, seed=1, name="anime")
    b.load_state_dict(state)
    assert [b.next_indices(4).tolist() for _ in range(5)] == expected
    assert ImageStream(7, 1, "anime").perm.tolist() != ImageStream(7, 1, "smooth").perm.tolist()
    with pytest.raises(UserError):
        ImageStream(8, seed=1, name="anime").load_state_dict(state)


def test_data_streams_batches_and_resume() -> None:
    photos, animes = procedural_batch(6, 32, seed=2)
    val, _ = procedural_batch(3, 32, seed=9)
    domains = domains_from_arrays(photos, animes, val)
    assert domains.smooth.shape == (6, 3, 32, 32) and not torch.equal(domains.smooth, domains.anime)
    streams = DataStreams(domains, batch_size=4, seed=0, smooth_target="gray", device="cpu")
    assert streams.steps_per_epoch(4) == 1 and streams.steps_per_epoch(2) == 3
    batch = streams.next()
    for t in (batch.real_photo, batch.anime, batch.anime_gray, batch.anime_smooth):
        assert t.shape == (4, 3, 32, 32) and t.dtype == torch.float32
        assert t.min() >= -1.0 and t.max() <= 1.0
    assert torch.equal(batch.anime_gray[:, 0], batch.anime_gray[:, 1])
    assert torch.equal(batch.anime_gray[:, 0], batch.anime_gray[:, 2])
    assert torch.equal(batch.anime_smooth[:, 0], batch.anime_smooth[:, 2])  # gray smooth
    # anime_gray is the gray of the very same anime images
    regray = to_gray(to_uint8(batch.anime))
    assert torch.allclose(to_signed(regray), batch.anime_gray)

    state = streams.state_dict()
    after = [streams.next() for _ in range(3)]
    resumed = DataStreams(domains, batch_size=4, seed=0, smooth_target="gray", device="cpu")
    resumed.load_state_dict(state)
    for x, y in zip(after, [resumed.next() for _ in range(3)], strict=True):
        assert torch.equal(x.real_photo, y.real_photo) and torch.equal(x.anime_smooth, y.anime_smooth)
    colour = DataStreams(domains, 4, 0, "color", "cpu").next()
    assert not torch.equal(colour.anime_smooth[:, 0], colour.anime_smooth[:, 1])
    assert torch.equal(val_photos(domains, 2), domains.val[:2])


def _tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_demo_dataset_layout_determinism_and_held_out(tmp_path: Path) -> None:
    kwargs = dict(image_size=64, n_photo=6, n_style=5, n_ref=4, n_val=3, seed=0)
    start = time.perf_counter()
    a = build_demo_dataset(tmp_path / "a", **kwargs)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, elapsed
    counts = {"train_photo": 6, "demo/style": 5, "demo/smooth": 5, "demo/style_ref": 4, "val": 3, "val_target": 3}
    for folder, count in counts.items():
        files = list_images(a / folder)
        assert len(files) == count, folder
        assert cv2.imread(str(files[0])).shape == (64, 64, 3)
    assert [p.name for p in list_images(a / "val")] == [p.name for p in list_images(a / "val_target")]
    assert (a / "demo.json").exists()

    mtime = (a / "demo.json").stat().st_mtime_ns
    build_demo_dataset(tmp_path / "a", **kwargs)  # manifest matches: nothing rewritten
    assert (a / "demo.json").stat().st_mtime_ns == mtime
    b = build_demo_dataset(tmp_path / "b", **kwargs)
    assert _tree_hash(a) == _tree_hash(b)

    # val photos come from held-out source images only, and from more than one (see the next test)
    manifest = json.loads((a / "demo.json").read_text())
    assert [f["source"] for f in manifest["files"]["val"]] == ["coffee", "rocket", "coffee"]

    domains = load_domains(DataConfig(root=a, style="demo", image_size=64))
    assert domains.photo.shape == (6, 3, 64, 64) and domains.style_ref.shape == (4, 3, 64, 64)
    assert domains.val_target.shape == (3, 3, 64, 64)


def _best_match(val: np.ndarray, photo: np.ndarray) -> float:
    """Smallest normalised squared difference of a val image (any scale, either flip) inside a photo."""
    small = cv2.resize(photo, (photo.shape[1] // 4, photo.shape[0] // 4), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    crops = [cv2.resize(val, (s, s), interpolation=cv2.INTER_AREA) for s in range(24, min(small.shape[:2]), 4)]
    crops += [np.ascontiguousarray(c[:, ::-1]) for c in crops]
    return min(cv2.matchTemplate(small, c, cv2.TM_SQDIFF_NORMED).min() for c in crops)


def test_demo_val_photos_come_from_several_held_out_sources(tmp_path: Path) -> None:
    """No val photo shares a source image with any training photo or style image, and >= 2 sources are used;
    the manifest's provenance is checked against the pixels, exactly and by an independent template match."""
    root = build_demo_dataset(tmp_path / "d", image_size=64, n_photo=6, n_style=5, n_ref=4, n_val=4, seed=1)
    files = json.loads((root / "demo.json").read_text())["files"]
    training = {f["source"] for folder in ("train_photo", "demo/style", "demo/style_ref") for f in files[folder]}
    val_sources = [f["source"] for f in files["val"]]
    assert not training & set(val_sources) and len(set(val_sources)) >= 2
    assert set(val_sources) == set(HELD_OUT) and training == {"astronaut", "chelsea", "grace_hopper"}

    photos = bundled_photos()
    shrunk = source_images(64)
    for entry, path in zip(files["val"], list_images(root / "val"), strict=True):
        val = cv2.imread(str(path))[..., ::-1]
        assert entry["file"] == path.name
        assert np.array_equal(val, cut(shrunk[entry["source"]], entry, 64))  # the recorded crop, bit for bit
    for entry, path in list(zip(files["val"], list_images(root / "val"), strict=True))[:2]:
        val = cv2.imread(str(path))[..., ::-1].astype(np.float32)
        scores = {name: _best_match(val, photo) for name, photo in photos.items()}
        assert min(scores, key=scores.get) == entry["source"], scores


def test_load_domains_builds_missing_smooth(tmp_path: Path) -> None:
    photos, animes = procedural_batch(4, 40, seed=4)
    for i in range(4):
        _write(tmp_path / "train_photo" / f"{i}.png", photos[i])
        _write(tmp_path / "Hayao" / "style" / f"{i}.jpg", animes[i])
    _write(tmp_path / "val" / "v.png", photos[0])
    domains = load_domains(DataConfig(root=tmp_path, style="Hayao", image_size=32))
    assert len(list_images(tmp_path / "Hayao" / "smooth")) == 4
    assert domains.smooth.shape == (4, 3, 32, 32) and domains.style_ref is None and domains.val_target is None
    with pytest.raises(UserError) as err:
        load_domains(DataConfig(root=tmp_path, style="Shinkai", image_size=32))
    assert "data.style" in str(err.value) and "Hayao" in str(err.value)
