"""Trial-steps per second of K trials trained as one array (gan/array.py), against K = 1 in the same run.

    python benchmarks/trial_arrays.py [--repeats 2] [--quick] [--sizes 64 128] [--ks 1 2 4 8 9] [--fuse looped]

The members are a grid of style weight (1, 3, 10) x seed, filled seed by seed (K = 3 is one seed, K = 9 the
3 x 3 grid, K = 16 on CUDA adds seeds), G v1, one D+G step each (the GAN phase: all but the first 5 of the 101
official epochs), VGG19 with fixed random weights (`backbone.seed: 0`: one backbone for all members, like the
pretrained one, offline). CPU: batch 4 at 64 and 128 px, fp32. CUDA (when present): batch 6 at 256 px, bf16
autocast and channels_last, K up to 16, both fusions. Each repeat times one step of every K in turn, so that
load from other processes hits every K alike; the table gives the median step time and the speedup per
trial-step over the first K by median, by min (the least disturbed step on a shared machine) and by this
process's CPU time.

For reference the same run also takes benchmarks/train_step.py's figure (its `bench`: one trial's D+G step
called directly, with its second G forward). Prints a table and writes benchmarks/results/trial_arrays.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from ablation.config import TrainConfig, with_overrides
from ablation.data.demo import procedural_batch
from ablation.data.streams import Domains, domains_from_arrays
from ablation.gan.array import Array, Joiner, open_array, step_array
from ablation.gan.device import resolve_device, synchronize
from ablation.gan.fused import FuseMode, default_mode

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "trial_arrays.json"
STYLE_WEIGHTS = (1.0, 3.0, 10.0)


def member_configs(count: int, size: int, batch: int, threads: int | None = None) -> list[TrainConfig]:
    """Member i: style weight STYLE_WEIGHTS[i % 3], seed i // 3 (a seed's cells share their batches)."""
    base = {"data.image_size": size, "schedule.batch_size": batch, "model.generator": "v1",
            "schedule.epochs": 1000, "schedule.init_epochs": 0, "schedule.steps_per_epoch": 1000,
            "eval.enabled": False, "backbone.weights": "random", "backbone.seed": 0, "runtime.threads": threads}
    return [with_overrides(TrainConfig(), {**base, "loss.style_weight": STYLE_WEIGHTS[i % 3], "seed": i // 3})
            for i in range(count)]


def synthetic_domains(size: int) -> Domains:
    photos, _ = procedural_batch(16, size, seed=1)
    _, animes = procedural_batch(16, size, seed=2)
    val, _ = procedural_batch(2, size, seed=3)
    return domains_from_arrays(photos, animes, val)


def train_step_module() -> ModuleType:
    """benchmarks/train_step.py, loaded from its file (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_step", HERE / "train_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_size(size: int, batch: int, ks: list[int], fuses: list[FuseMode], repeats: int, folder: Path,
               threads: int | None) -> list[dict]:
    domains = synthetic_domains(size)
    arrays: dict[tuple[FuseMode, int], Array] = {}
    for fuse in fuses:
        for k in ks:
            configs = member_configs(k, size, batch, threads)
            out_dirs = [folder / f"{size}-{fuse}-{k}-{i}" for i in range(k)]
            joiners = [Joiner(c, d, lambda metrics, step: None) for c, d in zip(configs, out_dirs, strict=True)]
            arrays[fuse, k] = open_array(joiners, domains=domains, fuse=fuse)
    wall: dict[tuple[FuseMode, int], list[float]] = {key: [] for key in arrays}
    cpu: dict[tuple[FuseMode, int], list[float]] = {key: [] for key in arrays}
    for rep in range(repeats + 1):  # the first round warms up (allocator, oneDNN/cuDNN kernel choice)
        for key, array in arrays.items():
            synchronize(array.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            step_array(array, array.members)
            synchronize(array.device)
            if rep > 0:
                wall[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - start_cpu)
    rows = []
    for fuse in fuses:
        first = (fuse, ks[0])
        for k in ks:
            key = (fuse, k)
            # per trial-step, relative to the first K: median (what a run sees) and min (least disturbed by
            # other processes on a shared machine), and this process's CPU seconds (all its threads)
            rows.append({"size": size, "batch": batch, "fuse": fuse, "k": k,
                         "array_step_s": statistics.median(wall[key]), "array_step_min_s": min(wall[key]),
                         "trial_steps_per_s": k / statistics.median(wall[key]),
                         "speedup_median": statistics.median(wall[first]) / ks[0] / (statistics.median(wall[key]) / k),
                         "speedup_min": min(wall[first]) / ks[0] / (min(wall[key]) / k),
                         "cpu_s_per_trial_step": min(cpu[key]) / k,
                         "speedup_cpu_time": min(cpu[first]) / ks[0] / (min(cpu[key]) / k),
                         "wall_s": wall[key], "cpu_s": cpu[key]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per K (after one warm-up step)")
    parser.add_argument("--quick", action="store_true", help="one timed step per K")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="array sizes; the first is the baseline")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--fuse", nargs="+", default=None, choices=["looped", "grouped"])
    parser.add_argument("--no-reference", action="store_true", help="skip benchmarks/train_step.py's figure")
    # on a CPU shared with other processes, 2 OpenMP threads wait on each other: a loaded core slows every
    # parallel region (10x seen here); 1 thread keeps the ratios measurable there
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # train_step.py's bench runs in this process's setting
    device = resolve_device(TrainConfig().runtime)
    cuda = device.type == "cuda"
    sizes = args.sizes or ([256] if cuda else [64, 128])
    ks = args.ks or ([1, 2, 4, 8, 9, 16] if cuda else [1, 2, 4, 8, 9])
    batch = args.batch or (6 if cuda else 4)
    fuses: list[FuseMode] = args.fuse or (["grouped", "looped"] if cuda else [default_mode(device)])
    repeats = 1 if args.quick else args.repeats
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for size in sizes for row in bench_size(size, batch, ks, fuses, repeats, Path(tmp), args.threads)]
    reference = []
    if not args.no_reference:  # train_step.py's method: one trial's steps called directly, median of its repeats
        train_step = train_step_module()
        for size in sizes:
            ref = train_step.bench("v1", size, batch, repeats)
            reference.append({**ref, "trial_steps_per_s": 1.0 / ref["gan_step_s"]})
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    print(f"device: {device} ({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {batch}, G v1, VGG19 (random, shared), repeats {repeats}")
    vs = f"vs K={ks[0]}"
    print(f"{'px':>5} {'fuse':>8} {'K':>3} {'array s/step':>13} {'trial-steps/s':>14} {vs + ' median':>13} "
          f"{vs + ' min':>10} {vs + ' cpu-s':>12}")
    for r in rows:
        print(f"{r['size']:>5} {r['fuse']:>8} {r['k']:>3} {r['array_step_s']:>13.3f} {r['trial_steps_per_s']:>14.3f} "
              f"{r['speedup_median']:>12.2f}x {r['speedup_min']:>9.2f}x {r['speedup_cpu_time']:>11.2f}x")
    for ref in reference:
        print(f"{ref['size']:>5} train_step.py (one trial, D+G, two G forwards): {ref['gan_step_s']:.3f} s/step, "
              f"{ref['trial_steps_per_s']:.3f} trial-steps/s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "device": str(device), "device_name": device_name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "batch": batch, "repeats": repeats, "ks": ks,
        "members": "style weight (1, 3, 10) x seed, seed by seed; G v1; VGG19 random weights, backbone.seed 0",
        "rows": rows, "train_step_reference": reference, "wall_s": time.perf_counter() - started,
    }, indent=2))
    print(f"wrote {RESULTS} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
