"""One epoch of training (:func:`train_one_epoch`) and the validation that scores it (:func:`validate`).

An epoch shuffles the training split (seeded by the epoch, so a resumed run sees the same order),
augments each batch as tensor operations on the training device, and steps the optimiser, the
per-step learning rate and the weight average. It stops inside itself when the time budget ends, when
the caller's ``on_step`` asks, or at a stop request (SIGINT/SIGTERM, :mod:`pcamlab.stopping`), which it
answers between steps by raising :class:`pcamlab.stopping.Stopped`.

Example:
    >>> result = train_one_epoch(step, epoch=1, learning_rate=rate, crops=crops, clock=clock)  # doctest: +SKIP
    >>> validate(model, valid_source, contract, device)["val_auc"]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pcamlab import stopping
from pcamlab.config import RunConfig
from pcamlab.data import augment as augmentation
from pcamlab.errors import DataError, RunError
from pcamlab.progress import progress_bar
from pcamlab.runtime.device import autocast, scoring
from pcamlab.train.clock import RunClock
from pcamlab.train.crops import CropSchedule
from pcamlab.train.ema import ModelEma
from pcamlab.train.model_setup import freeze_backbone_batch_norm, smallest_trainable_batch
from pcamlab.train.schedule import LearningRate

__all__ = ["compute_loss", "TrainingStep", "EpochResult", "train_one_epoch", "validate", "check_stop"]


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


def check_stop(world) -> None:
    """Raise :class:`pcamlab.stopping.Stopped` at a stop request; every process of ``world`` at the same step."""
    if world.size == 1:
        stopping.check()
        return
    signum = world.stop_requested()
    if signum:
        raise stopping.Stopped(signum)


@dataclass
class TrainingStep:
    """What every step of a run uses, fixed for the run.

    Attributes:
        model: the network (not wrapped); ``forward`` calls it (DistributedDataParallel, torch.compile).
        ema: the weight average, or None.
        backbone_ids: ids of the pretrained backbone's parameters (frozen for ``freeze_backbone_epochs``).
        sides: the input sides trained on (crop size, patch size), for the batch-norm probe.
    """

    config: RunConfig
    model: nn.Module
    trained: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    ema: ModelEma | None
    contract: Any
    device: torch.device
    precision: str
    world: Any
    source: Any
    reader: Any
    steps_per_epoch: int
    backbone_ids: set[int]
    sides: tuple[int, ...]

    @property
    def local_batch(self) -> int:
        return self.config.train.batch_size // self.world.size

    @property
    def scored(self) -> nn.Module:
        """The model validation scores and checkpoints hold: the weight average when there is one."""
        return self.ema.model if self.ema is not None else self.model

    @functools.cached_property
    def smallest_batch(self) -> int:
        """Patches per process that a step needs (2 with batch-norm that cannot train on one)."""
        return smallest_trainable_batch(self.model, self.sides, self.device)

    def smallest_share(self, patches: int) -> int:
        """The fewest patches any process gets from a global batch of ``patches``."""
        local = self.local_batch
        return min(max(0, min(local, patches - rank * local)) for rank in range(self.world.size))


@dataclass
class EpochResult:
    """What an epoch's steps did: mean training loss, patches seen, seconds, and why it ended early."""

    train_loss: float
    seen: int
    seconds: float
    out_of_time: bool = False
    stopped_by_caller: bool = False
    skipped_steps: int = 0


