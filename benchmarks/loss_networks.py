"""Which loss network makes the demo's loss terms act: G's gradient shares and the cost of each candidate.

    python benchmarks/loss_networks.py [--candidates NAME ...] [--axis-for NAME] [--style-weights 1 10]

Trains the demo trial (`--demo` preset: 64 px, 100 init + 50 GAN steps, seed 0, evaluation on) once per
candidate backbone at the official style weight 3, and the `--axis-for` candidate (the demo's) also at the
style_weight demo's other levels; it reads the gradient shares the trainer logs (`balance/g/grad/<term>`,
gan/balance.py) over the GAN phase: the mean over the phase's measurements, the first and the last. Also the
trial's wall time, its mean GAN step time and SSIM on blurred luma at the end. Prints a table and writes
benchmarks/results/loss_networks.json. The criterion (issue 21): at the official style weight, content and
style each hold at least 1% of G's gradient over the GAN phase, and neither falls under the 1e-3 vacuous line at
any style weight.
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
from ablation.gan.trainer import train

RESULTS = Path(__file__).resolve().parent / "results" / "loss_networks.json"
CANDIDATES: dict[str, dict[str, Any]] = {
    "mobilenet_v2 random (torchvision init)": {"backbone.arch": "mobilenet_v2", "backbone.weights": "random",
                                               "backbone.preprocess": "signed"},
    "mobilenet_v2 random (keras init)": {"backbone.arch": "mobilenet_v2", "backbone.weights": "random",
                                         "backbone.init": "keras"},
    "vgg19 random (caffe)": {"backbone.arch": "vgg19", "backbone.weights": "random"},
    "efficientnet_lite1 imagenet (wheel)": {"backbone.arch": "efficientnet_lite1", "backbone.weights": "imagenet"},
}
TERMS = ("adv", "content", "style", "color")


def run_one(overrides: dict[str, Any], style_weight: float) -> dict[str, Any]:
    config = load_train_config(None, {**prepare_demo(), **overrides, "loss.style_weight": style_weight})
    rows: list[tuple[int, dict[str, float]]] = []
    domains = load_domains(config.data)
    started, cpu_started = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="ablate-bench-") as scratch:
        train(config, Path(scratch) / "run", lambda metrics, step: rows.append((step, metrics)), domains=domains)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started  # CPU time: robust to a shared machine
    init_steps = config.schedule.init_epochs * (config.schedule.steps_per_epoch or 1)
    gan = [(step, m) for step, m in rows if step > init_steps and "balance/g/grad/style" in m]
    shares = {t: [m.get(f"balance/g/grad/{t}", 0.0) for _, m in gan] for t in TERMS}
    steps = [m["perf/step_s"] for step, m in rows if step > init_steps and "perf/step_s" in m]
    ssim = next((m["eval/content/ssim_luma_blur"] for _, m in reversed(rows) if "eval/content/ssim_luma_blur" in m),
                float("nan"))
    return {"style_weight": style_weight, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "gan_step_s": round(statistics.median(steps), 3) if steps else None, "ssim_luma_blur": ssim,
            "measured_at": [step for step, _ in gan],
            **{f"{t}_mean": statistics.fmean(v) if v else None for t, v in shares.items()},
            **{f"{t}_first": v[0] if v else None for t, v in shares.items()},
            **{f"{t}_last": v[-1] if v else None for t, v in shares.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--axis-for", default="efficientnet_lite1 imagenet (wheel)", choices=list(CANDIDATES))
    parser.add_argument("--style-weights", nargs="*", type=float, default=[1.0, 10.0])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = []
    print(f"{'candidate':40s} {'style w':>7s} {'content':>9s} {'style':>9s} {'colour':>9s} {'adv':>9s} "
          f"{'GAN s/step':>10s} {'wall s':>7s} {'cpu s':>7s} {'SSIM':>5s}")
    for name in args.candidates:
        for weight in [3.0, *(args.style_weights if name == args.axis_for else [])]:
            row = {"candidate": name, **run_one(CANDIDATES[name], weight)}
            results.append(row)

            def pct(key: str, r: dict[str, Any] = row) -> str:
                value = r[key]
                return "–" if value is None else f"{100 * value:.3g}%" if value >= 1e-4 else f"{value:.1e}"

            print(f"{name:40s} {weight:7g} {pct('content_mean'):>9s} {pct('style_mean'):>9s} "
                  f"{pct('color_mean'):>9s} {pct('adv_mean'):>9s} {row['gan_step_s'] or 0:10.3f} "
                  f"{row['wall_s']:7.0f} {row['cpu_s']:7.0f} {row['ssim_luma_blur']:5.2f}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                                   "results": results}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
