"""Chaos: 12 tiny trials, 3 `ablate worker` processes, 20 faults at random moments; nothing lost or run twice?

    python benchmarks/chaos.py [--seed 0] [--faults 20] [--storages postgresql sqlite] [--epochs 10] [--keep DIR]

Runs the grid of tests/study/chaos_helpers.py (style weight 1/3/10 x gray/colour target x seeds 0/1, 32 px,
`--epochs` x `--steps-per-epoch` steps each) against a real `mlflow server` (SQLite backend) and each Optuna
storage: a throw-away PostgreSQL cluster, and the local default kind of storage (an SQLite file). The faults,
drawn from `--seed`, 2-8 s apart from the moment the first trial opens: SIGKILL of a random worker (40%), SIGTERM
(20%), the MLflow server killed for 5-40 s (20%), PostgreSQL stopped (`pg_ctl stop -m fast`) for 5-20 s (20%; on
SQLite its share goes to the others); every worker that exits is replaced. Heartbeat 2 s, grace 40 s. Then
`chaos_helpers.verify` checks every promise (one finished run per trial, one writer per folder, retries resumed
from the checkpoint, per-step metrics without gaps or duplicates, the report renders). Prints the faults and a
table, writes benchmarks/results/chaos.json.
Needs the PostgreSQL server binaries (`apt-get install postgresql`) for the postgresql row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "study")]  # the services and chaos test machinery

from chaos_helpers import KINDS, Chaos, Plan, verify  # noqa: E402
from services import MlflowServer, PostgresServer, find_postgres_bin_dir  # noqa: E402

from ablation.data.demo import build_demo_dataset  # noqa: E402
from ablation.process import configure_process  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "chaos.json"


def run_one(storage: str, plan: Plan, folder: Path, data_root: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    mlflow = MlflowServer(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts", folder / "mlflow.log")
    postgres = None
    try:
        if storage == "postgresql":
            bin_dir = find_postgres_bin_dir()
            if bin_dir is None:
                raise SystemExit("PostgreSQL server binaries not found (apt-get install postgresql)")
            postgres = PostgresServer(bin_dir)
            postgres.start()
            url = postgres.create_database("chaos")
        else:
            url = f"sqlite:///{folder / 'optuna.db'}"
        mlflow.start()
        chaos = Chaos(folder, data_root, url, mlflow, postgres, plan)
        record = chaos.run()
        for fault in record["faults"]:
            back = f", back after {fault['back_at_s'] - fault['at_s']:.1f} s" if "back_at_s" in fault else ""
            print(f"  {fault['at_s']:7.1f} s  {fault['kind']:<8} {fault['target']}{back}", flush=True)
        record["result"] = verify(chaos)
        return record
    finally:
        mlflow.stop()
        if postgres is not None:
            postgres.close()


def print_table(records: list[dict[str, Any]]) -> None:
    head = (f"{'storage':<11} {'faults':>6} {'kill':>4} {'term':>4} {'mlflow':>6} {'pg':>3} {'wall s':>6} "
            f"{'trials':>6} {'resumed':>7} {'scratch':>7} {'lost':>4} {'dup':>3} {'2 writers':>9} "
            f"{'metric gaps/dups':>16} {'crashes':>7} {'report':>6}")
    print(head)
    for r in records:
        res, kinds = r["result"], [sum(f["kind"] == k for f in r["faults"]) for k in KINDS]
        print(f"{r['storage']:<11} {len(r['faults']):>6} {kinds[0]:>4} {kinds[1]:>4} {kinds[2]:>6} {kinds[3]:>3} "
              f"{r['wall_s']:>6.0f} {res['finished_once']:>3}/{res['planned']:<2} {res['resumed']:>7} "
              f"{res['restarted_from_scratch']:>7} {len(res['lost']):>4} {len(res['duplicated']):>3} "
              f"{len(res['two_writers']):>9} {len(res['metric_issues']):>16} {len(res['crashes']):>7} "
              f"{'ok' if res['report_error'] is None else 'FAILED':>6}")
    for r in records:
        print(f"{r['storage']}: retries by reason {r['result']['retries']}; worker exit codes "
              f"{sorted(e['code'] for e in r['exits'])}")
        for problem in r["result"]["problems"]:
            print(f"  problem: {problem}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--storages", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    parser.add_argument("--epochs", type=int, default=10, help="per trial, the first an init epoch")
    parser.add_argument("--steps-per-epoch", type=int, default=2)
    parser.add_argument("--gap", type=float, nargs=2, default=(2.0, 8.0), help="seconds between faults")
    parser.add_argument("--mlflow-down", type=float, nargs=2, default=(5.0, 40.0))
    parser.add_argument("--postgres-down", type=float, nargs=2, default=(5.0, 20.0))
    parser.add_argument("--heartbeat", type=int, default=2)
    parser.add_argument("--grace", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per storage")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    args = parser.parse_args()
    configure_process()
    plan = Plan(seed=args.seed, faults=args.faults, gap_s=tuple(args.gap), mlflow_down_s=tuple(args.mlflow_down),
                postgres_down_s=tuple(args.postgres_down), epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                heartbeat_s=args.heartbeat, grace_s=args.grace, timeout_s=args.timeout)
    began = time.perf_counter()
    records = []
    with tempfile.TemporaryDirectory(prefix="ablate-chaos-") as tmp:
        root = args.keep or Path(tmp)
        data_root = root / "data"
        build_demo_dataset(data_root, image_size=32, n_photo=8, n_style=8, n_ref=8, n_val=4)
        for storage in args.storages:
            print(f"{storage}: {plan.faults} faults, seed {plan.seed}", flush=True)
            records.append(run_one(storage, plan, root / storage, data_root))
    print()
    print_table(records)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "python": platform.python_version(), "cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
        "command": " ".join(sys.argv), "runs": records, "wall_s": time.perf_counter() - began}, indent=2, default=str))
    print(f"wrote {RESULTS} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
