"""The best epoch so far, early stopping, and when a budget run may stop before its budget ends.

:class:`EarlyStopping` tracks the monitored value (``train.monitor``), the best epoch and the epochs
without improvement that count for ``train.patience``. Which epochs count is decided by the crop
schedule (full-patch epochs only, :class:`pcamlab.train.crops.CropSchedule`) and by :class:`BudgetStopRule`.

Why the budget rule exists (issue 25): under ``train.schedule_over: budget`` the cosine decay spans the
whole time budget while patience counts epochs. On a CPU 1.8x faster than the development one, patience 4
ended 15-minute runs after 490-589 s, with the learning rate still at a third to a half of its peak, where
validation AUC swings by 0.01-0.05 from epoch to epoch: the run stopped on noise, before the decay that
gives its best weights. Counting patience in epochs (or in wall time) makes the stop depend on how many
epochs a machine fits into the budget; the rule below depends on the schedule's position only. Patience
counts only epochs that end with the learning rate at or below ``train.patience_lr_fraction`` of its peak
(10% by default: the last ~19% of a cosine budget, ~14% of a one-cycle one), so a budget run either uses
its budget, its learning rate decayed to 1% of the peak, or stops earlier because validation stopped
improving once the learning rate had decayed: a convergence reason that is the same on any machine.
``scripts/budget_rule_replay.py`` compares the rules on recorded runs.

Example:
    >>> stopping = EarlyStopping("val_auc", patience=2, validated=True)
    >>> [stopping.update(epoch, auc, counts=True) for epoch, auc in enumerate([0.8, 0.9, 0.85, 0.86], 1)]
    [True, True, False, False]
    >>> stopping.reason(progressive=False)
    'early stop: val_auc did not improve for 2 epochs'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pcamlab.config import RunConfig

__all__ = ["BudgetStopRule", "EarlyStopping", "is_better"]


def is_better(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    """Whether ``value`` of ``monitor`` improves on ``best`` by more than ``min_delta`` (NaN never does)."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    if monitor == "val_loss":
        return value < best - min_delta
    return value > best + min_delta


@dataclass(frozen=True)
class BudgetStopRule:
    """Under a budget schedule, patience counts only epochs that end with a decayed learning rate.

    Attributes:
        lr_fraction: the largest learning-rate factor (a fraction of the peak) at which an epoch counts
            for patience; None = every epoch counts (a schedule over epochs, or ``patience_lr_fraction: 1``).
    """

    lr_fraction: float | None = None

    @classmethod
    def from_config(cls, config: RunConfig) -> BudgetStopRule:
        train = config.train
        if train.schedule_over != "budget" or train.patience_lr_fraction >= 1:
            return cls(None)
        return cls(train.patience_lr_fraction)

    def counts(self, learning_rate_factor: float) -> bool:
        """Whether an epoch that ended at ``learning_rate_factor`` x the peak counts for patience."""
        return self.lr_fraction is None or learning_rate_factor <= self.lr_fraction

    def describe(self) -> str:
        """How the counted epochs are qualified in the stop message ("" when every epoch counts)."""
        if self.lr_fraction is None:
            return ""
        return (f" once the learning rate had decayed to {self.lr_fraction:.0%} of its peak or less "
                "(train.patience_lr_fraction)")


class EarlyStopping:
    """The best value of ``monitor``, its epoch, and the counted epochs without improvement.

    Args:
        monitor: ``val_auc`` (higher is better) or ``val_loss``.
        patience: counted epochs without improvement that stop the run (0 = never).
        min_delta: the smallest change that counts as an improvement.
        validated: False for a final fit: every epoch is "best", nothing stops early.
        rule: which epochs count under a budget schedule (default: every epoch).
    """

    def __init__(self, monitor: str, patience: int = 0, min_delta: float = 0.0, *, validated: bool = True,
                 rule: BudgetStopRule | None = None):
        self.monitor, self.patience, self.min_delta, self.validated = monitor, patience, min_delta, validated
        self.rule = rule or BudgetStopRule()
        self.best_value: float | None = None
        self.best_epoch = 0
        self.stale_epochs = 0

    @classmethod
    def from_config(cls, config: RunConfig, monitor: str, validated: bool) -> EarlyStopping:
        train = config.train
        return cls(monitor, train.patience, train.min_delta, validated=validated, rule=BudgetStopRule.from_config(config))

    def update(self, epoch: int, value: float, counts: bool, learning_rate_factor: float = 0.0) -> bool:
        """Record epoch ``epoch``'s ``value``; returns whether it is the new best.

        Args:
            counts: the crop schedule counts this epoch (a full-patch epoch).
            learning_rate_factor: the factor of the peak learning rate the epoch ended at (for the budget rule).
        """
        improved = is_better(value, self.best_value, self.monitor, self.min_delta) or not self.validated
        if improved:
            self.best_value, self.best_epoch, self.stale_epochs = value, epoch, 0
        elif counts and self.rule.counts(learning_rate_factor):
            self.stale_epochs += 1
        return improved

    def reason(self, progressive: bool) -> str | None:
        """The stop message when patience has run out, else None."""
        if not self.validated or self.patience <= 0 or self.stale_epochs < self.patience:
            return None
        count = self.stale_epochs
        return (f"early stop: {self.monitor} did not improve for {count} {'full-patch ' if progressive else ''}"
                f"epoch{'s' if count != 1 else ''}{self.rule.describe()}")

    def restart_patience(self) -> None:
        """A continued run gets its own patience."""
        self.stale_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "stale_epochs": self.stale_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value, self.best_epoch = state["best_value"], int(state["best_epoch"])
        self.stale_epochs = int(state["stale_epochs"])
