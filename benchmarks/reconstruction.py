"""How close can a CPU demo's generator get to the demo's pseudo-ground truth? The init phase's reconstruction
of held-out demo photos, measured against the identity mapping's pseudo-ground-truth PSNR.

    python benchmarks/reconstruction.py [--steps 800] [--every 100] [--generators v1 v2] [--out FILE]

An output beats the identity on `eval/content/pgt_psnr` only if it is first a near-copy of the photo: the
anchors below (the photo plus noise, the stylizer's own mean-shift and colour boost) say how near. Each run
then trains G from scratch on the demo's training photos (batch 4, 64 px, Adam at the demo's init lr 1e-3,
betas 0.5/0.999) with one of two objectives, and scores the 32 held-out photos every `--every` steps:

- `demo init`: the `--demo` preset's init loss exactly (gan/steps.py `init_losses`: content 1.5 on the random
  MobileNetV2 + colour 10);
- `pixel L1`: mean |G(p) - p|, the most direct copy objective there is: how fast G can learn to copy.

Prints a table and writes benchmarks/results/reconstruction.json. Steps per second differ between machines:
compare with `benchmarks/train_step.py` run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from ablation.config import TrainConfig, with_overrides
from ablation.data.demo import boost_colours, mean_shift
from ablation.data.images import list_images, to_signed, to_uint8
from ablation.data.presets import DEMO_OVERRIDES, prepare_demo
from ablation.evaluation import metrics as M
from ablation.gan.backbone import build_backbone
from ablation.gan.generator import build_generator
from ablation.gan.steps import init_losses

RESULTS = Path(__file__).resolve().parent / "results" / "reconstruction.json"
BATCH = 4
OBJECTIVES = ("demo init", "pixel L1")


def load_folder(folder: Path) -> np.ndarray:
    """uint8 [N, H, W, 3]"""
    return np.stack([iio.imread(path)[..., :3] for path in list_images(folder)])


def mean_psnr(outputs: np.ndarray, references: np.ndarray) -> float:
    return float(np.mean([M.psnr(o, r) for o, r in zip(outputs, references, strict=True)]))


def on_rgb(step: Callable[[np.ndarray], np.ndarray], rgb: np.ndarray) -> np.ndarray:
    """One of the demo stylizer's BGR steps (data/demo.py) alone, on an RGB image."""
    return np.ascontiguousarray(step(np.ascontiguousarray(rgb[..., ::-1]))[..., ::-1])


def anchors(photos: np.ndarray, targets: np.ndarray) -> list[dict]:
    """pgt PSNR of fixed mappings: how near a copy must be, and what the stylizer's own steps gain."""
    rng = np.random.default_rng(0)
    mappings = {"identity (copy)": photos,
                "stylizer's colour boost": np.stack([on_rgb(boost_colours, p) for p in photos]),
                "stylizer's mean-shift + colour boost":
                    np.stack([on_rgb(boost_colours, on_rgb(mean_shift, p)) for p in photos])}
    for sigma in (4, 8, 16, 32):
        noise = rng.normal(0.0, sigma, photos.shape)
        mappings[f"copy + noise sigma {sigma}"] = np.clip(np.rint(photos + noise), 0, 255).astype(np.uint8)
    return [{"mapping": name, "psnr_photo": mean_psnr(out, photos), "pgt_psnr": mean_psnr(out, targets)}
            for name, out in mappings.items()]


def train_curve(config: TrainConfig, objective: str, train_photos: np.ndarray, val_photos: np.ndarray,
                targets: np.ndarray, steps: int, every: int) -> list[dict]:
    """Train G from scratch on `objective`; the held-out scores every `every` steps."""
    torch.manual_seed(config.seed)
    generator = build_generator(config.model.generator, config.model.generator_sn, config.model.resize)
    backbone = build_backbone(config.backbone, config.seed)
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.optim.init_lr,
                                 betas=(config.optim.beta1, config.optim.beta2))
    rng = np.random.default_rng(config.seed)
    train_all = to_signed(torch.from_numpy(train_photos).permute(0, 3, 1, 2))  # [N, 3, H, W] in [-1, 1]
    val = to_signed(torch.from_numpy(val_photos).permute(0, 3, 1, 2))
    rows, started = [], time.perf_counter()
    for step in range(1, steps + 1):
        real_photo = train_all[rng.choice(len(train_all), BATCH, replace=False)]
        if rng.random() < 0.5:
            real_photo = real_photo.flip(-1)
        fake_anime = generator(real_photo)
        if objective == "pixel L1":
            loss = (fake_anime - real_photo).abs().mean()
        else:
            loss = init_losses(config, real_photo, fake_anime, backbone(real_photo), backbone(fake_anime))["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0:
            with torch.no_grad():
                out = to_uint8(generator.eval()(val)).permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
            generator.train()
            rows.append({"step": step, "psnr_photo": mean_psnr(out, val_photos), "pgt_psnr": mean_psnr(out, targets),
                         "ssim_luma_blur": float(np.mean([M.ssim_luma_blur(o, p)
                                                          for o, p in zip(out, val_photos, strict=True)])),
                         "seconds": time.perf_counter() - started})
            print(f"  {config.model.generator} {objective:>9} step {step:5d}: vs photo {rows[-1]['psnr_photo']:5.2f} dB"
                  f", vs pgt {rows[-1]['pgt_psnr']:5.2f} dB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--generators", nargs="+", default=["v1", "v2"])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    root = Path(prepare_demo()["data.root"])
    train_photos, val_photos = load_folder(root / "train_photo"), load_folder(root / "val")
    targets = load_folder(root / "val_target")
    fixed = anchors(val_photos, targets)
    print(f"{len(val_photos)} held-out demo photos, {len(train_photos)} training photos, 64 px")
    print(f"{'fixed mapping':>38} {'vs photo dB':>12} {'vs pgt dB':>10}")
    for row in fixed:
        print(f"{row['mapping']:>38} {row['psnr_photo']:>12.2f} {row['pgt_psnr']:>10.2f}")

    curves = []
    for generator in args.generators:
        config = with_overrides(TrainConfig(), {**DEMO_OVERRIDES, "model.generator": generator})
        for objective in args.objectives:
            curves.append({"generator": generator, "objective": objective,
                           "rows": train_curve(config, objective, train_photos, val_photos, targets,
                                               args.steps, args.every)})
    print(f"{'G':>3} {'objective':>10} {'step':>6} {'vs photo dB':>12} {'vs pgt dB':>10} "
          f"{'SSIM blur luma':>15} {'s':>6}")
    for curve in curves:
        for row in curve["rows"]:
            print(f"{curve['generator']:>3} {curve['objective']:>10} {row['step']:>6} {row['psnr_photo']:>12.2f} "
                  f"{row['pgt_psnr']:>10.2f} {row['ssim_luma_blur']:>15.3f} {row['seconds']:>6.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                   "steps": args.steps, "batch": BATCH, "anchors": fixed, "curves": curves},
                                  indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
