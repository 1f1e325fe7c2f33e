"""Seconds per GAN step of each training objective (model.objective) at the demo's settings, and the ratio to
AnimeGAN's step measured in the same run.

    python benchmarks/objectives.py [--steps 6] [--size 64]

Each objective trains one trial through the array loop (gan/array.py, the path every study takes) on
synthetic demo data, GAN phase only; the step time is the median of `perf/step_s` over the logged windows after
the first. Prints a table and writes benchmarks/results/objectives.json. Absolute times differ between
machines: compare with `benchmarks/train_step.py` run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from ablation.config import TrainConfig, with_overrides
from ablation.data.presets import DEMO_OVERRIDES
from ablation.data.streams import domains_from_arrays
from ablation.gan.trainer import train

RESULTS = Path(__file__).resolve().parent / "results" / "objectives.json"
# what each objective's arm in studies/cycle.yaml sets besides the objective
ARMS: dict[str, dict[str, object]] = {
    "animegan": {},
    "animegan+cycle": {"model.objective": "animegan+cycle"},
    "cyclegan": {"model.objective": "cyclegan", "loss.identity_weight": 5.0, "optim.pool_size": 50,
                 "optim.lr_decay": "linear"},
}


def step_seconds(config: TrainConfig, domains: object, out_dir: Path) -> float:
    times: list[float] = []
    train(config, out_dir, lambda metrics, step: times.append(metrics["perf/step_s"])
          if "perf/step_s" in metrics else None, domains=domains)  # type: ignore[arg-type]
    return statistics.median(times[1:])  # the first window holds the warm-up step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6, help="GAN steps per objective (logged every 2)")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    from ablation.data.demo import procedural_batch

    photos, _ = procedural_batch(16, args.size, seed=1)
    _, animes = procedural_batch(16, args.size, seed=2)
    val, _ = procedural_batch(4, args.size, seed=3)
    domains = domains_from_arrays(photos, animes, val)
    demo = {k: v for k, v in DEMO_OVERRIDES.items() if not k.startswith(("data.", "eval."))}
    base = with_overrides(TrainConfig(), {**demo, "data.image_size": args.size, "data.val_count": 2,
                                          "schedule.epochs": 1, "schedule.init_epochs": 0,
                                          "schedule.steps_per_epoch": args.steps, "schedule.log_every": 2,
                                          "eval.enabled": False})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in ARMS.items():
            seconds = step_seconds(with_overrides(base, overrides), domains, Path(tmp) / name)
            rows.append({"objective": name, "gan_step_s": seconds})
    for row in rows:
        row["ratio_to_animegan"] = row["gan_step_s"] / rows[0]["gan_step_s"]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.size} px, batch "
          f"{base.schedule.batch_size}, G {base.model.generator}, D ch {base.model.d_ch}, "
          f"{base.backbone.arch} backbone (random weights)")
    print(f"{'objective':>15} {'s/GAN step':>11} {'x animegan':>11}")
    for row in rows:
        print(f"{row['objective']:>15} {row['gan_step_s']:>11.3f} {row['ratio_to_animegan']:>11.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                   "size": args.size, "rows": rows}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
