"""One typed, nested run configuration.

Precedence: dataclass defaults < YAML files, in the order given (a later file wins field by field) <
``--set section.field=value`` overrides. Unknown keys and wrong types fail at load time with a
suggestion. The resolved config is written into every run folder and every checkpoint; its
``config_files`` lists the files merged into it, in order.

Example:
    >>> from pcamlab.config import load_config
    >>> config = load_config("configs/default.yaml", overrides=["train.epochs=3"])
    >>> config.train.epochs
    3
    >>> config = load_config(["configs/baseline.yaml", "configs/models/simple-cnn.yaml"])
    >>> config.model.name, config.train.optimizer, config.config_files
    ('simple-cnn', 'adam', ['configs/baseline.yaml', 'configs/models/simple-cnn.yaml'])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pcamlab.errors import ConfigError, did_you_mean

__all__ = [
    "DataConfig",
    "AugmentConfig",
    "ModelConfig",
    "TrainConfig",
    "EvaluateConfig",
    "RunConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "merge_values",
]


@dataclass
class DataConfig:
    path: str = "sample"  # dataset root; "sample" is the real PCam sample shipped inside the package
    format: str = "auto"  # auto (detected from the files) | a registered reader: h5, folders, kaggle (`pcamlab data info`)
    train_split: str = "train"  # split the model learns from
    valid_split: str = "valid"  # split used for early stopping and threshold choice
    test_split: str = "test"  # split held out for the final evaluation
    valid_fraction: float = 0.1  # held-out fraction when the data has no valid split (Kaggle layout)
    seed: int = 0  # seed of any split the data has to make itself
    cache: str = "auto"  # ram | stream | auto: decode once into RAM when it fits memory_budget_gb
    memory_budget_gb: float = 4.0  # RAM the decoded training images may use before streaming
    num_workers: int = 0  # DataLoader worker processes when streaming (0 = in the main process)
    skip_bad: bool = False  # skip unreadable files instead of stopping (their count is reported)
    stain_normalization: str = "none"  # none | macenko | reinhard: fitted on training patches, kept in the checkpoint
    input_scaling: str = "standardize"  # standardize ((x/255 - mean)/std, mean/std of the training patches) | unit (x/255 only, the Keras course way); kept in the checkpoint's contract


@dataclass
class AugmentConfig:
    dihedral: bool = True  # the 8 flips/rotations: tissue has no canonical orientation
    brightness: float = 0.0  # max relative brightness change (0 = off)
    contrast: float = 0.0  # max relative contrast change (0 = off)
    saturation: float = 0.0  # max relative saturation change (0 = off)
    hue: float = 0.0  # max hue shift as a fraction of the colour wheel (0 = off, 0.5 = any)
    hed: float = 0.0  # HED stain jitter strength (Tellez et al. 2018 use ~0.05; 0 = off)
    blur: float = 0.0  # probability of a gaussian blur (0 = off)
    blur_sigma: float = 1.0  # max sigma of that blur, in pixels
    crop_scale: float = 1.0  # random resized crop: minimum area fraction kept (1 = off)
    crop_size: int = 0  # train on random crops of this many px that keep the labelled centre 32x32 (0 = off); global-pooled models only
    crop_epochs: int = 0  # crops only in the first N epochs, full patches after (progressive resizing: never the last epoch, nor after half a time budget); 0 = crops in every epoch; no effect when crop_size is 0


@dataclass
class ModelConfig:
    name: str = "simple-cnn"  # a registered model; `pcamlab models` lists them
    options: dict[str, Any] = field(default_factory=dict)  # builder keyword arguments (width, dropout...)
    pretrained: str = ""  # local weight file to start from (.safetensors, torch .pt/.pth state dict, Keras .h5)
    pretrained_format: str = "auto"  # auto | pcamlab | torchvision | timm | keras: how to map its names


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training split
    batch_size: int = 64  # patches per optimiser step
    optimizer: str = "adamw"  # sgd | adam | adamw | rmsprop
    learning_rate: float = 2e-3  # peak learning rate
    weight_decay: float = 1e-4  # L2 penalty (decoupled for adamw)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum for SGD
    scheduler: str = "cosine"  # none | step | exponential | cosine | onecycle | plateau
    warmup_epochs: float = 0.5  # linear warm-up before the schedule (fraction of epochs allowed)
    step_size: int = 5  # epochs between decays for the step schedule
    gamma: float = 0.5  # decay factor for step / exponential / plateau schedules
    plateau_patience: int = 2  # plateau schedule: epochs without improvement before multiplying by gamma
    loss: str = "bce"  # bce | focal | mse (mse on the sigmoid output, as in the course notes)
    focal_gamma: float = 2.0  # focusing parameter of the focal loss (Lin et al. 2017)
    label_smoothing: float = 0.0  # targets become y(1-s) + s/2
    l1: float = 0.0  # L1 penalty on weights, added to the loss
    grad_clip: float = 0.0  # clip the global gradient norm to this value (0 = off)
    ema_decay: float = 0.0  # exponential moving average of weights used for validation/checkpoints (0 = off; ~0.999)
    swa_lr_fraction: float = 0.0  # stochastic weight averaging (Izmailov et al. 2018) of the epochs ending with the learning rate at or below this fraction of its peak, batch-norm recomputed; becomes best.safetensors when it validates better (0 = off)
    freeze_backbone_epochs: int = 0  # transfer learning: train only the head for this many epochs first
    backbone_lr_factor: float = 1.0  # transfer learning: backbone learning rate = factor x learning_rate
    monitor: str = "val_auc"  # val_auc | val_loss: picks the best checkpoint and drives early stopping
    patience: int = 5  # epochs without improvement before stopping (0 = never stop early); with augment.crop_epochs, full-patch epochs only
    min_delta: float = 0.0  # smallest change of the monitored value that counts as improvement
    patience_lr_fraction: float = 0.1  # schedule_over=budget: patience counts only epochs ending with the learning rate at or below this fraction of its peak (the last ~19% of a cosine budget), so a run stops early only once decayed, on a machine of any speed; 1 = every epoch counts
    precision: str = "auto"  # auto | fp32 | bf16: auto = bf16 autocast where the hardware has it
    channels_last: bool = True  # NHWC memory layout, faster for convolutions on CPU and GPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # seeds weight init, shuffling and augmentation
    deterministic: bool = False  # deterministic kernels (slower on GPU); runs repeat bit for bit
    compile: bool = False  # torch.compile the model (measured: helps inference more than training on CPU)
    max_steps_per_epoch: int = 0  # cap on optimiser steps per epoch (0 = a full epoch)
    time_budget_minutes: float = 0.0  # stop training after this many minutes (0 = no limit)
    schedule_over: str = "epochs"  # epochs | budget: budget = the cosine/onecycle decay spans time_budget_minutes, not epochs
    threads: int = 0  # torch CPU threads (0 = torch's default)


@dataclass
class EvaluateConfig:
    threshold: float = 0.5  # decision threshold on the predicted probability of class 1 (method fixed)
    threshold_method: str = "fixed"  # fixed | youden | sensitivity | f1: chosen on validation, stored in the checkpoint
    target_sensitivity: float = 0.95  # for threshold_method sensitivity: the lowest sensitivity accepted
    tta: bool = False  # average predictions over the 8 dihedral transforms
    batch_size: int = 256  # patches per inference batch


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    config_files: list[str] = field(default_factory=list)  # YAML files merged into this config, in order (later wins)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.cache": ("auto", "ram", "stream"),
    "data.input_scaling": ("standardize", "unit"),  # pcamlab.runtime.contract.INPUT_SCALINGS is this tuple
    # weight layouts pcamlab.models.transfer maps (its FORMATS is this tuple: declared here because importing
    # models loads torch, and a config is checked at load, before that)
    "model.pretrained_format": ("auto", "pcamlab", "torchvision", "timm", "keras"),
    "train.optimizer": ("sgd", "adam", "adamw", "rmsprop"),
    "train.scheduler": ("none", "step", "exponential", "cosine", "onecycle", "plateau"),
    "train.loss": ("bce", "focal", "mse"),
    "train.schedule_over": ("epochs", "budget"),
    "evaluate.threshold_method": ("fixed", "youden", "sensitivity", "f1"),
    "train.monitor": ("val_auc", "val_loss"),
    "train.precision": ("auto", "fp32", "bf16"),
}


# Fields whose allowed values come from a registry of a higher layer, which declares them when imported;
# config imports no layer. data.format: ``pcamlab.data.readers`` (auto + its readers); data.stain_normalization:
# ``pcamlab.data.normalize`` (none + its normalisers). ``import pcamlab`` imports ``pcamlab.data``, so both
# are checked at every load.
DECLARED_CHOICES: dict[str, Callable[[], Sequence[str]]] = {}


def declare_choices(path: str, allowed: Callable[[], Sequence[str]]) -> None:
    """Let a registry state the allowed values of the config field ``path`` (read at each check)."""
    DECLARED_CHOICES[path] = allowed


def _check_choice(path: str, value: Any) -> None:
    allowed = CHOICES.get(path)
    if allowed is None and path in DECLARED_CHOICES:
        allowed = tuple(DECLARED_CHOICES[path]())
    if allowed is not None and value not in allowed:
        raise ConfigError(
            f"{path} must be one of {list(allowed)}; got {value!r}{did_you_mean(value, allowed)}"
        )


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` to the field's declared type or raise a ConfigError naming the field."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping; got {type(value).__name__} {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{path} must be a list of strings; got {value!r}")
        return list(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path} must be true or false; got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{path} must be an integer; got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{path} must be an integer; got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{path} must be a number; got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{path} must be a number; got {value!r}") from None
    if annotation is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML read an unquoted 2024.10 as the number 2024.1: the text is already lost
            raise ConfigError(
                f"{path} must be a string; got the number {value!r} (YAML reads unquoted digits as a number): "
                f"quote it, e.g. {path.rsplit('.', 1)[-1]}: '{value}'"
            )
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string; got {value!r}")
        return value
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    instance = cls()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"unknown config key {path!r}; {prefix.rstrip('.') or 'the top level'} has "
                f"{names}{did_you_mean(key, names)}"
            )
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} must be a mapping of its fields; got {value!r}")
            setattr(instance, key, _build(annotation, value, f"{path}."))
        else:
            coerced = _coerce(path, value, annotation)
            _check_choice(path, coerced)
            setattr(instance, key, coerced)
    return instance


def config_from_dict(values: dict[str, Any] | None) -> RunConfig:
    """Build a RunConfig from nested plain values, validating every key, type and numeric range.

    Raises:
        ConfigError: an unknown key, a wrong type, a value outside its choices, or a number outside the
            range declared in :data:`pcamlab.config_ranges.RANGES`.
    """
    from pcamlab.config_ranges import check_ranges

    config = _build(RunConfig, values or {}, "")
    check_ranges(config)
    return config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The config as nested plain values (YAML/JSON safe)."""
    return dataclasses.asdict(config)


