"""Deployment: predict patches on disk, export to ONNX / TorchScript, reload, and benchmark.

- :func:`predict_files`: image files, folders and ``_x.h5`` files -> probabilities and a CSV.
- :func:`predict_kaggle`: the Kaggle competition's ``test/`` folder -> a submission CSV ``id,label``.
- :func:`export_checkpoint`: a checkpoint -> a verified ONNX (uint8 NHWC in, probability out) or
  TorchScript file carrying the input contract.
- :func:`load_onnx` / :func:`load_predictor`: reload any of them behind one
  ``predict_proba(images_uint8)`` API (re-exported from :mod:`pcamlab.runtime`, where they live).
- :mod:`pcamlab.deploy.bench`: training and inference throughput against the machine's peak.

Example:
    >>> from pcamlab.deploy import export_checkpoint, load_onnx, predict_files
    >>> export_checkpoint("runs/demo/best.safetensors", "model.onnx")
    >>> load_onnx("model.onnx").predict_proba(images)
    >>> predict_files("model.onnx", ["patches/"], "predictions.csv")
"""

from pcamlab.deploy.export import export_checkpoint
from pcamlab.deploy.kaggle import predict_kaggle
from pcamlab.deploy.predict import PredictionResult, predict_files
from pcamlab.deploy.sources import PatchSource, collect_sources, iterate_patches
from pcamlab.runtime.predictor import OnnxPredictor, TorchPredictor, TorchScriptPredictor, load_onnx, load_predictor

__all__ = [
    "OnnxPredictor",
    "PatchSource",
    "PredictionResult",
    "TorchPredictor",
    "TorchScriptPredictor",
    "collect_sources",
    "export_checkpoint",
    "iterate_patches",
    "load_onnx",
    "load_predictor",
    "predict_files",
    "predict_kaggle",
]
