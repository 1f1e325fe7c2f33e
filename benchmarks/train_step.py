"""Seconds per init step and per D+G step, and images/s, for G v1/v2 at 64/128/256 px, batch 4, VGG19.

    python benchmarks/train_step.py [--sizes 64 128 256] [--repeats 3]

Runs on the current device (CUDA if available: bf16 autocast + channels_last, as in training).
Prints a table and writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ablation.config import TrainConfig, with_overrides
from ablation.data.streams import Batch
from ablation.gan.backbone import build_backbone
from ablation.gan.device import autocast, prepare_module, resolve_device, synchronize, to_device_layout
from ablation.gan.steps import compute_targets, d_step, g_step, init_step
from ablation.gan.trainer import build_models

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"


def synthetic_batch(size: int, batch: int, device: torch.device, config: TrainConfig) -> Batch:
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for _ in range(4)]
    gray = images[2].mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    tensors = [images[0], images[1], gray, images[3]]
    return Batch(*(to_device_layout(t.to(device), device, config.runtime) for t in tensors))


def time_step(fn, device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def bench(generator: str, size: int, batch: int, repeats: int) -> dict:
    config = with_overrides(TrainConfig(), {"model.generator": generator, "data.image_size": size,
                                            "schedule.batch_size": batch,
                                            "backbone.weights": "random"})  # same cost as pretrained, offline
    device = resolve_device(config.runtime)
    backbone = prepare_module(build_backbone(config.backbone, 0), device, config.runtime)
    models = build_models(config, device)
    data = synthetic_batch(size, batch, device, config)

    def init() -> None:
        with autocast(device, config.runtime):
            init_step(models, backbone, data, compute_targets(backbone, data, "gray", need_style=False), config)

    def gan() -> None:
        with autocast(device, config.runtime):
            targets = compute_targets(backbone, data, "gray")
            d_step(models, data, config)
            g_step(models, backbone, data, targets, config)

    init_times, gan_times = time_step(init, device, repeats), time_step(gan, device, repeats)
    init_s, gan_s = statistics.median(init_times), statistics.median(gan_times)
    return {"generator": generator, "size": size, "batch": batch, "init_step_s": init_s, "gan_step_s": gan_s,
            "images_per_s": batch / gan_s, "init_spread_s": [min(init_times), max(init_times)],
            "gan_spread_s": [min(gan_times), max(gan_times)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--generators", nargs="+", default=["v1", "v2"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(TrainConfig().runtime)
    rows = [bench(g, s, args.batch, args.repeats) for g in args.generators for s in args.sizes]
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({device_name}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, VGG19 random weights")
    print(f"{'G':>3} {'px':>5} {'init s/step':>12} {'D+G s/step':>11} {'images/s':>9}")
    for r in rows:
        print(f"{r['generator']:>3} {r['size']:>5} {r['init_step_s']:>12.3f} {r['gan_step_s']:>11.3f} "
              f"{r['images_per_s']:>9.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"device": str(device), "torch": torch.__version__,
                                   "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
