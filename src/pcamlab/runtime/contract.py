"""The input contract of a trained model: what a caller must feed it and how to read its output.

A checkpoint, an exported ONNX or TorchScript file and every predictor carry one
:class:`InputContract`. It is frozen and typed, and it holds the ONLY defaults pcamlab has for these
facts: a key missing from a stored contract takes the default declared here.

The model input is built from uint8 RGB patches (N, H, W, 3) in three steps, each written once here:

1. :meth:`InputContract.check_batch`: uint8, 4-D, 3 channels, ``patch_size`` x ``patch_size``.
2. :meth:`InputContract.prepare`: the stain normaliser fitted at training (Macenko or Reinhard, a
   per-image numpy estimate, so it is never inside an exported graph), identity without one.
3. :meth:`InputContract.to_model_input`: uint8 (B, H, W, 3) tensor -> float32 (B, 3, H, W) with
   channels_last strides; ``input_scaling='standardize'`` gives ``(image / 255 - mean) / std``,
   ``'unit'`` gives ``image / 255``.

Example:
    >>> contract = InputContract(mean=(0.70, 0.54, 0.69), std=(0.17, 0.21, 0.16))
    >>> contract.threshold, contract.class_names
    (0.5, ('normal', 'tumour'))
    >>> InputContract.from_dict(contract.to_dict()) == contract
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pcamlab.config import CHOICES
from pcamlab.errors import CheckpointError, DataError, did_you_mean

__all__ = ["InputContract", "INPUT_SCALINGS", "INFERENCE_PRECISIONS", "PCAM_MPP", "DESCRIPTIVE_KEYS"]

INPUT_SCALINGS = CHOICES["data.input_scaling"]  # declared once, by the config field
INFERENCE_PRECISIONS = ("fp32", "bf16")
PCAM_MPP = 0.972  # um per pixel of PCam patches: Camelyon16 level 0 (~0.243 um/px) downsampled 4x (10x)

# Human-readable keys written beside the fields (for someone reading the JSON); ignored on reading.
DESCRIPTIVE_KEYS = ("channels", "input", "output")


def _three_numbers(name: str, value: Any) -> tuple[float, float, float]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise CheckpointError(f"contract.{name} must be 3 finite numbers (one per RGB channel, [0, 1] units); got {value!r}")
    return numbers  # type: ignore[return-value]


@dataclass(frozen=True)
class InputContract:
    """What a trained model takes and returns; carried by every checkpoint and exported file.

    Attributes:
        patch_size: side in pixels of the square RGB patches the model was trained on.
        mean: per-channel mean of the training patches in [0, 1] units (R, G, B).
        std: per-channel standard deviation of the training patches in [0, 1] units (no zero).
        class_names: names of label 0 and label 1; the model's output is the logit of label 1.
        threshold: decision threshold on the probability of label 1, in [0, 1].
        threshold_source: where the threshold came from: ``fixed`` (``evaluate.threshold``), or a
            ``evaluate.threshold_method`` (``youden``, ``sensitivity``, ``f1``) chosen on validation.
        stain_normalization: the fitted stain normaliser (``normalizer.to_dict()``: ``method`` plus its
            fitted statistics), or None.
        input_scaling: ``standardize`` (``(x / 255 - mean) / std``) or ``unit`` (``x / 255`` only).
        precision: the precision the model is scored in (``fp32`` | ``bf16``).
        mpp: training resolution in micrometres per pixel (PCam: 0.972, i.e. 10x).

    Raises:
        CheckpointError: a field is out of its domain (each message names ``contract.FIELD``).
    """

    patch_size: int = 96
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    class_names: tuple[str, str] = ("normal", "tumour")
    threshold: float = 0.5
    threshold_source: str = "fixed"
    stain_normalization: dict[str, Any] | None = field(default=None, hash=False)
    input_scaling: str = "standardize"
    precision: str = "fp32"
    mpp: float = PCAM_MPP

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the field types once, here
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, (int, np.integer)) or self.patch_size < 1:
            raise CheckpointError(f"contract.patch_size must be a positive integer (pixels); got {self.patch_size!r}")
        set_(self, "patch_size", int(self.patch_size))
        set_(self, "mean", _three_numbers("mean", self.mean))
        std = _three_numbers("std", self.std)
        if any(value <= 0 for value in std):
            raise CheckpointError(f"contract.std must be 3 positive numbers; got {list(std)}")
        set_(self, "std", std)
        names = self.class_names
        if isinstance(names, str) or len(tuple(names)) != 2:
            raise CheckpointError(f"contract.class_names must name 2 classes (label 0, label 1); got {names!r}")
        set_(self, "class_names", tuple(str(name) for name in names))
        threshold = float(self.threshold)
        if not 0.0 <= threshold <= 1.0:
            raise CheckpointError(f"contract.threshold must be a probability in [0, 1]; got {self.threshold!r}")
        set_(self, "threshold", threshold)
        set_(self, "threshold_source", str(self.threshold_source))
        if self.stain_normalization is not None:
            if not isinstance(self.stain_normalization, Mapping) or "method" not in self.stain_normalization:
                raise CheckpointError(
                    "contract.stain_normalization must be a fitted normaliser's to_dict() (with 'method') or "
                    f"None; got {self.stain_normalization!r}"
                )
            set_(self, "stain_normalization", dict(self.stain_normalization))
        for name, allowed in (("input_scaling", INPUT_SCALINGS), ("precision", INFERENCE_PRECISIONS)):
            value = getattr(self, name)
            if value not in allowed:
                raise CheckpointError(f"contract.{name} must be one of {list(allowed)}; got {value!r}"
                                      f"{did_you_mean(str(value), allowed)}")
        mpp = float(self.mpp)
        if not (math.isfinite(mpp) and mpp > 0):
            raise CheckpointError(f"contract.mpp must be a positive number of micrometres per pixel; got {self.mpp!r}")
        set_(self, "mpp", mpp)

    # -- (de)serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe values: every field, plus the descriptive ``channels``/``input``/``output`` keys."""
        values = dataclasses.asdict(self)
        values.update(mean=list(self.mean), std=list(self.std), class_names=list(self.class_names))
        values.update({
            "channels": "RGB",
            "input": ("(image / 255 - mean) / std" if self.input_scaling == "standardize" else "image / 255")
                     + ", float (B, 3, H, W)",
            "output": f"logit of class 1 ({self.class_names[1]}); probability = sigmoid(logit)",
        })
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "contract") -> InputContract:
        """Read a stored contract; keys it lacks take this class's defaults.

        Reads every contract pcamlab has written (``pcamlab-checkpoint-1`` since its first version:
        ``patch_size, channels, input, mean, std, class_names, output, threshold`` and optionally
        ``stain_normalization``).

        Raises:
            CheckpointError: ``values`` is not a mapping, has an unknown key, lacks ``mean``/``std`` (with
                ``input_scaling`` standardize), or a field is invalid; the message starts with ``where``.
        """
        if isinstance(values, InputContract):
            return values
        if not isinstance(values, Mapping):
            raise CheckpointError(f"{where} must be a mapping of contract fields; got {type(values).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in names and key not in DESCRIPTIVE_KEYS]
        if unknown:
            raise CheckpointError(
                f"{where} has unknown field {unknown[0]!r}{did_you_mean(unknown[0], names)}; fields are {names} "
                "(was it written by a newer pcamlab?)"
            )
        if values.get("input_scaling", "standardize") == "standardize":
            absent = [key for key in ("mean", "std") if key not in values]
            if absent:  # statistics of the training data: no default can stand in for them
                raise CheckpointError(
                    f"{where} has no {' and '.join(absent)}; a standardising contract must carry the per-channel "
                    "mean and std of its training patches (use the contract stored in the checkpoint)"
                )
        try:
            return cls(**{key: value for key, value in values.items() if key in names})
        except CheckpointError as error:
            raise CheckpointError(f"{where}: {error}") from None

    @classmethod
    def coerce(cls, value: InputContract | Mapping[str, Any], where: str = "contract") -> InputContract:
        """``value`` itself when it is an InputContract, else :meth:`from_dict` of it."""
        return value if isinstance(value, InputContract) else cls.from_dict(value, where)

    def replace(self, **changes: Any) -> InputContract:
        """A copy with some fields changed (validated like a new contract)."""
        return dataclasses.replace(self, **changes)

    # -- the transform to model input --------------------------------------------------------------

    def check_batch(self, images: Any, what: str = "images") -> np.ndarray:
        """Check a batch of patches and return it as a numpy array.

        Args:
            images: uint8 array-like (N, patch_size, patch_size, 3), RGB.
            what: how the message names the batch.

        Returns:
            The same pixels as a numpy uint8 array (N, H, W, 3) (no copy when already one).

        Raises:
            DataError: not 4-D, not 3 channels, not uint8, or not ``patch_size`` square.
        """
        size = self.patch_size
        array = np.asarray(images)
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise DataError(
                f"{what} must be uint8 RGB patches of shape (N, {size}, {size}, 3); got {array.dtype} "
                f"{tuple(array.shape)}: stack decoded images with np.stack and convert with astype('uint8')"
            )
        if array.shape[1:3] != (size, size):
            raise DataError(
                f"this model takes {size}x{size} patches; got {array.shape[1]}x{array.shape[2]}: "
                "crop or resize the patches first"
            )
        return array

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """uint8 patches (N, H, W, 3) through the stain normaliser fitted at training; identity without one."""
        if not self.stain_normalization:
            return images
        from pcamlab.data.normalize import normalizer_from_dict

        return normalizer_from_dict(self.stain_normalization).transform(images)

    @staticmethod
    def to_unit(images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1]; the permuted NHWC strides are channels_last."""
        return images.permute(0, 3, 1, 2).float().div_(255.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (B, 3, H, W) -> model input (``(x - mean) / std``, or ``x`` for ``unit``)."""
        if self.input_scaling == "unit":
            return x
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 tensor (B, H, W, 3) -> float32 model input (B, 3, H, W), channels_last memory layout."""
        return self.normalize(self.to_unit(images))
