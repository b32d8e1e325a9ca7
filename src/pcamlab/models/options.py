"""Model options declared once: each option's range or choices in one table, one validator, one message shape.

A model registers its table with its builder (``@register_model("fcn", options={...})``): the builder's
signature gives each option's type and default, the table gives what else it allows (an interval of
:class:`pcamlab.config_ranges.Range`, the same type the config fields use, or a list of choices), and
``rules`` name the combinations of valid options that still cannot build (3 stages of max-pool 8 shrink a
96 px patch to nothing). :meth:`Options.check` runs over the table before the builder runs, so a builder
receives only values it can use; the ``spec`` model declares the keys of each of its YAML layer types the
same way. The message shape is scikit-learn's ``_param_validation`` one, the config fields' one
(:func:`pcamlab.config_ranges.check_number`)::

    model.options.width must be an integer >= 1; got 0; use e.g. 32
    model.options.activation must be one of ['relu', ...]; got 'rellu' (did you mean 'relu'?)
    model.options.widht is not an option of 'simple-cnn'; options are ['width', ...] (did you mean 'width'?)

:func:`describe` gives the words of the allowed values (``an integer >= 1``, ``a list of 4 integers >= 1``),
which the messages and ``pcamlab models --options`` share.

Example:
    >>> table = Options("an option of 'tiny'", "options", {"width": Option(int, Range(1), default=8)})
    >>> table.check("model.options", {"width": 0})
    Traceback (most recent call last):
    pcamlab.errors.ConfigError: model.options.width must be an integer >= 1; got 0; use e.g. 8
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pcamlab.config_ranges import Range, check_number
from pcamlab.errors import ConfigError, did_you_mean
from pcamlab.models.layers import ACTIVATIONS, INITIALISATIONS

__all__ = [
    "ACTIVATION",
    "DROPOUT",
    "FLAG",
    "INIT",
    "INPUT_SIZE",
    "POSITIVE",
    "REQUIRED",
    "Option",
    "Options",
    "Rule",
    "check_value",
    "describe",
]


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()  # the default of an option that has none (spec's conv.filters)


@dataclass(frozen=True)
class Option:
    """What one option allows.

    Attributes:
        kind: its type (``int``, ``float``, ``bool``, ``str``, ``list[int]``, ``int | list[int]``, ...).
            A builder's options leave it out: the builder's annotation is their type.
        range: the interval of a number, or of each number of a list.
        choices: the allowed values, strings or numbers (None among them is ignored: a ``str | None``
            option allows None).
        length: ``(fewest, most)`` items of a list (``most`` None: no limit).
        default: the value used when the option is not given (:data:`REQUIRED`: it must be given).
            A builder's options leave it out: the builder's default is theirs.
    """

    kind: Any = Any
    range: Range | None = None
    choices: tuple | None = None
    length: tuple[int, int | None] | None = None
    default: Any = REQUIRED

    def with_signature(self, kind: Any, default: Any) -> Option:
        """This declaration with the type and default a builder's signature gives (the default becomes
        the range's example when the range has none)."""
        allowed = self.range
        if allowed is not None and not allowed.example and isinstance(default, (int, float)) \
                and not isinstance(default, bool):
            allowed = dataclasses.replace(allowed, example=f"{default}")
        return dataclasses.replace(self, kind=kind, range=allowed, default=default)


# Declarations that several models share.
POSITIVE = Option(range=Range(1))  # widths, depths, unit counts
DROPOUT = Option(range=Range(0, 1, high_open=True))
ACTIVATION = Option(choices=tuple(ACTIVATIONS))
INIT = Option(choices=INITIALISATIONS)
INPUT_SIZE = Option(range=Range(1, meaning="pixels, the side of a square patch"))
FLAG = Option()  # true or false: the annotation says all


def _members(kind: Any) -> list[Any]:
    """The types of a union other than None (``int | list[int] | None`` -> ``[int, list[int]]``)."""
    return [member for member in typing.get_args(kind) if member is not type(None)]


def _is_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


def _is_list(kind: Any) -> bool:
    return typing.get_origin(kind) in (list, tuple) or kind in (list, tuple)


