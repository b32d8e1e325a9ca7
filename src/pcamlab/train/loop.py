"""The training loop: one file to read top to bottom.

``train(config, out_dir)`` opens the data, builds the model, and for each epoch: shuffles (seeded by
epoch, so a resumed run sees the same order), augments each batch as tensor operations on the training
device, steps the optimiser and the per-step learning-rate schedule, evaluates on the validation split,
logs a row to ``history.csv`` and TensorBoard, and saves ``last.safetensors`` (every epoch) and
``best.safetensors`` (when the monitored value improves). ``resume.pt`` holds what a resumed run needs
(optimiser and schedule state, EMA weights, the epoch, the best value); it is loaded with
``weights_only=True``, so nothing in it is executed.

A finished run folder is never overwritten: a new run needs a new ``out_dir``; ``resume=True``
continues an interrupted one from its last completed epoch and ends with the same weights as a run
that was never interrupted (a run interrupted before its first epoch ended starts again from epoch 1).
``continue_from=RUN`` trains a finished run further, up to a larger ``train.epochs``, into a new
``out_dir``: RUN's files stay as they were.

Launched by ``torchrun --nproc-per-node N``, every process trains on its share of each global batch
(``train.batch_size`` patches per step in total) with DistributedDataParallel; only rank 0 writes logs
and checkpoints. The processes follow one clock, rank 0's, so a time budget and a schedule over it
give every process the same learning rate and the same last step.

Example:
    >>> from pcamlab.config import load_config
    >>> result = train(load_config("configs/default.yaml"), "runs/first")
    >>> result["best"]["val_auc"]
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from pcamlab.config import RunConfig, config_to_dict
from pcamlab.errors import ConfigError, DataError, RunError, RunFolderError
from pcamlab.fileio import atomic_path, write_json_atomic, write_text_atomic

__all__ = ["train", "HISTORY_COLUMNS", "learning_rate_factor", "crops_in_epoch", "compute_loss", "split_head",
           "split_pretrained", "prepare_run_dir"]

HISTORY_COLUMNS = [
    "epoch", "train_loss", "val_loss", "val_auc", "val_accuracy", "learning_rate", "seconds",
    "images_per_second",
]


def prepare_run_dir(out_dir: Path, resume: bool, *, create: bool = True) -> None:
    """Refuse to overwrite a run; on resume, require a started run (its ``config.yaml``) in ``out_dir``.

    With ``create=False`` the folder is left to the first file written into it, so a run that stops at
    its data (a missing file, nothing readable) leaves no empty run folder behind.

    Raises:
        RunError: a new run into a folder that holds files, or a resume of a folder that holds no run
            (the message says which: missing, empty, or without ``config.yaml``).
    """
    where = str(out_dir)
    if resume:
        if not out_dir.is_dir():
            raise RunFolderError(f"nothing to resume: {where!r} does not exist; start a new run there instead")
        if not any(out_dir.iterdir()):
            raise RunFolderError(f"nothing to resume: {where!r} is empty; start a new run there instead")
        if not (out_dir / "config.yaml").is_file():
            raise RunFolderError(
                f"nothing to resume in {where!r}: it holds no pcamlab run (no config.yaml); point resume at a "
                "run folder, or start a new run in another folder"
            )
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunFolderError(
            f"output folder {where!r} already holds a run; choose another out_dir "
            "(or resume=True to continue an interrupted run)", parameters=("out_dir", "resume"),
        )
    if create:
        out_dir.mkdir(parents=True, exist_ok=True)


# Progressive resizing ends once this share of train.time_budget_minutes is spent, whatever
# augment.crop_epochs says: a budget run on a slower machine still trains its second half on full patches.
CROP_BUDGET_SHARE = 0.5


def crops_in_epoch(config: RunConfig, epoch: int, budget_fraction: float | None = None) -> bool:
    """Whether epoch ``epoch`` (1-based) trains on ``augment.crop_size`` crops instead of full patches.

    ``augment.crop_epochs: 0`` crops in every epoch. Otherwise crops train epochs 1 to ``crop_epochs``, but
    never the last epoch (``train.epochs``) and never an epoch that starts once ``CROP_BUDGET_SHARE`` of
    ``train.time_budget_minutes`` is spent (``budget_fraction``, the share used so far; None = no budget):
    a network trained only on crops scored full patches at AUC 0.866 where ending on full patches gave
    0.90 (README, "What made the speedrun"), so every progressive run ends on full patches.
    """
    augment = config.augment
    if not augment.crop_size:
        return False
    if augment.crop_epochs == 0:
        return True
    if epoch > min(augment.crop_epochs, config.train.epochs - 1):
        return False
    return budget_fraction is None or budget_fraction < CROP_BUDGET_SHARE


def learning_rate_factor(
    config: RunConfig, progress: float, plateau_factor: float = 1.0, budget_fraction: float | None = None
) -> float:
    """Multiplier of the peak learning rate at ``progress`` epochs (fractional) into training.

    With ``budget_fraction`` (the share of ``train.time_budget_minutes`` used so far, for
    ``train.schedule_over: budget``) the cosine or one-cycle decay runs over whichever ends training
    first, the time budget or ``train.epochs``: its position is the larger of ``budget_fraction`` and
    ``progress / train.epochs``. So a slow model still ends its schedule when the budget ends (Li et al.
    2020, "Budgeted training"), and a budget recipe cut to fewer epochs (``train.epochs=2``) ends its
    schedule at the end of epoch 2; the warm-up stays in epochs.
    """
    train = config.train
    budget = None
    if budget_fraction is not None and train.scheduler in ("cosine", "onecycle"):
        budget = min(max(budget_fraction, progress / max(train.epochs, 1e-9), 0.0), 1.0)
    if train.scheduler == "onecycle":  # Smith & Topin 2019: cosine up to the peak, cosine down to ~0
        if budget is not None:  # rise over the first 30% of the budget, fall over the rest
            position, up, total = budget, 0.3, 1.0
        else:
            position, up, total = progress, train.warmup_epochs if train.warmup_epochs > 0 else 0.3 * train.epochs, train.epochs
        if position < up:
            return _half_cosine(position / up, 0.04, 1.0)
        return _half_cosine(min((position - up) / max(total - up, 1e-9), 1.0), 1.0, 1e-4)
    if budget is not None:  # cosine over the budget, down to 1% of the peak; the warm-up stays in epochs
        warm = min((progress + 1e-3) / train.warmup_epochs, 1.0) if train.warmup_epochs > 0 else 1.0
        return warm * _half_cosine(budget, 1.0, 0.01)
    warmup = min(train.warmup_epochs, train.epochs)
    if warmup > 0 and progress < warmup:
        return (progress + 1e-3) / warmup * plateau_factor
    if train.scheduler in ("none", "plateau"):
        return plateau_factor
    if train.scheduler == "step":
        return train.gamma ** math.floor(progress / max(train.step_size, 1))
    if train.scheduler == "exponential":
        return train.gamma**progress
    # cosine from the end of warm-up to the last epoch, down to 1% of the peak
    span = max(train.epochs - warmup, 1e-9)
    return _half_cosine(min(max((progress - warmup) / span, 0.0), 1.0), 1.0, 0.01)


def _half_cosine(fraction: float, start: float, end: float) -> float:
    """Half a cosine wave from ``start`` (at fraction 0) to ``end`` (at fraction 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """The training loss of logits (B,) against 0/1 labels (B,), with label smoothing."""
    train = config.train
    targets = labels * (1.0 - train.label_smoothing) + 0.5 * train.label_smoothing
    if train.loss == "mse":
        return F.mse_loss(torch.sigmoid(logits), targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if train.loss == "focal":
        probability = torch.sigmoid(logits)
        p_true = probability * targets + (1 - probability) * (1 - targets)
        return ((1 - p_true) ** train.focal_gamma * bce).mean()
    return bce.mean()


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


def _make_optimizer(model: nn.Module, config: RunConfig, loaded: Iterable[str] = ()) -> torch.optim.Optimizer:
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


def _load_pretrained(model: nn.Module, config: RunConfig, say: Callable[[str], object]) -> tuple[dict | None, list[str]]:
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


def _evaluate(model, source, contract, device) -> dict[str, Any]:
    """Validation loss, AUC and accuracy at threshold 0.5 (history's ``val_accuracy``), with the raw predictions.

    The accuracy is at 0.5 for every epoch, not at the threshold chosen so far, so the column compares
    across epochs; ``pcamlab evaluate`` reports accuracy at the stored threshold and says where it came from.
    Scored in the contract's precision (fp32, whatever ``train.precision`` is), as ``evaluate``,
    ``predict`` and every Predictor score: the AUC a checkpoint was chosen on is then the AUC
    ``evaluate`` reproduces on any machine, and a threshold chosen here is not rounded to bf16's 8-bit
    mantissa (bf16 logits put thresholds on a coarse grid of sigmoids).
    """
    from pcamlab.evaluate.metrics import roc_auc
    from pcamlab.runtime.device import scoring

    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for images, batch_labels, _ in source.epoch(seed=0):
            if len(batch_labels) == 0:
                continue
            x = contract.to_model_input(images.to(device, non_blocking=True))  # (B, 3, H, W)
            with scoring(device, contract.precision):
                output = model(x)  # (B, 1)
            logits.append(output.float().reshape(-1).cpu())
            labels.append(batch_labels)
    if not logits:  # streaming met only unreadable validation files
        from pcamlab.errors import DataError

        raise DataError(
            f"the validation split has no readable patch ({getattr(source, 'skipped', 0)} unreadable files "
            "skipped); fix or replace the files"
        )
    logit = torch.cat(logits)
    label = torch.cat(labels)
    loss = F.binary_cross_entropy_with_logits(logit, label.float()).item()
    probability = torch.sigmoid(logit).numpy().astype(np.float64)
    label_array = label.numpy().astype(np.int64)
    auc = roc_auc(label_array, probability)
    accuracy = float(((probability >= 0.5) == (label_array == 1)).mean())
    return {"val_loss": loss, "val_auc": float("nan") if auc is None else auc, "val_accuracy": accuracy,
            "labels": label_array, "probabilities": probability}


def _is_better(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    if monitor == "val_loss":
        return value < best - min_delta
    return value > best + min_delta


def _data_stats(images: torch.Tensor | None, reader, skip_bad: bool = False) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] units from the training images (a sample of them when streaming).

    When streaming, up to 2,048 seeded picks are decoded; with ``skip_bad`` unreadable ones are left out.
    """
    from pcamlab.data.normalize import channel_stats

    if images is not None:
        return channel_stats(images.numpy())
    from pcamlab.data import BadImageError
    from pcamlab.errors import DataError

    rng = np.random.default_rng(0)
    picks = rng.choice(len(reader), size=min(len(reader), 2048), replace=False)
    sample, skipped = [], 0
    for index in sorted(picks):
        try:
            sample.append(reader[int(index)][0])
        except BadImageError:
            if not skip_bad:
                raise
            skipped += 1  # the same files are skipped (and counted) by the batches
    if not sample:
        raise DataError(
            f"none of the {len(picks)} training patches sampled for the channel statistics is readable (first: "
            f"{reader.name(int(min(picks)))}); fix or replace the files"
        )
    return channel_stats(np.stack(sample))


def _fit_stain_normalizer(config: RunConfig, sources: list) -> dict[str, Any] | None:
    """Fit the configured stain normaliser on training patches and apply it to RAM-cached splits."""
    method = config.data.stain_normalization
    if method == "none":
        return None
    from pcamlab.data.loader import InMemoryBatches
    from pcamlab.data.normalize import NORMALIZERS

    if not all(isinstance(source, InMemoryBatches) for source in sources):
        raise ConfigError(
            "data.stain_normalization needs the decoded images in RAM; set data.cache=ram "
            "(or raise data.memory_budget_gb)"
        )
    train_images = sources[0].images.numpy()
    picks = np.random.default_rng(config.data.seed).choice(len(train_images), size=min(64, len(train_images)), replace=False)
    normalizer = NORMALIZERS.get(method, "data.stain_normalization")().fit(train_images[np.sort(picks)])
    for source in sources:
        images = source.images.numpy()
        images[:] = normalizer.transform(images)
    return normalizer.to_dict()


class _EMA:
    """Exponential moving average of a model's weights (floating buffers too; integer buffers are copied).

    One update is two fused ``torch._foreach`` calls over tensor lists gathered once (walking
    ``state_dict()`` every step cost the speedrun 20% of its training patches/s).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.updates = 0
        self._source: int | None = None  # id of the model the tensor lists below were gathered from
        self._averaged: list[torch.Tensor] = []
        self._current: list[torch.Tensor] = []
        self._copied: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _gather(self, model: nn.Module) -> None:
        averaged = list(self.model.state_dict(keep_vars=True).values())
        current = list(model.state_dict(keep_vars=True).values())
        self._averaged, self._current, self._copied = [], [], []
        for mine, theirs in zip(averaged, current):
            if mine.dtype.is_floating_point:
                self._averaged.append(mine.data)
                self._current.append(theirs.data)
            else:
                self._copied.append((mine.data, theirs.data))
        self._source = id(model)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))  # warm-up: early weights fade fast
        if self._source != id(model):
            self._gather(model)
        torch._foreach_mul_(self._averaged, decay)
        torch._foreach_add_(self._averaged, self._current, alpha=1 - decay)
        for mine, theirs in self._copied:
            mine.copy_(theirs)


