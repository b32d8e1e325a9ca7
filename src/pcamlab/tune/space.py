"""Search spaces and sweep plans in plain YAML, validated at load.

A **search space** (``pcamlab tune --space``) maps dotted config fields to distributions::

    params:
      train.learning_rate: {float: [1.0e-4, 1.0e-2], log: true}   # log-uniform
      train.batch_size:    {int: [32, 128], step: 32}
      train.optimizer:     {categorical: [adamw, sgd]}
      train.momentum:      {float: [0.8, 0.99], when: {train.optimizer: sgd}}   # only for SGD
      model.options.width: {categorical: [16, 32, 64]}

Each parameter has exactly one of ``int: [low, high]``, ``float: [low, high]`` (both inclusive) or
``categorical: [choices]``, and optionally ``log: true`` (int/float, low > 0), ``step`` (int/float;
required for a float under the grid sampler) and ``when: {PARAM: value-or-list}`` (sampled only when an
earlier categorical parameter took one of those values; otherwise the base config's value stays).
Any field of :class:`pcamlab.config.RunConfig` may be searched; ``model.options.KEY`` must be an option
of the model the trial builds. Under the grid sampler every parameter is a grid axis, conditional ones
included (their values repeat where they are inactive): keep conditional parameters out of grids.

**Architecture knobs** (``spec.*``, :data:`SPEC_KNOBS`) describe a plain CNN in a few numbers: stages,
width, convolutions per stage, 1x1 convolutions, stride-2 convolution versus pooling, pooling type,
activation, batch-norm, dropout. When a space or sweep uses any of them (or has a ``spec:`` section
with their fixed values), every trial's model is a ``spec`` model whose ``layers`` list
:func:`spec_layers` writes from the knobs. The defaults equal ``simple-cnn``'s layout (4 stages
32-64-128-256, conv-bn-relu, max-pool, global average pool, dropout 0.3).

A **sweep plan** (``pcamlab tune --sweep``) changes one knob at a time from the base config::

    seeds: [0, 1, 2]                 # every run, the base included, is trained once per seed
    knobs:
      width: {spec.width: [16, 64]}                      # one field, several values
      optimizer:                                          # values that set several fields at once
        - {train.optimizer: sgd, train.learning_rate: 0.05}
        - {train.optimizer: adam}

Every mistake is one :class:`~pcamlab.errors.ConfigError` line naming the file and the entry.

Example:
    >>> space = load_space("configs/tune/default.yaml", base_values)
    >>> values = space.apply(base_values, {"train.learning_rate": 0.003})
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcamlab.config import RunConfig, config_from_dict, read_yaml
from pcamlab.errors import ConfigError, PcamlabError, did_you_mean

__all__ = [
    "DOWNSAMPLING",
    "SPEC_KNOBS",
    "Param",
    "SearchSpace",
    "SweepPlan",
    "SweepRun",
    "load_space",
    "load_sweep",
    "set_dotted",
    "spec_layers",
]

DISTRIBUTIONS = ("int", "float", "categorical")
PARAM_KEYS = (*DISTRIBUTIONS, "log", "step", "when")
DOWNSAMPLING = ("max", "average", "sum", "stride")

# knob -> (type, default, allowed values or None, meaning). Defaults = simple-cnn's layout.
SPEC_KNOBS: dict[str, tuple[type, Any, tuple | None, str]] = {
    "stages": (int, 4, None, "conv stages; the feature map halves and the channels double between stages"),
    "width": (int, 32, None, "channels of the first stage"),
    "convs_per_stage": (int, 1, None, "3x3 (kernel) convolutions per stage"),
    "kernel": (int, 3, None, "kernel size of those convolutions (odd)"),
    "one_by_one": (bool, False, None, "a 1x1 convolution after each stage (network in network, Lin et al. 2014)"),
    "downsample": (str, "max", DOWNSAMPLING, "between stages: 2x2 max/average/sum pooling, or a stride-2 convolution"),
    "activation": (str, "relu", None, "activation after every convolution (see pcamlab models)"),
    "batch_norm": (bool, True, None, "batch-norm after every convolution"),
    "dropout": (float, 0.3, None, "dropout before the logit layer"),
    "global_pool": (str, "average", ("average", "max"), "pooling of the last feature map to a vector"),
}


def spec_layers(knobs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ``model.options.layers`` of a ``spec`` model described by architecture knobs.

    Args:
        knobs: values of :data:`SPEC_KNOBS` (missing ones take their defaults).

    Returns:
        The layer list (plain values): per stage, a 2x2 pool (or a stride-2 first convolution) from the
        second stage on, ``convs_per_stage`` convolutions of ``width * 2**stage`` filters, an optional
        1x1 convolution; then the global pool and dropout (``spec`` appends the 1-unit logit layer).

    Raises:
        ConfigError: a knob is unknown or has a bad value (named ``spec.KNOB``).

    Example:
        >>> spec_layers({"stages": 2, "width": 8, "downsample": "stride"})[2]["conv"]["stride"]
        2
    """
    values = _check_knobs(dict(knobs or {}), "spec")
    layers: list[dict[str, Any]] = []
    conv = {"padding": "same", "activation": values["activation"], "batch_norm": values["batch_norm"]}
    for stage in range(values["stages"]):
        filters = values["width"] * 2**stage
        strided = stage > 0 and values["downsample"] == "stride"
        if stage > 0 and not strided:
            layers.append({"pool": {"type": values["downsample"], "size": 2}})
        for index in range(values["convs_per_stage"]):
            stride = 2 if strided and index == 0 else 1
            layers.append({"conv": {"filters": filters, "kernel": values["kernel"], "stride": stride, **conv}})
        if values["one_by_one"]:
            layers.append({"conv": {"filters": filters, "kernel": 1, **conv}})
    layers.append({"global_pool": values["global_pool"]})
    if values["dropout"] > 0:
        layers.append({"dropout": values["dropout"]})
    return layers


