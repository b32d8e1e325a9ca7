"""Device, precision and memory-format choices for training and inference.

``precision: auto`` picks bf16 autocast only where the hardware runs bf16 natively: CUDA devices with
bf16 support, and CPUs with AVX-512-BF16 or AMX instructions. Elsewhere bf16 autocast is emulated and
measured slower than fp32, so auto stays fp32: on AVX2-only CPUs, and on AVX-512 CPUs without BF16/AMX
too, where oneDNN still reports bf16 support (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is
True) but converts in software: there simple-cnn scored 14.8-17.0 patches/s in bf16 against
30.9-33.3 in fp32 (Intel Xeon AVX-512 without BF16/AMX, 2 shared cores, 1,024 PCam patches).

Training is the only place this precision is used: scoring (validation, evaluate, predict, thresholds)
runs in fp32 everywhere (``InputContract.precision``), so a model's numbers do not depend on the
machine that trained it.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

from pcamlab.errors import ConfigError

__all__ = ["resolve_device", "resolve_precision", "autocast", "scoring", "cpu_has_native_bf16", "cpu_model",
           "cpu_signature"]

CPU_EXTENSIONS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")  # the ones that change our speeds


def cpu_model() -> tuple[str, list[str]]:
    """This CPU's model name and which of :data:`CPU_EXTENSIONS` it has (from ``/proc/cpuinfo`` on Linux).

    Returns:
        ``(name, extensions)``, e.g. ``("Intel(R) Xeon(R) Processor", ["avx2", "avx512f", "avx512_vnni"])``;
        elsewhere ``platform.processor()`` and no extensions.
    """
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return name, [flag for flag in CPU_EXTENSIONS if flag in flags]


def cpu_signature() -> str:
    """One string that names this CPU kind for comparing timings: model name, extensions, torch threads.

    Two machines with the same model name can differ in AMX (the project has seen both Xeons), so the
    extensions are part of it. Example: ``"Intel(R) Xeon(R) Processor (avx2, avx512f, avx512_vnni); 2 threads"``.
    """
    name, extensions = cpu_model()
    return f"{name} ({', '.join(extensions) or 'no AVX2'}); {torch.get_num_threads()} threads"


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 arithmetic in hardware (AVX-512-BF16 or AMX) and oneDNN uses it.

    oneDNN's own check (``_is_mkldnn_bf16_supported``) is True on any AVX-512 CPU, where bf16 is
    emulated; it is necessary, not sufficient.
    """
    try:
        hardware = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return hardware and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name: str = "auto", field: str = "train.device") -> torch.device:
    """``auto`` -> first CUDA device if present, else CPU; checks that a requested GPU exists.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        field: the config field or parameter the messages name (``device`` for inference calls).

    Raises:
        ConfigError: an unknown device, or a GPU asked for where none is visible.
    """
    parameters = () if "." in field else (field,)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{field} must be auto, cpu, cuda or cuda:N; got {name!r}", parameters=parameters) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field} is {name!r} but no CUDA GPU is visible; use {field}=cpu", parameters=parameters)
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


@contextlib.contextmanager
def scoring(device: torch.device, precision: str):
    """The context every scoring forward pass runs in: validation, evaluate, predict, thresholds.

    ``bf16`` is bf16 autocast. ``fp32`` is IEEE fp32 on every device: on CUDA, TF32 (on by default for
    cuDNN convolutions, 10-bit mantissa) is switched off for the duration, so a GPU scores what a CPU
    scores; training keeps its own :func:`autocast` and TF32.
    """
    if precision == "bf16" or device.type != "cuda":
        with autocast(device, precision):
            yield
        return
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = False, False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
