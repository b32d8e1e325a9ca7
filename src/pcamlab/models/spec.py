"""``spec``: an architecture written entirely in YAML, layer by layer.

Example (``configs/models/baseline-spec.yaml`` is the classic course CNN)::

    model:
      name: spec
      options:
        init: xavier
        layers:
          - {conv: {filters: 32, kernel: 3, padding: same, activation: relu}}
          - {pool: {type: max, size: 4}}
          - {conv: {filters: 64, kernel: 3, padding: same, activation: relu}}
          - {pool: {type: max, size: 4}}
          - flatten
          - {dense: {units: 64, activation: relu}}
          - {dense: {units: 1}}

Layer types and their keys (defaults in brackets):

- ``conv``: filters, kernel [3], stride [1], padding [same] (same | valid | integer), dilation [1],
  activation [none], batch_norm [false] (conv > batch-norm > activation; no conv bias with batch-norm).
- ``conv_transpose``: filters, kernel [2], stride [2], padding [0], output_padding [0],
  activation [none], batch_norm [false].
- ``pool``: type [max] (max | average | sum), size [2], stride [size]. Sum = average x window area.
- ``global_pool``: average | max (to a flat vector).
- ``flatten``; ``dense``: units, activation [none]; ``dropout``: rate; ``spatial_dropout``: rate
  (whole channels); ``batch_norm``: {} or {momentum, eps}; ``activation``: name.

Activations: relu, leaky_relu, prelu, elu, gelu, tanh, sigmoid (and silu); ``none``/``linear`` = no
activation, like Keras' default. A final ``dense`` with 1 unit and no activation (the logit) is
appended unless the spec already ends in one. Every mistake, including a spec whose feature map
shrinks to nothing for ``input_size``, is a one-line ConfigError naming ``model.options.layers[i]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pcamlab.errors import ConfigError, did_you_mean
from pcamlab.models.factory import register_model
from pcamlab.models.layers import ACTIVATIONS, conv2d, initialise, make_activation

__all__ = ["DEFAULT_LAYERS", "SumPool2d", "build_spec"]

# The default spec is the classic course CNN (the ``baseline`` preset).
DEFAULT_LAYERS: list[Any] = [
    {"conv": {"filters": 32, "kernel": 3, "padding": "same", "activation": "relu"}},
    {"pool": {"type": "max", "size": 4}},
    {"conv": {"filters": 64, "kernel": 3, "padding": "same", "activation": "relu"}},
    {"pool": {"type": "max", "size": 4}},
    "flatten",
    {"dense": {"units": 64, "activation": "relu"}},
    {"dense": {"units": 1}},
]

LAYER_KEYS: dict[str, dict[str, Any]] = {  # layer type -> {key: default}; "required" marks no default
    "conv": {"filters": "required", "kernel": 3, "stride": 1, "padding": "same", "dilation": 1,
             "activation": None, "batch_norm": False},
    "conv_transpose": {"filters": "required", "kernel": 2, "stride": 2, "padding": 0,
                       "output_padding": 0, "activation": None, "batch_norm": False},
    "pool": {"type": "max", "size": 2, "stride": None},
    "dense": {"units": "required", "activation": None},
    "batch_norm": {"momentum": 0.1, "eps": 1e-5},
}
SCALAR_LAYERS = ("global_pool", "dropout", "spatial_dropout", "activation")
BARE_LAYERS = ("flatten",)
LAYER_TYPES = list(LAYER_KEYS) + list(SCALAR_LAYERS) + list(BARE_LAYERS)
POOL_TYPES = ("max", "average", "sum")
GLOBAL_POOL_TYPES = ("average", "max")
NO_ACTIVATION = (None, "none", "linear")


class SumPool2d(nn.AvgPool2d):
    """Sum over each window: average pooling times the window area (padding 0, so exact)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel_size if isinstance(self.kernel_size, tuple) else (self.kernel_size,) * 2
        return super().forward(features) * (kernel[0] * kernel[1])


