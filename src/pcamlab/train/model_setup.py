"""Everything about the network before its first step: resolved options, pretrained weights, parameter
groups and the optimiser, and the checks that a crop size and a batch size can train this model.

Example:
    >>> from pcamlab.config import load_config
    >>> from pcamlab.models import build_model
    >>> config = load_config(None)
    >>> optimizer = make_optimizer(build_model(config.model), config)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from pcamlab.config import RunConfig
from pcamlab.errors import ConfigError

__all__ = ["split_head", "split_pretrained", "make_optimizer", "load_pretrained_weights", "MOSTLY_INITIAL",
           "check_crop", "with_resolved_options", "plain", "smallest_trainable_batch", "check_batch_size",
           "freeze_backbone_batch_norm"]


def split_head(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters: the head is ``model.head`` / ``model.classifier`` / the last child."""
    head = getattr(model, "head", None) or getattr(model, "classifier", None)
    if not isinstance(head, nn.Module):
        children = [child for child in model.children() if any(True for _ in child.parameters())]
        head = children[-1] if children else model
    head_ids = {id(p) for p in head.parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    return backbone, [p for p in model.parameters() if id(p) in head_ids]


def split_pretrained(model: nn.Module, loaded: Iterable[str]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(pretrained backbone, the rest): what ``freeze_backbone_epochs`` freezes and ``backbone_lr_factor`` slows.

    Only parameters loaded from ``model.pretrained`` (names in ``loaded``) outside the head count as the
    pretrained backbone; the head and every tensor left at its random initial values (a skipped
    ImageNet 7x7 stem, say) train at the full learning rate from the first epoch.
    """
    loaded = set(loaded)
    head_ids = {id(p) for p in split_head(model)[1]}
    backbone_ids = {id(p) for name, p in model.named_parameters() if name in loaded and id(p) not in head_ids}
    parameters = list(model.parameters())
    return [p for p in parameters if id(p) in backbone_ids], [p for p in parameters if id(p) not in backbone_ids]


def make_optimizer(model: nn.Module, config: RunConfig, loaded: Iterable[str] = ()) -> torch.optim.Optimizer:
    """Four parameter groups: pretrained backbone/rest x weights/(biases, norms); no weight decay on the latter."""
    train = config.train
    backbone, head = split_pretrained(model, loaded)
    groups = []
    for part, parameters, factor in (("backbone", backbone, train.backbone_lr_factor), ("head", head, 1.0)):
        weights = [p for p in parameters if p.requires_grad and p.ndim > 1]
        others = [p for p in parameters if p.requires_grad and p.ndim <= 1]
        groups.append({"params": weights, "weight_decay": train.weight_decay, "part": part,
                       "peak_lr": train.learning_rate * factor})
        groups.append({"params": others, "weight_decay": 0.0, "part": part, "peak_lr": train.learning_rate * factor})
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.learning_rate, momentum=train.momentum,
                               nesterov=train.nesterov and train.momentum > 0)
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train.learning_rate)
    if train.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=train.learning_rate, momentum=train.momentum, alpha=0.9)
    return torch.optim.AdamW(groups, lr=train.learning_rate)


MOSTLY_INITIAL = 0.5  # warn when fewer than this fraction of the model's tensors were loaded


def load_pretrained_weights(model: nn.Module, config: RunConfig, say: Callable[[str], object]) -> tuple[dict | None, list[str]]:
    """Load ``model.pretrained`` into ``model``, say what was loaded and skipped, and return the facts.

    Returns:
        ``(facts for summary.json or None, names of the loaded tensors)``. The facts list every
        skipped source tensor with its reason, every model tensor left at its initial values, and the
        parameters that ``train.freeze_backbone_epochs`` freezes and ``train.backbone_lr_factor`` slows.

    Raises:
        ConfigError: ``train.freeze_backbone_epochs`` or ``train.backbone_lr_factor`` is set without
            ``model.pretrained`` (they apply to loaded tensors only).
    """
    train = config.train
    if not config.model.pretrained:
        if train.freeze_backbone_epochs > 0 or train.backbone_lr_factor != 1.0:
            raise ConfigError(
                f"train.freeze_backbone_epochs={train.freeze_backbone_epochs} and train.backbone_lr_factor="
                f"{train.backbone_lr_factor} freeze and slow tensors loaded from model.pretrained, which is not "
                "set: set model.pretrained to a weight file, or train.freeze_backbone_epochs=0 and "
                "train.backbone_lr_factor=1"
            )
        return None, []
    from pcamlab.models.transfer import load_pretrained

    report = load_pretrained(model, config.model.pretrained, config.model.pretrained_format)
    total = len(report["loaded"]) + len(report["missing"])
    say(f"model: {len(report['loaded'])} of {total} tensors loaded from {config.model.pretrained} "
        f"({report['source_format']}), {len(report['missing'])} left at their initial values")
    for entry in report["skipped"]:
        say(f"model: skipped {entry}")
    if report["missing"]:
        say(f"model: left at initial values (trained at the full learning rate): {', '.join(report['missing'])}")
    warning = None
    if len(report["loaded"]) < MOSTLY_INITIAL * total:
        warning = (
            f"only {len(report['loaded'])} of {total} tensors of {config.model.name} were loaded from "
            f"{config.model.pretrained}: most of the model starts from random values; check that model.name "
            "and model.options match the weights (and model.pretrained_format)"
        )
        say(f"warning: {warning}")
    backbone_ids = {id(p) for p in split_pretrained(model, report["loaded"])[0]}
    pretrained_backbone = [name for name, parameter in model.named_parameters() if id(parameter) in backbone_ids]
    facts = {
        "path": str(config.model.pretrained),
        "source_format": report["source_format"],
        "tensors": total,
        "loaded": report["loaded"],
        "left_at_initial_values": report["missing"],
        "skipped": report["skipped"],
        "adapted": report["adapted"],
        "frozen_and_slowed": pretrained_backbone,  # by freeze_backbone_epochs / backbone_lr_factor
        "warning": warning,
    }
    return facts, report["loaded"]


def freeze_backbone_batch_norm(model: nn.Module, backbone_ids: set[int]) -> None:
    """Transfer learning's frozen epochs: the backbone keeps its batch-norm statistics too (eval mode)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and all(id(p) in backbone_ids for p in module.parameters()):
            module.eval()


def check_crop(model: nn.Module, config: RunConfig, patch_size: int, device: torch.device) -> None:
    """Fail at start-up when ``augment.crop_size`` cannot work: too large, or a model tied to one input size."""
    size = config.augment.crop_size
    if size > patch_size:
        raise ConfigError(f"augment.crop_size {size} is larger than the {patch_size} px patches; use 48-72 or 0")
    model.eval()
    try:
        with torch.no_grad():  # trained on crops, scored on full patches: both sizes must work
            for side in (size, patch_size):
                model(torch.zeros(2, 3, side, side, device=device))
    except RuntimeError:
        raise ConfigError(
            f"augment.crop_size {size} needs a model that takes any input size (global pooling, e.g. simple-cnn); "
            f"model.name {config.model.name!r} does not; set augment.crop_size=0"
        ) from None
    model.train()


# PyTorch's batch-norm refuses to train on a single value per channel (torch.nn.functional.batch_norm,
# "Expected more than 1 value per channel when training"): a (1, C) input to BatchNorm1d after a dense
# layer, or a (1, C, 1, 1) feature map to BatchNorm2d.
_ONE_VALUE_PER_CHANNEL = "Expected more than 1 value per channel"


def smallest_trainable_batch(model: nn.Module, sides: Iterable[int], device: torch.device) -> int:
    """1, or 2 when a batch-norm layer of ``model`` cannot train on one patch at any side in ``sides``.

    Probes a copy of the model in training mode with one zero patch per side (the model's own batch-norm
    statistics and the global random stream are left as they were); a model without batch-norm is 1
    without a probe.
    """
    if not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules()):
        return 1
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # dropout draws from the CPU stream
        for side in dict.fromkeys(sides):
            try:
                probe(torch.zeros(1, 3, side, side, device=device))
            except ValueError as error:
                if _ONE_VALUE_PER_CHANNEL not in str(error):
                    raise
                return 2
    return 1


def check_batch_size(config: RunConfig, processes: int, smallest: int) -> None:
    """Refuse a ``train.batch_size`` whose per-process batches the model cannot train on.

    Raises:
        ConfigError: each process would train on fewer than ``smallest`` patches per step (one line naming
            ``train.batch_size``, never PyTorch's batch-norm traceback).
    """
    batch_size = config.train.batch_size
    local = batch_size // processes
    if local >= smallest:
        return
    spread = f" over {processes} processes ({local} per process)" if processes > 1 else ""
    raise ConfigError(
        f"train.batch_size {batch_size}{spread} is too small for model.name {config.model.name!r}: its batch-norm "
        f"layers need at least {smallest} patches per step to compute batch statistics; set train.batch_size "
        f"to {smallest * processes} or more"
    )


def plain(value: Any) -> Any:
    """Tuples become lists (YAML/JSON safe), recursively."""
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def with_resolved_options(config: RunConfig) -> RunConfig:
    """A copy of ``config`` whose ``model.options`` lists every builder option, defaults included.

    Written into config.yaml and every checkpoint, so a checkpoint rebuilds the same network even if a
    builder's default changes in a later pcamlab. The options are validated when the model is built.
    """
    from pcamlab.models.factory import model_options

    resolved = copy.deepcopy(config)
    resolved.model.options = plain({**model_options(config.model.name), **config.model.options})
    return resolved
