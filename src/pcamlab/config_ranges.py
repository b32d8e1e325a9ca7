"""The allowed range of every numeric config field, declared once, and the combinations that cannot train.

One table (:data:`RANGES`) gives each ``int``/``float`` field of :class:`pcamlab.config.RunConfig` its
interval, a typical value and, where a number is easy to misread, what it means; one validator
(:func:`check_ranges`) runs over it when a config is loaded (YAML file, ``--set``, checkpoint), and one
message shape names the field, the allowed interval, the value received and a value to use (the pattern
of scikit-learn's ``_param_validation``). :data:`COMBINATIONS` lists settings that are each in range but
cannot train together; :func:`check_combinations` runs them when a config is loaded for training.

Commands that take one of these numbers directly (``predict --threshold``, ``evaluate --batch-size``,
``data info --valid-fraction``) check it with :func:`check_field` against the same entry. Model options
declare a :class:`Range` each too (:mod:`pcamlab.models.options`) and are checked by :func:`check_number`,
which gives the same message with the type in it (``model.options.width must be an integer >= 1; got 0``).

Example:
    >>> check_field("evaluate.threshold", 50)
    Traceback (most recent call last):
    pcamlab.errors.ConfigError: evaluate.threshold must be in [0, 1] (a probability, not a percentage); got 50 (a percentage? use 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pcamlab.errors import ConfigError

__all__ = ["Range", "SEED", "check_seed", "RANGES", "COMBINATIONS", "check_field", "check_number", "check_ranges", "check_combinations"]


@dataclass(frozen=True)
class Range:
    """A closed, open or half-open interval of allowed values.

    Attributes:
        low: smallest allowed value (None: no lower bound).
        high: largest allowed value (None: no upper bound).
        low_open: ``low`` itself is not allowed.
        high_open: ``high`` itself is not allowed.
        example: a sensible value, quoted in the message.
        meaning: what the number is, when it is easy to misread (e.g. "a probability").
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    example: str = ""
    meaning: str = ""

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        """``in [0, 1)``, ``>= 1``, ``> 0``, ``in [0, 4294967295]``, ..."""
        low, high = _bound(self.low), _bound(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"{'<' if self.high_open else '<='} {high}"


def _bound(value: float | None) -> str:
    """A bound as written: whole numbers in full (``4294967295``, not ``4.29497e+09``), others with ``:g``."""
    if value is None:
        return ""
    if float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}"


SEED = Range(0, 2**32 - 1, example="0")
"""The one range of every seed (config fields, ``--seed`` options, library ``seed`` parameters):
scikit-learn's ``check_random_state`` refuses anything outside ``0..2**32 - 1``."""


def check_seed(value: Any, name: str = "seed") -> int:
    """Raise one ConfigError unless ``value`` is an integer seed in :data:`SEED`; returns it.

    Example:
        >>> check_seed(-1)
        Traceback (most recent call last):
        pcamlab.errors.ConfigError: seed must be an integer in [0, 4294967295]; got -1; use e.g. 0
    """
    return check_number(name, value, SEED, integer=True)


def _probability(example: str, meaning: str = "a probability") -> Range:
    return Range(0, 1, example=example, meaning=meaning)


def _fraction(example: str, meaning: str = "") -> Range:
    return Range(0, 1, low_open=True, high_open=True, example=example, meaning=meaning)


def _at_least(low: float, example: str, meaning: str = "") -> Range:
    return Range(low, example=example, meaning=meaning)