def _check_knobs(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Knob values with defaults filled in, each checked (one-line ConfigError naming ``where.KNOB``)."""
    from pcamlab.models.layers import ACTIVATIONS

    checked = {}
    for name, (kind, default, allowed, _) in SPEC_KNOBS.items():
        value = values.pop(name, default)
        path = f"{where}.{name}"
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false; got {value!r}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{path} must be an integer >= 1; got {value!r}")
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"{path} must be a number in [0, 1); got {value!r}")
            value = float(value)
        choices = ACTIVATIONS if name == "activation" else allowed
        if choices is not None and value not in choices:
            raise ConfigError(f"{path} must be one of {list(choices)}; got {value!r}{did_you_mean(value, choices)}")
        if name == "kernel" and value % 2 == 0:
            raise ConfigError(f"{path} must be odd ('same' padding with a stride-2 convolution); got {value}")
        checked[name] = value
    if values:
        unknown = next(iter(values))
        raise ConfigError(
            f"unknown architecture knob {where}.{unknown}; knobs are {list(SPEC_KNOBS)}{did_you_mean(unknown, SPEC_KNOBS)}"
        )
    return checked


# ----------------------------------------------------------------------------------------------
# Dotted paths into nested config values.


def set_dotted(values: dict[str, Any], path: str, value: Any) -> None:
    """Set ``values["a"]["b"]["c"] = value`` for ``path = "a.b.c"``, creating mappings on the way."""
    parts = path.split(".")
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _get_dotted(values: Mapping[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _field_type(path: str) -> Any:
    """The declared type of a config field ``section.field``, or raise naming the path."""
    parts = path.split(".")
    hints = typing.get_type_hints(RunConfig)
    sections = list(hints)
    if parts[0] not in hints:
        raise ConfigError(f"{path!r} is not a config field: sections are {sections}{did_you_mean(parts[0], sections)}")
    cls = hints[parts[0]]
    names = [f.name for f in dataclasses.fields(cls)]
    if len(parts) != 2 or parts[1] not in names:
        name = parts[1] if len(parts) > 1 else ""
        raise ConfigError(f"{path!r} is not a config field: {parts[0]} has {names}{did_you_mean(name, names)}")
    return typing.get_type_hints(cls)[parts[1]]


def _apply(base: Mapping[str, Any], assignments: Mapping[str, Any], spec_defaults: Mapping[str, Any] | None) -> dict:
    """Nested config values: ``base`` with dotted ``assignments``; ``spec.*`` knobs become a spec model."""
    values = copy.deepcopy(dict(base))
    knobs = dict(spec_defaults or {})
    uses_spec = spec_defaults is not None
    for path, value in assignments.items():
        if path.startswith("spec."):
            knobs[path[len("spec."):]] = value
            uses_spec = True
        else:
            set_dotted(values, path, value)
    if uses_spec:
        model = values.setdefault("model", {})
        options = model.get("options") if model.get("name") == "spec" and isinstance(model.get("options"), dict) else {}
        model["name"] = "spec"
        model["options"] = {"init": options.get("init", "kaiming"), **options, "layers": spec_layers(knobs)}
    return values


# ----------------------------------------------------------------------------------------------
# Search spaces.


@dataclass(frozen=True)
class Param:
    """One searched field: its distribution, and the condition under which it is sampled."""

    path: str  # dotted config field, model.options.KEY or spec.KNOB; also the Optuna parameter name
    kind: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (earlier param, values that switch this one on)

    def active(self, sampled: Mapping[str, Any]) -> bool:
        """Whether the ``when`` conditions hold for the values sampled so far."""
        return all(name in sampled and sampled[name] in allowed for name, allowed in self.when)

    def suggest(self, trial) -> Any:
        """Draw this parameter from an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self, where: str) -> list[Any]:
        """Every value of this parameter, for the grid sampler (ints by step, floats need a step)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.step is None and self.kind == "float":
            raise ConfigError(f"{where}: params.{self.path} needs a step for the grid sampler (or use categorical)")
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + index * step for index in range(count)]
        return [int(round(v)) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def endpoints(self) -> list[Any]:
        """Values that check the field's type at load: every choice, or low and high."""
        if self.kind == "categorical":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]


