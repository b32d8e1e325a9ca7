"""The model registry and the functions everyone else uses: build, list, summarise.

A model file registers one builder with ``@register_model("name", options={...})``. A builder is a plain
function whose keyword arguments (all with defaults and type annotations) are the model's options, i.e.
what a user may put under ``model.options`` in YAML; ``options`` declares what each one allows (a range or
choices, :mod:`pcamlab.models.options`) and ``rules`` the combinations that cannot build. ``build_model``
checks the given options against that table before calling the builder, so a typo, a wrong type or a
value out of range fails at load time with one line, and a builder receives only values it can use.

Every model takes float (B, 3, H, W) normalised input and returns LOGITS of shape (B, 1). The
sigmoid is applied by the loss (``BCEWithLogitsLoss``) and at prediction time; logit + sigmoid is
exactly Keras' ``Dense(1, activation="sigmoid")``, split so the loss stays numerically stable.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from pcamlab.config import ModelConfig
from pcamlab.errors import ConfigError
from pcamlab.models.options import Option, Options, Rule, describe, signature_options
from pcamlab.registry import Registry

__all__ = [
    "MODELS",
    "build_model",
    "check_model_memory",
    "count_flops",
    "declared_options",
    "default_model",
    "first_conv",
    "list_models",
    "model_description",
    "model_option_table",
    "model_options",
    "model_summary",
    "model_table",
    "register_model",
]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
_DECLARED: dict[str, Options] = {}  # model name -> its declared options table


def register_model(name: str, *, options: Mapping[str, Option],
                   rules: tuple[Rule, ...] | list[Rule] = ()) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under ``name`` with what each of its options allows (a decorator).

    Args:
        name: the ``model.name`` users write.
        options: one :class:`~pcamlab.models.options.Option` per keyword parameter of the builder (its
            type and default come from the signature).
        rules: combinations of options that cannot build; each ``rule(values, where)`` returns the
            one-line message or None.

    Raises:
        ValueError: a builder parameter without a declaration or a default, or the name registered twice.

    Example:
        >>> @register_model("tiny", options={"width": POSITIVE, "activation": ACTIVATION})
        ... def build_tiny(width: int = 8, activation: str = "relu") -> nn.Module:
        ...     '''A tiny CNN.'''
        ...     ...
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        table = signature_options(f"an option of {name!r}", builder, options, tuple(rules))
        MODELS.register(name)(builder)
        _DECLARED[name] = table
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return MODELS.names()


def declared_options(name: str) -> Options:
    """The declared options table of model ``name`` (each option's type, default, range or choices; its rules).

    Raises:
        ConfigError: no model is registered under ``name`` (with "did you mean").
    """
    MODELS.get(name, field="model.name")  # the one "must be one of ... (did you mean ...)" message
    return _DECLARED[name]


def model_options(name: str) -> dict[str, Any]:
    """The options of model ``name`` with their default values."""
    return declared_options(name).defaults()


def _argument_help(builder: Callable[..., Any]) -> dict[str, str]:
    """``{parameter: its description}`` from the ``Args:`` section of a Google-style docstring."""
    described: dict[str, str] = {}
    section, current = False, None
    for line in (inspect.getdoc(builder) or "").splitlines():
        if line.strip() == "Args:":
            section = True
            continue
        if not section:
            continue
        if line and not line.startswith(" "):
            break  # the next section
        entry = re.match(r"^ {4}(\w+): (.*)$", line)
        if entry:
            current = entry.group(1)
            described[current] = entry.group(2).strip()
        elif current and line.strip():
            described[current] += " " + line.strip()
    return described


def model_option_table(name: str) -> list[dict[str, Any]]:
    """One row per option of model ``name``: what ``pcamlab models --options`` shows.

    Returns:
        ``[{"name", "default", "allowed", "description"}, ...]`` in the builder's order; ``allowed`` in
        words (``an integer >= 1``), ``description`` from the builder's docstring.
    """
    table = declared_options(name)
    described = _argument_help(MODELS.get(name))
    return [
        {"name": key, "default": option.default, "allowed": describe(option), "description": described.get(key, "")}
        for key, option in table.options.items()
    ]


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


def build_model(config: ModelConfig | str, **options: Any) -> nn.Module:
    """Build the model a config names, with its options checked against the model's declared table.

    Args:
        config: a :class:`pcamlab.config.ModelConfig` (``name`` + ``options``) or just a model name.
        **options: extra options that override ``config.options`` (handy in tests and notebooks).

    Returns:
        An ``nn.Module`` in training mode mapping float (B, 3, H, W) to logits (B, 1).

    Raises:
        ConfigError: unknown model name, unknown option, an option of the wrong type or out of its
        declared range or choices, or a combination of options the model declares it cannot build.

    Example:
        >>> model = build_model(ModelConfig(name="simple-cnn", options={"width": 16}))
        >>> model(torch.zeros(2, 3, 96, 96)).shape
        torch.Size([2, 1])
    """
    if isinstance(config, str):
        config = ModelConfig(name=config)
    table = declared_options(config.name)
    given = {**config.options, **options} if isinstance(config.options, Mapping) else config.options
    checked = table.check("model.options", given)
    builder = MODELS.get(config.name)
    if torch.empty(()).device.type != "meta":  # real weights: first make sure they fit (shapes only, no memory)
        check_model_memory(ModelConfig(name=config.name, options=dict(given)), bytes_per_parameter=4)
    return builder(**checked)


#: Bytes per parameter training needs at least, in fp32: the weight, its gradient and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16


def machine_memory() -> int | None:
    """Physical memory of this machine in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gigabytes(count: float) -> str:
    return f"{count / 1e9:,.1f} GB" if count < 1e12 else f"{count / 1e12:,.1f} TB"


def check_model_memory(config: ModelConfig, *, bytes_per_parameter: int = TRAINING_BYTES_PER_PARAMETER,
                       memory_bytes: int | None = None) -> int:
    """Refuse a model whose parameters alone cannot fit in memory, before any weight is allocated.

    The model is built on PyTorch's ``meta`` device (shapes only), so a width of 100,000 is refused in
    milliseconds instead of asking the allocator for hundreds of GB.

    Args:
        config: the model (name and options, already checked).
        bytes_per_parameter: 4 to hold fp32 weights; :data:`TRAINING_BYTES_PER_PARAMETER` (16) to train them
            (weight, gradient and Adam's two moments; activations come on top).
        memory_bytes: the memory to fit in (default: this machine's physical memory).

    Returns:
        The parameter count.

    Raises:
        ConfigError: the parameters need more than ``memory_bytes``.
    """
    checked = declared_options(config.name).check("model.options", config.options)
    try:
        with torch.device("meta"):
            model = MODELS.get(config.name)(**checked)
    except (RuntimeError, NotImplementedError) as error:
        if "overflow" not in str(error):
            return 0  # a builder step the meta device lacks: nothing to measure (the real build checks itself)
        model = None  # a tensor larger than 2**63 bytes: no machine holds it
    parameters = sum(parameter.numel() for parameter in model.parameters()) if model is not None else None
    memory = machine_memory() if memory_bytes is None else memory_bytes
    needed = parameters * bytes_per_parameter if parameters is not None else None
    if model is None or (memory and needed > memory):
        use = "training it needs" if bytes_per_parameter >= TRAINING_BYTES_PER_PARAMETER else "its weights need"
        if parameters is None:
            size = "has a weight tensor over 2**63 bytes, more than any machine holds"
        else:
            size = (f"has {parameters:,} parameters: {use} at least {_gigabytes(needed)} ({bytes_per_parameter} bytes "
                    f"each), more than the {_gigabytes(memory)} of memory here")
        raise ConfigError(
            f"model.name {config.name!r} with model.options {dict(config.options or {})} {size}; choose smaller "
            "options (fewer stages or layers, a smaller width)"
        )
    return int(parameters)


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


def count_flops(model: nn.Module, input_size: int = 96, *, described: str | None = None) -> int:
    """Forward FLOPs for ONE patch of ``input_size`` x ``input_size``, counted as 2 x multiply-adds.

    What is counted: the multiply-adds of every ``nn.Conv2d`` (``in_channels / groups x kernel area``
    per output value), ``nn.ConvTranspose2d`` (``out_channels / groups x kernel area`` per input
    value) and ``nn.Linear`` (``in_features`` per output value), plus any module that defines a
    ``count_macs(inputs, output) -> int`` method (used by the group convolutions of
    ``p4m-densenet``). Not counted: biases, batch-norm, activations, pooling, additions and
    concatenations (together a few percent for these networks).

    ``described`` names the model in messages (e.g. ``model.name 'fcn' with model.options {...}``).

    Raises:
        ConfigError: ``input_size`` is not an integer >= 1, or the model cannot take patches of that size.
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

    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1:
        raise ConfigError(f"input_size must be a patch side in pixels, an integer >= 1; got {input_size!r}")
    # Shapes are all the hooks need: run a copy on the "meta" device (no arithmetic, no memory).
    model = copy.deepcopy(model).to("meta")
    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if hasattr(module, "count_macs") or isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device="meta"))
    except (RuntimeError, ValueError) as error:  # a kernel larger than the feature map, a dense layer of another size
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"{described or 'model ' + type(model).__name__} cannot take {input_size}x{input_size} patches ({reason}); choose options "
            "that keep its feature maps at least 1x1 (fewer stages, pooling layers or smaller kernels) or another "
            "patch size"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    return 2 * total


def model_summary(model_or_name: nn.Module | ModelConfig | str, input_size: int = 96, *,
                  described: str | None = None) -> dict[str, int]:
    """Parameter count and forward FLOPs per patch (see :func:`count_flops` for what is counted).

    Args:
        model_or_name: a built model, a :class:`ModelConfig` (name + options), or a registered name
            (built with default options).
        input_size: side of the square input patch in pixels.

        described: names the model in messages (default: its class, or its ``model.name``).

    Returns:
        ``{"parameters": int, "flops": int}``.

    Raises:
        ConfigError: the model cannot take ``input_size`` x ``input_size`` patches (see :func:`count_flops`).

    Example:
        >>> model_summary("baseline")["parameters"]
        166977
    """
    if isinstance(model_or_name, (str, ModelConfig)):
        with torch.device("meta"):  # only shapes are needed: skip allocating and initialising weights
            model = build_model(model_or_name)
        name = model_or_name if isinstance(model_or_name, str) else model_or_name.name
        described = described or f"model.name {name!r}"
    else:
        model = model_or_name
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return {"parameters": int(parameters), "flops": count_flops(model, input_size, described=described)}


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first convolution that reads the RGB input (its ``weight`` is (C_out, 3, k, k)): for filter pictures."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return module
    raise ConfigError(
        f"model {type(model).__name__} has no Conv2d reading 3 input channels; filter pictures need one"
    )


def model_table(names: list[str] | None = None, input_size: int = 96) -> list[dict[str, Any]]:
    """One row per model (default options): name, parameters, flops, description, options (defaults).

    Args:
        names: models to describe (default: every registered one).
        input_size: patch side used to count FLOPs.

    Returns:
        A list of ``{"name", "parameters", "flops", "description", "options"}`` dicts, in ``names`` order;
        ``flops`` is None for a model that cannot take ``input_size`` x ``input_size`` patches (its feature
        map shrinks below 1x1, or its dense layer expects another size).

    Raises:
        ConfigError: ``input_size`` is not an integer >= 1.
    """
    rows = []
    for name in names or list_models():
        try:
            summary = model_summary(name, input_size)
        except ConfigError:
            count_flops(nn.Identity(), input_size)  # a bad input_size is the caller's error: raised as such
            with torch.device("meta"):
                summary = {"parameters": sum(p.numel() for p in build_model(name).parameters()), "flops": None}
        rows.append({"name": name, **summary, "description": model_description(name),
                     "options": model_options(name)})
    return rows
