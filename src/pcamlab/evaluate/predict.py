"""Moved to :mod:`pcamlab.runtime`: prediction is :class:`pcamlab.runtime.TorchPredictor` (any model file:
:func:`pcamlab.runtime.load_predictor`), the input transform is :class:`pcamlab.runtime.InputContract`.

These functions only keep code written before the move working; new code uses the runtime directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from pcamlab.runtime.contract import InputContract
from pcamlab.runtime.predictor import TorchPredictor

__all__ = ["to_model_input", "predict_proba"]


def to_model_input(images: torch.Tensor, contract: InputContract | dict[str, Any]) -> torch.Tensor:
    """``InputContract.coerce(contract).to_model_input(images)``."""
    return InputContract.coerce(contract).to_model_input(images)


def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    contract: InputContract | dict[str, Any],
    *,
    batch_size: int = 256,
    tta: bool = False,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> np.ndarray:
    """``TorchPredictor(model, contract, device=..., precision=...).predict_proba(images, ...)``."""
    predictor = TorchPredictor(model, contract, device=device, precision=precision)
    return predictor.predict_proba(images, batch_size=batch_size, tta=tta, progress=progress)
