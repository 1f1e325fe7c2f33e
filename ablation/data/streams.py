"""The AnimeGAN data pipeline (animegan.md §1.8): three independent shuffled streams over train_photo/,
<style>/style/ and <style>/smooth/, decoded once into uint8 tensors and converted to [-1, 1] on the device.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch

from ablation.config import DataConfig
from ablation.data.images import IMAGE_SUFFIXES, list_images, to_signed
from ablation.data.smooth import build_smooth_dir, edge_smooth
from ablation.errors import UserError, problem

__all__ = ["Batch", "DataStreams", "Domains", "ImageStream", "domains_from_arrays", "evaluation_photos", "load_domains",
           "load_folder", "to_gray", "val_photos"]
GET_DATA = "get data with `ablate data fetch animegan DEST` or run with --demo"


def _decode(path: Path, size: int, field: str) -> np.ndarray:
    """One file -> RGB uint8 [3, S, S]: short side to S, centre crop."""
    data = np.fromfile(str(path), np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise UserError(problem(path, field, "a readable image", "<undecodable file>"))
    h, w = bgr.shape[:2]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        # INTER_AREA for shrinking (no aliasing); it degenerates to nearest-like when enlarging, so use linear
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=interp)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        bgr = bgr[top:top + size, left:left + size]
    return np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1))


def load_folder(folder: Path, image_size: int, field: str) -> torch.Tensor:
    """Decode every image of `folder` once into a uint8 tensor [N, 3, S, S] (sorted file order)."""
    folder = Path(folder)
    files = list_images(folder)
    if not files:
        given = f"<no images ({' '.join(IMAGE_SUFFIXES)})>" if folder.is_dir() else "<missing folder>"
        raise UserError(problem(folder, field, f"a folder of images; {GET_DATA}", given))
    # cv2 releases the GIL while decoding, so threads give a real speed-up on thousands of JPEGs
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        arrays = list(pool.map(lambda p: _decode(p, image_size, field), files))
    return torch.from_numpy(np.stack(arrays))


def to_gray(images_u8: torch.Tensor) -> torch.Tensor:
    """OpenCV RGB->gray (0.299R + 0.587G + 0.114B, its exact fixed-point rounding), replicated to 3 channels."""
    x = images_u8.to(torch.int32)
    # cv2's 8-bit path: coefficients scaled by 2^14 and rounded, so results equal cv2.cvtColor bit for bit
    y = (4899 * x[:, 0] + 9617 * x[:, 1] + 1868 * x[:, 2] + 8192) >> 14
    return y.clamp(0, 255).to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


@dataclass
class Domains:
    photo: torch.Tensor
    anime: torch.Tensor
    anime_gray: torch.Tensor
    smooth: torch.Tensor
    smooth_gray: torch.Tensor
    val: torch.Tensor
    style_ref: torch.Tensor | None = None  # a disjoint style split: the KID reference (demo data)
    val_target: torch.Tensor | None = None  # pseudo ground truth for val (demo data)
    # real data: style_ref was held out of style/ (no style_ref/ folder); the evaluator then compares with the
    # style images G trains on and uses style_ref as its reference anchor (gan/member.build_evaluator)
    style_ref_held_out: bool = False
    eval_photos: torch.Tensor | None = None  # what evaluations score when more than val/ (`evaluation_photos`)


def evaluation_photos(domains: Domains) -> torch.Tensor:
    """The photos evaluations score: val/, then the public layout's test/test_photo/ where loaded."""
    return domains.eval_photos if domains.eval_photos is not None else domains.val


HOLDOUT_EVERY = 10
GPU_RESIDENT_BYTES = 8 << 30  # datasets up to 8 GB of uint8 pixels are kept on the GPU


