"""MLflow: the only module that imports mlflow.

Layout: experiment = study name; one parent run per study (tag ablate.role=parent); one child run per
(cell, seed) trial with `mlflow.parentRunId`, varied values as params under their dotted paths, tags for
cell hash, seed, outcome and Optuna trial number. Metrics go through a background thread in batches, so
training never waits on the tracking server, and nothing is dropped while the server is away.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException

import ablation
from ablation.errors import UserError, problem
from ablation.outcomes import Outcome
from ablation.study.outages import TRANSIENT_HTTP_STATUS, one_line, redact, tracking_outage

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TAG_ROLE, TAG_STUDY, TAG_CELL, TAG_SEED = "ablate.role", "ablate.study", "ablate.cell", "ablate.seed"
TAG_KEY, TAG_OUTCOME, TAG_OPTUNA = "ablate.trial_key", "ablate.outcome", "ablate.optuna_trial"
TAG_LABEL, TAG_STEP = "ablate.cell_label", "ablate.diverged_step"
TAG_ARRAY = "ablate.array"  # the trial keys of the members that trained together, "+"-joined (absent: alone)
TAG_DEMO = "ablate.demo"  # parent run of a --demo run: JSON list of its deviations from the faithful config
TAG_PROBE = "ablate.balance_probe"  # parent run: the vacuous-axis probe's flags and per-level gradient shares (JSON)
TAG_INIT_REUSED = "ablate.init_reused_s"  # continued a stored init phase: that phase's compute time (s)
TAG_MODEL_URI = "ablate.model_uri"  # the trial's generator as an MLflow model: models:/m-<id>
TAG_MODEL_ERROR = "ablate.model_error"  # why it could not be logged (the trained trial still counts)
MODEL_NAME = "generator"  # the logged model's name in every trial run
MODEL_REQUIREMENTS = ["torch", "torchvision", "numpy", "pydantic", "pyyaml"]  # beside its code (mlflow adds itself)
RETRY_SECONDS = 5.0
GIVE_UP_S = 900.0  # how long any MLflow call waits out an outage (README: Reliability)
FIRST_CONTACT_S = 10.0  # how long the first request of a process waits for a server it never reached


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def retry(action: Callable[[], Any], what: str, uri: str, give_up_after: float | None = None) -> Any:
    """Run `action`, retrying connection problems with a clear message; give up after a bound (GIVE_UP_S).

    A trial whose metrics cannot go out for that long stops with a checkpoint and goes back to the queue
    (study.work.trial): its metrics.jsonl holds every step and is replayed into the next attempt's run."""
    give_up_after = GIVE_UP_S if give_up_after is None else give_up_after
    started, warned = time.monotonic(), False
    while True:
        try:
            result = action()
            if warned:
                print(f"ablate: MLflow at {uri} is back; {what} done", file=sys.stderr)
            return result
        except Exception as exc:  # MlflowException over a requests or SQLAlchemy error; see outages
            if tracking_outage(exc, mlflow_unavailable) is None or time.monotonic() - started > give_up_after:
                raise
            if not warned:
                print(f"ablate: MLflow at {uri} unreachable ({type(exc).__name__}); retrying {what} every "
                      f"{RETRY_SECONDS:.0f}s, nothing is dropped", file=sys.stderr)
                warned = True
            time.sleep(RETRY_SECONDS)


# MLflow's "try again later" codes: its SQL store raises TEMPORARILY_UNAVAILABLE for a locked or unreachable
# database, and a REST answer's error code (or HTTP status) is mapped onto these by MlflowException.
UNAVAILABLE_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "SERVICE_UNDER_MAINTENANCE", "DEADLINE_EXCEEDED",
                               "WORKSPACE_TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"})


# A non-JSON answer (a proxy's error page) becomes a bare MlflowException written from this template
# (mlflow.utils.rest_utils.verify_rest_response, unchanged since mlflow 1.x). Its error code is the status's
# mapping, and a 502 (no such mapping) gets INTERNAL_ERROR like a real 500: only the text keeps the status.
# mlflow 3.18's client retries such a status itself and then hands the last answer over as this exception,
# with no urllib3 ResponseError in its chain (older clients raised over that ResponseError).
_ANSWERED = re.compile(r"^API request to endpoint \S+ failed with error code (?P<status>\d{3}) != \d{3}\b")


def answered_status(exc: BaseException) -> int | None:
    """The HTTP status a tracking server (or the proxy in front of it) answered with, read from an
    MlflowException that carries no JSON error of the server's own; None for anything else."""
    found = _ANSWERED.match(str(exc)) if type(exc) is MlflowException else None
    return int(found["status"]) if found else None


