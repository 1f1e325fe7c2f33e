"""The one GPU check: on one CUDA device, in at most about 8 minutes, what the CPU machines cannot measure.

    python benchmarks/gpu_check.py

1. train_step (one D+G step) at 256 px, batch 4, for G v1 and v2, fp32 and bf16, torch.compile off and on;
2. trial arrays at K = 1, 2, 4, 8 (64 px, grouped): trial-steps/s, peak memory per K, speedup against K = 1;
3. a 4-trial study through the CLI with `--devices 0 --trials-per-device 2`: it finishes, each trial once;
4. `ablate stylize` frames per second on a 1080p clip (the study's best generator).

Writes benchmarks/results/gpu_check.json and prints a table. Refuses in one line (exit 2) without CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gpu_check.json"


def load(name: str) -> ModuleType:
    """A sibling benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_step_variant(bench: ModuleType, generator: str, amp: bool, compiled: bool, repeats: int) -> dict:
    from ablation.config import TrainConfig, with_overrides
    from ablation.gan.backbone import build_backbone
    from ablation.gan.device import autocast, effective_precision, prepare_module, resolve_device
    from ablation.gan.steps import compute_targets, d_step, g_step
    from ablation.gan.trainer import build_models

    config = with_overrides(TrainConfig(), {
        "model.generator": generator, "data.image_size": 256, "schedule.batch_size": 4,
        "backbone.weights": "random", "runtime.amp": amp, "runtime.compile": compiled})
    device = resolve_device(config.runtime)
    backbone = prepare_module(build_backbone(config.backbone, 0), device, config.runtime)
    models = build_models(config, device)
    data = bench.synthetic_batch(256, 4, device, config)

    def gan() -> None:
        with autocast(device, config.runtime):
            targets = compute_targets(backbone, data, "gray")
            d_step(models, data, config)
            g_step(models, backbone, data, targets, config)

    start = time.perf_counter()
    times = bench.time_step(gan, device, repeats, warmup=2)  # torch.compile compiles in the warm-up
    row = {"generator": generator, "precision": effective_precision(config.runtime, device), "compile": compiled,
           "gan_step_s": statistics.median(times), "images_per_s": 4 / statistics.median(times),
           "first_steps_s": time.perf_counter() - start - sum(times)}
    return row  # its models go with this frame; train_steps empties the cache between variants


def train_steps(repeats: int = 5) -> list[dict]:
    import torch

    bench = load("train_step")
    rows = []
    for generator in ("v1", "v2"):
        for amp in (False, True):
            for compiled in (False, True):
                rows.append(train_step_variant(bench, generator, amp, compiled, repeats))
                torch.cuda.empty_cache()
    return rows


def trial_arrays(folder: Path, ks: tuple[int, ...] = (1, 2, 4, 8)) -> list[dict]:
    import torch

    arrays = load("trial_arrays")
    rows = []
    for k in ks:
        torch.cuda.reset_peak_memory_stats()
        (row,) = arrays.bench_size(64, 4, [k], ["grouped"], 3, folder, None)
        row["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        rows.append(row)
        torch.cuda.empty_cache()
    base = rows[0]["trial_steps_per_s"]
    for row in rows:
        row["speedup_vs_k1"] = row["trial_steps_per_s"] / base
    return rows


def cli(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{cwd}/mlflow.db", ABLATE_TRIALS_DIR=str(cwd / "trials"))
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def study_through_cli(folder: Path) -> dict:
    import optuna
    import yaml

    from ablation.data.demo import build_demo_dataset

    build_demo_dataset(folder / "data", image_size=64, n_photo=16, n_style=16, n_ref=16, n_val=4)
    base = {"data": {"root": str(folder / "data"), "style": "demo", "image_size": 64, "val_count": 2},
            "backbone": {"weights": "random"}, "eval": {"enabled": False},
            "schedule": {"epochs": 3, "init_epochs": 1, "batch_size": 4, "steps_per_epoch": 10, "log_every": 5}}
    study = folder / "gpu_check.yaml"
    study.write_text(yaml.safe_dump({"name": "gpu_check", "base": base, "axes": {"loss.style_weight": [1.0, 3.0]},
                                     "seeds": [0, 1], "objectives": [
                                         {"metric": "loss/g/style", "direction": "minimize"}]}))
    start = time.perf_counter()
    done = cli(["run", str(study), "--storage", f"sqlite:///{folder}/optuna.db", "--devices", "0",
                "--trials-per-device", "2", "--no-report"], folder, 300)
    wall = time.perf_counter() - start
    trials = optuna.load_study(study_name="gpu_check", storage=f"sqlite:///{folder}/optuna.db").get_trials()
    complete = [t.user_attrs.get("trial_key") for t in trials if t.state.name == "COMPLETE"]
    return {"exit_code": done.returncode, "wall_s": wall, "trials_complete": len(complete),
            "each_once": len(complete) == len(set(complete)) == 4, "stderr_tail": done.stderr[-2000:]}


def stylize_fps(folder: Path, frames: int = 60) -> dict:
    import imageio.v3 as iio
    import numpy as np

    clip = folder / "clip_1080p.mp4"
    ys, xs = np.mgrid[0:1080, 0:1920]
    video = np.stack([np.stack([(xs + 8 * i) % 256, (ys + 4 * i) % 256, (xs + ys) % 256], -1)
                      for i in range(frames)]).astype(np.uint8)  # frames x 1080 x 1920 x 3
    iio.imwrite(clip, video, fps=30, codec="libx264")
    start = time.perf_counter()
    done = cli(["stylize", str(clip), "--model", "gpu_check:best", "--out", str(folder / "stylized"),
                "--device", "cuda"], folder, 200)
    wall = time.perf_counter() - start
    return {"exit_code": done.returncode, "frames": frames, "wall_s": wall, "fps_including_start": frames / wall,
            "stderr_tail": done.stderr[-2000:]}


def table(result: dict) -> str:
    lines = ["train_step 256 px, batch 4 (D+G):", "  G   precision compile  step s  images/s"]
    lines += [f"  {r['generator']}  {r['precision']:<9} {str(r['compile']):<7} {r['gan_step_s']:7.4f} "
              f"{r['images_per_s']:8.1f}" for r in result["train_step"]]
    lines += ["trial arrays 64 px (grouped):", "  K  trial-steps/s  peak MB  speedup"]
    lines += [f"  {r['k']:<2} {r['trial_steps_per_s']:13.2f} {r['peak_memory_mb']:8.0f} {r['speedup_vs_k1']:8.2f}"
              for r in result["trial_arrays"]]
    study, stylize = result["study"], result["stylize"]
    lines += [f"study (4 trials, --devices 0 --trials-per-device 2): exit {study['exit_code']}, "
              f"{study['trials_complete']} complete, each once: {study['each_once']}, {study['wall_s']:.0f} s",
              f"stylize 1080p: {stylize['fps_including_start']:.1f} frames/s over {stylize['frames']} frames "
              f"(exit {stylize['exit_code']}, process start included)"]
    return "\n".join(lines)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: needs a CUDA device (torch.cuda.is_available() is False here); nothing measured",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                  "train_step": train_steps(), "trial_arrays": trial_arrays(folder / "arrays"),
                  "study": study_through_cli(folder)}
        result["stylize"] = stylize_fps(folder)
    result["wall_s"] = time.perf_counter() - started
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"wrote {RESULTS} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
