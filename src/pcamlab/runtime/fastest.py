"""Pick the runtime that scores a checkpoint fastest: fp32 ONNX, int8 ONNX, or torch.

``pcamlab export`` writes ``NAME.onnx`` (fp32) and ``NAME.int8.onnx`` (``--quantize int8``) beside
``NAME.safetensors`` and stores the checkpoint's SHA-256 in them (``pcamlab.source_sha256``). An export
of another checkpoint (an older epoch, a retrained run) is never used.

Which one is fastest depends on the network and the CPU, so it is measured: ``pcamlab export`` times
the file it wrote and the checkpoint's torch predictor on this CPU (:func:`time_predictor`: median of 3
passes over 256 patches) and stores both in the file (``pcamlab.speed``, with
:func:`pcamlab.runtime.device.cpu_signature`). For a checkpoint, :func:`open_fastest` with
``runtime="auto"`` takes, among the exports made from exactly this checkpoint, the runtime with the most
patches/s **timed on this CPU kind**, torch included; when an export was not timed here (another
machine, an older pcamlab) it falls back to the order of :data:`AUTO_ORDER`. Why: a fixed order was
wrong for a narrower network; measured on 2 threads of a quiet AVX-512 VNNI Xeon (no AMX), simple-cnn
width 32 ran ONNX Runtime int8 1,362 > fp32 888 > torch 425 patches/s (batch-norm folded), but width 16
fp32 2,291 > int8 1,929 > torch 1,040 (batch 256, before the export normalised the flattened patch;
docs/benchmarks.md, inference table). On a GPU it is always torch.

Example:
    >>> predictor, runtime, reason = open_fastest("runs/demo/best.safetensors")
    >>> runtime, reason
    ('int8', 'fastest timed on this CPU: int8 2446 > onnx 1849 > torch 920 patches/s (runs/demo/best.int8.onnx)')
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import statistics
import time
from pathlib import Path
from typing import Any

from pcamlab.errors import CheckpointError, ConfigError, did_you_mean

__all__ = ["AUTO_ORDER", "RUNTIME_CHOICES", "SOURCE_HASH_KEY", "SPEED_KEY", "export_sibling", "file_sha256",
           "open_fastest", "runtime_of", "time_predictor"]

RUNTIME_CHOICES = ("auto", "torch", "onnx", "int8")
AUTO_ORDER = ("int8", "onnx")  # exports tried by auto before torch, fastest first (measured, docs/benchmarks.md)
SOURCE_HASH_KEY = "pcamlab.source_sha256"  # ONNX metadata: SHA-256 of the checkpoint it was exported from
SPEED_KEY = "pcamlab.speed"  # ONNX metadata: JSON, patches/s of this file and of torch, timed at export
TIMED_PATCHES, TIMED_BATCH, TIMED_REPEATS = 256, 64, 3
_SIBLING_SUFFIXES = {"onnx": ".onnx", "int8": ".int8.onnx"}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_sibling(checkpoint: str | os.PathLike, runtime: str) -> Path:
    """Where ``pcamlab export`` writes ``runtime``'s file for a checkpoint (``best.int8.onnx`` for int8)."""
    return Path(checkpoint).with_suffix(_SIBLING_SUFFIXES[runtime])


def runtime_of(predictor: Any) -> str:
    """``torch``, ``onnx``, ``int8`` (an ONNX file quantised by ``pcamlab export --quantize int8``) or
    ``torchscript`` for pcamlab's predictors; the class name for any other object."""
    session = getattr(predictor, "session", None)
    if session is not None:
        from pcamlab.runtime.predictor import ONNX_METADATA_KEYS

        return "int8" if ONNX_METADATA_KEYS["quantization"] in session.get_modelmeta().custom_metadata_map else "onnx"
    name = type(predictor).__name__
    return {"TorchPredictor": "torch", "TorchScriptPredictor": "torchscript"}.get(name, name)


