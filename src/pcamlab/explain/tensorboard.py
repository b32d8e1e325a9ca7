"""Pictures a training run shows in TensorBoard each epoch: first-layer filters and Grad-CAM.

The training loop only calls :func:`write_epoch_pictures`; what is drawn lives here, beside the other
explanations, so the loop carries training alone.

Example:
    >>> samples = picture_samples(valid_images, valid_labels)  # 4 tumour + 4 normal patches, fixed
    >>> write_epoch_pictures(writer, model, epoch, samples, contract)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from pcamlab.errors import ConfigError
from pcamlab.runtime.contract import InputContract
from pcamlab.runtime.predictor import tensor_from_array

__all__ = ["picture_samples", "pictures_unavailable", "write_epoch_pictures"]


def picture_samples(images: np.ndarray, labels: np.ndarray, per_class: int = 4) -> np.ndarray:
    """The first ``per_class`` tumour then the first ``per_class`` normal patches: uint8 (<= 2 * per_class, H, W, 3)."""
    picks = [*np.flatnonzero(labels == 1)[:per_class], *np.flatnonzero(labels == 0)[:per_class]]
    return images[picks]


def pictures_unavailable(model: nn.Module, samples: np.ndarray, contract: InputContract) -> str | None:
    """Why :func:`write_epoch_pictures` cannot draw this model, or None when it can (asked before training).

    A model without a convolution reading the RGB input has no filters to draw; one without a convolution
    whose output is still spatial at this patch size has no Grad-CAM layer. Drawing them once on one
    sample finds out in a second, instead of after the first epoch.
    """
    from pcamlab.explain.filters import first_layer_tiles
    from pcamlab.explain.gradcam import GradCAM

    try:
        first_layer_tiles(model)
        device = next(model.parameters()).device
        GradCAM(model)(contract.to_model_input(tensor_from_array(samples[:1]).to(device)))
    except ConfigError as error:
        return str(error)
    return None


def write_epoch_pictures(writer: Any, model: nn.Module, epoch: int, samples: np.ndarray, contract: InputContract) -> None:
    """Add the first-layer filters (one grid) and Grad-CAM overlays of ``samples`` to a SummaryWriter.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter``.
        model: the network being trained (its mode is restored afterwards by GradCAM).
        epoch: the global step of the pictures.
        samples: uint8 patches (B, H, W, 3), the same every epoch.
        contract: the run's input contract (the transform the model is trained on).
    """
    from pcamlab.explain.filters import first_layer_tiles
    from pcamlab.explain.gradcam import GradCAM, overlay

    tiles = torch.from_numpy(first_layer_tiles(model))  # (F, k, k, 3)
    count, size = tiles.shape[0], tiles.shape[1]
    columns = int(math.ceil(math.sqrt(count)))
    rows = -(-count // columns)
    grid = torch.zeros(rows * (size + 1), columns * (size + 1), 3)
    for index in range(count):
        row, column = divmod(index, columns)
        grid[row * (size + 1) : row * (size + 1) + size, column * (size + 1) : column * (size + 1) + size] = tiles[index]
    writer.add_image("filters/first_layer", grid.repeat_interleave(8, 0).repeat_interleave(8, 1), epoch, dataformats="HWC")
    device = next(model.parameters()).device
    cams = GradCAM(model)(contract.to_model_input(tensor_from_array(samples).to(device)))  # (B, H, W)
    overlays = np.stack([overlay(image, cam.numpy()) for image, cam in zip(samples, cams)])  # (B, H, W, 3)
    writer.add_images("gradcam/validation_patches", torch.from_numpy(overlays), epoch, dataformats="NHWC")