def _field_annotation(parts: list[str]) -> Any:
    """The declared type of the field at dotted ``parts`` (None when it is not a dataclass field)."""
    cls: Any = RunConfig
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def _parse_value(text: str, annotation: Any = None) -> Any:
    """An override's right-hand side: the text itself for a string field, else read with YAML rules.

    A string field keeps its text as typed (``data.path=2024.10`` stays ``'2024.10'``, ``a #1`` is not
    cut at a YAML comment); quotes around it are removed. Other fields are read as YAML (numbers,
    booleans, lists, mappings); a `` #`` there would start a YAML comment and is refused.
    """
    stripped = text.strip()
    if annotation is str:
        if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
            try:
                return yaml.safe_load(stripped)
            except yaml.YAMLError:
                return stripped
        return stripped
    if stripped.startswith("#") or " #" in stripped or "\t#" in stripped:
        raise ConfigError(
            f"override value {text!r} holds ' #', which YAML reads as the start of a comment; quote the "
            "value (e.g. \"'a #1'\") or drop the comment"
        )
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(values: dict[str, Any], overrides: list[str | tuple[str, Any]]) -> dict[str, Any]:
    """Apply overrides to nested plain values (returns a new dict).

    Args:
        values: nested plain values (e.g. a YAML file's).
        overrides: ``"section.field=value"`` texts (``--set``), read by the field's type (see
            :func:`_parse_value`), or ``("section.field", value)`` pairs whose value is already typed
            (command-line flags such as ``--data``): used as they are, never re-parsed.

    ``model.options`` belong to one model, as in :func:`merge_values`: an override that names another
    ``model.name`` than ``values`` does drops the options of ``values`` (those of the earlier model, from
    the config files); ``model.options.*`` overrides, in any order, are kept for the new model.
    """
    result = yaml.safe_load(yaml.safe_dump(values)) or {}
    split = [_split_override(item) for item in overrides]
    names = [value if parsed else _parse_value(value, _field_annotation(["model", "name"]))
             for key, value, parsed in split if key.strip() == "model.name"]
    model = result.get("model")
    if names and isinstance(model, dict) and "name" in model and names[-1] != model["name"]:
        model.pop("options", None)  # the earlier model's options; the new model's come from overrides
    for key, value, parsed in split:
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"override key must name a section and a field, e.g. train.epochs=5; got {key!r}"
            )
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r} goes inside {part!r}, which is not a section")
            node = child
        node[parts[-1]] = value if parsed else _parse_value(value, _field_annotation(parts))
    return result