def train_one_epoch(
    step: TrainingStep, epoch: int, *, learning_rate: LearningRate, crops: CropSchedule, clock: RunClock,
    say: Callable[[str], object] = lambda line: None, progress: bool = False,
    on_step: Callable[[nn.Module, float], bool] | None = None,
) -> EpochResult:
    """Train epoch ``epoch`` (1-based): at most ``step.steps_per_epoch`` optimiser steps.

    Raises:
        pcamlab.stopping.Stopped: a stop was requested (between steps; the last finished epoch's resume state
            is on disk).
        DataError: the epoch met no readable training patch.
        RunError: the loss diverged (not finite).
    """
    config, train_config, world, device = step.config, step.config.train, step.world, step.device
    started = clock.local()
    step.trained.train()
    frozen = epoch <= train_config.freeze_backbone_epochs
    if frozen:  # transfer learning: the backbone keeps its weights and its batch-norm statistics
        freeze_backbone_batch_norm(step.model, step.backbone_ids)
    torch.manual_seed(train_config.seed * 100_003 + epoch)  # dropout: same stream on resume
    augment_generator = torch.Generator(device=device).manual_seed(train_config.seed * 1_000_003 + epoch)
    loss_sum = torch.zeros((), device=device)
    seen = skipped_steps = 0
    out_of_time = stopped_by_caller = False
    learning_rate.at(epoch - 1)
    # progressive resizing: crops first, full patches to the end (the crop schedule owns every rule)
    note = crops.start_epoch(epoch, clock.fraction)
    if note:
        say(note)
    steps = step.steps_per_epoch
    update, close = progress_bar(f"epoch {epoch}/{train_config.epochs}", progress, unit="step", total=steps)
    for index, (images, labels, _) in enumerate(step.source.epoch(seed=train_config.seed * 7919 + epoch)):
        if index >= steps:
            break
        if len(labels) == 0:  # streaming met only unreadable files (counted by the source)
            continue
        share = step.smallest_share(len(labels))  # fewer than local_batch only when files were skipped
        if share == 0 or (share == 1 and step.smallest_batch > 1):
            skipped_steps += 1  # a process would get no patch, or one that batch-norm cannot train on
            continue
        if world.size > 1:  # this process's share of the global batch
            images = images[world.rank * step.local_batch : (world.rank + 1) * step.local_batch]
            labels = labels[world.rank * step.local_batch : (world.rank + 1) * step.local_batch]
        factor = learning_rate.apply(step.optimizer, epoch - 1 + index / steps, frozen)
        loss = _optimizer_step(step, images, labels, crops.cropping, augment_generator)
        loss_sum += loss.detach() * len(labels)
        seen += len(labels)
        shown = {"loss": f"{loss.item():.3f}", "lr": f"{train_config.learning_rate * factor:.1e}"} if index % 10 == 0 else {}
        update(index + 1, steps, **shown)
        # stop mid-epoch when the budget ends (the partial epoch is still validated and checkpointed);
        # every process reads rank 0's clock, so all stop after the same step
        if clock.has_budget:
            used = clock.check_budget()
            if used > 1.0:
                out_of_time = True
                break
            note = crops.after_step(epoch, index, steps, used)
            if note:
                say(note)
        if on_step is not None and on_step(step.scored, epoch - 1 + (index + 1) / steps):
            stopped_by_caller = True
            break
        check_stop(world)
    close()
    seconds = clock.local() - started
    loss_sum, seen = world.sum(loss_sum), int(world.sum(torch.tensor(float(seen), device=device)).item())
    if seen == 0:  # streaming met only unreadable files: nothing was learned
        raise DataError(
            f"epoch {epoch} found no readable training patch in split {step.reader.split!r} of "
            f"{str(step.reader.root)!r} ({step.source.skipped} unreadable files skipped); fix or replace the files"
        )
    train_loss = (loss_sum / max(seen, 1)).item()
    if not math.isfinite(train_loss):
        raise RunError(
            f"training diverged at epoch {epoch} (loss {train_loss}); lower train.learning_rate "
            f"(now {train_config.learning_rate}) or use train.precision=fp32"
        )
    if skipped_steps:
        say(f"note: epoch {epoch} skipped {skipped_steps} step{'s' if skipped_steps != 1 else ''} whose batch, "
            "after unreadable files were left out, gave a process no patch or a single one (the batch-norm layers "
            f"of model.name {config.model.name!r} cannot train on one)")
    return EpochResult(train_loss, seen, seconds, out_of_time, stopped_by_caller, skipped_steps)


def _optimizer_step(step: TrainingStep, images: torch.Tensor, labels: torch.Tensor, cropping: bool,
                    generator: torch.Generator) -> torch.Tensor:
    """One forward, backward and optimiser step on uint8 (B, H, W, 3) images; returns the loss (with L1)."""
    config, device, contract = step.config, step.device, step.contract
    train_config = config.train
    images = images.to(device, non_blocking=True)  # (B, H, W, 3) uint8
    if cropping:  # (B, c, c, 3): still holds the labelled centre 32x32
        images = augmentation.random_label_crop(images, config.augment.crop_size, generator)
    labels = labels.to(device, non_blocking=True).float()
    x = contract.to_unit(images)  # (B, 3, H, W) in [0, 1], channels_last strides
    x = contract.normalize(augmentation.augment_batch(x, config.augment, generator))
    with autocast(device, step.precision):
        logits = step.forward(x)  # (B, 1)
    loss = compute_loss(logits.float().reshape(-1), labels, config)
    if train_config.l1 > 0:
        loss = loss + train_config.l1 * sum(p.abs().sum() for p in step.model.parameters() if p.ndim > 1)
    step.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if train_config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(step.model.parameters(), train_config.grad_clip)
    step.optimizer.step()
    if step.ema is not None:
        step.ema.update(step.model)
    return loss


def validate(model: nn.Module, source, contract, device: torch.device,
             check: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Validation loss, ROC AUC and accuracy at threshold 0.5 (history's ``val_accuracy``), with the raw scores.

    The accuracy is at 0.5 for every epoch, not at the threshold chosen so far, so the column compares
    across epochs; ``pcamlab evaluate`` reports accuracy at the stored threshold and says where it came from.
    Scored in the contract's precision (fp32, whatever ``train.precision`` is), as ``evaluate``,
    ``predict`` and every Predictor score: the AUC a checkpoint was chosen on is then the AUC
    ``evaluate`` reproduces on any machine, and a threshold chosen here is not rounded to bf16's 8-bit
    mantissa (bf16 logits put thresholds on a coarse grid of sigmoids).

    Args:
        check: called between batches (the loop's stop check).

    Returns:
        ``val_loss``, ``val_auc`` (NaN with one class), ``val_accuracy``, and ``labels`` int64 (N,) and
        ``probabilities`` float64 (N,).

    Raises:
        DataError: the validation split has no readable patch.
    """
    from pcamlab.evaluate.metrics import roc_auc

    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for images, batch_labels, _ in source.epoch(seed=0):
            check()
            if len(batch_labels) == 0:
                continue
            x = contract.to_model_input(images.to(device, non_blocking=True))  # (B, 3, H, W)
            with scoring(device, contract.precision):
                output = model(x)  # (B, 1)
            logits.append(output.float().reshape(-1).cpu())
            labels.append(batch_labels)
    if not logits:  # streaming met only unreadable validation files
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