def time_predictor(predictor, patches, batch_size: int = TIMED_BATCH, repeats: int = TIMED_REPEATS) -> float:
    """Patches per second of ``predictor.predict_proba`` on ``patches``: one untimed pass, then the median of
    ``repeats`` timed passes (wall time, uint8 in to probabilities out).

    Args:
        predictor: any :class:`~pcamlab.runtime.predictor.Predictor`.
        patches: uint8 ``(N, H, W, 3)``.
        batch_size: patches per forward pass.
        repeats: timed passes (>= 1).
    """
    predictor.predict_proba(patches[:batch_size], batch_size=batch_size)  # first-call allocations, kernel caches
    seconds = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        predictor.predict_proba(patches, batch_size=batch_size)
        seconds.append(time.perf_counter() - start)
    return len(patches) / statistics.median(seconds)


def _export_of(checkpoint: Path, runtime: str, digest: str) -> tuple[Path | None, str, dict[str, Any] | None]:
    """The sibling export of ``runtime`` if it exists and was made from this checkpoint, a reason, and its
    stored timing when it was timed on this CPU kind (else None)."""
    import onnx

    from pcamlab.runtime.device import cpu_signature
    from pcamlab.runtime.predictor import ONNX_METADATA_KEYS

    path = export_sibling(checkpoint, runtime)
    if not path.is_file():
        return None, f"no {path.name}", None
    try:  # a half-copied or foreign file must not stop the runtimes that do work
        properties = {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as error:  # onnx raises protobuf's DecodeError and others on a damaged file
        return None, f"{path.name} cannot be read as ONNX ({type(error).__name__})", None
    if ONNX_METADATA_KEYS["contract"] not in properties:
        return None, f"{path.name} is not a pcamlab export (no input contract)", None
    quantized = ONNX_METADATA_KEYS["quantization"] in properties
    if quantized != (runtime == "int8"):
        return None, f"{path.name} is {'int8' if quantized else 'fp32'}, not {runtime}", None
    if properties.get(SOURCE_HASH_KEY) != digest:
        return None, f"{path.name} was exported from another checkpoint (or before hashes were stored)", None
    try:
        speed = json.loads(properties.get(SPEED_KEY, "null"))
    except ValueError:
        speed = None
    if not isinstance(speed, dict) or speed.get("cpu") != cpu_signature() or not all(
            _plausible_speed(speed.get(key)) for key in ("patches_per_s", "torch_patches_per_s")):
        speed = None
    return path, f"{path} exported from this checkpoint", speed


def _plausible_speed(value: Any) -> bool:
    """A stored patches/s worth trusting: a real number between 0 and 10 million (not a bool, inf or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e7


def open_fastest(model: str | os.PathLike, runtime: str = "auto", device: str = "cpu"):
    """A predictor for ``model`` on the requested runtime, or the fastest one it allows.

    Args:
        model: a ``.safetensors`` checkpoint, or an exported ``.onnx`` / TorchScript file.
        runtime: ``auto`` | ``torch`` | ``onnx`` | ``int8``. For a checkpoint, ``onnx`` and ``int8``
            need that export beside it (``pcamlab export CHECKPOINT [--quantize int8]``); ``auto``
            takes the fastest matching export, else torch. For an exported file, ``auto`` or the
            file's own kind.
        device: torch device; ``auto`` and a CUDA device keep a checkpoint on torch.

    Returns:
        ``(predictor, runtime_used, reason)``: a :class:`~pcamlab.runtime.predictor.Predictor`, one of
        ``torch | onnx | int8 | torchscript``, and why it was chosen.

    Raises:
        ConfigError: unknown ``runtime``, or one the file cannot run on.
        CheckpointError: the requested export is missing or was made from another checkpoint.
    """
    from pcamlab.runtime.device import resolve_device
    from pcamlab.runtime.predictor import OnnxPredictor, TorchPredictor, load_predictor

    if runtime not in RUNTIME_CHOICES:
        raise ConfigError(f"runtime must be one of {list(RUNTIME_CHOICES)}; got {runtime!r}{did_you_mean(runtime, RUNTIME_CHOICES)}")
    on_cpu = resolve_device(device, field="device").type == "cpu"  # also refuses an unknown or absent device
    path = Path(model)
    if path.suffix.lower() != ".safetensors":
        if path.suffix.lower() == ".onnx" and not on_cpu:
            raise ConfigError(f"{str(path)!r} is an ONNX file, which runs on the CPU here (ONNX Runtime's CPU "
                              f"provider); use device='cpu', or pass the checkpoint to run on {device}",
                              parameters=("device",))
        predictor = load_predictor(path, device=device)
        kind = runtime_of(predictor)
        if runtime not in ("auto", kind):
            if kind == "torchscript":
                raise ConfigError(f"{str(path)!r} is a TorchScript file; run it with runtime='auto', not {runtime!r}",
                                  parameters=("runtime",))
            raise ConfigError(f"{str(path)!r} is an {kind} file; it runs on runtime {kind} (or auto), not {runtime!r}")
        return predictor, kind, f"{path.name} is {'a TorchScript' if kind == 'torchscript' else 'an ' + kind} file"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass a .safetensors file from a run folder")
    if runtime in ("onnx", "int8") and not on_cpu:
        raise ConfigError(f"runtime {runtime} runs on the CPU (ONNX Runtime's CPU provider); use device='cpu', "
                          f"or runtime='torch' to run on {device}", parameters=("device", "runtime"))
    if runtime == "torch" or (runtime == "auto" and not on_cpu):
        return TorchPredictor.from_checkpoint(path, device=device), "torch", f"runtime {runtime}, device {device}"
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        if runtime == "auto":
            return TorchPredictor.from_checkpoint(path, device=device), "torch", "onnxruntime is not installed"
        raise ConfigError(f"runtime {runtime!r} needs onnx and onnxruntime: pip install onnx onnxruntime")
    digest = file_sha256(path)
    if runtime != "auto":
        export, reason, _ = _export_of(path, runtime, digest)
        if export is not None:
            return OnnxPredictor(export), runtime, reason
        flag = " --quantize int8" if runtime == "int8" else ""
        force = " --force" if export_sibling(path, runtime).exists() else ""
        raise CheckpointError(f"runtime {runtime!r} for {str(path)!r}: {reason}; write it with: "
                              f"pcamlab export {shlex.quote(str(path))}{flag}{force}")
    found = {candidate: _export_of(path, candidate, digest) for candidate in AUTO_ORDER}
    usable = {candidate: entry for candidate, entry in found.items() if entry[0] is not None}
    if not usable:
        return TorchPredictor.from_checkpoint(path, device=device), "torch", "; ".join(entry[1] for entry in found.values())
    if all(entry[2] is not None for entry in usable.values()):  # every usable export was timed on this CPU kind
        speeds = {candidate: entry[2]["patches_per_s"] for candidate, entry in usable.items()}
        speeds["torch"] = statistics.mean(entry[2]["torch_patches_per_s"] for entry in usable.values())
        ranking = sorted(speeds, key=speeds.get, reverse=True)
        reason = "fastest timed on this CPU: " + " > ".join(f"{name} {speeds[name]:.0f}" for name in ranking) + " patches/s"
        if ranking[0] == "torch":
            return TorchPredictor.from_checkpoint(path, device=device), "torch", reason
        return OnnxPredictor(usable[ranking[0]][0]), ranking[0], f"{reason} ({usable[ranking[0]][0]})"
    candidate = next(iter(usable))  # AUTO_ORDER: the measured order of the default CNN
    return OnnxPredictor(usable[candidate][0]), candidate, (
        f"{usable[candidate][1]}; not every export was timed on this CPU, so the default order {' > '.join(AUTO_ORDER)} "
        f"> torch (time them here with: pcamlab export {path} [--quantize int8] --force)")
