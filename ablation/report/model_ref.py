"""`--model REF` of `ablate stylize` and `ablate export`: where a trained generator is, resolved to its weights
and its config.

REF is a local generator.pt (or checkpoint.pt; its trial folder's config.yaml is read when it is beside it),
an MLflow run id, `runs:/<run id>/...`, `STUDY:best` (the best trial of the best cell, `ablate best`), or a
logged model's URI (`models:/NAME@champion`, `models:/NAME/3`: what `ablate best --register` made).
Here, beside the ranking (report.best), because `STUDY:best` needs it.
"""

from __future__ import annotations

import re
from pathlib import Path

from ablation.config import TrainConfig, build_config, read_yaml
from ablation.errors import UserError, problem
from ablation.report.best import rank
from ablation.study.tracking.client import Tracker
from ablation.study.tracking.logged_models import trial_files

FORMS = "a generator .pt file, an MLflow run id, runs:/<run id>/..., STUDY:best or models:/NAME@ALIAS"


def resolve_model(ref: str, tracker: Tracker, workdir: Path, trust_code: bool = False
                  ) -> tuple[Path, TrainConfig, str]:
    """(weights file, the trial's config, a one-line description of where they came from).

    A `models:/` reference is read as its registered version's source run: that run's generator.pt, loaded
    with torch's weights-only reader, and its config.yaml. Loading the MLflow model itself
    (`mlflow.pytorch.load_model`) unpickles it and imports the code bundled with it, so anyone who can write
    to the tracking server could run code here: only with `trust_code` (`--trust-model-code`)."""
    local = Path(ref)
    if local.suffix == ".pt" or local.exists():
        if not local.is_file():
            raise UserError(problem(None, "--model", FORMS + " (an existing file)", ref))
        config_file = local.parent / "config.yaml"
        if config_file.is_file():
            return local, build_config(read_yaml(config_file), config_file), f"{local} (config {config_file})"
        return local, TrainConfig(), f"{local} (no config.yaml beside it: the default v1 generator)"
    if ref.startswith("models:/") and not trust_code:
        run_id = tracker.model_source_run(ref)
        if run_id is None:
            raise UserError(problem(None, "--model", "a registered model version whose source is a trial run "
                                    "(or add --trust-model-code to unpickle the model and run its bundled code)",
                                    ref))
        return _from_run(tracker, run_id, workdir, f"model {ref} (run {run_id}, weights only)")
    if ref.startswith("models:/"):
        import torch

        model = tracker.load_pytorch_model(ref)  # an ablation.gan.inference.ImageStylizer
        (workdir / "config.yaml").write_text(model.config_yaml)
        torch.save(model.generator.state_dict(), workdir / "generator.pt")
        return (workdir / "generator.pt", build_config(read_yaml(workdir / "config.yaml"), ref),
                f"model {ref} (unpickled, its code trusted)")
    if ref.endswith(":best"):
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
