"""Study runner on real Optuna + MLflow (SQLite in tmp_path) with tiny trials: runs, resume, extend,
diverged outcomes, crash recovery."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from scale_helpers import OBJECTIVES, TINY_BASE, local_options, write_study

from ablation.study.runner import RunOptions, run_study
from ablation.study.tracking.client import Tracker


def options(tmp: Path) -> RunOptions:
    return local_options(tmp)


def runs_by_status(tmp: Path, name: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for run in Tracker(f"sqlite:///{tmp}/mlflow.db").trial_runs(name):
        out.setdefault(run.info.status, []).append(run)
    return out


def test_grid_runs_once_and_rerun_does_nothing(tmp_path: Path, data_root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path / "study.yaml", data_root,
                        {"loss.style_weight": [3.0, 6.0], "loss.style_target": ["gray", "color"]}, [0, 1], "grid")
    assert run_study(study, options(tmp_path)) == 0
    runs = runs_by_status(tmp_path, "grid")
    assert list(runs) == ["FINISHED"] and len(runs["FINISHED"]) == 8
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    parent = tracker.parent_run_of("grid")
    assert parent is not None and parent.data.tags["ablate.version"] == "0.1.0"
    keys = set()
    for run in runs["FINISHED"]:
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["ablate.outcome"] == "finished"
        assert params["loss.style_weight"] in ("3", "6") and params["loss.style_target"] in ("gray", "color")
        assert params["seed"] == tags["ablate.seed"] and run.info.run_name.endswith(f"seed={params['seed']}")
        assert params["precision"] == "fp32"  # CPU: no autocast; a param, so the report can warn on a mix
        assert "loss/g/style" in run.data.metrics and "perf/images_per_s" in run.data.metrics
        keys.add(tags["ablate.trial_key"])
    assert len(keys) == 8
    one = runs["FINISHED"][0].info.run_id
    artifacts = {f.path for d in ("samples", "log", "model", "config")
                 for f in tracker.client.list_artifacts(one, d)}
    assert artifacts == {"samples/final.png", "samples/evolution.gif", "log/train.log", "log/metrics.jsonl",
                         "model/generator.pt", "config/config.yaml"}
    history = tracker.history(one, "loss/g/total")
    assert [step for step, _ in history] == [3, 4]
    # the init phase reads neither the style weight nor the style target: computed once per seed (2 of 8)
    continued = [r for r in runs["FINISHED"] if "ablate.init_reused_s" in r.data.tags]
    assert len(continued) == 6 and all(float(r.data.tags["ablate.init_reused_s"]) > 0 for r in continued)
    assert all(tracker.history(r.info.run_id, "loss/init/content") for r in continued)  # its init curve too
    assert len(list((tmp_path / "trials" / "_init").glob("*.json"))) == 2

    assert run_study(study, options(tmp_path)) == 0  # nothing missing: nothing runs
    assert len(runs_by_status(tmp_path, "grid")["FINISHED"]) == 8
    opt = optuna.load_study(study_name="grid", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(opt.trials) == 8


def test_extending_the_grid_runs_only_new_cells(tmp_path: Path, data_root: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0]}, [0], name="ext")
    run_study(study, options(tmp_path))
    first = {r.info.run_id for r in runs_by_status(tmp_path, "ext")["FINISHED"]}
    write_study(study, data_root, {"loss.style_weight": [3.0, 9.0]}, [0, 1], name="ext")
    run_study(study, options(tmp_path))
    finished = runs_by_status(tmp_path, "ext")["FINISHED"]
    assert len(finished) == 4 and first <= {r.info.run_id for r in finished}
    new = [r for r in finished if r.info.run_id not in first]
    assert sorted((r.data.params["loss.style_weight"], r.data.params["seed"]) for r in new) == \
        [("3", "1"), ("9", "0"), ("9", "1")]


def test_diverged_trial_is_a_result_and_the_study_continues(tmp_path: Path, data_root: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # content weight 1e39 overflows float32: the very first init loss is inf
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.content_weight": [1.5, 1.0e39]}, [0], name="nan")
    assert run_study(study, options(tmp_path)) == 0
    runs = runs_by_status(tmp_path, "nan")["FINISHED"]
    outcomes = {r.data.params["loss.content_weight"]: r.data.tags for r in runs}
    assert outcomes["1.5"]["ablate.outcome"] == "finished"
    assert outcomes["1e+39"]["ablate.outcome"] == "diverged" and outcomes["1e+39"]["ablate.diverged_step"] == "0"
    opt = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path}/optuna.db")
    states = sorted((t.user_attrs["outcome"], t.state.name) for t in opt.trials)
    assert states == [("diverged", "COMPLETE"), ("finished", "COMPLETE")]
    diverged = next(t for t in opt.trials if t.user_attrs["outcome"] == "diverged")
    assert diverged.values == [float("inf"), float("inf")] and diverged.user_attrs["diverged_step"] == 0
    # re-running leaves a diverged trial alone unless asked
    run_study(study, options(tmp_path))
    assert len(optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path}/optuna.db").trials) == 2
    run_study(study, RunOptions(**{**options(tmp_path).__dict__, "rerun_diverged": True}))
    assert len(optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path}/optuna.db").trials) == 3


@pytest.mark.slow
def test_killed_process_resumes_without_duplicates(tmp_path: Path, data_root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0, 6.0]}, [0], name="kill",
                        schedule={"epochs": 6, "steps_per_epoch": 2})
    opts = options(tmp_path)
    cmd = [sys.executable, "-m", "ablation.cli", "run", str(study), "--storage", opts.storage, "--tracking-uri",
           opts.tracking_uri, "--trials-dir", str(opts.trials_dir), "--no-report"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    checkpoint = None
    while time.monotonic() < deadline and checkpoint is None:
        found = list((tmp_path / "trials" / "kill").glob("*/checkpoint.pt"))
        checkpoint = found[0] if found else None
        time.sleep(0.2)
    assert checkpoint is not None, proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: the trial stays RUNNING
    proc.wait()
    killed_key = checkpoint.parent.name

    assert run_study(study, opts) == 0
    runs = Tracker(opts.tracking_uri).trial_runs("kill")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["ablate.trial_key"] for r in finished) == sorted({r.data.tags["ablate.trial_key"]
                                                                                for r in runs})
    assert len(finished) == 2
    crashed = [r for r in runs if r.info.status == "FAILED"]  # the killed array: one run per member it held
    assert killed_key in {r.data.tags["ablate.trial_key"] for r in crashed} and len(crashed) <= 2
    assert {r.data.tags["ablate.outcome"] for r in crashed} == {"crashed"}
    log = (checkpoint.parent / "train.log").read_text()
    assert "resume from step" in log
    resumed = next(r for r in finished if r.data.tags["ablate.trial_key"] == killed_key)
    steps = [s for s, _ in Tracker(opts.tracking_uri).history(resumed.info.run_id, "loss/init/content")]
    assert steps == [1, 2]  # the curve from before the kill was copied into the new run
    opt = optuna.load_study(study_name="kill", storage=opts.storage)
    complete = [t for t in opt.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and len({t.user_attrs["trial_key"] for t in complete}) == 2


def test_dry_run_prints_trials_and_count(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture) -> None:
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [1.0, 2.0, 3.0]}, [0, 1], "grid")
    assert run_study(study, RunOptions(**{**options(tmp_path).__dict__, "fuse": 4}), dry_run=True) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "study grid: 3 cells x 2 seeds = 6 trials" and len(out) == 10
    # the init phase reads no loss weight: one per seed, continued by the other two levels
    assert out[4:7] == ["init phases: 2 distinct for 6 trials; 4 trials continue a shared one instead of computing "
                        "it (stored under <trials dir>/_init)",
                        "  shared: style_weight=1 seed=0, style_weight=2 seed=0, style_weight=3 seed=0",
                        "  shared: style_weight=1 seed=1, style_weight=2 seed=1, style_weight=3 seed=1"]
    assert out[7:] == ["arrays (--fuse 4): 2 of up to 4 trials",  # what one worker trains together
                       "  array 1: style_weight=1 seed=0, style_weight=1 seed=1, style_weight=2 seed=0, "
                       "style_weight=2 seed=1",
                       "  array 2: style_weight=3 seed=0, style_weight=3 seed=1"]
    assert not (tmp_path / "optuna.db").exists()  # nothing was created


def write_search(tmp: Path, data_root: Path, name: str, seeds: list[int], sampler: str,
                 space: dict[str, dict]) -> Path:
    """A 3-point search study over the tiny base."""
    base = yaml.safe_load(yaml.safe_dump(TINY_BASE))
    base["data"]["root"] = str(data_root)
    study = tmp / f"{name}.yaml"
    study.write_text(yaml.safe_dump({"name": name, "base": base, "method": "search", "seeds": seeds,
                                     "objectives": OBJECTIVES,
                                     "search": {"sampler": sampler, "n_trials": 3, "space": space}}))
    return study


def test_search_study_runs_its_budget_and_resumes_to_it(tmp_path: Path, data_root: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = write_search(tmp_path, data_root, "srch", [0], "random", {
        "loss.style_weight": {"low": 0.5, "high": 20.0, "log": True},
        "loss.style_target": {"choices": ["gray", "color"]}})
    assert run_study(study, options(tmp_path)) == 0
    opt = optuna.load_study(study_name="srch", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in opt.trials] == ["COMPLETE"] * 3
    assert all(len(t.values) == 2 and 0.5 <= t.params["loss.style_weight"] <= 20 for t in opt.trials)
    runs = runs_by_status(tmp_path, "srch")["FINISHED"]
    assert sorted(int(r.data.tags["ablate.optuna_trial"]) for r in runs) == [0, 1, 2]
    assert {r.data.params["loss.style_target"] for r in runs} <= {"gray", "color"}
    assert run_study(study, options(tmp_path)) == 0  # the budget is spent: nothing new
    assert len(optuna.load_study(study_name="srch", storage=f"sqlite:///{tmp_path}/optuna.db").trials) == 3


def test_search_asks_points_in_batches_and_trains_their_seeds_as_arrays(tmp_path: Path, data_root: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = write_search(tmp_path, data_root, "batched", [0, 1], "tpe",
                         {"loss.style_weight": {"low": 0.5, "high": 20.0, "log": True}})
    # --fuse 4 with 2 seeds: 2 points per batch (4 members in one array), then the last point alone (2 members)
    assert run_study(study, RunOptions(**{**options(tmp_path).__dict__, "fuse": 4})) == 0
    opt = optuna.load_study(study_name="batched", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in opt.trials] == ["COMPLETE"] * 3
    assert opt.sampler._constant_liar  # type: ignore[attr-defined]  # points asked while others are pending
    runs = runs_by_status(tmp_path, "batched")["FINISHED"]
    arrays: dict[str, list[tuple[int, int]]] = {}
    for run in runs:
        arrays.setdefault(run.data.tags["ablate.array"], []).append(
            (int(run.data.tags["ablate.optuna_trial"]), int(run.data.tags["ablate.seed"])))
    assert sorted(sorted(a) for a in arrays.values()) == [[(0, 0), (0, 1), (1, 0), (1, 1)], [(2, 0), (2, 1)]]
    for trial in opt.trials:  # each point's values: the mean over its two seeds
        mine = [r for r in runs if int(r.data.tags["ablate.optuna_trial"]) == trial.number]
        for objective, value in zip(OBJECTIVES, trial.values, strict=True):
            want = sum(r.data.metrics[objective["metric"]] for r in mine) / 2
            assert value == pytest.approx(want)


def test_single_objective_search_feeds_eval_metrics_to_the_pruner(tmp_path: Path, data_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = yaml.safe_load(yaml.safe_dump(TINY_BASE))
    base["data"]["root"] = str(data_root)
    base["eval"] = {"enabled": True, "image_size": 32, "kid_subsets": 4, "kid_subset_size": 4}
    base["schedule"].update({"epochs": 3, "eval_every": 1})
    study = tmp_path / "prune.yaml"
    study.write_text(yaml.safe_dump({
        "name": "prune", "base": base, "method": "search", "seeds": [0],
        "objectives": [{"metric": "eval/style/kid_rand", "direction": "minimize"}],
        "search": {"sampler": "tpe", "n_trials": 1, "pruner": "median",
                   "space": {"loss.style_weight": {"low": 1.0, "high": 10.0}}}}))
    assert run_study(study, options(tmp_path)) == 0
    trial = optuna.load_study(study_name="prune", storage=f"sqlite:///{tmp_path}/optuna.db").trials[0]
    assert sorted(trial.intermediate_values) == [2, 4, 6]  # one report per epoch evaluation (2 steps/epoch)
    run = runs_by_status(tmp_path, "prune")["FINISHED"][0]
    assert trial.values[0] == pytest.approx(run.data.metrics["eval/style/kid_rand"])
    assert run.data.tags["eval/evaluator/rand_1001"]  # evaluator provenance is on the run


# fuse 1: trial by trial. fuse 4: the fault fails the array of both, each member is re-run alone without
# using its retry, the good one finishes, the faulty one fails alone and is retried once.
@pytest.mark.parametrize(("fuse", "expected_outcomes", "failed_runs"), [
    (1, [("failed", 1, "FAIL"), ("failed", 2, "FAIL"), ("finished", 1, "COMPLETE")], 2),
    (4, [("failed", 1, "FAIL"), ("failed", 1, "FAIL"), ("failed", 2, "FAIL"), ("failed", 3, "FAIL"),
         ("finished", 2, "COMPLETE")], 4),
])
def test_failed_trial_is_retried_once_then_left_until_asked(tmp_path: Path, data_root: Path,
                                                            monkeypatch: pytest.MonkeyPatch, fuse: int,
                                                            expected_outcomes: list, failed_runs: int) -> None:
    import ablation.gan.steps

    monkeypatch.chdir(tmp_path)
    real_g_losses = ablation.gan.steps.g_losses

    def g_losses_failing_for_weight_6(config, terms, d_fake):  # an injected fault
        if config.loss.style_weight == 6.0:
            raise RuntimeError("injected fault")
        return real_g_losses(config, terms, d_fake)

    monkeypatch.setattr("ablation.gan.steps.g_losses", g_losses_failing_for_weight_6)
    study = write_study(tmp_path / "study.yaml", data_root, {"loss.style_weight": [3.0, 6.0]}, [0], name="fail")
    opts = RunOptions(**{**options(tmp_path).__dict__, "fuse": fuse})
    assert run_study(study, opts) == 0
    opt = optuna.load_study(study_name="fail", storage=f"sqlite:///{tmp_path}/optuna.db")
    by_outcome = sorted((t.user_attrs.get("outcome"), t.user_attrs.get("attempt"), t.state.name) for t in opt.trials)
    assert by_outcome == expected_outcomes
    runs = runs_by_status(tmp_path, "fail")
    assert len(runs["FINISHED"]) == 1 and len(runs["FAILED"]) == failed_runs
    assert all(r.data.tags["ablate.error"] == "RuntimeError: injected fault" for r in runs["FAILED"])
    run_study(study, opts)  # failures are re-run only on request
    assert len(optuna.load_study(study_name="fail", storage=f"sqlite:///{tmp_path}/optuna.db").trials) == \
        len(expected_outcomes)
    monkeypatch.setattr("ablation.gan.steps.g_losses", real_g_losses)
    run_study(study, RunOptions(**{**opts.__dict__, "rerun_failed": True}))
    assert len(runs_by_status(tmp_path, "fail")["FINISHED"]) == 2
