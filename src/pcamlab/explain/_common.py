"""Small helpers shared by the explanation modules: figures, input transform, layer lookup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pcamlab.errors import CheckpointError, ConfigError, DataError, did_you_mean
from pcamlab.fileio import save_png
from pcamlab.runtime.contract import InputContract
from pcamlab.runtime.predictor import tensor_from_array

__all__ = [
    "conv_layers",
    "resolve_layer",
    "model_device",
    "images_to_input",
    "new_figure",
    "save_figure",
    "check_contract",
    "class_name",
]

def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` of ``model`` with its qualified name, in registration order.

    Args:
        model: any module.

    Returns:
        ``[(name, conv), ...]``; empty when the model has no 2-D convolution.

    Example:
        >>> conv_layers(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))[0][0]
        '0'
    """
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def resolve_layer(model: nn.Module, layer: str | int | nn.Module, field: str = "layer") -> tuple[str, nn.Module]:
    """Find a layer of ``model`` by qualified name, by index among its conv layers, or by identity.

    Raises:
        ConfigError: the layer is not part of the model (with the closest conv layer name).
    """
    convs = conv_layers(model)
    names = [name for name, _ in convs]
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise ConfigError(f"{field} must be a module of the model; got a {type(layer).__name__} that is not in it")
    if isinstance(layer, int) and not isinstance(layer, bool):
        if not -len(convs) <= layer < len(convs):
            raise ConfigError(
                f"{field} index must be in [-{len(convs)}, {len(convs) - 1}] (the model has "
                f"{len(convs)} conv layers); got {layer}"
            )
        return convs[layer]
    modules = dict(model.named_modules())
    if isinstance(layer, str) and layer in modules:
        return layer, modules[layer]
    raise ConfigError(
        f"{field} must name a layer of the model, e.g. one of its conv layers {names}; got {layer!r}"
        f"{did_you_mean(str(layer), names)}"
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def check_contract(contract: InputContract | Mapping[str, Any], where: str = "contract") -> InputContract:
    """The contract as an :class:`InputContract` (a stored dict is read with ``InputContract.from_dict``).

    Raises:
        ConfigError: a field is missing or invalid (e.g. mean or std not three numbers, a zero std).
    """
    try:
        return InputContract.coerce(contract, where)
    except CheckpointError as error:  # a contract passed in by the caller is an argument, not a file
        raise ConfigError(str(error)) from None


def images_to_input(
    images: np.ndarray | torch.Tensor, contract: InputContract | Mapping[str, Any], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Turn uint8 RGB patches into model input with the contract's transform (stain normaliser included).

    Args:
        images: uint8 array (N, H, W, 3) or a single image (H, W, 3).
        contract: the model's input contract (a stored dict is accepted).
        device: where the returned tensor lives.

    Returns:
        float32 tensor (N, 3, H, W): exactly what the model predicts on
        (:meth:`InputContract.to_model_input` after :meth:`InputContract.prepare`).

    Raises:
        DataError: the images are not uint8 RGB.
    """
    contract = check_contract(contract)
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]  # (1, H, W, 3)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise DataError(
            f"images must be uint8 RGB of shape (N, H, W, 3) or (H, W, 3); got dtype {array.dtype} "
            f"shape {tuple(array.shape)} (pass the patches as read from the dataset)"
        )
    array = contract.prepare(array)  # the same input the model predicts on
    return contract.to_model_input(tensor_from_array(array).to(device))  # (N, 3, H, W)


def new_figure(rows: int, columns: int, tile_inches: float = 1.2, title_inches: float = 0.5):
    """A matplotlib Figure (no pyplot state) with a grid of axes, all ticks hidden.

    Returns:
        ``(figure, axes)`` with ``axes`` a 2-D numpy array of shape (rows, columns).
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(columns * tile_inches, 3.0), rows * tile_inches + title_inches))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
    return figure, axes


def save_figure(figure: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a Figure as PNG atomically (creating the parent folder) and return the path."""
    return save_png(figure, path, dpi=dpi, bbox_inches="tight")


def class_name(label: int, names: Sequence[str] | None = None) -> str:
    """The display name of a label (``names`` from the contract, else the contract's default names)."""
    names = list(names) if names else list(InputContract().class_names)
    return names[int(label)] if 0 <= int(label) < len(names) else str(label)
