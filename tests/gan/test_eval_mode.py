"""Samples and evaluations run G in eval mode: with spectral norm on G (`model.generator_sn`), a forward pass in
train mode advances the power iteration, so how often a trial evaluated used to change its training losses."""

from __future__ import annotations

import torch
from test_array import tiny

from ablation.gan.generator import build_generator


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
