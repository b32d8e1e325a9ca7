"""One prediction API over the three deployable forms of a model.

Every predictor has ``contract`` (the checkpoint's input contract) and
``predict_proba(images, *, batch_size=256, tta=False) -> np.ndarray (N,)`` taking uint8
``(N, H, W, 3)`` RGB patches, like :func:`pcamlab.evaluate.predict.predict_proba`:

- :class:`CheckpointPredictor`: a ``.safetensors`` checkpoint, run by torch.
- :class:`OnnxPredictor`: an ONNX file written by :func:`pcamlab.deploy.export_checkpoint`, run by
  onnxruntime (no pcamlab model code needed at inference).
- :class:`TorchScriptPredictor`: a TorchScript file written by the same function.

``load_predictor(path)`` picks one from the file suffix. A checkpoint trained with stain
normalisation keeps the fitted normaliser in its contract; every predictor applies it to the uint8
patches first (the exported graphs do not contain it: see :func:`apply_stain_normalization`).

Example:
    >>> predictor = load_onnx("runs/demo/model.onnx")
    >>> probabilities = predictor.predict_proba(images)  # images: uint8 (N, 96, 96, 3)
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab.errors import CheckpointError, DataError, RunError

__all__ = [
    "MODEL_SUFFIXES",
    "ONNX_METADATA_KEYS",
    "TORCHSCRIPT_CONTRACT_FILE",
    "CheckpointPredictor",
    "OnnxPredictor",
    "TorchScriptPredictor",
    "apply_stain_normalization",
    "check_patches",
    "dihedral_numpy",
    "load_onnx",
    "load_predictor",
    "require_onnx",
]

# Keys of the ONNX ``metadata_props`` written by the exporter.
ONNX_METADATA_KEYS = {
    "contract": "pcamlab.contract",  # the input contract (JSON)
    "config": "pcamlab.config",  # the resolved run config (JSON)
    "metadata": "pcamlab.metadata",  # run facts of the checkpoint (JSON)
    "input": "pcamlab.input",  # "uint8" (NHWC RGB patches) or "float" (normalised NCHW)
}
TORCHSCRIPT_CONTRACT_FILE = "pcamlab_contract.json"
TORCHSCRIPT_INPUT_FILE = "pcamlab_input.txt"
MODEL_SUFFIXES = (".safetensors", ".onnx", ".pt", ".torchscript")


def require_onnx() -> None:
    """Raise a one-line RunError naming the fix when onnx or onnxruntime is not installed."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise RunError(
            f"ONNX export and inference need {' and '.join(missing)}, which is not installed; "
            f"install it with: pip install {' '.join(missing)}"
        )


def check_patches(images: np.ndarray, contract: dict[str, Any]) -> np.ndarray:
    """Check that ``images`` is uint8 ``(N, size, size, 3)`` for the contract's patch size; return it."""
    size = int(contract.get("patch_size", 96))
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(
            f"predict_proba needs uint8 RGB patches of shape (N, {size}, {size}, 3); got {images.dtype} "
            f"{images.shape}: stack decoded images with np.stack and convert with astype('uint8')"
        )
    if images.shape[1:3] != (size, size):
        raise DataError(
            f"this model takes {size}x{size} patches; got {images.shape[1]}x{images.shape[2]}: "
            "crop or resize the patches first"
        )
    return images


def apply_stain_normalization(images: np.ndarray, contract: dict[str, Any]) -> np.ndarray:
    """Apply the contract's stain normaliser (fitted at training) to uint8 patches; identity without one.

    Exported graphs do not contain it (Macenko/Reinhard are per-image numpy estimates), so the ONNX
    and TorchScript predictors apply it here, before the graph, exactly as ``predict_proba`` does.
    """
    if not contract.get("stain_normalization"):
        return images
    from pcamlab.data.normalize import normalizer_from_dict

    return normalizer_from_dict(contract["stain_normalization"]).transform(images)


