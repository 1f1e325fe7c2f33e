"""Run one (cell, seed) trial: its MLflow child run, its checkpoint folder, the trainer, its artifacts.

The trial folder is keyed by (cell, seed), not by the Optuna trial number, so a retry of a trial whose
worker died finds the checkpoint and resumes it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ablation.config import to_yaml
from ablation.console import METRICS_FILE, MetricsFile, read_metrics
from ablation.gan import (
    CHECKPOINT_NAME,
    EVAL_INFO,
    INIT_DIR,
    EvalHook,
    Joiner,
    TrainResult,
    TruncatedFile,
    effective_precision,
    load_checkpoint,
    resolve_device,
    train_array,
)
from ablation.outcomes import Outcome
from ablation.study.outages import infrastructure_error, one_line, tracking_outage
from ablation.study.spec.study import TrialSpec
from ablation.study.tracking.client import TAG_ARRAY, TAG_INIT_REUSED, mlflow_unavailable
from ablation.study.tracking.logged_models import log_trial_model
from ablation.study.work.context import TrialContext, TrialOutcome, WorkerStop

TRAIN_LOG = "train.log"


def trial_dir(ctx: TrialContext, spec: TrialSpec) -> Path:
    return ctx.trials_dir / ctx.study_name / spec.key


def _note(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def _replay(ctx: TrialContext, run_id: str, folder: Path, upto: int) -> None:
    """A resumed trial gets a new run: copy the curve logged before the checkpoint into it."""
    path = folder / METRICS_FILE
    if not path.exists():
        return
    logger = ctx.tracker.metric_logger(run_id)
    for row in read_metrics(path):  # a torn last line (a kill mid-append) is dropped, not fatal
        if row["step"] <= upto:
            step = row.pop("step")
            logger.log(row, step)
    logger.close()


@dataclass
class _Open:
    """One member's side of a running array: its folder, MLflow run and loggers."""

    spec: TrialSpec
    folder: Path
    run_id: str
    resumed: bool
    metrics_file: MetricsFile
    logger: Any
    stop: WorkerStop

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.metrics_file.write(metrics, step)  # first: the local file is what a resume replays into MLflow
        self.logger.log(metrics, step)
        error = self.logger.error
        if error is not None and not self.stop.halted and tracking_outage(error, mlflow_unavailable) is not None:
            # MLflow has been away longer than anything waits: stop at this step with a checkpoint; the next
            # attempt replays metrics.jsonl, so no metric is lost however long the outage lasts (any other
            # error is a failed request: the trial fails when its logger is closed, and is retried)
            self.stop.halt(f"MLflow unreachable for longer than the tracker waits ({one_line(self.logger.error)})")


def run_trial(ctx: TrialContext, spec: TrialSpec, *, optuna_number: int | None, params: dict[str, Any],
              on_eval: EvalHook | None = None, on_run: Callable[[str], None] | None = None) -> TrialOutcome:
    """One trial: the array of one."""
    return run_trials(ctx, [TrialRequest(spec, optuna_number, params, on_eval, on_run)])[0]


@dataclass(frozen=True)
class TrialRequest:
    spec: TrialSpec
    optuna_number: int | None
    params: dict[str, Any]
    on_eval: EvalHook | None = None
    on_run: Callable[[str], None] | None = None
    on_end: Callable[[TrialOutcome], None] | None = None  # its outcome, as soon as it leaves the array


