"""Importing `ablation` and calling its library functions leave the interpreter as they found it; only
`configure_process()`, which the CLI calls, changes process-wide settings.

Each check runs in a fresh interpreter: this pytest process has already been configured (conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ablation.process import MLFLOW_DEFAULTS

# Reads every piece of process state the package used to change at import or call time.
SNAPSHOT = """
import json, os, warnings
import matplotlib, optuna

def snapshot():
    return {"environ": dict(os.environ), "optuna verbosity": optuna.logging.get_verbosity(),
            "warnings.filters": [repr(f) for f in warnings.filters], "backend": matplotlib.get_backend(),
            "rcParams": {k: repr(v) for k, v in matplotlib.rcParams.copy().items()}}

def changes(before, after):
    found = {}
    for part, old in before.items():
        new = after[part]
        if isinstance(old, dict):
            diff = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        elif isinstance(old, list):
            diff = {"added": [f for f in new if f not in old], "removed": [f for f in old if f not in new]}
            diff = {k: v for k, v in diff.items() if v}
        else:
            diff = [old, new] if old != new else None
        if diff:
            found[part] = diff
    return found
"""

WALK = """
import importlib, json, pkgutil, sys
import ablation

def import_all():
    for info in pkgutil.walk_packages(ablation.__path__, "ablation."):
        importlib.import_module(info.name)
"""


def run_python(code: str, env: dict[str, str], stdin: str = "") -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], input=stdin, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout.strip().splitlines()[-1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what configure_process sets (conftest set it here), so a write would show."""
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_DEFAULTS and k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return {**env, **extra}


@pytest.mark.slow
def test_importing_every_module_changes_no_process_state() -> None:
    # torch, mlflow and the rest set variables and warning filters of their own when first imported: load
    # exactly the third-party modules the package pulls in first, so that what is left is ablation's doing
    env = clean_env(MPLBACKEND="svg")  # a non-Agg backend: selecting Agg at import would show
    third_party = run_python(WALK + """
import_all()
print(json.dumps([m for m in sys.modules if m != "__main__" and m.split(".")[0] != "ablation"]))
""", env)
    changed = run_python(SNAPSHOT + WALK + """
for name in json.loads(sys.stdin.read()):
    try:
        importlib.import_module(name)
    except Exception:  # a few modules register under names they cannot be imported by; harmless here
        pass
before = snapshot()
import_all()
print(json.dumps(changes(before, snapshot())))
""", env, stdin=third_party)
    assert json.loads(changed) == {}, f"importing ablation.* changed process state: {changed}"


def test_library_calls_change_no_process_state(tmp_path: Path) -> None:
    # a GUI backend and no display: a figure made through pyplot would make matplotlib fall back to Agg,
    # which the snapshot shows as a changed backend; Figure + the Agg canvas never select one
    env = clean_env(MPLBACKEND="tkagg")
    changed = run_python(SNAPSHOT + f"""
import pathlib
import pandas as pd
from ablation.errors import UserError
from ablation.report import plots
from ablation.report.data import collect
from ablation.study.tracking.client import Tracker

tmp = pathlib.Path({str(tmp_path)!r})
before = snapshot()
tracker = Tracker(f"sqlite:///{{tmp / 'mlflow.db'}}")
try:
    collect("no-such-study", tracker, None, tmp)
    raise SystemExit("collect found a study in an empty store")
except UserError:
    pass
band = pd.DataFrame({{"step": [1, 2, 3, 4], "mean": [1.0, 0.5, 0.4, 0.3], "lo": [0.9, 0.4, 0.3, 0.2],
                     "hi": [1.1, 0.6, 0.5, 0.4]}})
uri = plots.curve_plot("loss/$g$", {{"a": band}}, plots.cell_colors(["a"]), {{"a": 2}})
assert uri.startswith("data:image/png;base64,") and len(uri) > 1000, uri[:80]
print(json.dumps(changes(before, snapshot())))
""", env)
    assert json.loads(changed) == {}, f"library calls changed process state: {changed}"


def test_configure_process_applies_the_settings_once_and_keeps_the_users_values() -> None:
    env = clean_env(MLFLOW_HTTP_REQUEST_TIMEOUT="99")  # exported by the user: it wins
    result = json.loads(run_python(SNAPSHOT + """
import logging
from ablation.process import configure_process

configure_process()
first = snapshot()
configure_process()
again = changes(first, snapshot())
with warnings.catch_warnings(record=True) as caught:
    warnings.warn("experimental", optuna.exceptions.ExperimentalWarning)
print(json.dumps({"again": again, "caught": len(caught), "verbosity": optuna.logging.get_verbosity(),
                  "info_enabled": logging.getLogger("optuna.study").isEnabledFor(logging.INFO),
                  "env": {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                          "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}}))
""", env))
    assert result["env"] == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "99",
                             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    assert result["verbosity"] == 40 and not result["info_enabled"]  # logging.ERROR: trial INFO lines are off
    assert result["caught"] == 0, "Optuna's ExperimentalWarning is still shown"
    assert result["again"] == {}, f"a second call changed more: {result['again']}"
