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
    assert importers("mlflow") == ["study/tracking.py"]
    assert importers("typer") == ["cli.py"]


def test_every_role_is_a_subpackage() -> None:
    top = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
    assert {"gan", "data", "evaluation", "study", "report", "cli.py", "config.py"} <= set(top)
    assert len([p for p in top if p.endswith(".py")]) <= 8, top  # the top level stays small