def run_trials(ctx: TrialContext, requests: list[TrialRequest],
               refill: Callable[[int], list[TrialRequest]] | None = None) -> list[TrialOutcome]:
    """Train compatible trials as one array (`gan.array`); each keeps its own folder, run, metrics, outcome.

    `refill(n)` gives up to n more trials for the slots of members that left early. Each request's `on_end`
    runs when its trial ends (its run is closed by then). An exception fails every member still training
    (one process, one fused model): each of their runs gets the traceback, and their outcomes say
    `array_failed` when the array had more than one slot.
    """
    array_id = "+".join(r.spec.key for r in requests) if len(requests) > 1 else ""
    handed = list(requests)  # every request given to this array, in join order
    opened: dict[int, _Open] = {}  # index in `handed` -> its folder and run, once open
    outcomes: dict[int, TrialOutcome] = {}  # index in `handed` -> outcome, as members leave
    unrecorded: list[Exception] = []  # what a request's `on_end` raised

    def joiner(index: int) -> Joiner:
        request = handed[index]
        opened[index] = member = _open(ctx, request, array_id)

        def on_end(result: TrainResult) -> None:
            outcomes[index] = _close(ctx, member, result)
            if request.on_end is not None:
                try:
                    request.on_end(outcomes[index])
                except Exception as exc:
                    unrecorded.append(exc)
                    raise

        progress = partial(ctx.on_progress, request.spec.key) if ctx.on_progress is not None and index == 0 else None
        return Joiner(request.spec.config, member.folder, member.log, request.on_eval, progress, on_end)

    def more(free: int) -> list[Joiner]:
        start = len(handed)
        handed.extend(refill(free) if refill is not None else [])
        return [joiner(i) for i in range(start, len(handed))]

    config = requests[0].spec.config
    try:
        train_array([joiner(i) for i in range(len(requests))], domains=ctx.domains(config.data), resume=True,
                    stop=ctx.stop, evaluator=ctx.evaluator(config), refill=more if refill is not None else None,
                    init_cache=ctx.trials_dir / INIT_DIR)
    except Exception as exc:
        if unrecorded:
            # recording an ended trial failed (the database away, a bug): not a training failure to pin on the
            # other members, and never swallowed: the worker's own handling (study.work.worker.work) decides
            raise unrecorded[0]  # noqa: B904 (its own traceback and chain are the ones that explain it)
        error = "".join(traceback.format_exception(exc))
        cause = infrastructure_error(exc, mlflow_unavailable)
        if cause is not None:  # not the trials' fault: each goes back to the queue, and this worker stops
            ctx.stop.halt(one_line(cause))
        for index, request in enumerate(handed):
            if index in outcomes:
                continue
            outcomes[index] = _ended_by(ctx, opened.get(index), exc, error, cause, array_failed=len(requests) > 1)
            if request.on_end is not None:
                request.on_end(outcomes[index])
    return [outcomes[i] for i in range(len(handed))]


def _readable_checkpoint(path: Path, log_path: Path) -> dict[str, Any] | None:
    """The trial's checkpoint, or None (start at step 0) when it is cut short or damaged: that file fails every
    attempt the same way, so it is set aside (kept for a look, `checkpoint.pt.damaged`) with a warning line."""
    try:
        return load_checkpoint(path)
    except TruncatedFile as exc:
        aside = path.with_name(path.name + ".damaged")
        path.replace(aside)
        warning = f"warning: {exc.lines[0]}; set aside as {aside.name}, the trial restarts from step 0"
        print(f"ablate: {warning}", file=sys.stderr)
        _note(log_path, warning)
        return None


def _open(ctx: TrialContext, request: TrialRequest, array_id: str) -> _Open:
    spec = request.spec
    folder = trial_dir(ctx, spec)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    config_path.write_text(to_yaml(spec.config))
    checkpoint = _readable_checkpoint(folder / CHECKPOINT_NAME, folder / TRAIN_LOG)
    resume_step = checkpoint["step"] if checkpoint is not None else None
    del checkpoint  # the trainer reloads it; do not hold two copies
    # bf16 autocast changes what the losses see: a param, so runs of mixed precision never compare unnoticed
    precision = effective_precision(spec.config.runtime, resolve_device(spec.config.runtime))
    run_id = ctx.tracker.start_trial_run(
        ctx.experiment_id, ctx.parent_run_id, study=ctx.study_name, run_name=spec.run_name, cell=spec.cell.key,
        seed=spec.seed, key=spec.key, label=spec.cell.label, params={**request.params, "precision": precision},
        optuna_number=request.optuna_number, config_yaml=config_path,
        tags={TAG_ARRAY: array_id} if array_id else None)
    if request.on_run is not None:
        request.on_run(run_id)
    log_path = folder / TRAIN_LOG
    with_whom = f", in array {array_id}" if array_id else ""
    if resume_step is not None:
        _replay(ctx, run_id, folder, resume_step)
        _note(log_path, f"resume from step {resume_step} (optuna trial {request.optuna_number}, run {run_id}"
                        f"{with_whom})")
    else:
        _note(log_path, f"start (optuna trial {request.optuna_number}, run {run_id}{with_whom})")
    return _Open(spec, folder, run_id, resume_step is not None,
                 MetricsFile(folder / METRICS_FILE, resume=resume_step is not None), ctx.tracker.metric_logger(run_id),
                 ctx.stop)


