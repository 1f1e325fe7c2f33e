"""What measuring the loss balance costs a demo trial: the same trial with and without the gradient shares.

    python benchmarks/balance_cost.py [--repeats 2]

Trains the `--demo` trial (64 px, 100 init + 50 GAN steps, seed 0, evaluation at the end) alternately with the
gradient-share measurement at its default cadence (first step of each phase, each evaluation, every epoch) and
with it switched off, and reports the median wall and process CPU time of each, and the time spent inside the
measurement as a share of the trial's (the direct cost: it holds on a shared machine, where the difference of two
trials' walls drifts with the load). Value shares cost nothing and stay on in both. Prints a table and writes
benchmarks/results/balance_cost.json; the budget (issue 21) is 5%.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ablation.config import load_train_config
from ablation.data.presets import prepare_demo
from ablation.data.streams import load_domains
from ablation.gan import balance
from ablation.gan.trainer import train

RESULTS = Path(__file__).resolve().parent / "results" / "balance_cost.json"


def one_trial(measured: bool) -> dict[str, float]:
    """One demo trial: its wall and process CPU seconds, the seconds spent inside the gradient-share measurement
    (wall and CPU; 0 when off), and how many measurements it logged. The time inside the measurement is the
    direct cost: unlike the difference between two trials' walls it does not drift with a shared machine's load."""
    config = load_train_config(None, prepare_demo())
    domains = load_domains(config.data)
    original = balance.measure
    inside = {"wall_s": 0.0, "cpu_s": 0.0}

    def timed(*args: Any, **kwargs: Any) -> dict[str, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            inside["wall_s"] += time.perf_counter() - wall
            inside["cpu_s"] += time.process_time() - cpu

    # the trainer calls it by module attribute, so replacing it here reaches every call
    balance.measure = timed if measured else (lambda *args, **kwargs: {})  # type: ignore[assignment]
    rows: list[dict[str, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ablate-bench-") as scratch:
            wall, cpu = time.perf_counter(), time.process_time()
            train(config, Path(scratch) / "run", lambda metrics, step: rows.append(metrics), domains=domains)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        balance.measure = original  # type: ignore[assignment]
    count = sum(1 for m in rows if any(k.startswith("balance/") and "/grad/" in k for k in m))
    return {"wall_s": wall, "cpu_s": cpu, "measure_wall_s": inside["wall_s"], "measure_cpu_s": inside["cpu_s"],
            "measurements": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"measured": [], "off": []}
    for _ in range(args.repeats):  # alternated, so a drifting machine hits both alike
        for name in runs:
            runs[name].append(one_trial(name == "measured"))
    median = {name: {key: statistics.median(run[key] for run in values) for key in values[0]}
              for name, values in runs.items()}
    measured = median["measured"]
    inside_wall = measured["measure_wall_s"] / measured["wall_s"]
    inside_cpu = measured["measure_cpu_s"] / measured["cpu_s"]
    ratio_cpu = measured["cpu_s"] / median["off"]["cpu_s"]
    print(f"{'run':10s} {'wall s':>8s} {'cpu s':>8s} {'in measure: wall s':>19s} {'cpu s':>7s} {'runs':>5s}")
    for name, values in runs.items():
        m = median[name]
        print(f"{name:10s} {m['wall_s']:8.1f} {m['cpu_s']:8.1f} {m['measure_wall_s']:19.2f} "
              f"{m['measure_cpu_s']:7.2f} {len(values):5d}")
    print(f"gradient-share measurements per trial: {int(measured['measurements'])}; inside the measurement "
          f"{100 * inside_wall:.1f}% of the trial's wall, {100 * inside_cpu:.1f}% of its CPU time; "
          f"CPU time with/without {100 * (ratio_cpu - 1):+.1f}%")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                   "runs": runs, "median": median, "inside_share_wall": inside_wall,
                                   "inside_share_cpu": inside_cpu, "cpu_ratio": ratio_cpu}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