def dihedral_numpy(images: np.ndarray, k: int) -> np.ndarray:
    """Dihedral transform ``k`` of uint8 ``(N, H, W, 3)`` patches, the same table as ``augment.dihedral``."""
    import torch

    from pcamlab.data.augment import dihedral

    channels_first = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, H, W) view
    return np.ascontiguousarray(dihedral(channels_first, k).permute(0, 2, 3, 1).numpy())  # (N, H, W, 3)


def _average_over_views(predict_batch, images: np.ndarray, batch_size: int, tta: bool) -> np.ndarray:
    """Run ``predict_batch(uint8 batch) -> probabilities`` in batches, averaging the 8 views with ``tta``."""
    from pcamlab.data.augment import DIHEDRAL_TRANSFORMS

    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1; got {batch_size}")
    views = range(DIHEDRAL_TRANSFORMS) if tta else range(1)
    outputs = np.empty(len(images), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size])
        total = np.zeros(len(batch), dtype=np.float64)
        for k in views:
            total += predict_batch(dihedral_numpy(batch, k) if k else batch)
        outputs[start : start + len(batch)] = total / len(views)
    return outputs


class CheckpointPredictor:
    """A ``.safetensors`` checkpoint run by torch (fp32, channels_last input).

    Args:
        checkpoint: a path or a loaded :class:`pcamlab.train.checkpoint.Checkpoint`.
        device: ``cpu`` or ``cuda[:N]``.
    """

    def __init__(self, checkpoint: Any, device: str = "cpu"):
        from pcamlab.train.checkpoint import Checkpoint, load_checkpoint

        if not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(checkpoint, device=device)
        self.checkpoint = checkpoint
        self.contract = checkpoint.contract
        self.device = device
        self.path = checkpoint.path

    def predict_proba(self, images: np.ndarray, *, batch_size: int = 256, tta: bool = False) -> np.ndarray:
        """Probabilities (N,) of class 1 (tumour) for uint8 patches (N, H, W, 3)."""
        from pcamlab.evaluate.predict import predict_proba

        images = check_patches(images, self.contract)
        return predict_proba(self.checkpoint.model, images, self.contract, batch_size=batch_size, tta=tta,
                             device=self.device)


class OnnxPredictor:
    """An exported ONNX model run by onnxruntime on the CPU.

    Attributes:
        contract: the input contract stored in the file's metadata.
        input_kind: ``"uint8"`` (the model takes uint8 NHWC patches and normalises inside) or
            ``"float"`` (it takes normalised float NCHW; this class normalises first).
        session: the ``onnxruntime.InferenceSession``.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 0):
        require_onnx()
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(
                f"ONNX file {str(self.path)!r} does not exist; write one with: pcamlab export CHECKPOINT --format onnx"
            )
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise CheckpointError(
                f"onnxruntime cannot load {str(self.path)!r} ({str(error).splitlines()[0]}); export it again"
            ) from None
        properties = self.session.get_modelmeta().custom_metadata_map
        if ONNX_METADATA_KEYS["contract"] not in properties:
            raise CheckpointError(
                f"ONNX file {str(self.path)!r} has no {ONNX_METADATA_KEYS['contract']!r} metadata, so its input "
                "contract is unknown; export it with pcamlab export"
            )
        self.contract = json.loads(properties[ONNX_METADATA_KEYS["contract"]])
        self.config = json.loads(properties.get(ONNX_METADATA_KEYS["config"], "{}"))
        self.metadata = json.loads(properties.get(ONNX_METADATA_KEYS["metadata"], "{}"))
        self.input_kind = properties.get(ONNX_METADATA_KEYS["input"], "uint8")
        self.input_name = self.session.get_inputs()[0].name
        self._mean = np.asarray(self.contract["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(self.contract["std"], dtype=np.float32).reshape(1, 3, 1, 1)

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """What the ONNX graph takes for uint8 patches (N, H, W, 3): them, or normalised float (N, 3, H, W)."""
        if self.input_kind == "uint8":
            return images
        unit = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)  # (N, 3, H, W)
        return np.ascontiguousarray((unit - self._mean) / self._std)

    def run(self, model_input: np.ndarray) -> np.ndarray:
        """Probabilities (N,) for an input already in the graph's form (see :meth:`model_input`)."""
        probability = self.session.run(["probability"], {self.input_name: model_input})[0]
        return probability.reshape(-1).astype(np.float64)

    def predict_proba(self, images: np.ndarray, *, batch_size: int = 256, tta: bool = False) -> np.ndarray:
        """Probabilities (N,) of class 1 (tumour) for uint8 patches (N, H, W, 3)."""
        images = apply_stain_normalization(check_patches(images, self.contract), self.contract)
        return _average_over_views(lambda batch: self.run(self.model_input(batch)), images, batch_size, tta)