class _Builder:
    """Walks the spec, tracking the feature shape, and builds the layers (one ConfigError per mistake)."""

    def __init__(self, input_size: int):
        self.channels, self.size, self.flat = 3, input_size, False
        self.modules: list[nn.Module] = []

    # -- validation helpers -------------------------------------------------------------------
    @staticmethod
    def fail(where: str, message: str) -> None:
        raise ConfigError(f"{where}{message}")

    def integer(self, where: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(where, f" must be an integer >= {minimum}; got {value!r}")
        return value

    def rate(self, where: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            self.fail(where, f" must be a number in [0, 1); got {value!r}")
        return float(value)

    def choice(self, where: str, value: Any, allowed: tuple) -> Any:
        if value not in allowed:
            shown = [item for item in allowed if item is not None]
            self.fail(where, f" must be one of {shown}; got {value!r}{did_you_mean(value, shown)}")
        return value

    def activation(self, where: str, value: Any) -> nn.Module | None:
        self.choice(where, value, (*NO_ACTIVATION, *ACTIVATIONS))
        return None if value in NO_ACTIVATION else make_activation(value, where)

    def spatial(self, where: str, kind: str) -> None:
        if self.flat:
            self.fail(where, f": {kind} needs a (C, H, W) feature map but the features are already flat "
                             f"(after flatten/global_pool/dense); move it before them")

    def shrink(self, where: str, size: int) -> int:
        if size < 1:
            self.fail(where, f": the feature map shrinks from {self.size}x{self.size} to nothing; use a "
                             f"smaller kernel/stride/pool, fewer downsampling layers or a larger input_size")
        return size

    # -- layers ------------------------------------------------------------------------------
    def add(self, index: int, entry: Any) -> None:
        where = f"model.options.layers[{index}]"
        if isinstance(entry, str):
            kind, value = entry, None
            if kind in LAYER_KEYS and kind == "batch_norm":
                value = {}
            elif kind not in BARE_LAYERS:
                self.fail(where, f" must be one of {LAYER_TYPES} (a mapping like {{conv: {{filters: 32}}}} "
                                 f"or the word 'flatten'); got {entry!r}{did_you_mean(entry, LAYER_TYPES)}")
        elif isinstance(entry, dict) and len(entry) == 1:
            kind, value = next(iter(entry.items()))
        else:
            self.fail(where, f" must be a mapping with exactly one layer type, e.g. {{pool: {{size: 2}}}}; "
                             f"got {entry!r}")
        if kind not in LAYER_TYPES:
            self.fail(where, f" has unknown layer type {kind!r}; types are {LAYER_TYPES}"
                             f"{did_you_mean(kind, LAYER_TYPES)}")
        where = f"{where}.{kind}"
        if kind in LAYER_KEYS:
            value = self.keys(where, kind, value)
        getattr(self, f"add_{kind}")(where, value)

    def keys(self, where: str, kind: str, value: Any) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(where, f" must be a mapping of {list(LAYER_KEYS[kind])}; got {value!r}")
        allowed = LAYER_KEYS[kind]
        for key in value:
            if key not in allowed:
                self.fail(f"{where}.{key}", f" is not a key of {kind}; keys are {list(allowed)}"
                                            f"{did_you_mean(key, allowed)}")
        for key, default in allowed.items():
            if default == "required" and key not in value:
                self.fail(f"{where}.{key}", f" is required; e.g. {{{kind}: {{{key}: 32}}}}")
        return {**allowed, **value}

    def add_conv(self, where: str, options: dict[str, Any]) -> None:
        self.spatial(where, "conv")
        filters = self.integer(f"{where}.filters", options["filters"], 1)
        kernel = self.integer(f"{where}.kernel", options["kernel"], 1)
        stride = self.integer(f"{where}.stride", options["stride"], 1)
        dilation = self.integer(f"{where}.dilation", options["dilation"], 1)
        padding = options["padding"]
        span = dilation * (kernel - 1)
        if padding == "same":
            if stride != 1 and span % 2:
                self.fail(f"{where}.padding", f": 'same' with stride {stride} needs an odd kernel span; "
                                              f"got kernel {kernel}, dilation {dilation}; use padding: valid or an integer")
            pad = span // 2
        elif padding == "valid":
            pad = 0
        elif isinstance(padding, str):
            pad = self.choice(f"{where}.padding", padding, ("same", "valid"))
        else:
            pad = self.integer(f"{where}.padding", padding, 0)
        batch_norm = self.boolean(f"{where}.batch_norm", options["batch_norm"])
        activation = self.activation(f"{where}.activation", options["activation"])
        size = self.shrink(where, (self.size + 2 * pad - span - 1) // stride + 1)
        self.modules.append(conv2d(self.channels, filters, kernel, stride=stride, padding=pad,
                                   dilation=dilation, bias=not batch_norm))
        if batch_norm:
            self.modules.append(nn.BatchNorm2d(filters))
        if activation is not None:
            self.modules.append(activation)
        self.channels, self.size = filters, size

    def add_conv_transpose(self, where: str, options: dict[str, Any]) -> None:
        self.spatial(where, "conv_transpose")
        filters = self.integer(f"{where}.filters", options["filters"], 1)
        kernel = self.integer(f"{where}.kernel", options["kernel"], 1)
        stride = self.integer(f"{where}.stride", options["stride"], 1)
        padding = self.integer(f"{where}.padding", options["padding"], 0)
        output_padding = self.integer(f"{where}.output_padding", options["output_padding"], 0)
        if output_padding >= stride:
            self.fail(f"{where}.output_padding", f" must be smaller than stride {stride}; got {output_padding}")
        batch_norm = self.boolean(f"{where}.batch_norm", options["batch_norm"])
        activation = self.activation(f"{where}.activation", options["activation"])
        size = self.shrink(where, (self.size - 1) * stride - 2 * padding + kernel + output_padding)
        self.modules.append(nn.ConvTranspose2d(self.channels, filters, kernel, stride=stride, padding=padding,
                                               output_padding=output_padding, bias=not batch_norm))
        if batch_norm:
            self.modules.append(nn.BatchNorm2d(filters))
        if activation is not None:
            self.modules.append(activation)
        self.channels, self.size = filters, size

    def add_pool(self, where: str, options: dict[str, Any]) -> None:
        self.spatial(where, "pool")
        kind = self.choice(f"{where}.type", options["type"], POOL_TYPES)
        size = self.integer(f"{where}.size", options["size"], 1)
        stride = size if options["stride"] is None else self.integer(f"{where}.stride", options["stride"], 1)
        new_size = self.shrink(where, (self.size - size) // stride + 1 if self.size >= size else 0)
        layer = {"max": nn.MaxPool2d, "average": nn.AvgPool2d, "sum": SumPool2d}[kind]
        self.modules.append(layer(size, stride=stride))
        self.size = new_size

    def add_global_pool(self, where: str, value: Any) -> None:
        self.spatial(where, "global_pool")
        kind = self.choice(where, value, GLOBAL_POOL_TYPES)
        self.modules += [nn.AdaptiveAvgPool2d(1) if kind == "average" else nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        self.flat = True

    def add_flatten(self, where: str, value: Any) -> None:
        if not self.flat:
            self.modules.append(nn.Flatten())
            self.channels, self.flat = self.channels * self.size * self.size, True

    def add_dense(self, where: str, options: dict[str, Any]) -> None:
        if not self.flat:
            self.fail(where, ": dense needs flat features; put '- flatten' or '- {global_pool: average}' before it")
        units = self.integer(f"{where}.units", options["units"], 1)
        activation = self.activation(f"{where}.activation", options["activation"])
        self.modules.append(nn.Linear(self.channels, units))
        if activation is not None:
            self.modules.append(activation)
        self.channels = units

    def add_dropout(self, where: str, value: Any) -> None:
        self.modules.append(nn.Dropout(self.rate(where, value)))

    def add_spatial_dropout(self, where: str, value: Any) -> None:
        self.spatial(where, "spatial_dropout")
        self.modules.append(nn.Dropout2d(self.rate(where, value)))

    def add_batch_norm(self, where: str, options: dict[str, Any]) -> None:
        momentum = self.rate(f"{where}.momentum", options["momentum"])
        eps = options["eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
            self.fail(f"{where}.eps", f" must be a positive number; got {eps!r}")
        layer = nn.BatchNorm1d if self.flat else nn.BatchNorm2d
        self.modules.append(layer(self.channels, eps=float(eps), momentum=momentum))

    def add_activation(self, where: str, value: Any) -> None:
        activation = self.activation(where, value)
        if activation is not None:
            self.modules.append(activation)

    def boolean(self, where: str, value: Any) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f" must be true or false; got {value!r}")
        return value

    def finish(self) -> nn.Sequential:
        last = self.modules[-1] if self.modules else None
        before_last = self.modules[-2] if len(self.modules) > 1 else None
        if isinstance(before_last, nn.Linear) and before_last.out_features == 1 and not isinstance(last, nn.Linear):
            raise ConfigError(
                "model.options.layers: the final 1-unit dense must have no activation (the model returns "
                "logits; the sigmoid is applied by the loss); remove its activation"
            )
        if not (isinstance(last, nn.Linear) and last.out_features == 1):
            if not self.flat:
                raise ConfigError(
                    "model.options.layers must end in flat features before the logit; add "
                    "'- {global_pool: average}' or '- flatten' as the last layer"
                )
            self.modules.append(nn.Linear(self.channels, 1))
        return nn.Sequential(*self.modules)


@register_model("spec")
def build_spec(layers: list | None = tuple(DEFAULT_LAYERS), init: str = "default", input_size: int = 96) -> nn.Module:
    """Any architecture written in YAML as a list of layers (conv, pool, dense, dropout, ...).

    Args:
        layers: the layer list (see the module docstring); default = the classic course CNN.
        init: weight initialisation (default | kaiming | xavier | orthogonal).
        input_size: patch side used to size dense layers after ``flatten`` and to check that no
            feature map shrinks to nothing. Specs that use ``global_pool`` accept other sizes.
    """
    layers = DEFAULT_LAYERS if layers is None else list(layers)
    if not layers:
        raise ConfigError("model.options.layers is empty; list at least one layer, e.g. - {global_pool: average}")
    builder = _Builder(input_size)
    for index, entry in enumerate(layers):
        builder.add(index, entry)
    return initialise(builder.finish(), init)
