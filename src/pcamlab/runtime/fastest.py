"""Pick the runtime that scores a checkpoint fastest: fp32 ONNX, int8 ONNX, or torch.

``pcamlab export`` writes ``NAME.onnx`` (fp32) and ``NAME.int8.onnx`` (``--quantize int8``) beside
``NAME.safetensors`` and stores the checkpoint's SHA-256 in them (``pcamlab.source_sha256``). For a
checkpoint, :func:`open_fastest` with ``runtime="auto"`` uses the fastest of those exports that was
made from exactly this checkpoint, in the order of :data:`AUTO_ORDER` (measured on the default CNN,
simple-cnn width 32, 2 threads of a quiet AVX-512 VNNI Xeon: ONNX Runtime int8 1,362 patches/s > fp32
888 > torch 425 with batch-norm folded; int8 changed the validation AUC by +0.0002; see the README's
inference table), and torch otherwise (always on a GPU). An export of another checkpoint (an older epoch, a retrained run) is never used.

Example:
    >>> predictor, runtime, reason = open_fastest("runs/demo/best.safetensors")
    >>> runtime, reason
    ('int8', 'runs/demo/best.int8.onnx exported from this checkpoint')
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pcamlab.errors import CheckpointError, ConfigError, did_you_mean

__all__ = ["AUTO_ORDER", "RUNTIME_CHOICES", "SOURCE_HASH_KEY", "export_sibling", "file_sha256", "open_fastest"]

RUNTIME_CHOICES = ("auto", "torch", "onnx", "int8")
AUTO_ORDER = ("int8", "onnx")  # exports tried by auto before torch, fastest first (measured, README)
SOURCE_HASH_KEY = "pcamlab.source_sha256"  # ONNX metadata: SHA-256 of the checkpoint it was exported from
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


def _export_of(checkpoint: Path, runtime: str, digest: str) -> tuple[Path | None, str]:
    """The sibling export of ``runtime`` if it exists and was made from this checkpoint, with a reason."""
    import onnx

    path = export_sibling(checkpoint, runtime)
    if not path.is_file():
        return None, f"no {path.name}"
    properties = {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
    quantized = "pcamlab.quantization" in properties
    if quantized != (runtime == "int8"):
        return None, f"{path.name} is {'int8' if quantized else 'fp32'}, not {runtime}"
    if properties.get(SOURCE_HASH_KEY) != digest:
        return None, f"{path.name} was exported from another checkpoint (or before hashes were stored)"
    return path, f"{path} exported from this checkpoint"


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
    from pcamlab.runtime.predictor import OnnxPredictor, TorchPredictor, load_predictor

    if runtime not in RUNTIME_CHOICES:
        raise ConfigError(f"runtime must be one of {list(RUNTIME_CHOICES)}; got {runtime!r}{did_you_mean(runtime, RUNTIME_CHOICES)}")
    path = Path(model)
    if path.suffix.lower() != ".safetensors":
        predictor = load_predictor(path, device=device)
        kind = "torchscript"
        if isinstance(predictor, OnnxPredictor):
            quantized = predictor.session.get_modelmeta().custom_metadata_map.get("pcamlab.quantization")
            kind = "int8" if quantized else "onnx"
        if runtime not in ("auto", kind):
            raise ConfigError(f"{str(path)!r} is a {kind} file; it runs on runtime {kind} (or auto), not {runtime!r}")
        return predictor, kind, f"{path.name} is a {kind} file"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass a .safetensors file from a run folder")
    on_cpu = device == "cpu"
    if runtime == "torch" or (runtime == "auto" and not on_cpu):
        return TorchPredictor.from_checkpoint(path, device=device), "torch", f"runtime {runtime}, device {device}"
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        if runtime == "auto":
            return TorchPredictor.from_checkpoint(path, device=device), "torch", "onnxruntime is not installed"
        raise ConfigError(f"runtime {runtime!r} needs onnx and onnxruntime: pip install onnx onnxruntime")
    digest = file_sha256(path)
    reasons = []
    for candidate in ((runtime,) if runtime != "auto" else AUTO_ORDER):
        export, reason = _export_of(path, candidate, digest)
        if export is not None:
            return OnnxPredictor(export), candidate, reason
        reasons.append(reason)
    if runtime != "auto":
        flag = " --quantize int8" if runtime == "int8" else ""
        raise CheckpointError(f"runtime {runtime!r} for {str(path)!r}: {reasons[0]}; write it with: "
                              f"pcamlab export {path}{flag}")
    return TorchPredictor.from_checkpoint(path, device=device), "torch", "; ".join(reasons)
