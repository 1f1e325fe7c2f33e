"""Device choice, the precision a run computes in, and the CUDA-only speed paths (bf16 autocast,
channels_last, torch.compile).

Everything here is a no-op on CPU, so tests and laptops never need CUDA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from ablation.config import RuntimeConfig
from ablation.errors import UserError, problem


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(runtime.device)
    except RuntimeError:
        raise UserError(problem(None, "runtime.device", "auto, cpu, cuda or cuda:N", runtime.device)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(problem(None, "runtime.device", "a device this machine has (no CUDA here)", runtime.device))
    return device


def configure_threads(runtime: RuntimeConfig) -> None:
    if runtime.threads is not None:
        torch.set_num_threads(runtime.threads)


Precision = Literal["fp32", "bf16"]


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 on this CUDA device (compute capability >= 8, or ROCm). Pre-Ampere GPUs only emulate bf16,
    slower than fp32, so autocasting there would cost speed and precision for nothing."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    return torch.cuda.get_device_properties(device).major >= 8


def effective_precision(runtime: RuntimeConfig, device: torch.device) -> Precision:
    """The precision the forward passes (and so every loss) really run in: "bf16" exactly when `autocast`
    below autocasts, else "fp32". `runtime.amp` alone does not say it: it is a no-op on CPU."""
    if device.type == "cuda" and runtime.amp and bf16_supported(device):
        return "bf16"
    return "fp32"


def autocast(device: torch.device, runtime: RuntimeConfig) -> contextlib.AbstractContextManager:
    """bf16 autocast (no loss scaling needed for bf16) when `effective_precision` says bf16; else nothing.

    Decided by `effective_precision` itself, so what a run records as its precision is what it ran in.
    """
    if effective_precision(runtime, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_module(module: nn.Module, device: torch.device, runtime: RuntimeConfig) -> nn.Module:
    module = module.to(device)
    if device.type == "cuda" and runtime.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def maybe_compile(module: nn.Module, device: torch.device, runtime: RuntimeConfig) -> nn.Module:
    """torch.compile only on CUDA: CPU inductor needs a C++ toolchain and gains little here."""
    if device.type == "cuda" and runtime.compile:
        return torch.compile(module)  # type: ignore[return-value]
    return module


def to_device_layout(images: torch.Tensor, device: torch.device, runtime: RuntimeConfig) -> torch.Tensor:
    if device.type == "cuda" and runtime.channels_last:
        return images.contiguous(memory_format=torch.channels_last)
    return images


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop parameter gradients (D during the G step: its weight grads would be thrown away)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