@dataclass
class SearchSpace:
    """Parameters in sampling order, the fixed architecture knobs, and the file they came from."""

    params: list[Param]
    spec_defaults: dict[str, Any] | None = None  # fixed knobs when the trials build spec models
    source: str = "search space"
    raw: dict[str, Any] = field(default_factory=dict)  # the YAML as read (copied into the study folder)

    def sample(self, trial) -> dict[str, Any]:
        """Draw every active parameter from an Optuna trial: ``{path: value}`` in order."""
        sampled: dict[str, Any] = {}
        for param in self.params:
            if param.active(sampled):
                sampled[param.path] = param.suggest(trial)
        return sampled

    def apply(self, base: Mapping[str, Any], sampled: Mapping[str, Any]) -> dict[str, Any]:
        """Nested config values of a trial: the base config with the sampled values set."""
        return _apply(base, sampled, self.spec_defaults)

    def base_point(self, base: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The base config as a point of this space, so a study can score it as its first trial.

        Each active parameter takes the base's value of its field (a model option the base leaves out
        takes the model's default; a ``spec.*`` knob the space's ``spec`` section or simple-cnn's layout).

        Returns:
            ``(point, "")``, or ``(None, reason)`` when a base value lies outside the space (a
            categorical value not among the choices, a number outside ``[low, high]`` or off the step).
        """
        from pcamlab.models import model_options

        point: dict[str, Any] = {}
        for param in self.params:
            if not param.active(point):
                continue
            if param.path.startswith("spec."):
                knob = param.path[len("spec."):]
                value = (self.spec_defaults or {}).get(knob, SPEC_KNOBS[knob][1] if knob in SPEC_KNOBS else None)
            else:
                value = _get_dotted(base, param.path)
                if value is None and param.path.startswith("model.options."):
                    name = _get_dotted(base, "model.name")
                    try:
                        value = model_options(name).get(param.path[len("model.options."):]) if name else None
                    except PcamlabError:
                        value = None
            if value is None:
                return None, f"the base config sets no value for {param.path}"
            if param.kind == "categorical":
                if value not in param.choices:
                    return None, f"the base's {param.path}={value!r} is not among the choices {list(param.choices)}"
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not param.low <= value <= param.high:
                return None, f"the base's {param.path}={value!r} is outside [{param.low:g}, {param.high:g}]"
            elif param.step is not None and not float((value - param.low) / param.step).is_integer():
                return None, f"the base's {param.path}={value!r} is not on the step {param.step:g} from {param.low:g}"
            point[param.path] = int(value) if param.kind == "int" else value
        return point, ""

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space (every parameter, conditional ones included)."""
        return {param.path: param.grid_values(self.source) for param in self.params}


def _number(value: Any, kind: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and not float(value).is_integer()):
        raise ConfigError(f"{where} must be {'an integer' if kind == 'int' else 'a number'}; got {value!r}")
    return float(value)


def _parse_param(path: str, spec: Any, where: str, earlier: dict[str, Param]) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping such as {{float: [0.0001, 0.01], log: true}}; got {spec!r}")
    unknown = [key for key in spec if key not in PARAM_KEYS]
    if unknown:
        raise ConfigError(f"{where} has unknown key {unknown[0]!r}; keys are {list(PARAM_KEYS)}{did_you_mean(unknown[0], PARAM_KEYS)}")
    kinds = [key for key in DISTRIBUTIONS if key in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where} needs exactly one of int: [low, high], float: [low, high], categorical: [choices]; got {sorted(spec)}")
    kind = kinds[0]
    low = high = step = None
    choices: tuple[Any, ...] = ()
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log must be true or false; got {log!r}")
    if kind == "categorical":
        choices = spec["categorical"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.categorical must be a non-empty list of values; got {choices!r}")
        if any(isinstance(choice, (dict, list)) for choice in choices):
            raise ConfigError(f"{where}.categorical values must be plain numbers, strings or booleans; got {choices!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{where}.categorical lists a value twice; got {choices!r}")
        if log or "step" in spec:
            raise ConfigError(f"{where}: log and step apply to int and float only")
        choices = tuple(choices)
    else:
        bounds = spec[kind]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ConfigError(f"{where}.{kind} must be [low, high]; got {bounds!r}")
        low, high = (_number(value, kind, f"{where}.{kind}") for value in bounds)
        if not low < high:
            raise ConfigError(f"{where}.{kind} must have low < high; got {bounds!r} (use categorical for one value)")
        if log and low <= 0:
            raise ConfigError(f"{where}: log needs low > 0; got {bounds!r}")
        if "step" in spec:
            step = _number(spec["step"], kind, f"{where}.step")
            if step <= 0:
                raise ConfigError(f"{where}.step must be > 0; got {spec['step']!r}")
            if log:
                raise ConfigError(f"{where}: log and step cannot be combined (Optuna samples either)")
    when = spec.get("when", {})
    if not isinstance(when, dict):
        raise ConfigError(f"{where}.when must be a mapping {{PARAM: value or [values]}}; got {when!r}")
    conditions = []
    for name, allowed in when.items():
        parent = earlier.get(name)
        if parent is None or parent.kind != "categorical":
            names = [p.path for p in earlier.values() if p.kind == "categorical"]
            raise ConfigError(
                f"{where}.when names {name!r}, which is not a categorical parameter listed before it; "
                f"earlier categorical parameters: {names}{did_you_mean(name, names)}"
            )
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        missing = [value for value in allowed if value not in parent.choices]
        if missing:
            raise ConfigError(f"{where}.when: {missing[0]!r} is not a choice of {name}; choices are {list(parent.choices)}")
        conditions.append((name, allowed))
    return Param(path, kind, low, high, log, step, choices, tuple(conditions))


def _check_path(path: str, where: str) -> None:
    if path.startswith("spec."):
        knob = path[len("spec."):]
        if knob not in SPEC_KNOBS:
            raise ConfigError(f"{where}: unknown architecture knob {path!r}; knobs are {['spec.' + k for k in SPEC_KNOBS]}{did_you_mean(path, ['spec.' + k for k in SPEC_KNOBS])}")
        return
    if path.startswith("model.options."):
        return  # checked per model when the trial configs are built
    try:
        annotation = _field_type(path)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    if typing.get_origin(annotation) is dict or annotation is dict:
        raise ConfigError(f"{where}: {path} is a mapping; search its keys instead, e.g. {path}.width")


def _check_values(base: Mapping[str, Any], assignments: Mapping[str, Any], spec_defaults, where: str) -> None:
    """Build the config (and model) of ``base`` + ``assignments``; re-raise any error naming ``where``."""
    from pcamlab.models.factory import model_options

    try:
        values = _apply(base, assignments, spec_defaults)
        config = config_from_dict(values)
        known = model_options(config.model.name)
        for path in assignments:
            if path.startswith("model.options.") and path.split(".", 2)[2] not in known:
                key = path.split(".", 2)[2]
                raise ConfigError(
                    f"{path} is not an option of model {config.model.name!r}; options are {list(known)}{did_you_mean(key, known)}"
                )
        if config.model.name == "spec" or any(path.startswith("model.") for path in assignments):
            from pcamlab.models import build_model

            build_model(config.model)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def load_space(path: str | Path, base: Mapping[str, Any] | None = None) -> SearchSpace:
    """Read and check a search space YAML file against the base config's nested values.

    Args:
        path: the YAML file (``params:`` and optionally ``spec:``).
        base: nested plain values of the base config (``config_to_dict(load_config(...))``).

    Returns:
        The :class:`SearchSpace`.

    Raises:
        ConfigError: missing file, bad YAML, unknown field or knob, bad distribution, a value of the
            wrong type or outside the field's choices, a ``when`` that names no earlier categorical
            parameter. One line, naming the file and the entry.
    """
    source = str(path)
    raw = read_yaml(path)
    base = base if base is not None else {}
    where = f"search space {source!r}"
    for key in raw:
        if key not in ("params", "spec"):
            raise ConfigError(f"{where} has unknown section {key!r}; sections are ['params', 'spec']{did_you_mean(key, ['params', 'spec'])}")
    entries = raw.get("params")
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{where} needs a params: mapping of dotted fields to distributions, e.g. train.learning_rate: {{float: [0.0001, 0.01], log: true}}")
    spec_defaults = _spec_section(raw, where)
    params: dict[str, Param] = {}
    for name, spec in entries.items():
        name = str(name)
        entry = f"{where}: params.{name}"
        _check_path(name, where)
        params[name] = _parse_param(name, spec, entry, params)
    if spec_defaults is None and any(name.startswith("spec.") for name in params):
        spec_defaults = {}
    space = SearchSpace(list(params.values()), spec_defaults, source, raw)
    for param in space.params:
        for value in param.endpoints():
            conditions = {name: allowed[0] for name, allowed in param.when}
            _check_values(base, {**conditions, param.path: value}, spec_defaults, f"{where}: params.{param.path}={value!r}")
    return space


def _spec_section(raw: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    if "spec" not in raw:
        return None
    values = raw["spec"]
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: spec must be a mapping of architecture knobs {list(SPEC_KNOBS)}; got {values!r}")
    try:
        _check_knobs(dict(values), "spec")
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return dict(values)


# ----------------------------------------------------------------------------------------------
# Sweep plans.


@dataclass(frozen=True)
class SweepRun:
    """One training of a sweep: a knob value (or the base) with one seed."""

    knob: str  # "base" for the base config
    value: str  # label of the value ("base" for the base)
    seed: int
    assignments: tuple[tuple[str, Any], ...]  # dotted field -> value set on top of the base


@dataclass
class SweepPlan:
    """Every run of a one-factor-at-a-time sweep, the base's runs first."""

    runs: list[SweepRun]
    seeds: list[int]
    knobs: dict[str, list[str]]  # knob -> value labels, in file order
    spec_defaults: dict[str, Any] | None = None
    source: str = "sweep"
    raw: dict[str, Any] = field(default_factory=dict)

    def apply(self, base: Mapping[str, Any], run: SweepRun) -> dict[str, Any]:
        """Nested config values of ``run``: the base, the run's assignments, ``train.seed``."""
        return _apply(base, {**dict(run.assignments), "train.seed": run.seed}, self.spec_defaults)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _label(assignments: Mapping[str, Any], single: bool) -> str:
    if single:
        return _text(next(iter(assignments.values())))
    return ", ".join(f"{path.split('.')[-1]}={_text(value)}" for path, value in assignments.items())


def load_sweep(path: str | Path, base: Mapping[str, Any] | None = None) -> SweepPlan:
    """Read and check a sweep plan (``seeds``, ``knobs``, optional ``spec``) against the base config.

    Every run's config is built (and its model, for architecture knobs) at load, so a bad value fails
    before anything trains.

    Raises:
        ConfigError: one line naming the file and the entry.
    """
    source = str(path)
    raw = read_yaml(path)
    base = base if base is not None else {}
    where = f"sweep plan {source!r}"
    sections = ("seeds", "knobs", "spec")
    for key in raw:
        if key not in sections:
            raise ConfigError(f"{where} has unknown section {key!r}; sections are {list(sections)}{did_you_mean(key, sections)}")
    seeds = raw.get("seeds", 3)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 2:
            raise ConfigError(f"{where}: seeds must be >= 2 (one seed cannot show seed-to-seed noise); got {seeds}")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or len(seeds) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds must be a count >= 2 or a list of >= 2 distinct integers; got {seeds!r}")
    knobs_raw = raw.get("knobs")
    if not isinstance(knobs_raw, dict) or not knobs_raw:
        raise ConfigError(f"{where} needs knobs: a mapping of knob name to {{field: [values]}} or a list of {{field: value}} mappings")
    spec_defaults = _spec_section(raw, where)
    if spec_defaults is None and any(
        str(p).startswith("spec.") for v in knobs_raw.values() for m in (v if isinstance(v, list) else [v]) if isinstance(m, dict) for p in m
    ):
        spec_defaults = {}
    runs = [SweepRun("base", "base", seed, ()) for seed in seeds]
    knobs: dict[str, list[str]] = {}
    for knob, spec in knobs_raw.items():
        knob = str(knob)
        entry = f"{where}: knobs.{knob}"
        if isinstance(spec, dict) and len(spec) == 1 and isinstance(next(iter(spec.values())), list):
            field_path, values = next(iter(spec.items()))
            variants = [{str(field_path): value} for value in values]
            single = True
        elif isinstance(spec, list) and spec and all(isinstance(item, dict) and item for item in spec):
            variants = [{str(k): v for k, v in item.items()} for item in spec]
            single = False
        else:
            raise ConfigError(f"{entry} must be {{field: [values]}} or a list of {{field: value, ...}} mappings; got {spec!r}")
        if not variants:
            raise ConfigError(f"{entry} lists no values")
        labels = []
        for variant in variants:
            for field_path in variant:
                _check_path(field_path, entry)
            label = _label(variant, single)
            if label in labels:
                raise ConfigError(f"{entry} lists the value {label!r} twice")
            _check_values(base, variant, spec_defaults, f"{entry}={label}")
            labels.append(label)
            runs += [SweepRun(knob, label, seed, tuple(variant.items())) for seed in seeds]
        knobs[knob] = labels
    _check_values(base, {}, spec_defaults, f"{where}: the base")
    return SweepPlan(runs, list(seeds), knobs, spec_defaults, source, raw)