def _shown_choices(option: Option) -> list:
    return [choice for choice in option.choices or () if choice is not None]


def _chosen(option: Option, kind: Any) -> bool:
    """Whether ``option``'s choices speak of values of ``kind`` (spec's padding: strings among
    ['same', 'valid'], integers in a range)."""
    return any(isinstance(choice, kind) and not isinstance(choice, bool) for choice in option.choices or ())


def _plural(kind: Any, option: Option) -> str:
    """'integers >= 1', 'numbers in [0, 1)', 'strings': the items of a list, in words."""
    if kind in (int, float):
        words = "integers" if kind is int else "numbers"
        return f"{words} {option.range.describe()}" if option.range is not None else words
    if kind is str:
        return f"strings among {_shown_choices(option)}" if option.choices is not None else "strings"
    return "items"


def describe(option: Option) -> str:
    """The allowed values of ``option`` in words: 'an integer >= 1', 'one of ['max', 'mean']',
    'an integer >= 1 or a list of 4 integers >= 1', 'a number in [0, 1) (the fraction of units dropped)'."""
    kind = option.kind
    if _is_union(kind):
        return " or ".join(describe(dataclasses.replace(option, kind=member)) for member in _members(kind))
    if typing.get_origin(kind) is typing.Literal:
        return f"one of {list(typing.get_args(kind))}"
    if kind is bool:
        return "true or false"
    if kind in (int, float, str) and _chosen(option, kind):
        return f"one of {[choice for choice in _shown_choices(option) if isinstance(choice, kind)]}"
    if kind in (int, float):
        words = "an integer" if kind is int else "a number"
        if option.range is None:
            return words
        meaning = f" ({option.range.meaning})" if option.range.meaning else ""
        return f"{words} {option.range.describe()}{meaning}"
    if kind is str:
        return "a string"
    if _is_list(kind):
        arguments = typing.get_args(kind)
        item = arguments[0] if arguments else Any
        fewest, most = option.length or (0, None)
        count = (f"{fewest} " if fewest == most else f"{fewest} or more " if most is None and fewest
                 else f"{fewest} to {most} " if most is not None else "")
        return f"a list of {count}{_plural(item, option)}" if item is not Any or count else "a list"
    if typing.get_origin(kind) is dict or kind is dict:
        return "a mapping"
    return "any value"


def _refuse(path: str, value: Any, option: Option) -> ConfigError:
    suggestion = did_you_mean(value, _shown_choices(option)) if isinstance(value, str) and option.choices else ""
    return ConfigError(f"{path} must be {describe(option)}; got {value!r}{suggestion}")


def check_value(path: str, value: Any, option: Option) -> Any:
    """Return ``value`` if ``option`` allows it (numbers as the declared type, lists as lists), else raise.

    Args:
        path: the value's name in the message (``model.options.width``, ``model.options.layers[0].conv.kernel``).
        value: what the config gave.
        option: the declaration (with its ``kind``).

    Raises:
        ConfigError: one line, ``PATH must be ALLOWED; got VALUE`` (with "did you mean" for a misspelt
        choice and an example value for a number); an item of a list is named by its index.
    """
    kind = option.kind
    if kind is Any:
        return value
    if _is_union(kind):
        if value is None and type(None) in typing.get_args(kind):
            return None
        members = _members(kind)
        if len(members) == 1:
            return check_value(path, value, dataclasses.replace(option, kind=members[0]))
        for member in members:
            try:
                return check_value(path, value, dataclasses.replace(option, kind=member))
            except ConfigError:
                continue
        raise _refuse(path, value, option)
    if typing.get_origin(kind) is typing.Literal:
        if value not in typing.get_args(kind):
            raise _refuse(path, value, dataclasses.replace(option, choices=typing.get_args(kind)))
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise _refuse(path, value, option)
        return value
    if kind in (int, float, str) and _chosen(option, kind):
        if isinstance(value, bool) or not isinstance(value, kind) or value not in option.choices:
            raise _refuse(path, value, option)
        return value
    if kind in (int, float):
        return check_number(path, value, option.range or Range(), integer=kind is int)
    if kind is str:
        if not isinstance(value, str):
            raise _refuse(path, value, option)
        return value
    if _is_list(kind):
        fewest, most = option.length or (0, None)
        if not isinstance(value, (list, tuple)) or len(value) < fewest or (most is not None and len(value) > most):
            raise _refuse(path, value, option)
        arguments = typing.get_args(kind)
        item = dataclasses.replace(option, kind=arguments[0] if arguments else Any, length=None)
        return [check_value(f"{path}[{index}]", entry, item) for index, entry in enumerate(value)]
    if typing.get_origin(kind) is dict or kind is dict:
        if not isinstance(value, dict):
            raise _refuse(path, value, option)
        return dict(value)
    return value