# Every int/float field of RunConfig (tests/test_inputs.py checks that none is missing). Sources of the
# typical values: the field comments in pcamlab.config and the papers they cite.
RANGES: dict[str, Range] = {
    "data.valid_fraction": _fraction("0.1", "a fraction of the labelled patches"),
    "data.seed": SEED,
    "data.memory_budget_gb": _at_least(0, "4", "gigabytes"),
    "data.num_workers": _at_least(0, "2"),
    "augment.brightness": Range(0, 1, example="0.1", meaning="a relative change, 0 = off"),
    "augment.contrast": Range(0, 1, example="0.1", meaning="a relative change, 0 = off"),
    "augment.saturation": Range(0, 1, example="0.1", meaning="a relative change, 0 = off"),
    "augment.hue": Range(0, 0.5, example="0.05", meaning="a fraction of the colour wheel, 0 = off"),
    "augment.hed": Range(0, 1, high_open=True, example="0.05", meaning="stain jitter strength (Tellez et al. 2018)"),
    "augment.blur": _probability("0.2"),
    "augment.blur_sigma": Range(0, 10, low_open=True, example="1.0", meaning="pixels"),
    "augment.crop_scale": Range(0, 1, low_open=True, example="0.8", meaning="the smallest area fraction kept, 1 = off"),
    "augment.crop_size": Range(0, 4096, example="64", meaning="pixels, 0 = off; at least 32 when on"),
    "augment.crop_epochs": _at_least(0, "2"),
    "train.epochs": _at_least(1, "10"),
    "train.batch_size": _at_least(1, "64"),
    "train.learning_rate": Range(0, 10, low_open=True, example="1e-3"),
    "train.weight_decay": Range(0, 1, high_open=True, example="1e-4"),
    "train.momentum": Range(0, 1, high_open=True, example="0.9"),
    "train.warmup_epochs": _at_least(0, "0.5", "epochs"),
    "train.step_size": _at_least(1, "5", "epochs"),
    "train.gamma": Range(0, 1, low_open=True, example="0.5", meaning="a decay factor"),
    "train.plateau_patience": _at_least(1, "2", "epochs"),
    "train.focal_gamma": Range(0, 10, example="2.0", meaning="Lin et al. 2017 use 2"),
    "train.label_smoothing": Range(0, 1, high_open=True, example="0.1"),
    "train.l1": _at_least(0, "1e-5"),
    "train.grad_clip": _at_least(0, "1.0", "0 = off"),
    "train.ema_decay": Range(0, 1, high_open=True, example="0.999", meaning="0 = off"),
    "train.swa_lr_fraction": Range(0, 1, example="0.3", meaning="a fraction of the peak learning rate, 0 = off"),
    "train.freeze_backbone_epochs": _at_least(0, "2"),
    "train.backbone_lr_factor": Range(0, 10, example="0.1"),
    "train.patience": _at_least(0, "5", "epochs, 0 = never stop early"),
    "train.min_delta": _at_least(0, "0.001"),
    "train.patience_lr_fraction": Range(0, 1, low_open=True, example="0.1", meaning="a fraction of the peak learning rate, 1 = every epoch counts"),
    "train.seed": SEED,
    "train.max_steps_per_epoch": _at_least(0, "100", "0 = a full epoch"),
    "train.time_budget_minutes": _at_least(0, "15", "minutes, 0 = no limit"),
    "train.threads": _at_least(0, "2", "0 = torch's default"),
    "evaluate.threshold": _probability("0.5", "a probability, not a percentage"),
    "evaluate.target_sensitivity": Range(0, 1, low_open=True, example="0.95", meaning="a fraction, not a percentage"),
    "evaluate.batch_size": _at_least(1, "256"),
}


def _message(name: str, value: Any, allowed: Range, kind: str = "") -> str:
    """The one message shape: ``NAME must be [KIND ]RANGE[ (MEANING)]; got VALUE[; use e.g. EXAMPLE]``."""
    meaning = f" ({allowed.meaning})" if allowed.meaning else ""
    percent = ""
    if allowed.high == 1 and isinstance(value, (int, float)) and not isinstance(value, bool) and 2 <= value <= 100:
        percent = f" (a percentage? use {value / 100:g})"
    use = f"; use e.g. {allowed.example}" if allowed.example and not percent else ""
    bounds = allowed.describe() if allowed.low is not None or allowed.high is not None else ""
    return f"{name} must be {' '.join(part for part in (kind, bounds) if part)}{meaning}; got {value!r}{percent}{use}"


def check_number(name: str, value: Any, allowed: Range, *, integer: bool = False) -> int | float:
    """Raise one ConfigError unless ``value`` is a number (an integer if ``integer``) in ``allowed``.

    The same message for a wrong type and a value out of range, so a reader learns both at once
    (``model.options.width must be an integer >= 1; got '16'; use e.g. 32``). Used by the model options
    (:mod:`pcamlab.models.options`), which declare a :class:`Range` per option like :data:`RANGES` does per
    config field.

    Args:
        name: what to call the value in the message (``model.options.width``).
        value: the value received.
        allowed: its interval (``Range()`` = any number).
        integer: only integers are allowed (a float such as ``16.0`` is refused; ``True`` never counts).

    Returns:
        ``value``, a float when a number was asked for (``0`` becomes ``0.0``).

    Raises:
        ConfigError: not a number (or not an integer), NaN, or out of range.
    """
    kind = "an integer" if integer else "a number"
    numeric = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric) or not allowed.contains(value):
        raise ConfigError(_message(name, value, allowed, kind), parameters=(name,))
    return value if integer else float(value)