def _ended_by(ctx: TrialContext, member: _Open | None, exc: Exception, error: str, cause: BaseException | None,
              array_failed: bool) -> TrialOutcome:
    """A member's outcome when its array raised. Recording it must not raise in turn (the disk that is full,
    MLflow away): the outcome has to reach the queue, so such a second error is kept in the text instead."""
    run_id = member.run_id if member is not None else ""
    if cause is not None:  # its run is marked when the trial is given back (study.queue.recovery.give_back)
        tracking_down = tracking_outage(exc, mlflow_unavailable) is not None
        if member is not None:
            with contextlib.suppress(Exception):
                _note(member.folder / TRAIN_LOG, f"stopped by an infrastructure error: {one_line(cause)}")
            if not tracking_down:  # else closing waits for MLflow again; metrics.jsonl is replayed on resume
                _close_quietly(member.logger)
        return TrialOutcome(Outcome.INTERRUPTED, {}, run_id, None, error, infra=one_line(cause),
                            tracking_down=tracking_down)
    if member is None:  # its run could not be opened: nothing to close
        return TrialOutcome(Outcome.FAILED, {}, "", None, error, array_failed=array_failed)
    try:
        return _fail(ctx, member, exc, error, array_failed)
    except Exception as second:
        return TrialOutcome(Outcome.FAILED, {}, run_id, None,
                            f"{error}\nwhile recording that failure: {one_line(second)}", array_failed=array_failed)


def _fail(ctx: TrialContext, member: _Open, exc: Exception, error: str, array_failed: bool) -> TrialOutcome:
    log_path = member.folder / TRAIN_LOG
    _note(log_path, f"failed: {error}")
    _close_quietly(member.logger)
    ctx.tracker.log_artifacts(member.run_id, [log_path, member.folder / METRICS_FILE], "log")
    ctx.tracker.finish_run(member.run_id, Outcome.FAILED, {"ablate.error": f"{type(exc).__name__}: {exc}"[:7000]})
    return TrialOutcome(Outcome.FAILED, {}, member.run_id, None, error, array_failed)


def _close(ctx: TrialContext, member: _Open, result: TrainResult) -> TrialOutcome:
    folder, run_id = member.folder, member.run_id
    log_path = folder / TRAIN_LOG
    member.logger.close()
    _note(log_path, f"{result.status_text} after {result.step}/{result.total_steps} steps")
    ctx.tracker.log_artifacts(run_id, [log_path, folder / METRICS_FILE], "log")
    ctx.tracker.log_artifacts(run_id, [p for k, p in result.artifacts.items() if k != "generator"], "samples")
    tags = {"ablate.steps": str(result.step)}
    if "generator" in result.artifacts:  # a finished trial: its weights (`ablate stylize`, export), its MLflow model
        ctx.tracker.log_artifacts(run_id, [result.artifacts["generator"]], "model")
        tags.update(log_trial_model(ctx.tracker, run_id, result.artifacts["generator"], folder / "config.yaml"))
    tags.update({f"ablate.backbone.{name}": value for name, value in result.backbone_info.items()})
    if (folder / EVAL_INFO).exists():
        tags.update(json.loads((folder / EVAL_INFO).read_text())["info"])
        ctx.tracker.log_artifacts(run_id, [folder / EVAL_INFO], "eval")
    if result.diverged_step is not None:
        tags["ablate.diverged_step"] = str(result.diverged_step)
    if result.init_reused_s is not None:  # continued a stored init phase: the compute it did not spend again
        tags[TAG_INIT_REUSED] = f"{result.init_reused_s:.3f}"
    ctx.tracker.finish_run(run_id, result.status, tags)
    return TrialOutcome(result.status, result.metrics, run_id, result)


def _close_quietly(logger: Any) -> None:
    with contextlib.suppress(Exception):  # the original error matters more than a tracking hiccup here
        logger.close()
