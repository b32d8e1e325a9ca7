"""Stochastic weight averaging over the decayed tail of the schedule (``train.swa_lr_fraction``).

The weights at the end of every full-patch epoch whose learning rate has decayed to
``train.swa_lr_fraction`` of its peak or below are averaged (an equal-weight running mean, Izmailov et
al. 2018, "Averaging Weights Leads to Wider Optima and Better Generalization", UAI; torch's
:class:`torch.optim.swa_utils.AveragedModel` keeps it). After the last epoch the average's batch-norm
statistics are recomputed on training patches (:func:`torch.optim.swa_utils.update_bn`: the running
statistics of an average of weights are not the average of their statistics), the average is validated
like an epoch, written to ``swa.safetensors``, and becomes ``best.safetensors`` when it scores better
than the best epoch. Like the budget rule (``train.patience_lr_fraction``) the tail is defined by the
learning rate, not by epochs or seconds, so it is the same share of a schedule on a machine of any speed.

Example:
    >>> from torch import nn
    >>> tail = TailAverage(nn.Linear(2, 1), lr_fraction=0.2)
    >>> tail.after_epoch(nn.Linear(2, 1), epoch=9, learning_rate_factor=0.1, whole_epoch=True)
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

__all__ = ["TailAverage", "BN_PATCHES"]

BN_PATCHES = 8192  # training patches the average's batch-norm statistics are recomputed on (at most)


class TailAverage:
    """The running mean of the epoch-end weights of a schedule's decayed tail.

    Args:
        model: the network whose weights are averaged (copied once; the copy holds the average).
        lr_fraction: epochs ending with the learning rate at or below this fraction of its peak are averaged
            (0 < fraction <= 1).

    Attributes:
        epochs: the epochs averaged so far, in order (kept in ``resume.pt``).
    """

    def __init__(self, model: nn.Module, lr_fraction: float):
        if not 0 < lr_fraction <= 1:
            raise ValueError(f"lr_fraction must be in (0, 1]; got {lr_fraction}")
        self.lr_fraction = lr_fraction
        self.averaged = AveragedModel(model, use_buffers=False)
        for parameter in self.averaged.parameters():
            parameter.requires_grad_(False)
        self.epochs: list[int] = []
        self.crop_epochs_in_tail: list[int] = []  # crop epochs that ended in the tail: not averaged (said in the note)

    @property
    def model(self) -> nn.Module:
        """The averaged network (same class and state-dict names as the trained one)."""
        return self.averaged.module

    def after_epoch(self, model: nn.Module, *, epoch: int, learning_rate_factor: float, whole_epoch: bool) -> bool:
        """Average ``model``'s weights in when epoch ``epoch`` ended in the tail; returns whether it did.

        Args:
            model: the trained network at the end of the epoch.
            learning_rate_factor: the learning rate at the epoch's last step, as a fraction of its peak.
            whole_epoch: False for a crop epoch (progressive resizing), which is never averaged. An epoch
                cut short by the time budget is averaged: its weights are as trained as any.
        """
        if learning_rate_factor > self.lr_fraction + 1e-12 or epoch in self.epochs:
            return False
        if not whole_epoch:
            if epoch not in self.crop_epochs_in_tail:
                self.crop_epochs_in_tail.append(epoch)
            return False
        self.averaged.update_parameters(model)
        self.epochs.append(epoch)
        return True

    @torch.no_grad()
    def recompute_batch_norm(self, batches: Iterable[torch.Tensor], patches: int = BN_PATCHES) -> int:
        """Recompute the average's batch-norm running statistics from model-ready batches.

        Args:
            batches: float (B, 3, H, W) tensors on the model's device, as the model takes them.
            patches: stop after about this many patches.

        Returns:
            The patches used (0 when the model has no batch-norm layer: nothing to do).
        """
        if not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in self.model.modules()):
            return 0
        seen = 0

        def counted() -> Iterable[torch.Tensor]:
            nonlocal seen
            for batch in itertools.takewhile(lambda _: seen < patches, batches):
                seen += len(batch)
                yield batch

        update_bn(counted(), self.model)
        return seen

    def state_dict(self) -> dict[str, Any]:
        """What ``resume.pt`` keeps: the average, how many weights it holds, which epochs, which crop epochs it passed over."""
        return {"swa_state": {k: v.detach().cpu() for k, v in self.averaged.state_dict().items()},
                "swa_epochs": list(self.epochs), "swa_crop_epochs_in_tail": list(self.crop_epochs_in_tail)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a resume state; a state from a run without an average leaves it empty."""
        if "swa_state" in state:
            self.averaged.load_state_dict(state["swa_state"])
            self.epochs = [int(epoch) for epoch in state.get("swa_epochs", [])]
            self.crop_epochs_in_tail = [int(epoch) for epoch in state.get("swa_crop_epochs_in_tail", [])]