def mlflow_unavailable(exc: BaseException) -> bool:
    """An MlflowException that says the server or its store is busy or away (not a bad request, not a bug)."""
    return isinstance(exc, MlflowException) and (
        exc.error_code in UNAVAILABLE_CODES or exc.get_http_status_code() in TRANSIENT_HTTP_STATUS
        or answered_status(exc) in TRANSIENT_HTTP_STATUS)


class Tracker:
    def __init__(self, uri: str | None = None, artifact_root: Path | None = None) -> None:
        self.uri = tracking_uri(uri)
        self.shown_uri = redact(self.uri)  # for messages: a server URL may carry basic-auth credentials
        self.client = MlflowClient(tracking_uri=self.uri)
        self.artifact_root = artifact_root
        self.reached = False  # once anything answered, a failure is an outage to wait out (`retry`)

    def _retry(self, action: Callable[[], Any], what: str) -> Any:
        if not self.reached:
            self._first_contact()
        return retry(action, what, self.shown_uri)

    def _first_contact(self) -> None:
        """A tracking store this process never reached is a mistyped URI or a server not started, not an
        outage: one line at once (exit 2) instead of waiting GIVE_UP_S. Asked once, without the client's own
        retries (minutes of backoff); any HTTP answer counts as reached (a proxy's 502: a restart, waited out)."""
        try:
            if self.uri.startswith(("http://", "https://")):
                requests.get(self.uri.rstrip("/") + "/health", timeout=FIRST_CONTACT_S)
            else:
                self.client.search_experiments(max_results=1)
        except Exception as exc:  # a requests error, or MlflowException over a SQLAlchemy one; see outages
            if not isinstance(exc, requests.RequestException) and tracking_outage(exc, mlflow_unavailable) is None:
                raise
            reason = one_line(tracking_outage(exc, mlflow_unavailable) or exc)
            raise UserError(problem(None, "--tracking-uri / MLFLOW_TRACKING_URI", "a reachable MLflow tracking "
                                    "server or store", f"<{self.shown_uri}: {reason}>")) from None
        self.reached = True

    # ---- study level -------------------------------------------------------------------------------
    def experiment_id(self, name: str, tags: dict[str, str] | None = None) -> str:
        """The experiment of a study (created or restored), with `tags` set on it every time: its kind and
        description follow the study file."""
        found = self._retry(lambda: self.client.get_experiment_by_name(name), "get experiment")
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self._retry(lambda: self.client.restore_experiment(found.experiment_id), "restore experiment")
            experiment_id = found.experiment_id
        else:
            location = None
            if self.artifact_root is not None and not self.uri.startswith(("http", "databricks")):
                location = (self.artifact_root.resolve() / name).as_uri()
            experiment_id = self._retry(lambda: self.client.create_experiment(name, artifact_location=location),
                                        "create experiment")
        for key, value in (tags or {}).items():
            self._retry(lambda key=key, value=value: self.client.set_experiment_tag(experiment_id, key, value),
                        "tag experiment")
        return experiment_id

    def parent_run(self, experiment_id: str, study: str, study_yaml: Path, tags: dict[str, str]) -> str:
        """Found again by tag, so re-running a study reuses its parent run. Find-or-create is retried as one
        action: a create whose answer was lost in an outage is found by the retry, not created twice."""
        def find_or_create() -> str:
            runs = self.client.search_runs([experiment_id], f"tags.`{TAG_ROLE}` = 'parent' and "
                                           f"tags.`{TAG_STUDY}` = '{study}'", ViewType.ACTIVE_ONLY, max_results=1)
            if runs:
                return runs[0].info.run_id
            return self.client.create_run(experiment_id, run_name=study, tags={
                TAG_ROLE: "parent", TAG_STUDY: study, "ablate.version": ablation.__version__, **tags}).info.run_id

        run_id = self._retry(find_or_create, "find parent run")
        # checked, not assumed from the create: a launcher stopped between the two calls left a parent without it
        if not self._retry(lambda: self.client.list_artifacts(run_id, "study"), "list parent artifacts"):
            self._retry(lambda: self.client.log_artifact(run_id, str(study_yaml), "study"), "log study file")
        return run_id

    def set_parent_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._retry(lambda: self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]),
                    "tag parent run")

    # ---- trial level -------------------------------------------------------------------------------
    def start_trial_run(self, experiment_id: str, parent_id: str, *, study: str, run_name: str, cell: str,
                        seed: int, key: str, label: str, params: dict[str, Any], optuna_number: int | None,
                        config_yaml: Path, tags: dict[str, str] | None = None) -> str:
        tags = {"mlflow.parentRunId": parent_id, TAG_ROLE: "trial", TAG_STUDY: study, TAG_CELL: cell,
                TAG_SEED: str(seed), TAG_KEY: key, TAG_LABEL: label, TAG_OUTCOME: Outcome.RUNNING.value,
                **(tags or {})}
        if optuna_number is not None:
            tags[TAG_OPTUNA] = str(optuna_number)
        run = self._retry(lambda: self.client.create_run(experiment_id, run_name=run_name, tags=tags), "create run")
        run_id = run.info.run_id
        values = [Param(k, _param_text(v)) for k, v in {**params, "seed": seed}.items()]
        for start in range(0, len(values), 100):  # MLflow takes 100 params per batch
            batch = values[start:start + 100]
            self._retry(lambda batch=batch: self.client.log_batch(run_id, params=batch), "log params")
        self.log_artifacts(run_id, [config_yaml], "config")
        return run_id

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            if path.exists():
                self._retry(lambda path=path: self.client.log_artifact(run_id, str(path), artifact_path),
                            f"upload {path.name}")

    def finish_run(self, run_id: str, outcome: Outcome, extra_tags: dict[str, str] | None = None) -> None:
        tags = [RunTag(TAG_OUTCOME, outcome.value), *(RunTag(k, str(v)) for k, v in (extra_tags or {}).items())]
        self._retry(lambda: self.client.log_batch(run_id, tags=tags), "tag outcome")
        self._retry(lambda: self.client.set_terminated(run_id, outcome.mlflow_status),
                    "end run")

    def mark_abandoned(self, run_id: str, reason: str) -> None:
        """A run whose worker died: FAILED, so exactly one finished child run per trial remains.

        Also a FINISHED (or KILLED) run: its worker ended it in MLflow but died, or lost the Optuna storage,
        before the study recorded the trial, which now runs again under a new run. A FAILED run keeps its
        own outcome and error."""
        run = self._retry(lambda: self.client.get_run(run_id), "get run")
        if run.info.status != "FAILED":
            self.finish_run(run_id, Outcome.CRASHED, {"ablate.abandoned": reason})

    def metric_logger(self, run_id: str) -> MetricLogger:
        return MetricLogger(self, run_id)

    # ---- models and the registry (every finished trial; `ablate best --register`; `ablate stylize`) -------
    def log_image_model(self, run_id: str, model: Any, example: Any, code: Path) -> str:
        """Log `model` (float [N, H, W, 3] in [0, 1] -> the same) as the run's MLflow PyTorch model "generator"
        with a signature, an input example and the package folder `code` its pickle needs (pyfunc and `mlflow
        models predict` load it where ablation is not installed); tag the run with its URI and return that.

        Created here and linked to the run as an output, not log_model(run_id) in a fluent run: that re-reads
        every metric's whole history (about a second per trial, growing with the run) and reopens a finished
        run, whose end time the report's durations need. Each request waits out an outage (`retry`)."""
        import mlflow
        import mlflow.pytorch
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        # any batch, height and width: inferring the signature from the example would pin its size
        image = Schema([TensorSpec(example.dtype, (-1, -1, -1, 3))])
        run = self._retry(lambda: self.client.get_run(run_id), "get run")
        tags = {k: v for k, v in run.data.tags.items() if k in (TAG_STUDY, TAG_CELL, TAG_SEED, TAG_KEY, TAG_LABEL)}
        logged = self._retry(lambda: self.client.create_logged_model(
            run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id, tags=tags), "create model")
        mlflow.set_tracking_uri(self.uri)  # log_model talks to the global tracking URI
        # pickle keeps the nn.Module whose .generator and .config_yaml `ablate stylize` reads (a pt2 program would
        # not); mlflow.pytorch warns about it on every call, which would be a paragraph per trial in `ablate run`
        pytorch_log = logging.getLogger("mlflow.pytorch")
        level = pytorch_log.level
        pytorch_log.setLevel(logging.ERROR)
        try:
            info = self._retry(lambda: mlflow.pytorch.log_model(
                model, name=MODEL_NAME, model_id=logged.model_id, signature=ModelSignature(image, image),
                input_example=example, serialization_format="pickle", code_paths=[str(code)],
                pip_requirements=MODEL_REQUIREMENTS), "log model")
        finally:
            pytorch_log.setLevel(level)
        self._retry(lambda: self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, 0)]), "link model")
        self._retry(lambda: self.client.set_tag(run_id, TAG_MODEL_URI, info.model_uri), "tag model")
        return info.model_uri

    def register_model(self, model_uri: str, name: str, tags: dict[str, str], alias: str) -> int:
        """A new version of registered model `name` from `model_uri`, with `tags` and `alias`; its number."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        version = self._retry(lambda: mlflow.register_model(model_uri, name, tags=tags), "register model")
        self._retry(lambda: self.client.set_registered_model_alias(name, alias, version.version), "set alias")
        return int(version.version)

    def model_source_run(self, model_uri: str) -> str | None:
        """The run that produced `models:/NAME@ALIAS`, `models:/NAME/VERSION` (a registered version) or
        `models:/m-<id>` (a logged model, TAG_MODEL_URI); None when it has none."""
        found = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))?", model_uri)
        if found is None:
            raise UserError(problem(None, "--model", "models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-ID",
                                    model_uri))
        name, alias, number = found.groups()
        if alias is None and number is None:
            model_id: str | None = name
        else:
            version = self._retry(lambda: self.client.get_model_version_by_alias(name, alias) if alias
                                  else self.client.get_model_version(name, number), "get model version")
            if version.run_id:
                return str(version.run_id)
            model_id = getattr(version, "model_id", None)  # mlflow 3: registered from models:/m-<id>
        if model_id:
            logged = self._retry(lambda: self.client.get_logged_model(model_id), "get logged model")
            return str(logged.source_run_id) if logged.source_run_id else None
        return None

    def load_pytorch_model(self, model_uri: str) -> Any:
        import mlflow
        import mlflow.pytorch

        mlflow.set_tracking_uri(self.uri)
        # mlflow puts the model's code folder (a partial copy of this package) first on sys.path and leaves it
        # there: a process spawned later (a --workers child, a DataLoader worker) would import that copy
        path = list(sys.path)
        # without dst_path mlflow downloads the model (the size of G, and its code) into a mkdtemp folder that
        # nothing removes: every `ablate stylize --model models:/...` would leave one in /tmp
        try:
            with tempfile.TemporaryDirectory(prefix="ablate-load-") as download:
                return mlflow.pytorch.load_model(model_uri, dst_path=download, map_location="cpu")
        finally:
            sys.path[:] = path

    # ---- queries (report, tests) -------------------------------------------------------------------
    def study_names(self) -> list[str]:
        """Names of the experiments that hold a study (a parent run), for "did you mean" hints."""
        experiments = self._retry(lambda: self.client.search_experiments(ViewType.ACTIVE_ONLY), "list experiments")
        return [e.name for e in experiments if e.name != "Default"]

    def _runs(self, study: str, role: str, max_results: int) -> list[Any]:
        exp = self._retry(lambda: self.client.get_experiment_by_name(study), "get experiment")
        if exp is None:
            return []
        return self._retry(lambda: self.client.search_runs(
            [exp.experiment_id], f"tags.`{TAG_ROLE}` = '{role}'", ViewType.ACTIVE_ONLY, max_results=max_results),
            "search runs")

    def trial_runs(self, study: str) -> list[Any]:
        return self._runs(study, "trial", 50000)

    def parent_run_of(self, study: str) -> Any | None:
        runs = self._runs(study, "parent", 1)
        return runs[0] if runs else None

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self._retry(lambda: self.client.get_metric_history(run_id, key),
                                                        "get metric history")]

    def download(self, run_id: str, path: str, dest: Path) -> Path | None:
        try:
            return Path(self._retry(lambda: self.client.download_artifacts(run_id, path, str(dest)),
                                    "download artifact"))
        except Exception:  # missing artifact (e.g. a diverged run without weights), or away past the give-up
            return None


def _param_text(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text[:6000]


class MetricLogger:
    """Queue + one thread + log_batch: the training loop only appends to a list."""

    BATCH = 900  # under MLflow's 1,000 metrics per request

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker, self.run_id = tracker, run_id
        self.queue: queue.Queue[list[Metric] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name=f"mlflow-{run_id[:8]}", daemon=True)
        self.thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.error is not None:
            # MLflow stayed away past `retry`'s bound: hold nothing more in memory. The trial folder's
            # metrics.jsonl has every step, and the trial stops and is replayed from it (study.work.trial)
            return
        stamp = int(time.time() * 1000)
        self.queue.put([Metric(k, float(v), stamp, step) for k, v in metrics.items()])

    def _drain(self) -> None:
        pending: list[Metric] = []
        done = False
        while not done:
            item = self.queue.get()
            if item is None:
                done = True
            else:
                pending.extend(item)
            while not self.queue.empty():  # gather what piled up while the last request ran
                nxt = self.queue.get()
                if nxt is None:
                    done = True
                else:
                    pending.extend(nxt)
            while pending:
                chunk = pending[:self.BATCH]
                try:
                    self.tracker._retry(lambda chunk=chunk: self.tracker.client.log_batch(self.run_id, metrics=chunk),
                                        "log metrics")
                except BaseException as exc:  # keep the error for close(); metrics stay pending
                    self.error = exc
                    return
                pending = pending[self.BATCH:]

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
