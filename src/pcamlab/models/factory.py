"""The model registry and the functions everyone else uses: build, list, summarise.

A model file registers one builder with ``@register_model("name")``. A builder is a plain function
whose keyword arguments (all with defaults and type annotations) are the model's options, i.e. what a
user may put under ``model.options`` in YAML. ``build_model`` checks those options against the
builder's signature before calling it, so a typo or a wrong type fails at load time with one line.

Every model takes float (B, 3, H, W) normalised input and returns LOGITS of shape (B, 1). The
sigmoid is applied by the loss (``BCEWithLogitsLoss``) and at prediction time; logit + sigmoid is
exactly Keras' ``Dense(1, activation="sigmoid")``, split so the loss stays numerically stable.
"""

from __future__ import annotations

import copy
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pcamlab.config import ModelConfig
from pcamlab.errors import ConfigError, did_you_mean
from pcamlab.registry import Registry

__all__ = [
    "MODELS",
    "build_model",
    "count_flops",
    "default_model",
    "first_conv",
    "list_models",
    "model_description",
    "model_options",
    "model_summary",
    "model_table",
    "register_model",
]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under ``name`` (a decorator).

    Example:
        >>> @register_model("tiny")
        ... def build_tiny(width: int = 8) -> nn.Module:
        ...     '''A tiny CNN.'''
        ...     ...
    """
    return MODELS.register(name)


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return MODELS.names()


def model_options(name: str) -> dict[str, Any]:
    """The options of model ``name`` with their default values."""
    builder = MODELS.get(name, field="model.name")
    return {
        key: parameter.default
        for key, parameter in inspect.signature(builder).parameters.items()
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    }


def default_model() -> ModelConfig:
    """The default model: ``simple-cnn`` at width 16, what ``configs/default.yaml``, ``pcamlab demo`` and
    ``pcamlab bench`` use (``pcamlab models`` names it under its table).

    Width 16 (97,809 parameters, 72 MFLOPs/patch) replaced the builder's width 32 as the default by
    measurement: 3 seeds of ``pcamlab bench --time-to-auc`` on the 19,171 training patches of
    ``../shared/data/pcam-jpg`` ended at validation AUC 0.942 (median) against width 32's 0.931, in the same
    15 minutes of a 2-core CPU (README, docs/time-to-auc.md). The builder keeps width 32 as its own
    default so that every checkpoint written before keeps rebuilding as it was trained.

    Returns:
        A fresh :class:`pcamlab.config.ModelConfig` (the caller may change it).
    """
    return ModelConfig(name="simple-cnn", options={"width": 16})


def model_description(name: str) -> str:
    """First line of the builder's docstring: a one-line description of model ``name``."""
    builder = MODELS.get(name, field="model.name")
    return (inspect.getdoc(builder) or "").strip().splitlines()[0] if builder.__doc__ else ""


def _type_name(annotation: Any) -> str:
    """Words for a type in an error message: 'an integer', 'a list of integers'."""
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    if annotation in words:
        return words[annotation]
    if typing.get_origin(annotation) in (list, tuple) or annotation in (list, tuple):
        arguments = typing.get_args(annotation)
        if arguments and arguments[0] in (int, float, str):
            return "a list of " + {int: "integers", float: "numbers", str: "strings"}[arguments[0]]
        return "a list"
    return str(annotation).replace("typing.", "")