def _check_crop(model: nn.Module, config: RunConfig, patch_size: int, device: torch.device) -> None:
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


def _plain(value: Any) -> Any:
    """Tuples become lists (YAML/JSON safe), recursively."""
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _with_resolved_options(config: RunConfig) -> RunConfig:
    """A copy of ``config`` whose ``model.options`` lists every builder option, defaults included.

    Written into config.yaml and every checkpoint, so a checkpoint rebuilds the same network even if a
    builder's default changes in a later pcamlab. The options are validated when the model is built.
    """
    from pcamlab.models.factory import model_options

    resolved = copy.deepcopy(config)
    resolved.model.options = _plain({**model_options(config.model.name), **config.model.options})
    return resolved


def _check_continue(config: RunConfig, run: Path) -> Path:
    """``run`` when ``config`` may train it further: a finished run of the same model, more epochs asked."""
    summary_path = run / "summary.json"
    if not summary_path.is_file() or not json.loads(summary_path.read_text()).get("finished"):
        raise RunError(
            f"continue_from {str(run)!r} is not a finished run (no finished summary.json); an interrupted run "
            "is resumed instead"
        )
    if not (run / "resume.pt").is_file():
        raise RunError(f"continue_from {str(run)!r} has no resume.pt (its optimiser state); it cannot be continued")
    ran = int(json.loads(summary_path.read_text())["epochs_run"])
    if config.train.epochs <= ran:
        raise ConfigError(
            f"train.epochs is {config.train.epochs} but {str(run)!r} already ran {ran} epochs; continuing needs "
            f"more, e.g. train.epochs={2 * ran}"
        )
    saved = yaml.safe_load((run / "config.yaml").read_text()) or {}
    if saved.get("model") != _plain(config_to_dict(config)["model"]):
        raise ConfigError(
            f"continue_from {str(run)!r} trained model {saved.get('model')}, but config.model is "
            f"{config_to_dict(config)['model']}; continue with the run's own config.yaml"
        )
    return run


