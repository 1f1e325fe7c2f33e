"""Samples and evaluations run G in eval mode: with spectral norm on G (`model.generator_sn`), a forward pass in
train mode advances the power iteration, so how often a trial evaluated used to change its training losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_array import tiny

from ablation.console import METRICS_FILE, MetricsFile
from ablation.data.demo import procedural_batch
from ablation.data.streams import domains_from_arrays
from ablation.gan.generator import build_generator
from ablation.gan.trainer import train


def test_samples_and_evaluations_leave_a_spectral_normed_g_unchanged() -> None:
    from ablation.gan.member import generate_u8

    generator = build_generator("v1", spectral_norm=True)
    assert generator.training
    member = type("M", (), {"device": torch.device("cpu"), "config": tiny()})()
    photos = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    assert any("_u" in k for k in before)  # the power iteration's vectors, which a train-mode forward advances
    generate_u8(generator, photos, member)  # type: ignore[arg-type]
    assert generator.training  # back in the mode it found, for the next training step
    after = generator.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


def _loss_rows(path: Path) -> list[str]:
    """Each metrics.jsonl row's loss values, as the exact text written (JSON floats round-trip bit for bit)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [json.dumps({"step": r["step"], **{k: v for k, v in r.items() if k.startswith("loss/")}}) for r in rows
            if any(k.startswith("loss/") for k in r)]


@pytest.mark.slow  # two 4-step training runs with evaluations (20 min on a 2-core CPU shared with other runs)
def test_the_eval_cadence_leaves_a_spectral_normed_gs_losses_unchanged(tmp_path: Path) -> None:
    """The same tiny run with `model.generator_sn: true`, evaluated every epoch and only at the end: every loss
    row of metrics.jsonl is the same text. A train-mode G in samples or evaluations would advance its power
    iteration once per evaluation, and the two runs' losses would part after the first evaluation."""
    photos, _ = procedural_batch(12, 32, seed=1)
    _, animes = procedural_batch(12, 32, seed=2)
    val, val_anime = procedural_batch(4, 32, seed=3)
    _, ref = procedural_batch(8, 32, seed=4)
    domains = domains_from_arrays(photos, animes, val, style_ref=ref, val_target=val_anime)
    runs = {}
    for every in (1, 0):  # every epoch; only at the end (0)
        config = tiny(**{"model.generator_sn": True, "eval.enabled": True, "eval.image_size": 32,
                         "eval.efficientnet": False, "eval.evaluator_seeds": (1001,), "eval.kid_subsets": 2,
                         "eval.kid_subset_size": 2, "schedule.eval_every": every, "schedule.epochs": 2,
                         "schedule.steps_per_epoch": 2})
        out = tmp_path / f"every{every}"
        metrics = MetricsFile(out / METRICS_FILE, resume=False)
        train(config, out, metrics.write, domains=domains)
        evaluated = [r["step"] for r in map(json.loads, (out / METRICS_FILE).read_text().splitlines())
                     if "eval/style/kid_rand" in r]
        assert len(evaluated) == (2 if every else 1)  # the cadences really differ: also after the init epoch
        runs[every] = _loss_rows(out / METRICS_FILE)
    assert len(runs[1]) == 4 and runs[1] == runs[0]  # 2 init steps, then the 2 GAN steps an evaluation precedes
