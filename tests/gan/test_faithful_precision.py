"""The precision a run computes in: `effective_precision` is bf16 exactly when CUDA, `runtime.amp` and native
bf16 all hold, and `autocast` decides by that same function (so what a run records is what it ran in)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from ablation.config import RuntimeConfig
from ablation.gan import device as device_module
from ablation.gan.device import autocast, effective_precision


@pytest.mark.parametrize("amp", [True, False])
def test_effective_precision_is_fp32_on_cpu_whatever_amp(amp: bool) -> None:
    assert effective_precision(RuntimeConfig(amp=amp), torch.device("cpu")) == "fp32"
    assert isinstance(autocast(torch.device("cpu"), RuntimeConfig(amp=amp)), contextlib.nullcontext)


@pytest.mark.parametrize(("amp", "supported", "expected"), [
    (True, True, "bf16"), (False, True, "fp32"), (True, False, "fp32"), (False, False, "fp32"),
])
def test_effective_precision_on_cuda_needs_amp_and_bf16(monkeypatch: pytest.MonkeyPatch, amp: bool,
                                                        supported: bool, expected: str) -> None:
    monkeypatch.setattr(device_module, "bf16_supported", lambda device: supported)
    assert effective_precision(RuntimeConfig(amp=amp), torch.device("cuda")) == expected


def test_autocast_follows_effective_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPU autocast stands in for CUDA's: what is pinned is that autocast asks effective_precision
    monkeypatch.setattr(device_module, "effective_precision", lambda runtime, device: "bf16")
    context = autocast(torch.device("cpu"), RuntimeConfig(amp=False))
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16


def test_bf16_supported_is_false_off_cuda() -> None:
    assert device_module.bf16_supported(torch.device("cpu")) is False
