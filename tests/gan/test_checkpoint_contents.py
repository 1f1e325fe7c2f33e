"""What a checkpoint and a stored init phase hold: the init optimiser's moments (twice G's size) only while the
init phase runs, since nothing steps that optimiser after it; a resume from either side of the phase's end is
still exact, and entries and checkpoints written before this change still load."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_array import Recorder, assert_same_losses, joined, run_alone, tiny, tiny_domains

from ablation.config import TrainConfig
from ablation.data.streams import Domains
from ablation.gan.array import train_array
from ablation.gan.checkpoint import load_checkpoint, save_checkpoint
from ablation.gan.init_cache import load_entry
from ablation.gan.trainer import StopFlag, build_models, train
from ablation.outcomes import Outcome

STEPS = 8  # one init epoch and one GAN epoch of 4 steps


@pytest.fixture(scope="module")
def domains() -> Domains:
    return tiny_domains()


def _bytes(state: object) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_bytes(v) for v in state)
    return 0


def test_a_checkpoint_after_the_init_phase_holds_no_init_optimiser(tmp_path: Path, domains: Domains) -> None:
    config = tiny(**{"schedule.epochs": 2})
    assert train(config, tmp_path, Recorder(), domains=domains).status is Outcome.FINISHED
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == STEPS and "opt_init" not in state
    generator = _bytes(state["generator"])
    # G, its GAN-phase Adam moments (2 G), a small D and its moments: the dead init moments were 2 G more
    assert (tmp_path / "checkpoint.pt").stat().st_size < 3.5 * generator


def test_a_checkpoint_inside_the_init_phase_keeps_it_and_resumes_exactly(tmp_path: Path, domains: Domains) -> None:
    config = tiny(**{"schedule.epochs": 2})
    whole = run_alone(config, tmp_path / "whole", domains)
    flag = StopFlag()
    first = Recorder(stop_at=2, flag=flag)  # the init phase is steps 1-4
    assert train(config, tmp_path / "split", first, domains=domains, stop=flag).step == 2
    state = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert state["step"] == 2 and state["opt_init"]["state"]  # its moments, which steps 3 and 4 read
    second = Recorder()
    assert train(config, tmp_path / "split", second, domains=domains, resume=True).step == STEPS
    assert_same_losses({**first.losses, **second.losses}, whole, rel=0.0)


def test_an_old_checkpoint_with_init_moments_after_the_phase_still_resumes(tmp_path: Path, domains: Domains) -> None:
    config = tiny(**{"schedule.epochs": 2})
    whole = run_alone(config, tmp_path / "whole", domains)
    flag = StopFlag()
    first = Recorder(stop_at=6, flag=flag)
    assert train(config, tmp_path / "split", first, domains=domains, stop=flag).step == 6
    path = tmp_path / "split" / "checkpoint.pt"
    state = load_checkpoint(path)
    state["opt_init"] = _moments(config)  # as written before this change: moments that no later step reads
    save_checkpoint(path, state)
    second = Recorder()
    assert train(config, tmp_path / "split", second, domains=domains, resume=True).step == STEPS
    assert_same_losses({**first.losses, **second.losses}, whole, rel=0.0)


def _moments(config: TrainConfig) -> dict:
    """An init optimiser's state dict with moments, as a checkpoint held after the init phase before."""
    models = build_models(config, torch.device("cpu"))
    for p in models.generator.parameters():
        p.grad = torch.ones_like(p)
    models.opt_init.step()
    return models.opt_init.state_dict()


def test_a_stored_init_phase_holds_no_optimiser_and_old_entries_still_load(tmp_path: Path, domains: Domains) -> None:
    config = tiny(**{"schedule.epochs": 2})
    cache = tmp_path / "cache"
    train_array(joined([config], [tmp_path / "donor"], [Recorder()]), domains=domains, init_cache=cache)
    (entry_file,) = cache.glob("*.pt")
    state = torch.load(entry_file, map_location="cpu", weights_only=True)
    assert "opt_init" not in state
    assert entry_file.stat().st_size < 1.2 * _bytes(state["generator"])  # G and a few small things

    # an entry stored before (with the moments, and its checksum over them) is used, not recomputed
    state["opt_init"] = _moments(config)
    torch.save(state, entry_file)
    meta = entry_file.with_suffix(".json")
    record = json.loads(meta.read_text())
    record["sha256"] = hashlib.sha256(entry_file.read_bytes()).hexdigest()
    meta.write_text(json.dumps(record))
    entry = load_entry(cache, config)
    assert entry is not None and entry.step == STEPS // 2
    shutil.rmtree(tmp_path / "donor")
    log = Recorder()
    result = train_array(joined([config], [tmp_path / "continued"], [log]), domains=domains, init_cache=cache)[0]
    assert result.status is Outcome.FINISHED and result.init_reused_s is not None
    assert_same_losses(log.losses, run_alone(config, tmp_path / "scratch", domains), rel=0.0)
