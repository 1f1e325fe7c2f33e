"""Process-wide settings for an `ablate` process, applied once by the CLI and never at import time.

Library code (`ablation.*` imported from a notebook, a test or another tool) leaves the interpreter as it
found it: no environment variables, warning filters or logger levels change because a module was imported
or a function was called. Only a process that `ablate` owns (the command line and the worker subprocesses
it starts as `python -m ablation.cli worker`) opts into them, through `configure_process()`.
"""

from __future__ import annotations

import os
import warnings

# MLflow reads these from the environment at request time, so setting them here reaches every client the
# process creates later. setdefault: a value the user exported wins.
MLFLOW_DEFAULTS = {
    # Our own retry loop (ablation.study.tracking.client.retry) reports an outage in one clear line and keeps
    # retrying; MLflow's silent exponential backoff (7 retries by default) would stall for minutes first.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    # A hung tracking server must surface as an outage in seconds, not after MLflow's 120 s default.
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    # The report downloads one artifact per trial; one tqdm bar per file floods the console.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def configure_process() -> None:
    """Apply the settings of an `ablate` process. Idempotent: calling it again changes nothing.

    - MLflow client environment (see `MLFLOW_DEFAULTS`): short HTTP retries and timeout, no progress bars.
    - Optuna logs at ERROR only: the worker reports each trial's outcome itself in one line, and Optuna's
      INFO lines ("Trial 3 finished with value ...") would repeat it in another format.
    - Optuna's ExperimentalWarning is ignored: the RDB heartbeat (`heartbeat_interval`, `grace_period`) is
      marked experimental, and the warning would repeat on every trial of every worker.

    Matplotlib needs nothing here: the report draws on `Figure` objects with the Agg canvas and its own
    `rc_context` (ablation.report.plots), so no backend is selected and no global rcParams change.
    """
    import optuna  # only when the settings are applied: importing this module stays light

    for name, value in MLFLOW_DEFAULTS.items():
        os.environ.setdefault(name, value)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # filterwarnings drops an identical filter before inserting it, so a second call leaves one entry
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