def _check_type(value: Any, annotation: Any, path: str) -> Any:
    """Return ``value`` (ints widened to float where a float is declared) or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if value is None and type(None) in members:
            return None
        members = [member for member in members if member is not type(None)]
        if len(members) == 1:
            return _check_type(value, members[0], path)
        for member in members:
            try:
                return _check_type(value, member, path)
            except ConfigError:
                continue
        described = " or ".join(_type_name(member) for member in members)
        raise ConfigError(f"{path} must be {described}; got {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(
                f"{path} must be one of {list(allowed)}; got {value!r}{did_you_mean(value, allowed)}"
            )
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false; got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer; got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number; got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string; got {value!r}")
        return value
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list; got {value!r}")
        arguments = typing.get_args(annotation)
        item_type = arguments[0] if arguments else Any
        return [_check_type(item, item_type, f"{path}[{index}]") for index, item in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping; got {value!r}")
        return dict(value)
    return value


def _validated_options(name: str, builder: Callable[..., nn.Module], options: dict[str, Any]) -> dict:
    signature = inspect.signature(builder)
    hints = typing.get_type_hints(builder)
    allowed = [
        key for key, parameter in signature.parameters.items()
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    checked = {}
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(
                f"model.options.{key} is not an option of {name!r}; options are {allowed}"
                f"{did_you_mean(key, allowed)}"
            )
        checked[key] = _check_type(value, hints.get(key, Any), f"model.options.{key}")
    return checked


def build_model(config: ModelConfig | str, **options: Any) -> nn.Module:
    """Build the model a config names, with its options checked against the builder's signature.

    Args:
        config: a :class:`pcamlab.config.ModelConfig` (``name`` + ``options``) or just a model name.
        **options: extra options that override ``config.options`` (handy in tests and notebooks).

    Returns:
        An ``nn.Module`` in training mode mapping float (B, 3, H, W) to logits (B, 1).

    Raises:
        ConfigError: unknown model name, unknown option, or an option of the wrong type or value.

    Example:
        >>> model = build_model(ModelConfig(name="simple-cnn", options={"width": 16}))
        >>> model(torch.zeros(2, 3, 96, 96)).shape
        torch.Size([2, 1])
    """
    if isinstance(config, str):
        config = ModelConfig(name=config)
    if not isinstance(config.options, dict):
        raise ConfigError(f"model.options must be a mapping; got {config.options!r}")
    builder = MODELS.get(config.name, field="model.name")
    merged = {**config.options, **options}
    return builder(**_validated_options(config.name, builder, merged))


def _conv_macs(module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    kernel_area = module.kernel_size[0] * module.kernel_size[1]
    per_output = (module.in_channels // module.groups) * kernel_area
    return output[0].numel() * per_output  # one sample


def _conv_transpose_macs(module: nn.ConvTranspose2d, inputs: tuple[torch.Tensor, ...],
                         output: torch.Tensor) -> int:
    kernel_area = module.kernel_size[0] * module.kernel_size[1]
    per_input = (module.out_channels // module.groups) * kernel_area
    return inputs[0][0].numel() * per_input  # every input pixel scatters one kernel


def _linear_macs(module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    return output[0].numel() * module.in_features


def count_flops(model: nn.Module, input_size: int = 96) -> int:
    """Forward FLOPs for ONE patch of ``input_size`` x ``input_size``, counted as 2 x multiply-adds.

    What is counted: the multiply-adds of every ``nn.Conv2d`` (``in_channels / groups x kernel area``
    per output value), ``nn.ConvTranspose2d`` (``out_channels / groups x kernel area`` per input
    value) and ``nn.Linear`` (``in_features`` per output value), plus any module that defines a
    ``count_macs(inputs, output) -> int`` method (used by the group convolutions of
    ``p4m-densenet``). Not counted: biases, batch-norm, activations, pooling, additions and
    concatenations (together a few percent for these networks).
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if hasattr(module, "count_macs"):
            total += int(module.count_macs(inputs, output))
        elif isinstance(module, nn.ConvTranspose2d):
            total += _conv_transpose_macs(module, inputs, output)
        elif isinstance(module, nn.Conv2d):
            total += _conv_macs(module, inputs, output)
        elif isinstance(module, nn.Linear):
            total += _linear_macs(module, inputs, output)

    # Shapes are all the hooks need: run a copy on the "meta" device (no arithmetic, no memory).
    model = copy.deepcopy(model).to("meta")
    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if hasattr(module, "count_macs") or isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size, device="meta"))
    for handle in handles:
        handle.remove()
    return 2 * total


def model_summary(model_or_name: nn.Module | ModelConfig | str, input_size: int = 96) -> dict[str, int]:
    """Parameter count and forward FLOPs per patch (see :func:`count_flops` for what is counted).

    Args:
        model_or_name: a built model, a :class:`ModelConfig` (name + options), or a registered name
            (built with default options).
        input_size: side of the square input patch in pixels.

    Returns:
        ``{"parameters": int, "flops": int}``.

    Example:
        >>> model_summary("baseline")["parameters"]
        166977
    """
    if isinstance(model_or_name, (str, ModelConfig)):
        with torch.device("meta"):  # only shapes are needed: skip allocating and initialising weights
            model = build_model(model_or_name)
    else:
        model = model_or_name
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return {"parameters": int(parameters), "flops": count_flops(model, input_size)}


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first convolution that reads the RGB input (its ``weight`` is (C_out, 3, k, k)): for filter pictures."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return module
    raise ConfigError(
        f"model {type(model).__name__} has no Conv2d reading 3 input channels; filter pictures need one"
    )


def model_table(names: list[str] | None = None, input_size: int = 96) -> list[dict[str, Any]]:
    """One row per model (default options): name, parameters, flops, description, options.

    Args:
        names: models to describe (default: every registered one).
        input_size: patch side used to count FLOPs.

    Returns:
        A list of ``{"name", "parameters", "flops", "description", "options"}`` dicts, in ``names`` order.
    """
    rows = []
    for name in names or list_models():
        summary = model_summary(name, input_size)
        rows.append({"name": name, **summary, "description": model_description(name),
                     "options": model_options(name)})
    return rows