@contextlib.contextmanager
def torch_settings(train_config) -> Any:
    """Thread count and determinism flags for one run, put back as they were afterwards.

    ``train.threads`` > 0 sets torch's CPU threads (a float sum split over another number of threads
    rounds differently, so runs compare bit for bit only at the same count). ``train.deterministic``
    turns on deterministic algorithms (``torch.use_deterministic_algorithms``, warning where an op has
    none), oneDNN's deterministic mode (``torch.backends.mkldnn.deterministic``, which
    ``use_deterministic_algorithms`` does not set), cuDNN's, and cuBLAS's fixed workspace.
    """
    previous = (
        torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.mkldnn.deterministic,
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
    )
    try:
        if train_config.threads > 0:
            torch.set_num_threads(train_config.threads)
        if train_config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first call
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.mkldnn.deterministic = True
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        threads, deterministic, warn_only, mkldnn, cudnn, benchmark = previous
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.mkldnn.deterministic = mkldnn
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn, benchmark


def _in_torch_settings(function: Callable) -> Callable:
    """Run ``function(config, ...)`` inside :func:`torch_settings` of ``config.train``: no global state leaks."""

    @functools.wraps(function)
    def wrapper(config: RunConfig, *args: Any, **kwargs: Any) -> Any:
        with torch_settings(config.train):
            return function(config, *args, **kwargs)

    return wrapper


