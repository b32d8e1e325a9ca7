"""Moved to :mod:`pcamlab.runtime.predictor`; this module only re-exports it for code written before."""

from pcamlab.runtime.predictor import (
    MODEL_SUFFIXES,
    ONNX_METADATA_KEYS,
    TORCHSCRIPT_CONTRACT_FILE,
    TORCHSCRIPT_INPUT_FILE,
    OnnxPredictor,
    TorchPredictor,
    TorchScriptPredictor,
    load_onnx,
    load_predictor,
    require_onnx,
)

CheckpointPredictor = TorchPredictor.from_checkpoint  # the old name of a checkpoint's predictor


__all__ = ["MODEL_SUFFIXES", "ONNX_METADATA_KEYS", "TORCHSCRIPT_CONTRACT_FILE", "TORCHSCRIPT_INPUT_FILE",
           "CheckpointPredictor", "OnnxPredictor", "TorchPredictor", "TorchScriptPredictor", "load_onnx",
           "load_predictor", "require_onnx"]
