"""Where a trained generator is: `--model REF` of `ablate stylize` resolved to its weights and its config.

REF is a local generator.pt (or checkpoint.pt; its trial folder's config.yaml is read when it is beside it),
an MLflow run id, `runs:/<run id>/...`, `STUDY:best` (the best trial of the best cell, `ablate best`), or a
logged model's URI (`models:/NAME@champion`, `models:/NAME/3`: what `ablate best --register` made).
"""

from __future__ import annotations

import re
from pathlib import Path

from ablation.config import TrainConfig, build_config, read_yaml
from ablation.errors import UserError, problem
from ablation.study.tracking import Tracker

WEIGHTS, CONFIG = "model/generator.pt", "config/config.yaml"  # a trial run's artifacts (study/trial.py)
FORMS = "a generator .pt file, an MLflow run id, runs:/<run id>/..., STUDY:best or models:/NAME@ALIAS"


def resolve_model(ref: str, tracker: Tracker, workdir: Path) -> tuple[Path, TrainConfig, str]:
    """(weights file, the trial's config, a one-line description of where they came from)."""
    local = Path(ref)
    if local.suffix == ".pt" or local.exists():
        if not local.is_file():
            raise UserError(problem(None, "--model", FORMS + " (an existing file)", ref))
        config_file = local.parent / "config.yaml"
        if config_file.is_file():
            return local, build_config(read_yaml(config_file), config_file), f"{local} (config {config_file})"
        return local, TrainConfig(), f"{local} (no config.yaml beside it: the default v1 generator)"
    if ref.startswith("models:/"):
        import torch

        model = tracker.load_pytorch_model(ref)  # an ablation.gan.inference.ImageStylizer
        (workdir / "config.yaml").write_text(model.config_yaml)
        torch.save(model.generator.state_dict(), workdir / "generator.pt")
        return (workdir / "generator.pt", build_config(read_yaml(workdir / "config.yaml"), ref), f"model {ref}")
    if ref.endswith(":best"):
        from ablation.report.best import rank

        study = ref[: -len(":best")]
        _, _, cells = rank(tracker, study, top=1)
        if not cells:
            raise UserError(problem(None, "--model", "a study with a finished trial", ref))
        run_id = cells[0].trials[0].run_id
        return _from_run(tracker, run_id, workdir, f"{study}:best = {cells[0].label} seed {cells[0].trials[0].seed}")
    match = re.fullmatch(r"runs:/([0-9a-f]{32})(/.*)?", ref) or re.fullmatch(r"([0-9a-f]{32})", ref)
    if match is None:
        raise UserError(problem(None, "--model", FORMS, ref))
    return _from_run(tracker, match[1], workdir, f"run {match[1]}")


def _from_run(tracker: Tracker, run_id: str, workdir: Path, where: str) -> tuple[Path, TrainConfig, str]:
    weights, config, _ = trial_files(tracker, run_id, workdir)
    return weights, config, where


def trial_files(tracker: Tracker, run_id: str, workdir: Path) -> tuple[Path, TrainConfig, Path]:
    """A trial run's generator weights, its config, and the config file, downloaded into `workdir`."""
    weights = tracker.download(run_id, WEIGHTS, workdir / run_id)
    config_file = tracker.download(run_id, CONFIG, workdir / run_id)
    if weights is None or config_file is None:
        raise UserError(problem(None, "--model", f"a finished trial run with {WEIGHTS} and {CONFIG}",
                                f"<run {run_id} at {tracker.shown_uri}: not there>"))
    return weights, build_config(read_yaml(config_file), config_file), config_file
