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

The keys of each layer type are declared once, in :data:`LAYERS` (type, range or choices, default, and
the rules between keys of one layer), and checked by the validator of every model option
(:mod:`pcamlab.models.options`); what depends on the layers before (a conv after ``flatten``, a map
that shrinks to nothing) is checked while the spec is walked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import torch
from torch import nn

from pcamlab.config_ranges import Range
from pcamlab.errors import ConfigError, did_you_mean
from pcamlab.models.factory import register_model
from pcamlab.models.layers import ACTIVATIONS, conv2d, initialise, make_activation
from pcamlab.models.options import INIT, INPUT_SIZE, REQUIRED, Option, Options, check_value, describe

__all__ = ["DEFAULT_LAYERS", "LAYERS", "LAYER_TYPES", "SumPool2d", "build_spec", "layer_table"]

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

POOL_TYPES = ("max", "average", "sum")
GLOBAL_POOL_TYPES = ("average", "max")
NO_ACTIVATION = (None, "none", "linear")


def _key(kind: Any, default: Any = REQUIRED, range: Range | None = None, choices: tuple | None = None) -> Option:
    return Option(range=range, choices=choices).with_signature(kind, default)


def _same_padding_fits_stride(values: Mapping[str, Any], where: str) -> str | None:
    """Rule: 'same' padding with a stride needs an odd kernel span (dilation x (kernel - 1)) to pad evenly."""
    span = values["dilation"] * (values["kernel"] - 1)
    if values["padding"] == "same" and values["stride"] != 1 and span % 2:
        return (f"{where}.padding: 'same' with stride {values['stride']} needs an odd kernel span; got kernel "
                f"{values['kernel']}, dilation {values['dilation']}; use padding: valid or an integer")
    return None


def _output_padding_below_stride(values: Mapping[str, Any], where: str) -> str | None:
    """Rule: torch's ConvTranspose2d needs output_padding < stride."""
    if values["output_padding"] >= values["stride"]:
        return (f"{where}.output_padding must be smaller than stride {values['stride']}; "
                f"got {values['output_padding']}")
    return None


ACTIVATION_KEY = _key(str | None, "none", choices=(*NO_ACTIVATION, *ACTIVATIONS))
RATE = _key(float, range=Range(0, 1, high_open=True, example="0.2"))


def _layer(kind: str, keys: dict[str, Option], *rules) -> Options:
    return Options(f"a key of {kind}", "keys", keys, tuple(rules))


# Each layer type: a table of keys (a mapping layer), one value (a scalar layer) or nothing (flatten).
LAYERS: dict[str, Options | Option | None] = {
    "conv": _layer("conv", {
        "filters": _key(int, range=Range(1, example="32")),
        "kernel": _key(int, 3, Range(1)),
        "stride": _key(int, 1, Range(1)),
        "padding": _key(str | int, "same", Range(0), choices=("same", "valid")),
        "dilation": _key(int, 1, Range(1)),
        "activation": ACTIVATION_KEY,
        "batch_norm": _key(bool, False),
    }, _same_padding_fits_stride),
    "conv_transpose": _layer("conv_transpose", {
        "filters": _key(int, range=Range(1, example="32")),
        "kernel": _key(int, 2, Range(1)),
        "stride": _key(int, 2, Range(1)),
        "padding": _key(int, 0, Range(0)),
        "output_padding": _key(int, 0, Range(0)),
        "activation": ACTIVATION_KEY,
        "batch_norm": _key(bool, False),
    }, _output_padding_below_stride),
    "pool": _layer("pool", {
        "type": _key(str, "max", choices=POOL_TYPES),
        "size": _key(int, 2, Range(1)),
        "stride": _key(int | None, None, Range(1, example="2", meaning="null: the pool's size")),
    }),
    "dense": _layer("dense", {"units": _key(int, range=Range(1, example="64")), "activation": ACTIVATION_KEY}),
    "batch_norm": _layer("batch_norm", {
        "momentum": _key(float, 0.1, Range(0, 1, high_open=True)),
        "eps": _key(float, 1e-5, Range(0, low_open=True)),
    }),
    "global_pool": _key(str, choices=GLOBAL_POOL_TYPES),
    "dropout": RATE,
    "spatial_dropout": RATE,
    "activation": _key(str | None, choices=(*NO_ACTIVATION, *ACTIVATIONS)),
    "flatten": None,
}
LAYER_TYPES = list(LAYERS)


