"""Terminal progress and the local metrics log of `ablate train` (rich progress bar with ETA)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ablation.errors import UserError, problem
from ablation.files import atomic_write_text

METRICS_FILE = "metrics.jsonl"
# what a run leaves in its folder: any of them means `train --out` points at an earlier run
RUN_FILES = ("config.yaml", METRICS_FILE, "checkpoint.pt", "generator.pt")


def make_progress(transient: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    transient=transient)


EtaFn = Callable[[], str]  # the study's time left, as a line (study/eta.py)


class BarProgress:
    """Two rich bars: trials done of the study (with the study's ETA), and the running array's steps."""

    def __init__(self, bar: Progress, name: str, total: int, done: int, eta: EtaFn) -> None:
        self.bar, self.eta = bar, eta
        self.study_task = bar.add_task("trials", total=total, completed=done, info=f"{name}  {eta()}")
        self.trial_task = bar.add_task("  array step", total=None, info="")

    def step(self, step: int, steps: int) -> None:
        if step < (self.bar.tasks[self.trial_task].completed or 0):  # a new trial: restart its clock
            self.bar.reset(self.trial_task)
        self.bar.update(self.trial_task, completed=step, total=steps)
        self.bar.update(self.study_task, info=self.eta())

    def trial_done(self, line: str | None, done: int, total: int) -> None:
        self.bar.update(self.study_task, completed=done, total=total, info=self.eta())


class LineProgress:
    """One plain line per finished trial: what a log file or a pipe can show (rich bars print at the end)."""

    def __init__(self, out: TextIO, name: str, total: int, done: int, eta: EtaFn) -> None:
        self.out, self.name, self.started, self.eta = out, name, time.monotonic(), eta
        print(f"{name}: {done}/{total} trials done", file=out, flush=True)

    def step(self, step: int, steps: int) -> None:
        pass  # per-step lines would flood a log; the trial line carries the time

    def trial_done(self, line: str | None, done: int, total: int) -> None:
        if line is not None:
            elapsed = time.monotonic() - self.started
            print(f"[{done}/{total}] {line} [{elapsed / 60:.1f} min elapsed, {self.eta()}]", file=self.out,
                  flush=True)


@contextmanager
def study_progress(name: str, total: int, done: int, eta: EtaFn, out: TextIO | None = None
                   ) -> Iterator[BarProgress | LineProgress]:
    """Bars on a terminal, plain lines elsewhere (`ablate run ... > log.txt`, CI, a pipe)."""
    stream = out if out is not None else sys.stdout
    if not stream.isatty():
        yield LineProgress(stream, name, total, done, eta)
        return
    # no rich ETA column: it would extrapolate trials per minute, blind to shared init phases
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}")) as bar:
        yield BarProgress(bar, name, total, done, eta)


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics log; [] when there is none.

    A process killed mid-append leaves its last row torn: that row is dropped (the resumed trial logs its
    step again). An unparsable row before the last one is not what a kill leaves, so it is an error.
    """
    if not path.exists():
        return []
    numbered = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for n, line in numbered:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if n == numbered[-1][0]:
                break
            raise ValueError(f"{path}: line {n} is not a JSON row ({exc.msg}); only the last line can be torn "
                             "by a killed process") from None
    return rows


class MetricsFile:
    """Append-only JSON lines; a resumed run first drops what it is about to log again."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.pending_rows = read_metrics(path) if resume else []
        self.trimmed = not resume
        if not resume:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def write(self, metrics: dict[str, float], step: int) -> None:
        if not self.trimmed:
            # steps after the checkpoint were logged by the interrupted attempt and are logged again now;
            # replaced atomically: a kill while rewriting must not lose the rows before the checkpoint
            kept = [row for row in self.pending_rows if row["step"] < step]
            atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))
            self.trimmed = True
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")


def check_run_folder(out_dir: Path, resume: bool) -> None:
    """Refuse, before any file is opened, to start a new run over an earlier one: its metrics would be truncated
    and its weights overwritten at the first epoch. `--resume` continues it instead."""
    if resume:
        return
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if found:
        raise UserError(problem(out_dir, "--out", "a new run folder (or --resume to continue the run in it)",
                                f"<an earlier run: {', '.join(found)}>"))


class TrainConsole:
    def __init__(self, out_dir: Path, resume: bool) -> None:
        check_run_folder(out_dir, resume)
        self.metrics = MetricsFile(out_dir / METRICS_FILE, resume)
        self.bar = make_progress()
        self.task = self.bar.add_task("train", total=None, info="")

    def __enter__(self) -> TrainConsole:
        self.bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.stop()

    def progress(self, step: int, total: int) -> None:
        self.bar.update(self.task, completed=step, total=total)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.write(metrics, step)
        shown = {k.split("/", 1)[1]: v for k, v in metrics.items() if k in ("loss/g/total", "loss/d/total",
                                                                           "loss/init/content")}
        self.bar.update(self.task, info="  ".join(f"{k} {v:.3g}" for k, v in shown.items()))
