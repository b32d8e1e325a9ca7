"""Device, precision and memory-format choices for training and inference.

``precision: auto`` picks bf16 autocast only where the hardware runs bf16 natively: CUDA devices with
bf16 support, and CPUs on which oneDNN reports native bf16 (AVX-512-BF16 / AMX). On a CPU without it
(e.g. AVX2-only), bf16 autocast is emulated and measured slower than fp32, so auto stays fp32.
"""

from __future__ import annotations

import contextlib

import torch

from pcamlab.errors import ConfigError

__all__ = ["resolve_device", "resolve_precision", "autocast", "cpu_has_native_bf16"]


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 convolutions natively on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> first CUDA device if present, else CPU; checks that a requested GPU exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA GPU is visible; use train.device=cpu")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``auto`` into ``bf16`` or ``fp32`` for this device."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """A context manager running the forward pass in ``precision`` (bf16 autocast or plain fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