def layer_table() -> list[dict[str, Any]]:
    """What each layer type of a spec accepts, for ``pcamlab models spec --options``.

    Returns:
        One ``{"name", "allowed", "keys"}`` per layer type: ``keys`` lists a mapping layer's keys as
        ``{"name", "default", "allowed", "description"}`` rows, ``allowed`` says a scalar layer's value
        in words (``flatten`` takes none).
    """
    rows = []
    for name, declared in LAYERS.items():
        keys = [] if not isinstance(declared, Options) else [
            {"name": key, "default": option.default, "allowed": describe(option), "description": ""}
            for key, option in declared.options.items()
        ]
        allowed = describe(declared) if isinstance(declared, Option) else "no value (the bare word)" \
            if declared is None else "a mapping of these keys"
        rows.append({"name": name, "allowed": allowed, "keys": keys})
    return rows


class SumPool2d(nn.AvgPool2d):
    """Sum over each window: average pooling times the window area (padding 0, so exact)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel_size if isinstance(self.kernel_size, tuple) else (self.kernel_size,) * 2
        return super().forward(features) * (kernel[0] * kernel[1])


class _Builder:
    """Walks the spec, tracking the feature shape, and builds the layers (one ConfigError per mistake).

    Each layer's keys are checked against :data:`LAYERS` first; what is left here depends on the layers
    before it (the shape of the features), which no table can say.
    """

    def __init__(self, input_size: int):
        self.channels, self.size, self.flat = 3, input_size, False
        self.modules: list[nn.Module] = []

    # -- rules of the layer sequence ----------------------------------------------------------
    @staticmethod
    def fail(where: str, message: str) -> NoReturn:
        raise ConfigError(f"{where}{message}")

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
        if isinstance(entry, str) and isinstance(LAYERS.get(entry), Option):
            self.fail(where, f": the layer {entry!r} needs a value, {describe(LAYERS[entry])}; "
                             f"write {{{entry}: VALUE}}")
        if isinstance(entry, str) and entry in LAYERS:
            kind, value = entry, None  # a bare word: flatten, or a layer with all its defaults (batch_norm)
        elif isinstance(entry, dict) and len(entry) == 1:
            kind, value = next(iter(entry.items()))
        elif isinstance(entry, str):
            self.fail(where, f" must be one of {LAYER_TYPES} (a mapping like {{conv: {{filters: 32}}}} "
                             f"or the word 'flatten'); got {entry!r}{did_you_mean(entry, LAYER_TYPES)}")
        else:
            self.fail(where, f" must be a mapping with exactly one layer type, e.g. {{pool: {{size: 2}}}}; "
                             f"got {entry!r}")
        if kind not in LAYERS:
            self.fail(where, f" has unknown layer type {kind!r}; types are {LAYER_TYPES}"
                             f"{did_you_mean(kind, LAYER_TYPES)}")
        where = f"{where}.{kind}"
        declared = LAYERS[kind]
        if isinstance(declared, Options):
            value = declared.check(where, value)
        elif isinstance(declared, Option):
            value = check_value(where, value, declared)
        getattr(self, f"add_{kind}")(where, value)

    def add_activation_module(self, name: str | None) -> None:
        if name not in NO_ACTIVATION:
            self.modules.append(make_activation(name))

    def add_convolution(self, convolution: nn.Module, options: dict[str, Any], size: int) -> None:
        """The convolution, its batch-norm and its activation; the features become its output."""
        self.modules.append(convolution)
        if options["batch_norm"]:
            self.modules.append(nn.BatchNorm2d(options["filters"]))
        self.add_activation_module(options["activation"])
        self.channels, self.size = options["filters"], size

    def add_conv(self, where: str, options: dict[str, Any]) -> None:
        self.spatial(where, "conv")
        kernel, stride, dilation, padding = (options[key] for key in ("kernel", "stride", "dilation", "padding"))
        span = dilation * (kernel - 1)
        pad = span // 2 if padding == "same" else 0 if padding == "valid" else padding
        size = self.shrink(where, (self.size + 2 * pad - span - 1) // stride + 1)
        self.add_convolution(conv2d(self.channels, options["filters"], kernel, stride=stride, padding=pad,
                                    dilation=dilation, bias=not options["batch_norm"]), options, size)

    def add_conv_transpose(self, where: str, options: dict[str, Any]) -> None:
        self.spatial(where, "conv_transpose")
        kernel, stride, padding = options["kernel"], options["stride"], options["padding"]
        output_padding = options["output_padding"]
        size = self.shrink(where, (self.size - 1) * stride - 2 * padding + kernel + output_padding)
        self.add_convolution(nn.ConvTranspose2d(self.channels, options["filters"], kernel, stride=stride,
                                                padding=padding, output_padding=output_padding,
                                                bias=not options["batch_norm"]), options, size)

    def add_pool(self, where: str, options: dict[str, Any]) -> None:
        self.spatial(where, "pool")
        size = options["size"]
        stride = size if options["stride"] is None else options["stride"]
        new_size = self.shrink(where, (self.size - size) // stride + 1 if self.size >= size else 0)
        layer = {"max": nn.MaxPool2d, "average": nn.AvgPool2d, "sum": SumPool2d}[options["type"]]
        self.modules.append(layer(size, stride=stride))
        self.size = new_size

    def add_global_pool(self, where: str, kind: str) -> None:
        self.spatial(where, "global_pool")
        self.modules += [nn.AdaptiveAvgPool2d(1) if kind == "average" else nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        self.flat = True

    def add_flatten(self, where: str, value: None) -> None:
        if not self.flat:
            self.modules.append(nn.Flatten())
            self.channels, self.flat = self.channels * self.size * self.size, True

    def add_dense(self, where: str, options: dict[str, Any]) -> None:
        if not self.flat:
            self.fail(where, ": dense needs flat features; put '- flatten' or '- {global_pool: average}' before it")
        self.modules.append(nn.Linear(self.channels, options["units"]))
        self.add_activation_module(options["activation"])
        self.channels = options["units"]

    def add_dropout(self, where: str, rate: float) -> None:
        self.modules.append(nn.Dropout(rate))

    def add_spatial_dropout(self, where: str, rate: float) -> None:
        self.spatial(where, "spatial_dropout")
        self.modules.append(nn.Dropout2d(rate))

    def add_batch_norm(self, where: str, options: dict[str, Any]) -> None:
        layer = nn.BatchNorm1d if self.flat else nn.BatchNorm2d
        self.modules.append(layer(self.channels, eps=options["eps"], momentum=options["momentum"]))

    def add_activation(self, where: str, name: str | None) -> None:
        self.add_activation_module(name)

    def finish(self) -> nn.Sequential:
        last = self.modules[-1] if self.modules else None
        before_last = self.modules[-2] if len(self.modules) > 1 else None
        if isinstance(before_last, nn.Linear) and before_last.out_features == 1 and not isinstance(last, nn.Linear):
            self.fail("model.options.layers", ": the final 1-unit dense must have no activation (the model "
                                              "returns logits; the sigmoid is applied by the loss); remove its activation")
        if not (isinstance(last, nn.Linear) and last.out_features == 1):
            if not self.flat:
                self.fail("model.options.layers", " must end in flat features before the logit; add "
                                                  "'- {global_pool: average}' or '- flatten' as the last layer")
            self.modules.append(nn.Linear(self.channels, 1))
        return nn.Sequential(*self.modules)


def _has_layers(values: Mapping[str, Any], where: str) -> str | None:
    """Rule: a spec lists at least one layer."""
    if values["layers"] is not None and len(values["layers"]) == 0:
        return f"{where}.layers is empty; list at least one layer, e.g. - {{global_pool: average}}"
    return None


@register_model("spec", rules=[_has_layers], options={"layers": Option(), "init": INIT, "input_size": INPUT_SIZE})
def build_spec(layers: list | None = tuple(DEFAULT_LAYERS), init: str = "default", input_size: int = 96) -> nn.Module:
    """Any architecture written in YAML as a list of layers (conv, pool, dense, dropout, ...).

    Args:
        layers: the layer list, each entry one layer type (the types and their keys are listed under
            the table); default = the classic course CNN.
        init: weight initialisation (default | kaiming | xavier | orthogonal).
        input_size: patch side used to size dense layers after ``flatten`` and to check that no
            feature map shrinks to nothing. Specs that use ``global_pool`` accept other sizes.
    """
    builder = _Builder(input_size)
    for index, entry in enumerate(DEFAULT_LAYERS if layers is None else layers):
        builder.add(index, entry)
    return initialise(builder.finish(), init)
