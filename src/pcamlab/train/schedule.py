"""The learning-rate schedule: its shape (:func:`learning_rate_factor`) and the plateau schedule's state.

The loop asks :class:`LearningRate` for the factor of the peak learning rate at each step; the factor
depends on the epochs done (fractional), the share of the time budget used (``train.schedule_over:
budget``) and, for ``train.scheduler: plateau``, on how long validation has not improved.

Example:
    >>> from pcamlab.config import load_config
    >>> learning_rate_factor(load_config(None, ["train.epochs=10", "train.warmup_epochs=0"]), 10.0)
    0.01
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pcamlab.config import RunConfig

__all__ = ["learning_rate_factor", "LearningRate", "Plateau"]


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


class Plateau:
    """``train.scheduler: plateau``: the factor drops by ``train.gamma`` after ``plateau_patience`` stale epochs.

    Attributes:
        factor: the current multiplier of the peak learning rate.
        stale: epochs counted without improvement since the last improvement or drop.
    """

    def __init__(self, config: RunConfig):
        self.enabled = config.train.scheduler == "plateau"
        self.patience = config.train.plateau_patience
        self.gamma = config.train.gamma
        self.factor, self.stale = 1.0, 0

    def update(self, improved: bool, counts: bool) -> None:
        """After an epoch: reset on improvement; count a stale epoch that ``counts`` (full patches)."""
        if improved:
            self.stale = 0
        elif counts:
            self.stale += 1
            if self.enabled and self.stale >= self.patience:
                self.factor *= self.gamma
                self.stale = 0

    def restart_patience(self) -> None:
        self.stale = 0


class LearningRate:
    """Sets every parameter group's learning rate from the schedule, the budget clock and the plateau.

    Args:
        config: the run config (its ``train`` section).
        budget_fraction: returns the share of the time budget used so far (None: no budget schedule).
        plateau: the plateau schedule's state.
    """

    def __init__(self, config: RunConfig, budget_fraction: Callable[[], float | None], plateau: Plateau):
        self.config = config
        self.by_budget = config.train.schedule_over == "budget"
        self.budget_fraction = budget_fraction
        self.plateau = plateau
        self.factor = 1.0  # the factor last set (history's learning_rate is peak x this)

    def at(self, progress: float) -> float:
        """The factor ``progress`` epochs (fractional) in, now; remembered as :attr:`factor`."""
        used = self.budget_fraction() if self.by_budget else None
        self.factor = learning_rate_factor(self.config, progress, self.plateau.factor, used)
        return self.factor

    def apply(self, optimizer: torch.optim.Optimizer, progress: float, frozen: bool) -> float:
        """Set the groups' rates for the step ``progress`` epochs in; a frozen backbone gets 0."""
        factor = self.at(progress)
        for group in optimizer.param_groups:
            group["lr"] = 0.0 if frozen and group["part"] == "backbone" else group["peak_lr"] * factor
        return factor

    @property
    def value(self) -> float:
        """The learning rate last set, in the peak's units (``train.learning_rate`` x factor)."""
        return self.config.train.learning_rate * self.factor