class TorchScriptPredictor:
    """An exported TorchScript model (uint8 NHWC input, normalisation inside), run by torch."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        import torch

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(
                f"TorchScript file {str(self.path)!r} does not exist; write one with: "
                "pcamlab export CHECKPOINT --format torchscript"
            )
        extra = {TORCHSCRIPT_CONTRACT_FILE: "", TORCHSCRIPT_INPUT_FILE: ""}
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the file still loads
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(self.path), map_location=device, _extra_files=extra)
        except Exception as error:  # torch.jit raises several types for a foreign file
            raise CheckpointError(
                f"torch cannot load {str(self.path)!r} as TorchScript ({str(error).splitlines()[0]}); export it again"
            ) from None
        if not extra[TORCHSCRIPT_CONTRACT_FILE]:
            raise CheckpointError(
                f"TorchScript file {str(self.path)!r} carries no {TORCHSCRIPT_CONTRACT_FILE}; "
                "export it with pcamlab export"
            )
        self.contract = json.loads(extra[TORCHSCRIPT_CONTRACT_FILE])
        self.device = device

    def predict_proba(self, images: np.ndarray, *, batch_size: int = 256, tta: bool = False) -> np.ndarray:
        """Probabilities (N,) of class 1 (tumour) for uint8 patches (N, H, W, 3)."""
        import torch

        images = apply_stain_normalization(check_patches(images, self.contract), self.contract)

        def predict_batch(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                probability, _ = self.module(torch.from_numpy(batch).to(self.device))
            return probability.double().cpu().numpy()

        return _average_over_views(predict_batch, images, batch_size, tta)


def load_onnx(path: str | os.PathLike, *, threads: int = 0) -> OnnxPredictor:
    """Load an ONNX file written by ``pcamlab export`` as a predictor.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (0 = its default).

    Returns:
        An :class:`OnnxPredictor` with ``contract`` and ``predict_proba(images_uint8)``.

    Example:
        >>> predictor = load_onnx("model.onnx")
        >>> predictor.predict_proba(images).shape
        (16,)
    """
    return OnnxPredictor(path, threads=threads)


def load_predictor(model: Any, device: str = "cpu"):
    """A predictor for a checkpoint (``.safetensors``), an ONNX file, a TorchScript file, or a loaded one.

    Raises:
        CheckpointError: the file is missing or its suffix is not one of ``MODEL_SUFFIXES``.
    """
    if hasattr(model, "predict_proba") and hasattr(model, "contract"):
        return model
    if not isinstance(model, (str, os.PathLike)):
        return CheckpointPredictor(model, device=device)  # a loaded Checkpoint
    path = Path(model)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return load_onnx(path)
    if suffix in (".pt", ".torchscript"):
        return TorchScriptPredictor(path, device=device)
    if suffix == ".safetensors" or not path.is_file():
        return CheckpointPredictor(path, device=device)
    raise CheckpointError(
        f"model file {str(path)!r} has suffix {suffix or '(none)'!r}; pass a checkpoint (.safetensors), "
        "an ONNX file (.onnx) or a TorchScript file (.pt) written by pcamlab export"
    )
