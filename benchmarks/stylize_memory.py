"""Peak memory of `ablate stylize`'s inference, whole image against overlapping tiles, at a few image sides.

Each measurement runs in its own process (peak RSS, `resource.getrusage`, only ever grows within one), on the
CPU, with a random-weight generator (memory does not depend on the weights). Prints a table and writes
benchmarks/results/stylize_memory.json.

    python3 benchmarks/stylize_memory.py [--sides 256 512 1024] [--tile 256] [--generator v1]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "stylize_memory.json"

MEASURE = """
import resource, sys, time, torch
from ablation.gan.generator import build_generator
from ablation.gan.inference import stylize, stylize_tiled
side, tile, arch = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(2)
torch.manual_seed(0)
generator = build_generator(arch).eval()
photo = torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if tile:
    stylize_tiled(generator, photo, torch.device("cpu"), tile, 64)
else:
    stylize(generator, photo, torch.device("cpu"))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(before, peak, seconds)
"""


def measure(side: int, tile: int, arch: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(side), str(tile), arch], capture_output=True,
                         text=True, check=True)
    before, peak, seconds = out.stdout.split()
    return {"side": side, "tile": tile, "peak_rss_mib": int(peak) / 1024,
            "inference_mib": (int(peak) - int(before)) / 1024, "seconds": float(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--generator", default="v1")
    args = parser.parse_args()
    rows = [measure(side, tile, args.generator) for side in args.sides for tile in (0, args.tile)]
    print(f"{'side':>6} {'mode':>10} {'peak RSS MiB':>13} {'inference MiB':>14} {'seconds':>8}")
    for row in rows:
        mode = f"tile {row['tile']}" if row["tile"] else "whole"
        print(f"{row['side']:>6} {mode:>10} {row['peak_rss_mib']:>13.0f} {row['inference_mib']:>14.0f} "
              f"{row['seconds']:>8.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"generator": args.generator, "device": "cpu", "overlap": 64,
                                   "machine": platform.processor() or platform.machine(), "rows": rows},
                                  indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