def check_field(field: str, value: Any, *, name: str | None = None) -> Any:
    """Raise a one-line ConfigError unless ``value`` lies in the range of config field ``field``.

    Args:
        field: dotted config field, e.g. ``"evaluate.threshold"`` (a key of :data:`RANGES`).
        value: the number to check (None passes: "not given").
        name: how to call the value in the message when it is a parameter rather than the config field
            (e.g. ``"threshold"``).

    Returns:
        ``value``.

    Raises:
        ConfigError: out of range, NaN, or not a number.
    """
    if value is None:
        return value
    allowed = RANGES[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name or field} must be a number {allowed.describe()}; got {value!r}")
    if not allowed.contains(value):
        raise ConfigError(_message(name or field, value, allowed))
    return value


def check_ranges(config) -> None:
    """Check every field of :data:`RANGES` in a :class:`~pcamlab.config.RunConfig` (first failure raises)."""
    for field in RANGES:
        section, name = field.split(".")
        check_field(field, getattr(getattr(config, section), name))


# ----------------------------------------------------------------------------------------------
# Combinations: each value is in range, together they cannot train. Each rule returns a message or None.


def _budget_schedule(config) -> str | None:
    train = config.train
    if train.schedule_over == "budget" and (train.time_budget_minutes <= 0 or train.scheduler not in ("cosine", "onecycle")):
        return (
            "train.schedule_over=budget needs train.time_budget_minutes > 0 and train.scheduler cosine or "
            f"onecycle (got {train.time_budget_minutes} and {train.scheduler!r}); set both, or use schedule_over=epochs"
        )
    return None


def _deterministic_clock(config) -> str | None:
    train = config.train
    if train.deterministic and train.schedule_over == "budget":
        return (
            "train.deterministic repeats runs bit for bit, but train.schedule_over=budget sets the learning rate "
            "from the wall clock; use train.schedule_over=epochs (or train.deterministic=false)"
        )
    return None


def _same_splits(config) -> str | None:
    data = config.data
    if data.train_split == data.valid_split:
        return (
            f"data.valid_split is the training split {data.train_split!r}: validation would score patches the "
            "model learned from; use another split (e.g. valid)"
        )
    return None


def _stain_needs_ram(config) -> str | None:
    data = config.data
    streams = data.cache == "stream" or (data.cache == "auto" and data.memory_budget_gb == 0)
    if data.stain_normalization != "none" and streams:
        return (
            f"data.stain_normalization needs the decoded images in RAM but data.cache={data.cache} with "
            f"data.memory_budget_gb={data.memory_budget_gb:g} streams them from disk; set data.cache=ram or "
            "data.stain_normalization=none"
        )
    return None


def _plateau_after_early_stop(config) -> str | None:
    train = config.train
    if train.scheduler == "plateau" and 0 < train.patience <= train.plateau_patience:
        return (
            f"train.patience ({train.patience}) is not longer than train.plateau_patience ({train.plateau_patience}): "
            "early stopping would end the run before the plateau schedule ever lowers the learning rate; raise "
            f"patience (e.g. {2 * train.plateau_patience + 1}) or set patience=0"
        )
    return None


def _crop_keeps_label(config) -> str | None:
    size = config.augment.crop_size
    if 0 < size < 32:
        return (
            f"augment.crop_size must be 0 (off) or >= 32 px, the centre region PCam's label describes; got {size} "
            "(48-72 trains 1.8-4x fewer pixels per patch)"
        )
    return None


COMBINATIONS: list[Callable[[Any], str | None]] = [
    _crop_keeps_label,
    _budget_schedule,
    _deterministic_clock,
    _same_splits,
    _stain_needs_ram,
    _plateau_after_early_stop,
]


def check_combinations(config, rules: list[Callable[[Any], str | None]] | None = None) -> None:
    """Raise a one-line ConfigError for the first combination of settings that cannot train.

    Args:
        config: a :class:`~pcamlab.config.RunConfig`.
        rules: the rules to apply (default :data:`COMBINATIONS`).
    """
    for rule in COMBINATIONS if rules is None else rules:
        message = rule(config)
        if message:
            raise ConfigError(message)