def load_domains(cfg: DataConfig) -> Domains:
    root, size = Path(cfg.root), cfg.image_size
    if not root.is_dir():
        raise UserError(problem(root, "data.root", f"a dataset folder holding train_photo/; {GET_DATA}",
                                "<missing folder>"))
    style_root = root / cfg.style
    style_dir, smooth_dir = style_root / "style", style_root / "smooth"
    if not list_images(style_dir):
        styles = sorted(p.name for p in root.iterdir() if (p / "style").is_dir())
        hint = f" (styles here: {', '.join(styles)})" if styles else ""
        raise UserError(problem(style_dir, "data.style", f"a folder of style images{hint}; {GET_DATA}",
                                "<missing or empty>"))
    photo = load_folder(root / "train_photo", size, "data.root")
    anime = load_folder(style_dir, size, "data.style")
    missing = {p.name for p in list_images(style_dir)} - {p.name for p in list_images(smooth_dir)}
    if missing:
        build_smooth_dir(style_dir, smooth_dir, size, progress=True, missing_only=True)
    smooth = load_folder(smooth_dir, size, "data.style")
    val = load_folder(root / "val", size, "data.root")
    ref_dir, target_dir = style_root / "style_ref", root / "val_target"
    style_ref = load_folder(ref_dir, size, "data.style") if list_images(ref_dir) else None
    val_target = load_folder(target_dir, size, "data.root") if list_images(target_dir) else None
    if val_target is not None and val_target.shape[0] != val.shape[0]:
        raise UserError(problem(target_dir, "data.root", f"one target per val image ({val.shape[0]})",
                                val_target.shape[0]))
    held_out = style_ref is None and anime.shape[0] >= 2 * HOLDOUT_EVERY
    if held_out:
        # no separate reference split (the public dataset has none): hold every 10th style image out of
        # training, as the reference anchor a style metric of 1.0 means "as close as unseen frames"
        held = torch.arange(anime.shape[0]) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
        style_ref, anime = anime[held], anime[~held]
        if smooth.shape[0] == held.shape[0]:  # smooth/ mirrors style/ by file name, so the same rows
            smooth = smooth[~held]
    # the public layout's test photos (never trained on) join val/ in evaluations: val/ alone is too few for KID's
    # n >= 100; not with pseudo targets, which exist for val/ only (demo data)
    test_dir = root / "test" / "test_photo"
    eval_photos = (torch.cat([val, load_folder(test_dir, size, "data.root")])
                   if val_target is None and list_images(test_dir) else None)
    return Domains(photo=photo, anime=anime, anime_gray=to_gray(anime), smooth=smooth, smooth_gray=to_gray(smooth),
                   val=val, style_ref=style_ref, val_target=val_target, style_ref_held_out=held_out,
                   eval_photos=eval_photos)


def _nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] uint8 numpy (procedural/demo layout) or an NCHW uint8 tensor -> NCHW uint8 tensor."""
    if isinstance(images, torch.Tensor):
        return images.to(torch.uint8).contiguous()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.uint8).transpose(0, 3, 1, 2)))


def domains_from_arrays(photos: np.ndarray, animes: np.ndarray, val: np.ndarray, *,
                        style_ref: np.ndarray | None = None, val_target: np.ndarray | None = None) -> Domains:
    """In-memory domains (tests, procedural data): smooth = edge_smooth of each anime, grays computed."""
    anime = _nchw(animes)
    smooth_np = np.stack([edge_smooth(np.ascontiguousarray(a.permute(1, 2, 0).numpy())) for a in anime])
    smooth = _nchw(smooth_np)
    return Domains(photo=_nchw(photos), anime=anime, anime_gray=to_gray(anime), smooth=smooth,
                   smooth_gray=to_gray(smooth), val=_nchw(val),
                   style_ref=_nchw(style_ref) if style_ref is not None else None,
                   val_target=_nchw(val_target) if val_target is not None else None)


class ImageStream:
    """An endless shuffled index stream over N images, reshuffled every pass.

    Its own torch.Generator, seeded from (seed, name), keeps it independent of the global RNG and of the
    other streams; state_dict() captures the generator, the current permutation and the position so that a
    resumed run draws exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, count: int, seed: int, name: str) -> None:
        if count < 1:
            raise ValueError(f"stream {name}: expected at least one image, got {count}")
        self.count, self.name = count, name
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()  # stable across processes, unlike hash()
        self.generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        self.perm = torch.randperm(count, generator=self.generator)
        self.pos = 0

    def next_indices(self, batch: int) -> torch.Tensor:
        parts, need = [], batch
        while need > 0:
            if self.pos >= self.count:
                self.perm, self.pos = torch.randperm(self.count, generator=self.generator), 0
            take = min(need, self.count - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            need -= take
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "generator": self.generator.get_state(), "perm": self.perm.clone(),
                "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["count"]) != self.count:
            raise UserError(problem("checkpoint", f"streams.{self.name}", f"{state['count']} images as when saved",
                                    f"<{self.count} images now: the dataset changed>"))
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])


