"""Issue 25: what the Slurm launcher submits (tier c: GPU binding through GRES cannot run here), the SQLite
refusal, the CLI's --dry-run, and the Kubernetes Indexed Job (static: no cluster here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scale_helpers import write_study

from ablation.study.slurm import SlurmOptions, sbatch_parameters, sbatch_script
from ablation.study.spec.study import load_study


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    return write_study(tmp_path / "study.yaml", tmp_path / "data", {"loss.style_weight": [1.0, 3.0]}, [0, 1], "sl")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ABLATE_STORAGE", "ABLATE_SLURM_ALLOW_SQLITE")}
    return subprocess.run([sys.executable, "-m", "ablation.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_one_gpu_per_task_is_bound_through_gres(study_file: Path, tmp_path: Path) -> None:
    study = load_study(study_file, {})
    slurm = SlurmOptions(workers=4, folder=tmp_path / "sub", partition="gpu", gpus_per_worker=1, time_min=90,
                         array_parallelism=2, extra=(("qos", "high"), ("account", "lab")))
    params = sbatch_parameters(study, slurm)
    assert params["gpus_per_node"] == 1 and params["ntasks_per_node"] == 1 and params["nodes"] == 1
    script = sbatch_script(study, slurm).splitlines()
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --array=0-3%2", "#SBATCH --partition=gpu",
                 "#SBATCH --time=90", "#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "#SBATCH --qos=high",
                 "#SBATCH --account=lab", "#SBATCH --job-name=ablate-sl"):
        assert line in script, line
    command = script[-2] if script[-1] == "" else script[-1]
    assert command.startswith(f"exec {sys.executable} -u -m submitit.core._submit {tmp_path / 'sub'}")
    assert not any(line.startswith("srun") for line in script)  # the worker is the batch shell (signals)
    cpu = sbatch_script(study, SlurmOptions(workers=2, folder=tmp_path / "sub"))
    assert "gpus" not in cpu and "gres" not in cpu


def test_a_short_time_limit_leaves_time_to_work_before_the_warning(study_file: Path) -> None:
    """A warning lead as long as the limit comes as the task starts (on the real test cluster a 1-minute job with
    --signal=B:USR1@120 was warned 27 s in): the task would requeue itself before its first step, again and again.
    The lead is at most a quarter of the limit."""
    study = load_study(study_file, {})
    for minutes, lead in ((240, 120), (8, 120), (4, 60), (2, 30), (1, 15), (0.4, 15)):
        params = sbatch_parameters(study, SlurmOptions(time_min=minutes))
        assert params["signal_delay_s"] == lead, minutes
        assert params["additional_parameters"]["signal"] == f"B:USR1@{lead}", minutes
    assert "#SBATCH --signal=B:USR1@30" in sbatch_script(study, SlurmOptions(time_min=2)).splitlines()


@pytest.mark.slow  # a CLI process: about 30 s on the shared CI machine
def test_sqlite_is_refused_in_one_line_naming_postgresql(study_file: Path, tmp_path: Path) -> None:
    done = _cli(["run", str(study_file), "--launcher", "slurm", "--workers", "2", "--storage",
                 f"sqlite:///{tmp_path}/o.db"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "PostgreSQL" in done.stderr and "sqlite:///" in done.stderr
    assert not (tmp_path / "o.db").exists()


@pytest.mark.slow  # a CLI process: about 30 s on the shared CI machine
def test_dry_run_prints_the_batch_script_without_submitting(study_file: Path, tmp_path: Path) -> None:
    done = _cli(["run", str(study_file), "--launcher", "slurm", "--workers", "3", "--gpus-per-worker", "1",
                 "--slurm-arg", "constraint=a100", "--dry-run", "--storage", "postgresql://u:p@db.invalid/x",
                 "--submitit-folder", str(tmp_path / "sub")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "would submit 3 x `ablate worker" in done.stdout
    assert "#SBATCH --array=0-2%3" in done.stdout and "#SBATCH --constraint=a100" in done.stdout
    assert not (tmp_path / "sub").exists()
    bad = _cli(["run", str(study_file), "--launcher", "slurm", "--slurm-arg", "qos", "--dry-run", "--storage",
                "postgresql://u:p@db.invalid/x"], tmp_path)
    assert bad.returncode == 2 and "--slurm-arg" in bad.stderr and "'qos'" in bad.stderr


@pytest.mark.slow  # a CLI process: about 30 s on the shared CI machine
def test_k8s_manifest_is_an_indexed_job_that_ignores_disruptions(study_file: Path, tmp_path: Path) -> None:
    done = _cli(["k8s-manifest", str(study_file), "--workers", "5", "--gpus-per-worker", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    job = yaml.safe_load(done.stdout)
    spec = job["spec"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 5
    assert spec["backoffLimitPerIndex"] >= 1
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in spec["podFailurePolicy"]["rules"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    (container,) = pod["containers"]
    assert container["command"][:3] == ["ablate", "worker", str(study_file)]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mount = container["volumeMounts"][0]["mountPath"]
    assert {"name": "ABLATE_TRIALS_DIR", "value": f"{mount}/trials"} in container["env"]
    assert json.dumps(job).count("postgresql://") == 0  # the storage URL comes from the Secret
