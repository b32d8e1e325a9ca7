"""The trained model's home: checkpoint, input contract, device/precision and one Predictor.

Everything that uses a trained model (evaluate, explain, deploy, slides, the service, the final fit's
test evaluation) imports this layer, never the training package. It imports only ``pcamlab.config``,
``pcamlab.errors``, ``pcamlab.fileio``, ``pcamlab.registry``, ``pcamlab.models`` (to rebuild a network)
and ``pcamlab.data`` (stain normalisers and the dihedral table).

- :mod:`pcamlab.runtime.checkpoint`: :func:`save_checkpoint`, :func:`load_checkpoint`,
  :func:`read_metadata`, :data:`FORMAT`.
- :mod:`pcamlab.runtime.contract`: :class:`InputContract` (frozen; the one set of defaults), the batch
  check and the transform to model input.
- :mod:`pcamlab.runtime.device`: device and precision choice, autocast.
- :mod:`pcamlab.runtime.predictor`: the :class:`Predictor` protocol, :func:`load_predictor` for
  ``.safetensors`` / ``.onnx`` / TorchScript, TTA written once in :class:`PatchPredictor`.

Example:
    >>> from pcamlab.runtime import load_predictor
    >>> predictor = load_predictor("runs/demo/best.safetensors")
    >>> probabilities = predictor.predict_proba(images, tta=True)  # uint8 (N, 96, 96, 3) -> float32 (N,)
    >>> labels = probabilities >= predictor.contract.threshold
"""

from pcamlab.runtime.checkpoint import FORMAT, Checkpoint, CheckpointHeader, load_checkpoint, read_metadata, save_checkpoint
from pcamlab.runtime.contract import InputContract
from pcamlab.runtime.device import autocast, cpu_has_native_bf16, resolve_device, resolve_precision, scoring
from pcamlab.runtime.predictor import (
    MODEL_SUFFIXES,
    RUNTIMES,
    OnnxPredictor,
    PatchPredictor,
    Predictor,
    TorchPredictor,
    TorchScriptPredictor,
    load_onnx,
    load_predictor,
)

__all__ = [
    "FORMAT",
    "MODEL_SUFFIXES",
    "RUNTIMES",
    "Checkpoint",
    "CheckpointHeader",
    "InputContract",
    "OnnxPredictor",
    "PatchPredictor",
    "Predictor",
    "TorchPredictor",
    "TorchScriptPredictor",
    "autocast",
    "cpu_has_native_bf16",
    "load_checkpoint",
    "load_onnx",
    "load_predictor",
    "read_metadata",
    "resolve_device",
    "resolve_precision",
    "save_checkpoint",
    "scoring",
]
