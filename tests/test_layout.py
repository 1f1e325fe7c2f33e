"""The dependency rule of the package layout, read from the import statements of every module."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ablation"
CORE = ("gan", "data", "evaluation")  # plain torch/numpy: usable in a notebook without the study harness


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules() -> dict[str, set[str]]:
    return {str(p.relative_to(PACKAGE)): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def importers(prefix: str) -> list[str]:
    return sorted(name for name, found in modules().items()
                  if any(m == prefix or m.startswith(prefix + ".") for m in found))


def test_core_never_imports_the_harness() -> None:
    for name, found in modules().items():
        if name.split("/")[0] in CORE:
            banned = {m for m in found if m.split(".")[0] in ("optuna", "mlflow", "typer")
                      or m.startswith(("ablation.study", "ablation.report", "ablation.cli"))}
            assert not banned, f"ablation/{name} imports {sorted(banned)}"


def test_one_home_per_side_effect() -> None:
    assert importers("mlflow") == ["study/tracking/client.py"]
    assert importers("typer") and all(name.startswith("cli/") for name in importers("typer"))  # a module per group


def test_every_role_is_a_subpackage() -> None:
    top = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
    assert {"gan", "data", "evaluation", "study", "report", "cli", "config.py"} <= set(top)
    assert len([p for p in top if p.endswith(".py")]) <= 8, top  # the top level stays small


QUEUE = "study/queue/"  # Optuna as the work queue: the one subpackage that may use Optuna's internals


def optuna_private_names() -> set[str]:
    """The private attributes of the Optuna objects ablate holds: a study, its trials, its (cached) RDB storage."""
    import optuna

    rdb = optuna.storages.RDBStorage("sqlite:///:memory:")
    study = optuna.create_study(storage=rdb)  # wraps the RDB storage in Optuna's cache, as ablate's studies are
    trial = study.ask()
    study.tell(trial, 0.0)
    held = [study, trial, study.trials[0], study._storage, rdb]
    return {name for obj in held for name in {*vars(obj), *dir(type(obj))}
            if name.startswith("_") and not name.startswith("__")}


def test_optuna_internals_only_in_the_queue() -> None:
    names = optuna_private_names()
    assert {"_storage", "_trial_id", "_study_id", "_thread_local", "_backend"} <= names
    uses = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE))
        if name.startswith(QUEUE):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in names
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                uses.append(f"ablation/{name}:{node.lineno} .{node.attr}")
    assert uses == [], uses


def test_the_queue_names_its_public_surface() -> None:
    from ablation.study import queue

    assert queue.__all__ and all(hasattr(queue, name) for name in queue.__all__)
    inside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if str(path.relative_to(PACKAGE)).startswith(QUEUE):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "ablation.study.queue":
                inside += [f"{path.name}: {a.name}" for a in node.names if a.name not in queue.__all__]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ablation.study.queue."):
                inside.append(f"{path.name}: {node.module}")
            elif isinstance(node, ast.Import):
                inside += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("ablation.study.queue.")]
    assert inside == [], f"import the queue through ablation.study.queue's __all__: {inside}"


def test_the_harness_uses_the_engine_through_its_surface() -> None:
    from ablation import gan

    assert gan.__all__ and all(hasattr(gan, name) for name in gan.__all__)
    inside = sorted(f"{name}: {m}" for name, found in modules().items() if name.startswith("study/") for m in found
                    if m.startswith("ablation.gan.") and m.removeprefix("ablation.gan.") not in gan.__all__)
    assert inside == [], f"study/ imports the engine through ablation.gan's __all__ only: {inside}"


def test_no_arrow_points_up() -> None:
    """cli > report > study > gan > data/evaluation: no module imports a floor above its own, lazily or not; the
    one exception is a launcher rendering the report of the study it just ran (report.build)."""
    above = {"study": ("ablation.report", "ablation.cli"), "evaluation": ("ablation.gan",), "data": ("ablation.gan",)}
    for name, found in modules().items():
        banned = sorted(m for m in found if m.startswith(above.get(name.split("/")[0], ("-",)))
                        and not m.startswith("ablation.report.build"))
        assert not banned, f"ablation/{name} imports {banned}"