@_in_torch_settings
def train(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    continue_from: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    readers: tuple[Any, Any | None] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    on_step: Callable[[nn.Module, float], bool] | None = None,
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data`` and write a run folder.

    Args:
        config: the resolved run configuration.
        out_dir: the run folder to create (must not hold a run unless ``resume``).
        resume: continue an interrupted run in ``out_dir`` from its last completed epoch (from epoch 1
            when it was interrupted before its first epoch ended).
        continue_from: a finished run folder to train further, up to ``train.epochs`` (more than it
            ran), into the new ``out_dir``; its history, checkpoints and optimiser state are copied, the
            best checkpoint stays best until an epoch beats it, early-stopping patience starts afresh
            and the learning rate follows the schedule over the new ``train.epochs`` (for a cosine that
            had ended, a warm restart). The finished run is not touched.
        progress: show tqdm progress bars (on stderr).
        log: called with one human-readable line per event (the CLI passes ``print``).
        readers: ``(train_reader, valid_reader)`` to use instead of opening ``config.data``'s splits
            (cross-validation folds, train+valid for a final fit). ``valid_reader`` may be None: no
            validation, every epoch's weights are "best" and the run trains ``train.epochs`` epochs.
        on_epoch: called as ``on_epoch(epoch, row)`` after each epoch is logged and checkpointed (``row``
            is that epoch's ``history.csv`` row, ``val_auc`` a float). An exception it raises stops
            training and propagates (``pcamlab tune`` prunes a trial this way); the run folder then
            holds the epochs so far and no ``summary.json``.
        on_step: called after every optimiser step with the model that validation scores (the EMA
            model when ``train.ema_decay`` > 0) and the epochs done (fractional); returning True stops
            training like the time budget does (the partial epoch is validated and checkpointed).
            ``pcamlab.train.time_to_auc`` snapshots weights through it.

    Returns:
        The run summary (also written to ``summary.json``).

    Raises:
        RunError: the output folder holds a run, training diverged, nothing to resume, or
            ``continue_from`` is not a finished run.
        DataError / ConfigError: bad data or configuration (one line with the fix), or a
            ``continue_from`` whose model differs from ``config.model`` or that ran ``train.epochs`` already.
    """
    from pcamlab.data import PATCH_SIZE, open_split
    from pcamlab.config_ranges import check_combinations, check_ranges
    from pcamlab.data.augment import augment_batch, random_label_crop
    from pcamlab.data.loader import InMemoryBatches, make_batch_source
    from pcamlab.explain.tensorboard import picture_samples as picture_samples_of
    from pcamlab.explain.tensorboard import write_epoch_pictures
    from pcamlab.models import build_model, model_summary
    from pcamlab.progress import progress_bar
    from pcamlab.train import distributed
    from pcamlab.runtime.checkpoint import save_checkpoint
    from pcamlab.runtime.contract import InputContract
    from pcamlab.runtime.device import autocast, resolve_precision
    from pcamlab.runtime.memory import reuse_freed_memory

    started = time.perf_counter()
    out_dir = Path(out_dir)
    train_config, data_config = config.train, config.data
    check_ranges(config)  # configs built in code skip load_config's checks
    check_combinations(config)
    config = _with_resolved_options(config)
    source_run = _check_continue(config, Path(continue_from)) if continue_from is not None else None
    world = distributed.setup(train_config.device)
    distributed.check_processes(config, world.size)
    main_process = world.rank == 0
    say = (log or (lambda line: None)) if main_process else (lambda line: None)
    progress = progress and main_process
    if main_process:
        prepare_run_dir(out_dir, resume, create=False)  # config.yaml, written once the data is read, creates it
        summary_path = out_dir / "summary.json"
        if resume and summary_path.is_file() and json.loads(summary_path.read_text()).get("finished"):
            raise RunFolderError(
                f"run {str(out_dir)!r} already finished; it is never overwritten: start a new run in another "
                "out_dir, or train it further into a new folder with continue_from", parameters=("out_dir", "continue_from"),
            )
        if resume and (out_dir / "folds.csv").is_file():
            raise RunFolderError(
                f"{str(out_dir)!r} is a cross-validation folder (it has folds.csv); resume it as one "
                "(protocols.run_kfold with resume=True), not as a single run"
            )
    world.barrier()
    restore_from = source_run if source_run is not None else out_dir if (resume and (out_dir / "resume.pt").is_file()) else None
    if resume and restore_from is None:
        say(f"{out_dir}: interrupted before its first epoch ended; nothing to keep, training again from epoch 1")
    if train_config.deterministic and train_config.time_budget_minutes > 0:
        say("note: train.time_budget_minutes follows the wall clock, so the last (partial) epoch of "
            "deterministic runs can end at different steps; every epoch before it repeats bit for bit")
    torch.manual_seed(train_config.seed)
    model = build_model(config.model)  # built once: checks model.options; its weights come from the seed
    device = world.device
    precision = resolve_precision(train_config.precision, device)
    # 1.6x the training patches/s on a 2-core CPU: see pcamlab.runtime.memory
    memory_reused = reuse_freed_memory() if device.type == "cpu" else False

    # -- data ------------------------------------------------------------------------------------
    if readers is None:
        options = dict(format=data_config.format, valid_fraction=data_config.valid_fraction, seed=data_config.seed)
        train_reader = open_split(data_config.path, data_config.train_split, **options)
        valid_reader = open_split(data_config.path, data_config.valid_split, **options)
    else:
        train_reader, valid_reader = readers
    valid_count = len(valid_reader) if valid_reader is not None else 0
    say(f"data: {train_reader.root} ({train_reader.format}); train {len(train_reader)}, valid {valid_count} patches")
    for note in dict.fromkeys([*train_reader.notes, *(valid_reader.notes if valid_reader is not None else [])]):
        say(f"data: note: {note}")

    update, close = progress_bar("decoding train", progress)
    train_source = make_batch_source(
        train_reader, data_config, train_config.batch_size, shuffle=True, drop_last=True, progress=update
    )
    close()
    valid_source = None
    if valid_reader is not None:
        update, close = progress_bar("decoding valid", progress)
        valid_source = make_batch_source(
            valid_reader, data_config, config.evaluate.batch_size, shuffle=False, progress=update
        )
        close()
    if train_source.num_samples == 0:
        raise DataError(
            f"no readable training patch in split {train_reader.split!r} of {str(train_reader.root)!r}: all "
            f"{len(train_reader)} were skipped (first: {train_reader.name(0)}); fix or replace the files"
        )
    if valid_source is not None and valid_source.num_samples == 0:
        raise DataError(
            f"no readable validation patch in split {valid_reader.split!r} of {str(valid_reader.root)!r}: all "
            f"{len(valid_reader)} were skipped (first: {valid_reader.name(0)}); fix or replace the files"
        )
    train_classes = sorted(set(train_source.labels.tolist()))
    if len(train_classes) < 2:
        raise DataError(
            f"training split {train_reader.split!r} of {str(train_reader.root)!r} holds only class "
            f"{train_classes[0]} ({train_source.num_samples} patches): a detector needs both classes to learn "
            "from; add patches of the other class"
        )
    monitor = train_config.monitor
    warnings: list[str] = []
    valid_classes = sorted(set(valid_source.labels.tolist())) if valid_source is not None else [0, 1]
    one_class_valid = len(valid_classes) < 2
    if one_class_valid:  # ROC AUC and threshold choice need both classes
        warnings.append(
            f"validation split {valid_reader.split!r} holds only class {valid_classes[0]} "
            f"({valid_source.num_samples} patches): val_auc is undefined"
            + ("; monitoring val_loss instead of val_auc" if monitor == "val_auc" else "")
            + (f"; evaluate.threshold_method {config.evaluate.threshold_method} needs both classes, so the threshold "
               f"stays at evaluate.threshold {config.evaluate.threshold:g}"
               if config.evaluate.threshold_method != "fixed" else "")
            + "; add patches of the other class to the validation split"
        )
        monitor = "val_loss"
        for line in warnings:
            say(f"warning: {line}")
    if len(train_source) == 0:
        raise ConfigError(
            f"train.batch_size {train_config.batch_size} is larger than the {train_source.num_samples} "
            "training patches; lower it"
        )
    skipped = train_source.skipped + (valid_source.skipped if valid_source else 0)
    if train_source.kind == "ram":
        say(f"data: decoded into RAM; {skipped} unreadable files skipped")
    else:
        say("data: streaming from disk; unreadable files are counted as they are met (see summary.json)")

    stain = _fit_stain_normalizer(config, [s for s in (train_source, valid_source) if s is not None])
    train_images = train_source.images if isinstance(train_source, InMemoryBatches) else None
    mean, std = _data_stats(train_images, train_reader, data_config.skip_bad or getattr(train_reader, "skip_bad", False))
    # every reader yields PATCH_SIZE patches (checked per image), so no item needs decoding for it
    # scored in fp32 on every machine (validation, evaluate, predict): bf16 scores moved the chosen threshold
    # and lost ties (626 distinct bf16 probabilities of 1,024) for no speed-up on a CPU without bf16 hardware
    contract = InputContract(patch_size=PATCH_SIZE, mean=mean, std=std, precision="fp32",
                             input_scaling=data_config.input_scaling,
                             threshold=config.evaluate.threshold, stain_normalization=stain)
    if stain is not None:
        say(f"data: {config.data.stain_normalization} stain normalisation fitted on training patches")

    # -- model and optimiser ---------------------------------------------------------------------
    model = model.to(device)
    size = model_summary(model, input_size=contract.patch_size)
    transfer, loaded = _load_pretrained(model, config, say)
    if config.augment.crop_size:
        _check_crop(model, config, contract.patch_size, device)
    if train_config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(model, config, loaded)
    ema = _EMA(model, train_config.ema_decay) if train_config.ema_decay > 0 else None
    trained = world.wrap(model)  # DistributedDataParallel when several processes, else the model itself
    forward = torch.compile(trained) if train_config.compile else trained
    steps_per_epoch = len(train_source)
    if train_config.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, train_config.max_steps_per_epoch)
    say(
        f"model: {config.model.name}, {size['parameters']:,} parameters, {size['flops'] / 1e6:.0f} MFLOPs/patch; "
        f"device {device}, precision {precision}, channels_last {train_config.channels_last}"
        + (f", {world.size} processes" if world.size > 1 else "")
        + (", malloc keeps freed memory" if memory_reused else "")
    )
    if config.augment.crop_size and config.augment.crop_epochs >= train_config.epochs and not resume \
            and continue_from is None:  # a resumed or continued run says what it does at its first epoch
        cropped = "epoch 1" if train_config.epochs == 2 else f"epochs 1-{train_config.epochs - 1}"
        say(f"note: augment.crop_epochs {config.augment.crop_epochs} is not below train.epochs {train_config.epochs}: "
            + (f"crops in {cropped}, full patches in epoch {train_config.epochs}"
               if train_config.epochs > 1 else "no crops (the only epoch trains on full patches)"))
    if config.augment.crop_epochs and not config.augment.crop_size:
        say(f"note: augment.crop_epochs {config.augment.crop_epochs} has no effect: augment.crop_size is 0 (no crops)")

    # -- state, fresh or resumed -----------------------------------------------------------------
    first_epoch, best_value, best_epoch, stale_epochs = 1, None, 0, 0
    crops_over = False  # progressive resizing has moved on to full patches (kept in resume.pt)
    plateau_factor, plateau_stale = 1.0, 0
    history: list[dict[str, Any]] = []
    if restore_from is not None:
        from safetensors.torch import load_file

        state = torch.load(restore_from / "resume.pt", map_location="cpu", weights_only=True)
        if bool(state.get("validated", True)) != (valid_source is not None):
            raise RunError(
                f"{str(restore_from)!r} was trained " + ("with" if state.get("validated", True) else "without")
                + " a validation split, but this run has " + ("one" if valid_source is not None else "none")
                + "; a final fit and a validated run cannot continue each other: start a new run"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.model.load_state_dict(load_file(str(restore_from / "last.safetensors"), device=str(device)))
            ema.updates = int(state["ema_updates"])
        first_epoch = int(state["epoch"]) + 1
        # runs saved before crops_over existed: over once the finished epochs passed augment.crop_epochs
        crops_over = bool(state.get("crops_over", first_epoch - 1 > config.augment.crop_epochs > 0))
        best_value, best_epoch, stale_epochs = state["best_value"], int(state["best_epoch"]), int(state["stale_epochs"])
        plateau_factor, plateau_stale = float(state["plateau_factor"]), int(state["plateau_stale"])
        contract = contract.replace(threshold=float(state["threshold"]),
                                    threshold_source=config.evaluate.threshold_method)
        with open(restore_from / "history.csv") as file:
            history = [row for row in csv.DictReader(file) if int(row["epoch"]) < first_epoch]
        if source_run is not None:
            stale_epochs, plateau_stale = 0, 0  # the continuation gets its own early-stopping patience
            say(f"continuing {source_run} (finished after epoch {first_epoch - 1}) into {out_dir}, "
                f"up to epoch {train_config.epochs}; {source_run} is left as it is")
        else:
            say(f"resuming {out_dir} at epoch {first_epoch}")
    if main_process and (restore_from is None or source_run is not None):
        write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    if main_process and source_run is not None:  # the new folder starts as a copy of the finished one
        for name in ("best.safetensors", "last.safetensors", "resume.pt"):
            with atomic_path(out_dir / name) as temporary:
                shutil.copyfile(source_run / name, temporary)
        if (source_run / "tensorboard").is_dir():
            shutil.copytree(source_run / "tensorboard", out_dir / "tensorboard", dirs_exist_ok=True)
    writer = None
    if main_process:
        write_text_atomic(
            out_dir / "history.csv",
            ",".join(HISTORY_COLUMNS) + "\n" + "".join(",".join(str(row[c]) for c in HISTORY_COLUMNS) + "\n" for row in history),
        )
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=first_epoch)
    picture_samples = None  # fixed validation patches drawn in TensorBoard every epoch (RAM-cached data only)
    if valid_source is not None and isinstance(valid_source, InMemoryBatches):
        picture_samples = picture_samples_of(valid_source.images.numpy(), valid_source.labels.numpy())
    stop_reason = "all epochs done"
    epoch = first_epoch - 1
    local_batch = train_config.batch_size // world.size
    budget_seconds = 60 * train_config.time_budget_minutes
    budget_by_time = train_config.schedule_over == "budget"

    def elapsed() -> float:  # seconds since the start by rank 0's clock: one clock for every process
        return world.broadcast(time.perf_counter() - started)

    def rate_at(progress: float) -> float:  # the learning-rate factor now, ``progress`` epochs in
        used = elapsed() / budget_seconds if budget_by_time else None
        return learning_rate_factor(config, progress, plateau_factor, used)

    out_of_time = stopped_by_caller = crops_note_said = False
    progressive = bool(config.augment.crop_size and config.augment.crop_epochs)  # crops first, then full patches
    backbone_ids = {id(p) for p in split_pretrained(model, loaded)[0]}
    # where a chosen threshold comes from, so threshold-dependent numbers can say so (and when they are optimistic)
    threshold_chosen_on = None
    if valid_reader is not None and config.evaluate.threshold_method != "fixed":
        threshold_chosen_on = {"data": str(valid_reader.root), "split": valid_reader.split,
                               "method": config.evaluate.threshold_method}

    # -- epochs ----------------------------------------------------------------------------------
    for epoch in range(first_epoch, train_config.epochs + 1):
        epoch_start = time.perf_counter()
        trained.train()
        frozen = epoch <= train_config.freeze_backbone_epochs
        if frozen:  # transfer learning: the backbone keeps its weights and its batch-norm statistics
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and all(id(p) in backbone_ids for p in module.parameters()):
                    module.eval()
        torch.manual_seed(train_config.seed * 100_003 + epoch)  # dropout: same stream on resume
        augment_generator = torch.Generator(device=device).manual_seed(train_config.seed * 1_000_003 + epoch)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        factor = rate_at(epoch - 1)
        # progressive resizing: crops first, full patches to the end (once on full patches, never back:
        # crops_over is kept in resume.pt, so a resumed or continued run does not crop again)
        planned = crops_in_epoch(config, epoch)
        cropping = planned and not crops_over and crops_in_epoch(
            config, epoch, elapsed() / budget_seconds if budget_seconds > 0 else None)
        if planned and not cropping and not crops_note_said:
            crops_note_said = True
            why = ("the run already trained on full patches" if crops_over
                   else f"{CROP_BUDGET_SHARE:.0%} of train.time_budget_minutes is spent")
            say(f"note: {why}: full patches from epoch {epoch} on (augment.crop_epochs says {config.augment.crop_epochs})")
        if progressive and not cropping:
            crops_over = True
        update, close = progress_bar(f"epoch {epoch}/{train_config.epochs}", progress, unit="step",
                                     total=steps_per_epoch)
        for step, (images, labels, _) in enumerate(train_source.epoch(seed=train_config.seed * 7919 + epoch)):
            if step >= steps_per_epoch:
                break
            if world.size > 1:  # this process's share of the global batch
                images = images[world.rank * local_batch : (world.rank + 1) * local_batch]
                labels = labels[world.rank * local_batch : (world.rank + 1) * local_batch]
            if len(labels) == 0:
                continue
            factor = rate_at(epoch - 1 + step / steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = 0.0 if frozen and group["part"] == "backbone" else group["peak_lr"] * factor
            images = images.to(device, non_blocking=True)  # (B, H, W, 3) uint8
            if cropping:  # (B, c, c, 3): still holds the labelled centre 32x32
                images = random_label_crop(images, config.augment.crop_size, augment_generator)
            labels = labels.to(device, non_blocking=True).float()
            x = contract.to_unit(images)  # (B, 3, H, W) in [0, 1], channels_last strides
            x = contract.normalize(augment_batch(x, config.augment, augment_generator))
            with autocast(device, precision):
                logits = forward(x)  # (B, 1)
            loss = compute_loss(logits.float().reshape(-1), labels, config)
            if train_config.l1 > 0:
                loss = loss + train_config.l1 * sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
            shown = {"loss": f"{loss.item():.3f}", "lr": f"{train_config.learning_rate * factor:.1e}"} if step % 10 == 0 else {}
            update(step + 1, steps_per_epoch, **shown)
            # stop mid-epoch when the budget ends (the partial epoch is still validated and checkpointed);
            # every process reads rank 0's clock, so all stop after the same step
            if budget_seconds > 0:
                now = elapsed()
                if now > budget_seconds:
                    out_of_time = True
                    break
                if cropping and not crops_in_epoch(config, epoch, now / budget_seconds) and step + 1 < steps_per_epoch:
                    # a crop epoch longer than half the budget: the rest of it trains on full patches
                    cropping, crops_over, crops_note_said = False, True, True
                    say(f"note: {CROP_BUDGET_SHARE:.0%} of train.time_budget_minutes is spent: full patches from "
                        f"step {step + 2} of epoch {epoch} on (augment.crop_epochs says {config.augment.crop_epochs})")
            if on_step is not None and on_step(ema.model if ema is not None else model, epoch - 1 + (step + 1) / steps_per_epoch):
                stop_reason = f"stopped by the caller during epoch {epoch}"
                stopped_by_caller = True
                break
        close()
        train_seconds = time.perf_counter() - epoch_start
        loss_sum, seen = world.sum(loss_sum), int(world.sum(torch.tensor(float(seen), device=device)).item())
        if seen == 0:  # streaming met only unreadable files: nothing was learned
            raise DataError(
                f"epoch {epoch} found no readable training patch in split {train_reader.split!r} of "
                f"{str(train_reader.root)!r} ({train_source.skipped} unreadable files skipped); fix or replace the files"
            )
        train_loss = (loss_sum / max(seen, 1)).item()
        if not math.isfinite(train_loss):
            raise RunError(
                f"training diverged at epoch {epoch} (loss {train_loss}); lower train.learning_rate "
                f"(now {train_config.learning_rate}) or use train.precision=fp32"
            )
        scored = ema.model if ema is not None else model
        if valid_source is not None:
            scores = _evaluate(scored, valid_source, contract, device)
        else:
            scores = {"val_loss": float("nan"), "val_auc": float("nan"), "val_accuracy": float("nan")}
        row = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "val_loss": round(scores["val_loss"], 6),
            "val_auc": round(scores["val_auc"], 6),
            "val_accuracy": round(scores["val_accuracy"], 6),
            "learning_rate": f"{train_config.learning_rate * factor:.6g}",
            "seconds": round(time.perf_counter() - epoch_start, 3),
            "images_per_second": round(seen / train_seconds, 1),
        }
        history.append(row)

        value = scores[monitor]
        improved = _is_better(value, best_value, monitor, train_config.min_delta) or valid_source is None
        if improved:
            best_value, best_epoch, stale_epochs, plateau_stale = value, epoch, 0, 0
            if valid_source is not None and config.evaluate.threshold_method != "fixed" and not one_class_valid:
                from pcamlab.evaluate.thresholds import ThresholdSelector

                selector = ThresholdSelector(config.evaluate.threshold_method, config.evaluate.target_sensitivity)
                chosen = float(selector.fit(scores["labels"], scores["probabilities"]).threshold_)
                contract = contract.replace(threshold=chosen, threshold_source=config.evaluate.threshold_method)
        elif not cropping or not progressive:
            stale_epochs += 1  # progressive resizing: patience counts the full-patch epochs only
            plateau_stale += 1
            if train_config.scheduler == "plateau" and plateau_stale >= train_config.plateau_patience:
                plateau_factor *= train_config.gamma
                plateau_stale = 0
        if main_process:
            with open(out_dir / "history.csv", "a") as file:
                file.write(",".join(str(row[c]) for c in HISTORY_COLUMNS) + "\n")
            for key in ("train_loss", "val_loss", "val_auc", "val_accuracy", "images_per_second"):
                tag = key.replace("_", "/", 1) if key.startswith(("train", "val")) else key
                writer.add_scalar(tag, float(row[key]), epoch)
            writer.add_scalar("learning_rate", train_config.learning_rate * factor, epoch)
            if valid_source is not None:
                writer.add_pr_curve("val/pr_curve", scores["labels"], scores["probabilities"], epoch)
            writer.flush()
            metadata = {"epoch": epoch, monitor: value, "val_auc": scores["val_auc"], "val_loss": scores["val_loss"]}
            if threshold_chosen_on is not None:
                metadata["threshold_chosen_on"] = threshold_chosen_on
            save_checkpoint(out_dir / "last.safetensors", scored, config, contract, metadata)
            if improved:
                save_checkpoint(out_dir / "best.safetensors", scored, config, contract, metadata)
            resume_state = {
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "epoch": epoch, "best_value": best_value,
                "best_epoch": best_epoch, "stale_epochs": stale_epochs, "plateau_factor": plateau_factor,
                "plateau_stale": plateau_stale, "threshold": contract.threshold,
                "ema_updates": ema.updates if ema is not None else 0,
                "validated": valid_source is not None,  # False: a final fit (run_folder_protocol reads it)
                "crops_over": crops_over,  # progressive resizing reached full patches: no crops after a resume
            }
            with atomic_path(out_dir / "resume.pt") as temporary:
                torch.save(resume_state, temporary)
            if picture_samples is not None:  # after the checkpoints: a picture never costs an epoch
                write_epoch_pictures(writer, scored, epoch, picture_samples, contract)
                writer.flush()
        world.barrier()
        validation = (
            f"val_loss {scores['val_loss']:.4f}  val_auc {scores['val_auc']:.4f}  val_acc@0.5 {scores['val_accuracy']:.4f}"
            if valid_source is not None else "no validation split (a final fit trains on all of it)"
        )
        say(
            f"epoch {epoch:>3}  train_loss {train_loss:.4f}  {validation}  "
            f"{row['images_per_second']:.0f} img/s  {row['seconds']:.1f}s" + ("  *best" if improved and valid_source else "")
        )
        if on_epoch is not None:
            on_epoch(epoch, row)
        if valid_source is not None and train_config.patience > 0 and stale_epochs >= train_config.patience:
            stop_reason = (f"early stop: {monitor} did not improve for {stale_epochs} "
                           f"{'full-patch ' if progressive else ''}epoch{'s' if stale_epochs != 1 else ''}")
            break
        if stopped_by_caller:
            break
        if out_of_time:
            stop_reason = f"time budget of {train_config.time_budget_minutes} minutes reached during epoch {epoch}"
            break
    if writer is not None:
        writer.close()

    speeds = [float(row["images_per_second"]) for row in history]
    best_row = next((row for row in history if int(row["epoch"]) == best_epoch), history[-1])
    summary = {
        "finished": True,
        "stop_reason": stop_reason,
        "epochs_run": epoch,
        "best_epoch": best_epoch,
        "monitor": monitor,
        "validated": valid_source is not None,  # False: a final fit, whose "best" is its last epoch
        "best": {key: float(best_row[key]) if valid_source is not None else None
                 for key in ("val_auc", "val_loss", "val_accuracy")},
        "threshold": contract.threshold,
        "threshold_method": config.evaluate.threshold_method,
        "threshold_chosen_on": threshold_chosen_on,
        "val_accuracy_threshold": 0.5,  # history.csv's val_accuracy and best.val_accuracy are at 0.5
        "model": config.model.name,
        "parameters": size["parameters"],
        "flops_per_patch": size["flops"],
        "device": str(device),
        "processes": world.size,
        "precision": precision,
        "channels_last": train_config.channels_last,
        "threads": torch.get_num_threads(),  # float sums depend on it: runs repeat bit for bit at the same count
        "deterministic": train_config.deterministic,
        "continued_from": str(source_run) if source_run is not None else None,
        "train_images_per_second_median": float(np.median(speeds)) if speeds else None,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "data": {
            "root": str(train_reader.root), "format": train_reader.format, "loading": train_source.kind,
            "train_patches": train_source.num_samples, "valid_patches": valid_source.num_samples if valid_source else 0,
            "train_class_counts": {str(k): int(v) for k, v in zip(*np.unique(train_source.labels.numpy(), return_counts=True))},
            "skipped_files": train_source.skipped + (valid_source.skipped if valid_source else 0),
        },
        "contract": contract.to_dict(),
        "checkpoints": {
            name: str(out_dir / f"{name}.safetensors") if (out_dir / f"{name}.safetensors").is_file() else None
            for name in ("best", "last")
        },
        "warnings": warnings,
    }
    if transfer is not None:
        summary["pretrained"] = transfer
    if main_process:
        write_json_atomic(out_dir / "summary.json", summary)
    world.close()
    if valid_source is None:
        say(f"done: {stop_reason}; no validation split, so the model is the last epoch's (epoch {epoch})")
    else:
        best_text = "n/a" if best_value is None or (isinstance(best_value, float) and math.isnan(best_value)) else f"{best_value:.4f}"
        say(f"done: {stop_reason}; best {monitor} {best_text} at epoch {best_epoch}")
    return summary