Rule = Callable[[Mapping[str, Any], str], "str | None"]
"""A combination rule: ``rule(values, where)`` returns the one-line message when the checked values (every
option, defaults filled in) cannot build together, else None. ``where`` is the table's path
(``model.options``, ``model.options.layers[2].conv``)."""


@dataclass(frozen=True)
class Options:
    """A declared table: the options of one model, or the keys of one spec layer type.

    Attributes:
        owner: how the message names the table's owner after "is not": ``an option of 'fcn'``, ``a key of conv``.
        plural: what the entries are called: ``options``, ``keys``.
        options: name -> :class:`Option` (each with its ``kind`` and ``default``).
        rules: combinations that cannot build, checked in order after every option passed.
    """

    owner: str
    plural: str
    options: dict[str, Option]
    rules: tuple[Rule, ...] = ()

    def defaults(self) -> dict[str, Any]:
        """Each option's default (:data:`REQUIRED` where there is none)."""
        return {name: option.default for name, option in self.options.items()}

    def check(self, where: str, given: Any) -> dict[str, Any]:
        """Every option checked: the given ones against their declarations, the others at their defaults.

        Args:
            where: the table's path in messages (``model.options``).
            given: the mapping the config gave (None = empty).

        Returns:
            ``{name: value}`` for every declared option, defaults filled in.

        Raises:
            ConfigError: not a mapping, an unknown name (with "did you mean"), a missing required
            option, a value its declaration refuses, or the first rule that fails.
        """
        given = {} if given is None else given
        names = list(self.options)
        if not isinstance(given, Mapping):
            raise ConfigError(f"{where} must be a mapping of {self.plural} {names}; got {given!r}")
        for name in given:
            if name not in self.options:
                raise ConfigError(f"{where}.{name} is not {self.owner}; {self.plural} are {names}{did_you_mean(name, names)}")
        values = {}
        for name, option in self.options.items():
            if name in given:
                values[name] = check_value(f"{where}.{name}", given[name], option)
            elif option.default is REQUIRED:
                example = option.range.example if option.range is not None and option.range.example else "..."
                raise ConfigError(f"{where}.{name} is required; e.g. {name}: {example}")
            else:
                values[name] = option.default
        for rule in self.rules:
            message = rule(values, where)
            if message:
                raise ConfigError(message)
        return values


def signature_options(owner: str, builder: Callable[..., Any], declared: Mapping[str, Option],
                      rules: tuple[Rule, ...] = ()) -> Options:
    """The table of a model builder: its keyword parameters, each with its annotation, default and declaration.

    Raises:
        ValueError: a parameter without a declaration or a default, or a declaration without a parameter
            (a programming mistake, found when the model module is imported).
    """
    hints = typing.get_type_hints(builder)
    parameters = {
        name: parameter for name, parameter in inspect.signature(builder).parameters.items()
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    }
    undeclared = [name for name in parameters if name not in declared]
    unknown = [name for name in declared if name not in parameters]
    no_default = [name for name, parameter in parameters.items() if parameter.default is parameter.empty]
    if undeclared or unknown or no_default:
        raise ValueError(
            f"{owner}: declare every builder option in options={{...}} and give it a default "
            f"(undeclared {undeclared}, not a parameter {unknown}, no default {no_default})"
        )
    table = {
        name: declared[name].with_signature(hints.get(name, Any), parameter.default)
        for name, parameter in parameters.items()
    }
    return Options(owner, "options", table, tuple(rules))
