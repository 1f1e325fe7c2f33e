"""What measuring the loss balance costs a demo trial: the same trial with and without the gradient shares.

    python benchmarks/balance_cost.py [--repeats 2]

Trains the `--demo` trial (64 px, 100 init + 50 GAN steps, seed 0, evaluation at the end) alternately with the
gradient-share measurement at its default cadence (first step of each phase, each evaluation, every epoch) and
with it switched off, and reports the median wall time of each and their ratio. Value shares cost nothing and
stay on in both. Prints a table and writes benchmarks/results/balance_cost.json; the budget (issue 21) is 5%.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ablation.config import load_train_config
from ablation.data.presets import prepare_demo
from ablation.data.streams import load_domains
from ablation.gan import balance
from ablation.gan.trainer import train

RESULTS = Path(__file__).resolve().parent / "results" / "balance_cost.json"


def one_trial(measured: bool) -> tuple[float, int]:
    """Wall seconds of one demo trial, and how many gradient-share measurements it logged."""
    config = load_train_config(None, prepare_demo())
    domains = load_domains(config.data)
    original = balance.measure
    if not measured:
        balance.measure = lambda *args, **kwargs: {}  # type: ignore[assignment]  # the trainer calls it by module
    rows: list[dict[str, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ablate-bench-") as scratch:
            started = time.perf_counter()
            train(config, Path(scratch) / "run", lambda metrics, step: rows.append(metrics), domains=domains)
            wall = time.perf_counter() - started
    finally:
        balance.measure = original  # type: ignore[assignment]
    return wall, sum(1 for m in rows if any(k.startswith("balance/") and "/grad/" in k for k in m))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"measured": [], "off": []}
    measurements = 0
    for _ in range(args.repeats):  # alternated, so a drifting machine hits both alike
        for name in walls:
            wall, count = one_trial(name == "measured")
            walls[name].append(wall)
            measurements = max(measurements, count)
    median = {name: statistics.median(values) for name, values in walls.items()}
    ratio = median["measured"] / median["off"]
    print(f"{'run':10s} {'median wall s':>14s} {'runs':>5s}")
    for name, values in walls.items():
        print(f"{name:10s} {median[name]:14.1f} {len(values):5d}")
    print(f"gradient-share measurements per trial: {measurements}; cost {100 * (ratio - 1):+.1f}% of the trial")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                   "walls_s": walls, "median_s": median, "ratio": ratio,
                                   "measurements_per_trial": measurements}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
