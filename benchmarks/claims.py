"""N processes racing to claim M queued (WAITING) trials of one study: which claim is safe, and how fast.

    python benchmarks/claims.py [--procs 2 4 8] [--trials 200] [--methods sqlite-update journal-ask sqlite-ask]

Methods (issue 12, item 1: "measure both and choose"):
- `sqlite-update`: the project's claim, `ablation.study.queue.claim_waiting` (one `UPDATE trials SET state =
  'RUNNING' WHERE trial_id = ? AND state = 'WAITING'`, won by whoever changed the row) on SQLite RDBStorage;
- `journal-ask`: Optuna's JournalStorage on a file (`JournalFileBackend` + `JournalFileOpenLock`), claimed by
  `study.ask()`, which pops a WAITING trial: the first RUNNING record in the log wins;
- `sqlite-ask`: the reference that motivated the conditional UPDATE, `study.ask()` on SQLite RDBStorage
  (Optuna reads the row `FOR UPDATE`, which SQLite ignores).

Each process loops "claim one trial" until the queue is empty; a barrier releases them together. Reported:
claims/s (trials claimed / wall time from the barrier to the last process done), duplicates (claims of a trial
another process also claimed: must be 0), errors (exceptions raised by a claim, by message, e.g. "database is
locked"), and the spread of claims over the processes. Prints a table and writes benchmarks/results/claims.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from ablation.study import queue

RESULTS = Path(__file__).resolve().parent / "results" / "claims.json"
METHODS = ("sqlite-update", "journal-ask", "sqlite-ask")
STUDY = "claims"


def open_storage(method: str, location: Path) -> optuna.storages.BaseStorage:
    """A fresh storage object (own connections) per process."""
    if method.startswith("journal"):
        path = str(location / "journal.log")
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    # the timeout ablate's own SQLite storage uses (study/queue/storage.py): a writer waits instead of failing at once
    return RDBStorage(f"sqlite:///{location / 'optuna.db'}", engine_kwargs={"connect_args": {"timeout": 60}})


def prepare(method: str, location: Path, trials: int) -> None:
    storage = open_storage(method, location)
    opt = optuna.create_study(study_name=STUDY, storage=storage)
    for i in range(trials):
        opt.enqueue_trial({"x": float(i)}, user_attrs={"i": i}, skip_if_exists=False)
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()  # no pooled SQLite connection may cross the fork into the racers


def claim_one(method: str, opt: optuna.Study, trials: int) -> int | None:
    """One claim: the claimed trial's number, or None when the queue is empty."""
    if method == "sqlite-update":
        claimed = queue.claim_waiting(opt, 1, lambda frozen: "all")
        return claimed[0].number if claimed else None
    if not opt.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return None
    trial = opt.ask()  # pops the oldest WAITING trial, or creates a new one when another process took the last
    if trial.number >= trials:
        opt.tell(trial, state=TrialState.FAIL)  # not a queued trial: the queue ran dry between the check and ask
        return None
    return trial.number


def racer(method: str, location: str, trials: int, barrier: Any, results: Any) -> None:
    """One process: open the study (before the barrier, so connecting is not timed), then claim until empty."""
    claims: list[int] = []
    errors: Counter[str] = Counter()
    try:
        opt = optuna.load_study(study_name=STUDY, storage=open_storage(method, Path(location)))
        barrier.wait(timeout=120)
        started = time.perf_counter()
        while sum(errors.values()) < 1000:  # a method that keeps failing still ends
            try:
                number = claim_one(method, opt, trials)
            except Exception as exc:  # counted, not fatal: the figure is how often a method fails
                errors[" ".join(f"{type(exc).__name__}: {exc}".split())[:120]] += 1
                continue
            if number is None:
                break
            claims.append(number)
        results.put({"claims": claims, "errors": dict(errors), "started": started, "ended": time.perf_counter()})
    except BaseException:
        results.put({"claims": claims, "errors": {traceback.format_exc(): 1}, "started": None, "ended": None})


def race(method: str, procs: int, trials: int, folder: Path) -> dict[str, Any]:
    location = folder / f"{method}-{procs}"
    location.mkdir(parents=True)
    prepare(method, location, trials)
    # fork: the racers start in milliseconds with optuna already imported (spawn would re-import per process)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=racer, args=(method, str(location), trials, barrier, results)) for _ in range(procs)]
    for worker in workers:
        worker.start()
    answers = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    claimed = Counter(number for answer in answers for number in answer["claims"])
    errors: Counter[str] = Counter()
    for answer in answers:
        errors.update(answer["errors"])
    starts = [a["started"] for a in answers if a["started"] is not None]
    ends = [a["ended"] for a in answers if a["ended"] is not None]
    wall = max(ends) - min(starts) if starts and ends else float("nan")
    opt = optuna.load_study(study_name=STUDY, storage=open_storage(method, location))
    states = Counter(t.state.name for t in opt.get_trials(deepcopy=False) if t.number < trials)
    return {"method": method, "procs": procs, "trials": trials, "wall_s": wall,
            "claims_per_s": len(claimed) / wall if wall > 0 else float("nan"),
            "claimed": len(claimed), "unclaimed": trials - len(claimed),
            "duplicates": sum(n - 1 for n in claimed.values()),
            "errors": sum(errors.values()), "error_kinds": dict(errors),
            "per_process": sorted(len(a["claims"]) for a in answers), "final_states": dict(states)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    began = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ablate-claims-") as tmp:
        for method in args.methods:
            for procs in args.procs:
                rows.append(race(method, procs, args.trials, Path(tmp)))
                print(f"  {method} x{procs}: {rows[-1]['wall_s']:.1f} s", flush=True)
    print(f"\n{args.trials} queued trials; optuna {optuna.__version__}; {os.cpu_count()} CPUs "
          f"(affinity {len(os.sched_getaffinity(0))})")
    print(f"{'method':<14} {'procs':>5} {'claims/s':>9} {'wall s':>7} {'claimed':>8} {'duplicates':>10} "
          f"{'errors':>6}  per process")
    for r in rows:
        print(f"{r['method']:<14} {r['procs']:>5} {r['claims_per_s']:>9.1f} {r['wall_s']:>7.2f} {r['claimed']:>8} "
              f"{r['duplicates']:>10} {r['errors']:>6}  {r['per_process']}")
    for r in rows:
        for kind, count in r["error_kinds"].items():
            print(f"  {r['method']} x{r['procs']}: {count} x {kind[:200]}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "optuna": optuna.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)), "trials": args.trials, "rows": rows,
        "wall_s": time.perf_counter() - began}, indent=2))
    print(f"wrote {RESULTS} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
