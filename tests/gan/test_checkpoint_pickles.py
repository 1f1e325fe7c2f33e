"""Checkpoints and stored init phases load with torch's restricted unpickler: a pickle in the trials folder
that would run code is refused (a checkpoint: one line; an init-phase entry: recomputed), and never runs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from ablation.config import TrainConfig
from ablation.errors import UserError
from ablation.gan.checkpoint import load_checkpoint, save_checkpoint
from ablation.gan.init_cache import init_identity, init_key, load_entry


class Payload:
    """What an attacker with write access to a shared trials volume could leave there."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_of_tensors_rng_states_and_containers_loads(tmp_path: Path) -> None:
    state = {"generator": {"w": torch.ones(2)}, "rng": torch.get_rng_state(), "step": 7, "cell": "abc",
             "config": {"seed": 1, "loss": {"style_weight": 3.0}}, "window": [1.5, None, True]}
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded is not None and loaded["step"] == 7 and torch.equal(loaded["rng"], state["rng"])
    assert loaded["config"] == state["config"] and loaded["window"] == [1.5, None, True]


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "evil": Payload(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()
    assert len(info.value.lines) == 1
    assert info.value.lines[0].startswith(f"{tmp_path / 'checkpoint.pt'}: checkpoint: expected a checkpoint of "
                                          "tensors and plain containers")


def test_an_init_phase_entry_that_would_run_code_is_recomputed(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = TrainConfig()
    marker = tmp_path / "pwned"
    buffer = tmp_path / "entry.bin"
    torch.save({"step": 1, "evil": Payload(marker)}, buffer)
    data = buffer.read_bytes()
    key = init_key(config)
    (tmp_path / f"{key}.pt").write_bytes(data)  # checksummed as the real writer would: the checksum is no guard
    (tmp_path / f"{key}.json").write_text(json.dumps({"identity": init_identity(config), "seconds": 1.0,
                                                      "sha256": hashlib.sha256(data).hexdigest()}))
    assert load_entry(tmp_path, config) is None
    assert not marker.exists()
    assert "unusable (UnpicklingError" in capsys.readouterr().err
