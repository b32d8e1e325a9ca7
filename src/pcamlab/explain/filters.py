"""Pictures of learned convolution filters.

The first layer sees RGB pixels, so each of its filters can be drawn as a small colour image: it shows
which colour/edge pattern makes that filter respond (e.g. a purple blob = haematoxylin-stained nuclei).
Deeper filters have many input channels and no natural colours; they are drawn as one grey-scale tile
per filter (mean over input channels, or the first input channel).

Example:
    >>> from pcamlab.explain.filters import plot_first_layer_filters
    >>> plot_first_layer_filters(model, "runs/baseline/explain/first_layer_filters.png")
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import nn

from pcamlab.errors import ConfigError, did_you_mean
from pcamlab.explain._common import conv_layers, resolve_layer, save_figure

__all__ = ["conv_layers", "first_layer_tiles", "plot_first_layer_filters", "plot_layer_filters", "REDUCTIONS"]

REDUCTIONS = ("mean", "first")  # how a deep filter's input channels become one tile


def _grid(count: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid holding ``count`` tiles."""
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    return rows, columns


def _draw_mosaic(tiles: np.ndarray, title: str, path: str | Path, **imshow_options) -> Path:
    """Draw tiles (F, k, k) or (F, k, k, 3) as one image with gaps, each tile numbered in its corner.

    One axes for the whole grid (instead of one per tile) keeps a 64-filter picture fast to draw.
    """
    from matplotlib.figure import Figure

    count, size = tiles.shape[0], tiles.shape[1]
    rows, columns = _grid(count)
    gap = max(2, size // 2)  # room above each tile for its number
    step = size + gap
    shape = (rows * step, columns * step - gap // 2) + tiles.shape[3:]
    mosaic = np.full(shape, np.nan, dtype=np.float32)  # NaN = background between tiles
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * step + gap, column * step
        mosaic[top : top + size, left : left + size] = tiles[index]
    if mosaic.ndim == 3:  # RGB: NaN is not drawable, so the background becomes white
        mosaic = np.nan_to_num(mosaic, nan=1.0)
    inches_per_pixel = 0.8 / step if size <= 7 else 1.0 / step
    figure = Figure(figsize=(max(shape[1] * inches_per_pixel, 4.0), shape[0] * inches_per_pixel + 0.4))
    axis = figure.subplots()
    axis.set_axis_off()
    image = axis.imshow(mosaic, interpolation="nearest", **imshow_options)
    if mosaic.ndim == 2:
        image.set_cmap(image.get_cmap().with_extremes(bad="white"))
    for index in range(count):
        row, column = divmod(index, columns)
        axis.text(column * step + size / 2 - 0.5, row * step + gap - 0.6, str(index), fontsize=6, va="bottom", ha="center")
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def _first_rgb_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    convs = conv_layers(model)
    if not convs:
        raise ConfigError(
            f"model {type(model).__name__} has no nn.Conv2d layer, so there are no filters to draw; "
            f"pass a convolutional model"
        )
    name, conv = convs[0]
    if conv.in_channels != 3 or conv.groups != 1:
        raise ConfigError(
            f"the first conv layer {name!r} must take 3 RGB input channels to be drawn in colour; got "
            f"in_channels={conv.in_channels}, groups={conv.groups} (use plot_layer_filters instead)"
        )
    return name, conv


def first_layer_tiles(model: nn.Module) -> np.ndarray:
    """The first conv layer's filters as RGB images, each min-max scaled on its own to [0, 1].

    Returns:
        float32 array (out_channels, k, k, 3); a constant filter becomes all zeros.

    Raises:
        ConfigError: the model has no conv layer or its first one does not take RGB input.
    """
    _, conv = _first_rgb_conv(model)
    weights = conv.weight.detach().float().cpu()  # (out_channels, 3, k, k)
    count = weights.shape[0]
    flat = weights.reshape(count, -1)
    low = flat.min(dim=1).values.view(count, 1, 1, 1)
    high = flat.max(dim=1).values.view(count, 1, 1, 1)
    scaled = (weights - low) / (high - low).clamp_min(1e-12)  # (out_channels, 3, k, k) in [0, 1]
    return scaled.permute(0, 2, 3, 1).numpy()  # (out_channels, k, k, 3)


def plot_first_layer_filters(model: nn.Module, path: str | Path) -> Path:
    """Draw the first conv layer's filters as RGB tiles in a grid.

    Each filter (3, k, k) is min-max scaled on its own to [0, 1] (so the tile shows the filter's
    pattern, not its strength) and shown as a k x k colour image, titled with its index.

    Args:
        model: a model whose first ``nn.Conv2d`` takes 3 input channels.
        path: PNG file to write.

    Returns:
        ``path`` as a Path.

    Raises:
        ConfigError: the model has no conv layer or its first one does not take RGB input.

    Example:
        >>> plot_first_layer_filters(build_model(ModelConfig("baseline")), "filters.png")
    """
    name, conv = _first_rgb_conv(model)
    tiles = first_layer_tiles(model)  # (out_channels, k, k, 3)
    count = tiles.shape[0]

    kernel = "x".join(str(size) for size in conv.kernel_size)
    title = f"First convolution layer '{name}': {count} filters of {kernel} pixels (each scaled to its own range)"
    return _draw_mosaic(tiles, title, path)


def plot_layer_filters(
    model: nn.Module,
    path: str | Path,
    layer: str | int | None = None,
    max_filters: int = 64,
    reduce: str = "mean",
) -> Path:
    """Draw the filters of any conv layer as grey-scale tiles.

    A deep filter has shape (in_channels, k, k). It becomes one (k, k) tile by ``reduce``:
    ``"mean"`` averages over the input channels (the filter's overall spatial pattern), ``"first"``
    takes input channel 0 (one slice, unaveraged). Tiles use a diverging colormap centred on zero,
    each scaled to its own largest absolute value (red = positive weight, blue = negative).

    Args:
        model: any model with conv layers.
        path: PNG file to write.
        layer: qualified name of a conv layer (see :func:`conv_layers`), an index among the conv layers,
            or None for the last conv layer.
        max_filters: at most this many filters (the first ones) are drawn.
        reduce: ``"mean"`` or ``"first"`` (see above).

    Returns:
        ``path`` as a Path.

    Raises:
        ConfigError: no such conv layer, the layer is not a conv layer, max_filters < 1, unknown reduce.
    """
    if reduce not in REDUCTIONS:
        raise ConfigError(f"reduce must be one of {list(REDUCTIONS)}; got {reduce!r}{did_you_mean(reduce, REDUCTIONS)}")
    if isinstance(max_filters, bool) or not isinstance(max_filters, int) or max_filters < 1:
        raise ConfigError(f"max_filters must be a positive integer; got {max_filters!r}")
    convs = conv_layers(model)
    if not convs:
        raise ConfigError(f"model {type(model).__name__} has no nn.Conv2d layer; pass a convolutional model")
    name, conv = convs[-1] if layer is None else resolve_layer(model, layer)
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(
            f"layer {name!r} is a {type(conv).__name__}, not a conv layer; pick one of {[n for n, _ in convs]}"
        )
    weights = conv.weight.detach().float().cpu()[:max_filters]  # (F, in_channels / groups, k, k)
    tiles = weights.mean(dim=1) if reduce == "mean" else weights[:, 0]  # (F, k, k)
    limits = tiles.reshape(tiles.shape[0], -1).abs().max(dim=1).values.clamp_min(1e-12)  # (F,)
    tiles = (tiles / limits.view(-1, 1, 1)).numpy()  # (F, k, k) in [-1, 1]
    count = tiles.shape[0]

    how = "mean over input channels" if reduce == "mean" else "input channel 0"
    shown = f"first {count} of {conv.out_channels}" if count < conv.out_channels else f"all {count}"
    kernel = "x".join(str(size) for size in conv.kernel_size)
    title = f"Conv layer '{name}': {shown} filters of {kernel}, {how} (red +, blue -)"
    return _draw_mosaic(tiles, title, path, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
