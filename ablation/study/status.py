"""`ablate status STUDY`: where a study stands, for a launcher that left (Slurm, Kubernetes, workers by hand).

The queue per cell (waiting / running / finished / failed), the trials whose workers are alive by their heartbeats,
and, where `squeue` exists, the Slurm array tasks tagged on the study's parent run. `--wait` polls until nothing is
waiting or running, then renders the report.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ablation.outcomes import Outcome
from ablation.study import queue
from ablation.study.queue import open_queue, silent_numbers, storage_url
from ablation.study.slurm import JOB_TAG
from ablation.study.tracking.client import Tracker

COLUMNS = ("waiting", "running", "finished", "failed")


def column_of(outcome: Outcome) -> str:
    """A requeued trial (interrupted, crashed) has a waiting successor; an ended one counts by how it ended."""
    if outcome.pending:
        return outcome.value
    return "finished" if outcome.done else "failed"


def queue_table(study: Any, opt: Any) -> tuple[list[str], Counter[str]]:
    latest = queue.latest_by_key(opt)
    per_cell: dict[str, Counter[str]] = {}
    for spec in study.trials:
        trial = latest.get(spec.key)
        column = column_of(queue.outcome_of(trial)) if trial is not None else "waiting"
        per_cell.setdefault(spec.cell.label, Counter())[column] += 1
    width = max([len(label) for label in per_cell] + [4])
    lines = [f"{'cell':<{width}}  " + "  ".join(f"{c:>8}" for c in COLUMNS)]
    totals: Counter[str] = Counter()
    for label, counts in per_cell.items():
        totals.update(counts)
        lines.append(f"{label:<{width}}  " + "  ".join(f"{counts[c]:>8}" for c in COLUMNS))
    lines.append(f"{'all':<{width}}  " + "  ".join(f"{totals[c]:>8}" for c in COLUMNS))
    return lines, totals


def live_line(opt: Any) -> str:
    running = [t for t in opt.get_trials(deepcopy=False) if queue.outcome_of(t) is Outcome.RUNNING]
    silent = silent_numbers(opt)
    live = [t for t in running if t.number not in silent]
    names = ", ".join(t.user_attrs.get("label", f"trial {t.number}") for t in live) or "none"
    return f"live workers (trials with a fresh heartbeat): {len(live)} ({names}); silent: {len(running) - len(live)}"


def squeue_lines(job_ids: list[str]) -> list[str]:
    """The array's tasks as Slurm sees them; nothing where there is no squeue (a laptop, CI without Slurm)."""
    if not job_ids or shutil.which("squeue") is None:
        return []
    arrays = sorted({job.split("_")[0] for job in job_ids})
    done = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i %T %M %R"],
                          capture_output=True, text=True, timeout=30)
    tasks = done.stdout.split("\n") if done.returncode == 0 else [done.stderr.strip()]
    return [f"slurm {','.join(arrays)}:"] + [f"  {line}" for line in tasks if line.strip()] + \
        ([] if any(t.strip() for t in tasks) else ["  no task queued or running"])


def study_status(study: Any, options: Any, wait: bool = False, poll_s: float = 10.0) -> int:
    url = storage_url(options.storage)
    tracker = Tracker(options.tracking_uri, options.artifact_root)
    opt = queue.open_study(study, open_queue(url, tracker), create=False)
    while True:
        lines, totals = queue_table(study, opt)
        parent = tracker.parent_run_of(study.spec.name)
        jobs = parent.data.tags.get(JOB_TAG, "").split(",") if parent is not None else []
        print("\n".join([f"study {study.spec.name}:", *lines, live_line(opt),
                         *squeue_lines([j for j in jobs if j])]), flush=True)
        if not wait or not (totals["waiting"] or totals["running"]):
            break
        time.sleep(poll_s)
    if wait:
        from ablation.report.build import build_report

        out = build_report(study.spec.name, tracker, url, Path(options.reports_dir), study)
        print(f"report: {out}", flush=True)
    return 0