def _split_override(item: str | tuple[str, Any]) -> tuple[str, Any, bool]:
    """``(key, value, parsed)`` of one override: a typed ``(key, value)`` pair or a ``key=value`` text."""
    if isinstance(item, tuple):
        key, value = item
        return key, value, True
    if "=" not in item:
        raise ConfigError(f"override must look like section.field=value; got {item!r}")
    key, value = item.split("=", 1)
    return key, value, False


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a YAML file from configs/")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: fix the syntax") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections; got {values!r}")
    return values


def merge_values(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge nested config values field by field: ``update`` wins, sections merge recursively.

    ``model.options`` belong to one model: when ``update`` names another ``model.name`` than ``base``,
    the options of ``base`` are dropped instead of merged into the new model's.

    Example:
        >>> merge_values({"train": {"epochs": 3, "batch_size": 32}}, {"train": {"epochs": 5}})
        {'train': {'epochs': 5, 'batch_size': 32}}
    """
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            previous = merged[key]
            if key == "model" and "name" in value and value["name"] != previous.get("name", value["name"]):
                previous = {name: item for name, item in previous.items() if name != "options"}
            merged[key] = merge_values(previous, value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path | list[str | Path] | tuple[str | Path, ...] | None = None,
    overrides: list[str | tuple[str, Any]] | None = None,
) -> RunConfig:
    """Load defaults, then the YAML file(s) in order, then overrides (see :func:`apply_overrides`).

    Every field's type and range is checked, then the combinations that cannot train
    (:data:`pcamlab.config_ranges.COMBINATIONS`).

    Args:
        path: one YAML file, several (merged in order by :func:`merge_values`: a later file wins
            field by field, e.g. ``configs/baseline.yaml`` then ``configs/models/simple-cnn.yaml``
            keeps the baseline's optimiser and swaps the model), or None for the defaults.
        overrides: ``section.field=value`` strings or typed ``(field, value)`` pairs, applied last.

    Returns:
        The validated config; ``config_files`` lists the files merged (a saved ``config.yaml`` keeps
        the list it was made from).

    Raises:
        ConfigError: a missing or malformed file, an unknown key, a wrong type or range, or a combination
            that cannot train (with a suggestion).
    """
    from pcamlab.config_ranges import check_combinations

    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    values: dict[str, Any] = {}
    files: list[str] = []
    for item in paths:
        file_values = read_yaml(item)
        listed = file_values.pop("config_files", None)  # a saved config.yaml names the files it came from
        if listed is not None and not (isinstance(listed, list) and all(isinstance(name, str) for name in listed)):
            raise ConfigError(f"config file {str(item)!r}: config_files must be a list of file names; got {listed!r}")
        files += [str(item)] if listed is None else listed
        values = merge_values(values, file_values)
    values = apply_overrides(values, overrides or [])
    values.setdefault("config_files", files)
    config = config_from_dict(values)
    check_combinations(config)
    return config
