"""A trained generator in MLflow: logged as an MLflow model (`log_generator`: every finished trial, `ablate best
--register`), and a trial run's weights and config read back (`trial_files`; `--model REF` is resolved by
report.model_ref).
"""

from __future__ import annotations

import ast
import shutil
import tempfile
from pathlib import Path

import ablation
from ablation.config import TrainConfig, build_config, read_yaml
from ablation.errors import UserError, problem
from ablation.study.outages import infrastructure_error, one_line
from ablation.study.tracking.client import TAG_MODEL_ERROR, Tracker, mlflow_unavailable

WEIGHTS, CONFIG = "model/generator.pt", "config/config.yaml"  # a trial run's artifacts (study/work/trial.py)
EXAMPLE_SIDE = 32  # the input example's side: both generators take it, and MLflow's JSON round trip of it is cheap


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
    of the trial fails: the trial goes back to the queue (study.work.trial)."""
    try:
        log_generator(tracker, run_id, weights, config_file)
        return {}
    except Exception as exc:
        if infrastructure_error(exc, mlflow_unavailable) is not None:
            raise
        return {TAG_MODEL_ERROR: one_line(exc)}
