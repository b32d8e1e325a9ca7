"""What each conv layer "sees": the activations (feature maps) of one patch.

Early layers respond to colour and edges (stain, nuclear borders); later, coarser layers respond to
larger structures. Drawing them for a tumour patch shows where the network's attention builds up.

Example:
    >>> from pcamlab.explain.feature_maps import plot_feature_maps
    >>> plot_feature_maps(model, image_uint8, "feature_maps.png", contract=checkpoint.contract)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pcamlab.errors import ConfigError, DataError
from pcamlab.explain._common import conv_layers, images_to_input, model_device, new_figure, save_figure
from pcamlab.runtime.contract import InputContract

__all__ = ["feature_maps", "plot_feature_maps", "eval_mode"]


@contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode for the block and restore each submodule's previous mode after."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def feature_maps(model: nn.Module, image_tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the model once and return every conv layer's output, keyed by qualified layer name.

    Forward hooks are registered on each ``nn.Conv2d`` for this call only and always removed; the
    model runs in eval mode without gradients, and its train/eval mode is restored afterwards. A conv
    module called several times in one forward pass keeps its last output.

    Args:
        model: any module containing conv layers.
        image_tensor: float model input (B, 3, H, W) or one image (3, H, W), already normalised.

    Returns:
        ``{name: tensor (B, C, h, w)}`` on the CPU, in the order the layers ran.

    Raises:
        ConfigError: the model has no conv layer.
        DataError: the input is not a float tensor of 3 or 4 dimensions.

    Example:
        >>> maps = feature_maps(model, contract.to_model_input(images))
        >>> {name: tuple(t.shape) for name, t in maps.items()}
    """
    if not isinstance(image_tensor, torch.Tensor) or not image_tensor.is_floating_point():
        raise DataError(
            f"image_tensor must be a float torch.Tensor (B, 3, H, W) of normalised input; got "
            f"{type(image_tensor).__name__} {getattr(image_tensor, 'dtype', '')} (convert uint8 patches "
            f"with the checkpoint's contract.to_model_input first)"
        )
    if image_tensor.dim() == 3:
        image_tensor = image_tensor.unsqueeze(0)  # (1, 3, H, W)
    if image_tensor.dim() != 4:
        raise DataError(f"image_tensor must have shape (B, 3, H, W) or (3, H, W); got {tuple(image_tensor.shape)}")
    convs = conv_layers(model)
    if not convs:
        raise ConfigError(f"model {type(model).__name__} has no nn.Conv2d layer; pass a convolutional model")

    outputs: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            outputs.pop(name, None)  # re-insert so the dict follows the order the layers ran
            outputs[name] = output.detach().float().cpu()

        return hook

    handles = [conv.register_forward_hook(make_hook(name)) for name, conv in convs]
    try:
        with eval_mode(model), torch.no_grad():
            model(image_tensor.to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _as_input(image: np.ndarray | torch.Tensor, contract: InputContract | dict[str, Any] | None) -> tuple[torch.Tensor, np.ndarray]:
    """The model input (1, 3, H, W) and a displayable RGB picture (H, W, 3) in [0, 1]."""
    if isinstance(image, torch.Tensor):
        tensor = image.detach().float()
        if tensor.dim() == 4:
            tensor = tensor[:1]
        if tensor.dim() == 3:
            tensor = tensor.unsqueeze(0)  # (1, 3, H, W)
        picture = tensor[0].permute(1, 2, 0).cpu().numpy()  # (H, W, 3), normalised units
        picture = (picture - picture.min()) / max(float(picture.max() - picture.min()), 1e-12)
        return tensor, picture
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise DataError(
            f"image must be a uint8 RGB patch (H, W, 3) or a float tensor (3, H, W); got dtype "
            f"{array.dtype} shape {tuple(array.shape)}"
        )
    if contract is None:
        contract = InputContract(input_scaling="unit")  # no contract: pixels scaled to [0, 1] only
    return images_to_input(array, contract), array.astype(np.float32) / 255.0


def plot_feature_maps(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    path: str | Path,
    max_channels: int = 16,
    *,
    contract: InputContract | dict[str, Any] | None = None,
) -> Path:
    """Draw the feature maps of one patch: one row per conv layer, input picture on the left.

    Each row shows the ``max_channels`` channels with the highest mean activation in that layer
    (labelled with their channel index), each scaled to its own range (bright = strong response).

    Args:
        model: any module containing conv layers.
        image: a uint8 RGB patch (H, W, 3), transformed with ``contract`` mean/std; or a float tensor
            (3, H, W) / (1, 3, H, W) that is already model input.
        path: PNG file to write.
        max_channels: channels drawn per layer.
        contract: the checkpoint's input contract; None = scale to [0, 1] only.

    Returns:
        ``path`` as a Path.

    Raises:
        ConfigError: max_channels < 1 or the model has no conv layer.
        DataError: the image is neither a uint8 RGB patch nor a float tensor.
    """
    if isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 1:
        raise ConfigError(f"max_channels must be a positive integer; got {max_channels!r}")
    tensor, picture = _as_input(image, contract)
    maps = feature_maps(model, tensor)
    rows = len(maps)
    figure, axes = new_figure(rows, max_channels + 1, tile_inches=0.85, title_inches=0.6)
    for row, (name, activation) in enumerate(maps.items()):
        activation = activation[0]  # (C, h, w)
        if activation.dim() != 3:
            continue
        strength = activation.mean(dim=(1, 2))  # (C,)
        order = torch.argsort(strength, descending=True)[:max_channels]
        axes[row, 0].imshow(picture, interpolation="nearest")
        axes[row, 0].set_ylabel(f"{name}\n{activation.shape[0]}x{activation.shape[1]}x{activation.shape[2]}", fontsize=7)
        for column in range(1, max_channels + 1):
            axis = axes[row, column]
            if column - 1 >= len(order):
                axis.set_visible(False)
                continue
            channel = int(order[column - 1])
            axis.imshow(activation[channel].numpy(), cmap="viridis", interpolation="nearest")
            axis.set_title(f"ch {channel}", fontsize=6, pad=1)
    figure.suptitle(
        "Feature maps per conv layer (rows); the most active channels, bright = strong response",
        fontsize=9,
    )
    return save_figure(figure, path, dpi=90)
