"""Where a trained generator is: `--model REF` of `ablate stylize` resolved to its weights and its config; and
the generator logged as an MLflow model (`log_generator`: every finished trial, `ablate best --register`).

REF is a local generator.pt (or checkpoint.pt; its trial folder's config.yaml is read when it is beside it),
an MLflow run id, `runs:/<run id>/...`, `STUDY:best` (the best trial of the best cell, `ablate best`), or a
logged model's URI (`models:/NAME@champion`, `models:/NAME/3`: what `ablate best --register` made).
"""

from __future__ import annotations

import ast
import re
import shutil
import tempfile
from pathlib import Path

import ablation
from ablation.config import TrainConfig, build_config, read_yaml
from ablation.errors import UserError, problem
from ablation.study.outages import infrastructure_error, one_line
from ablation.study.tracking import TAG_MODEL_ERROR, Tracker, mlflow_unavailable

WEIGHTS, CONFIG = "model/generator.pt", "config/config.yaml"  # a trial run's artifacts (study/trial.py)
EXAMPLE_SIDE = 32  # the input example's side: both generators take it, and MLflow's JSON round trip of it is cheap
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


def log_generator(tracker: Tracker, run_id: str, weights: Path, config_file: Path) -> str:
    """The generator in `weights`, built as `config_file` says, logged into run `run_id` as its MLflow model
    (an ImageStylizer: float32 [N, H, W, 3] RGB in [0, 1], any size, in and out); its model URI."""
    import numpy as np
    import torch

    from ablation.gan import ImageStylizer, load_generator

    config = build_config(read_yaml(config_file), config_file)
    model = ImageStylizer(load_generator(weights, config, torch.device("cpu")), config_file.read_text())
    example = np.random.default_rng(0).random((1, EXAMPLE_SIDE, EXAMPLE_SIDE, 3), dtype=np.float32)
    package = Path(ablation.__file__).parent
    with tempfile.TemporaryDirectory(prefix="ablate-model-code-") as tmp:
        code = Path(tmp) / package.name  # the model's code/ablation: only what its pickle imports
        for path in package_files({type(m).__module__ for m in model.modules()}):
            target = code / path.relative_to(package)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        return tracker.log_image_model(run_id, model, example, code)


def package_files(modules: set[str]) -> list[Path]:
    """The source files of this package that `modules` need: theirs, those of every ablation module they import
    (any import statement, also one inside a function, followed to the end) and their packages' __init__.py.

    What a logged model carries as code instead of the whole package: each file is one request to a tracking
    server with proxied artifacts, and the package has about 80 where a generator needs about 10."""
    package = Path(ablation.__file__).parent
    todo = [m for m in modules if m.split(".")[0] == package.name]
    found: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        base = package.parent.joinpath(*name.split("."))
        path = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)
        if name in found or path is None:  # a name imported from a module, not a module itself
            continue
        found[name] = path
        imported = [name.rsplit(".", 1)[0]] if "." in name else []  # its package
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        todo += [m for m in imported if m.split(".")[0] == package.name]
    return sorted(found.values())


def log_trial_model(tracker: Tracker, run_id: str, weights: Path, config_file: Path) -> dict[str, str]:
    """`log_generator` for a trial that just finished: the tags its run ends with. A model that cannot be built
    or logged does not cost the trained trial: the reason becomes tag ablate.model_error. The machine's or a
    service's failure (MLflow away past the tracker's bound, a full disk) is raised, as when any other record
    of the trial fails: the trial goes back to the queue (study.trial)."""
    try:
        log_generator(tracker, run_id, weights, config_file)
        return {}
    except Exception as exc:
        if infrastructure_error(exc, mlflow_unavailable) is not None:
            raise
        return {TAG_MODEL_ERROR: one_line(exc)}
