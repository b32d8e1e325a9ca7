"""pcamlab: deep-learning detectors of metastases in PatchCamelyon H&E lymph-node patches.

The Python API in a few lines (the README's "Python API" section; ``tests/test_api.py`` runs it):

Example:
    >>> import pcamlab
    >>> config = pcamlab.load_config("configs/baseline.yaml", ["train.epochs=1", "evaluate.threshold_method=youden"])
    >>> summary = pcamlab.train_model(config, tempfile.mkdtemp())  # a new run folder, as `pcamlab train` writes it
    >>> predictor = pcamlab.load_predictor(summary["checkpoints"]["best"])  # also .onnx / TorchScript
    >>> images, labels, _ = pcamlab.load_split_arrays(pcamlab.open_split("sample", "valid"))
    >>> probabilities = predictor.predict_proba(images)  # uint8 (N, 96, 96, 3) -> float32 (N,) P(tumour)
    >>> called = probabilities >= predictor.contract.threshold

Names that need torch (everything but the config and the errors) are imported on first use, so
``import pcamlab`` stays fast (``pcamlab --help`` does not load torch).
"""

from __future__ import annotations

import importlib
from typing import Any

import pcamlab.data  # noqa: F401 - its registries (readers, stain normalisers) declare config choices: load_config checks them
from pcamlab.config import RunConfig, load_config
from pcamlab.errors import CheckpointError, ConfigError, DataError, PcamlabError, RunError, RunFolderError

__version__ = "0.1.0"

# name -> module it lives in, imported on first access (PEP 562)
_LAZY = {
    "train_model": ("pcamlab.train.loop", "train"),
    "evaluate_checkpoint": ("pcamlab.evaluate.run", "evaluate_checkpoint"),
    "load_checkpoint": ("pcamlab.runtime.checkpoint", "load_checkpoint"),
    "save_checkpoint": ("pcamlab.runtime.checkpoint", "save_checkpoint"),
    "Checkpoint": ("pcamlab.runtime.checkpoint", "Checkpoint"),
    "load_predictor": ("pcamlab.runtime.predictor", "load_predictor"),
    "Predictor": ("pcamlab.runtime.predictor", "Predictor"),
    "InputContract": ("pcamlab.runtime.contract", "InputContract"),
    "build_model": ("pcamlab.models", "build_model"),
    "list_models": ("pcamlab.models", "list_models"),
    "open_split": ("pcamlab.data", "open_split"),
    "load_split_arrays": ("pcamlab.data", "load_split_arrays"),
}

__all__ = [
    "__version__",
    # configuration
    "RunConfig",
    "load_config",
    # training, evaluation
    "train_model",
    "evaluate_checkpoint",
    # trained models
    "load_checkpoint",
    "save_checkpoint",
    "Checkpoint",
    "load_predictor",
    "Predictor",
    "InputContract",
    "build_model",
    "list_models",
    # data
    "open_split",
    "load_split_arrays",
    # errors
    "PcamlabError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "RunError",
    "RunFolderError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'pcamlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
