"""The model a server runs: loaded once per process, with its model card, predictions and Grad-CAM.

:class:`ServedModel` wraps the one ``Predictor`` of pcamlab (``load_predictor``: a ``.safetensors``
checkpoint run by torch, an ONNX file run by onnxruntime, or a TorchScript file). Every request of
``pcamlab serve`` goes through the same instance, so the weights or the ONNX session are read from disk
once. Grad-CAM needs the torch module, so it is available for checkpoints only; it runs on a private
copy of the module under a lock, because Grad-CAM hooks a layer and a prediction running at the same
time on the shared module would pass through that hook.

Example:
    >>> model = ServedModel.load("runs/demo/best.safetensors")
    >>> model.card()["threshold"]["value"]
    0.5
    >>> model.predict(images)  # uint8 (N, 96, 96, 3) -> float64 probabilities (N,)
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab.errors import CheckpointError, ConfigError
from pcamlab.fileio import json_safe

# The one place where the server reaches the prediction runtime.
from pcamlab.runtime import InputContract, load_predictor

__all__ = ["ServedModel", "ExplainUnavailable"]


class ExplainUnavailable(ConfigError):
    """Grad-CAM was asked of a model without a torch module (ONNX, TorchScript)."""


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_format(path: Path) -> str:
    return {".onnx": "onnx", ".pt": "torchscript", ".torchscript": "torchscript"}.get(path.suffix.lower(), "safetensors")


class ServedModel:
    """One trained model behind the server, loaded once.

    Args:
        predictor: a loaded predictor (``contract`` and ``predict_proba(uint8 (N, H, W, 3))``).
        path: the file it came from (shown in the model card, hashed for its identity).

    Attributes:
        predictor: the predictor every prediction goes through.
        contract: the model's :class:`pcamlab.runtime.InputContract`.
        threshold: the decision threshold stored in the checkpoint.
        class_names: names of classes 0 and 1.
        patch_size: side of the patches the model takes, in pixels.
        explainable: whether Grad-CAM is available (a torch module is present).
    """

    def __init__(self, predictor: Any, path: str | os.PathLike):
        self.predictor = predictor
        self.path = Path(path)
        self.contract: InputContract = InputContract.coerce(predictor.contract)
        self.threshold = self.contract.threshold
        self.class_names = list(self.contract.class_names)
        self.patch_size = self.contract.patch_size
        self.sha256 = _file_digest(self.path) if self.path.is_file() else ""
        self._module = getattr(predictor, "model", None)  # the torch network of a checkpoint; None when exported
        self.explainable = self._module is not None
        self._explain_module = None
        self._gradcam = None
        self._explain_lock = threading.Lock()
        self._card = self._build_card()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> ServedModel:
        """Load a ``.safetensors`` checkpoint or a file of ``pcamlab export`` (``.onnx``, ``.pt``).

        Raises:
            CheckpointError: the file is missing, of an unknown kind, or cannot be read.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"model {str(path)!r} does not exist; pass a checkpoint (runs/NAME/best.safetensors) or a file "
                "written by pcamlab export (.onnx, .pt)"
            )
        return cls(load_predictor(path, device=device), path)

    # -- model card ------------------------------------------------------------------------------

    def _facts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The run config (dict) and run metadata stored with the model; empty where the file has none."""
        from pcamlab.config import RunConfig, config_to_dict

        config = getattr(self.predictor, "config", None) or {}
        if isinstance(config, RunConfig):
            config = config_to_dict(config)
        # json_safe: metadata of older versions may hold NaN/Infinity, which the card shows as null (the page: '—')
        return dict(config), json_safe(dict(getattr(self.predictor, "metadata", None) or {}))

    def _build_card(self) -> dict[str, Any]:
        config, metadata = self._facts()
        model_config = config.get("model", {})
        data_config = config.get("data", {})
        parameters = None
        if self._module is not None:
            parameters = int(sum(parameter.numel() for parameter in self._module.parameters()))
        validation = {key: value for key, value in metadata.items() if key.startswith("val_")}
        return {
            "file": self.path.name,
            "format": _model_format(self.path),
            "sha256": self.sha256,
            "architecture": {
                "name": model_config.get("name"),
                "options": model_config.get("options", {}),
                "parameters": parameters,
            },
            "input_contract": self.contract.to_dict(),
            "threshold": {"value": self.threshold, "source": self.contract.threshold_source},
            "training_data": {
                "path": data_config.get("path"),
                "format": data_config.get("format"),
                "train_split": data_config.get("train_split"),
                "valid_split": data_config.get("valid_split"),
                "stain_normalization": (self.contract.stain_normalization or {}).get("method", "none"),
            },
            "validation": {"epoch": metadata.get("epoch"), "split": data_config.get("valid_split"), **validation},
            "explain": self.explainable,
        }

    def card(self) -> dict[str, Any]:
        """The model card: architecture, input contract, threshold, training data and validation metrics.

        Values the file does not carry (an exported ONNX model has no parameter count) are None.
        """
        return copy.deepcopy(self._card)

    # -- inference -------------------------------------------------------------------------------

    def predict(self, images: np.ndarray, *, tta: bool = False, batch_size: int = 64) -> np.ndarray:
        """Tumour probabilities float64 ``(N,)`` for uint8 patches ``(N, H, W, 3)`` (``tta``: 8 dihedral views)."""
        if len(images) == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.predictor.predict_proba(images, batch_size=batch_size, tta=tta), dtype=np.float64)

    def explain(self, image: np.ndarray, *, alpha: float = 0.45) -> tuple[np.ndarray, str]:
        """Grad-CAM overlay of one patch: uint8 RGB ``(H, W, 3)`` and the name of the layer explained.

        Raises:
            ExplainUnavailable: the model is an exported file without a torch module.
        """
        if not self.explainable:
            raise ExplainUnavailable(
                f"Grad-CAM needs the torch model of a .safetensors checkpoint; this server runs "
                f"{self.path.name!r} ({_model_format(self.path)}): serve the checkpoint it was exported from"
            )
        from pcamlab.explain import GradCAM, overlay
        from pcamlab.explain._common import images_to_input, model_device

        image = np.array(image, dtype=np.uint8, copy=True)  # decoded images may be read-only views
        with self._explain_lock:
            if self._explain_module is None:
                self._explain_module = copy.deepcopy(self._module).eval()
                self._gradcam = GradCAM(self._explain_module)
            inputs = images_to_input(image[None], self.contract, model_device(self._explain_module))  # (1, 3, H, W)
            cam = self._gradcam(inputs)[0]  # (H, W) in [0, 1]
            layer = self._gradcam.layer_name_
        return overlay(image, cam, alpha=alpha), str(layer)