@dataclass
class Batch:
    real_photo: torch.Tensor  # float [B, 3, S, S] in [-1, 1] on the device
    anime: torch.Tensor
    anime_gray: torch.Tensor
    anime_smooth: torch.Tensor
    # which images of the dataset (photo and anime indices): trials that drew the same ones share their
    # backbone features; None = unknown, shared with nobody
    photo_ids: tuple[int, ...] | None = None
    anime_ids: tuple[int, ...] | None = None


class DataStreams:
    """photo, anime and smooth streams, shuffled independently as the original's three tf.data pipelines."""

    def __init__(self, domains: Domains, batch_size: int, seed: int, smooth_target: Literal["gray", "color"],
                 device: torch.device | str = "cpu") -> None:
        self.domains, self.batch_size, self.device = domains, batch_size, torch.device(device)
        self.smooth_images = domains.smooth_gray if smooth_target == "gray" else domains.smooth
        self.images = {"photo": domains.photo, "anime": domains.anime, "anime_gray": domains.anime_gray,
                       "smooth": self.smooth_images}
        if self.device.type == "cuda" and sum(t.numel() for t in self.images.values()) <= GPU_RESIDENT_BYTES:
            # uint8 images live on the GPU for the whole run: a batch is a gather, never a host copy
            self.images = {k: v.to(self.device) for k, v in self.images.items()}
        self.streams = {"photo": ImageStream(len(domains.photo), seed, "photo"),
                        "anime": ImageStream(len(domains.anime), seed, "anime"),
                        "smooth": ImageStream(len(self.smooth_images), seed, "smooth")}

    def steps_per_epoch(self, batch_size: int | None = None) -> int:
        batch = batch_size or self.batch_size
        return max(1, max(len(self.domains.photo), len(self.domains.anime)) // batch)

    def _to_device(self, images_u8: torch.Tensor) -> torch.Tensor:
        if images_u8.device == self.device:
            return to_signed(images_u8)
        if self.device.type == "cuda":
            # pinned host memory lets the copy run asynchronously; the float conversion then happens on the GPU
            images_u8 = images_u8.pin_memory().to(self.device, non_blocking=True)
        elif images_u8.device != self.device:
            images_u8 = images_u8.to(self.device)
        return to_signed(images_u8)

    def next(self) -> Batch:
        photo_idx = self.streams["photo"].next_indices(self.batch_size)
        anime_idx = self.streams["anime"].next_indices(self.batch_size)  # anime and its gray: the same images
        smooth_idx = self.streams["smooth"].next_indices(self.batch_size)
        ids = tuple(photo_idx.tolist()), tuple(anime_idx.tolist())  # host indices: no device sync
        d = self.images
        at = d["photo"].device  # index where the images are (GPU-resident or host)
        photo_idx, anime_idx, smooth_idx = photo_idx.to(at), anime_idx.to(at), smooth_idx.to(at)
        return Batch(real_photo=self._to_device(d["photo"][photo_idx]),
                     anime=self._to_device(d["anime"][anime_idx]),
                     anime_gray=self._to_device(d["anime_gray"][anime_idx]),
                     anime_smooth=self._to_device(d["smooth"][smooth_idx]), photo_ids=ids[0], anime_ids=ids[1])

    def state_dict(self) -> dict[str, Any]:
        return {name: stream.state_dict() for name, stream in self.streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, stream in self.streams.items():
            stream.load_state_dict(state[name])


def val_photos(domains: Domains, count: int) -> torch.Tensor:
    """The first `count` val images (fewer if the folder holds fewer), in file order: the same every epoch."""
    return domains.val[:count]
