"""Progressive resizing: which steps train on ``augment.crop_size`` crops, and which epochs count for patience.

One object, :class:`CropSchedule`, owns every crop rule of a run: crops in epochs 1 to
``augment.crop_epochs`` (never the last epoch), full patches once ``CROP_BUDGET_SHARE`` of the time budget
is spent (from the next step, even inside an epoch), never crops again once a run has trained on full
patches (``crops_over``, kept in ``resume.pt``), and early-stopping patience that counts full-patch epochs
only. The loop asks it; it never restates a rule.

Example:
    >>> from pcamlab.config import load_config
    >>> crops = CropSchedule(load_config("configs/default.yaml", ["train.epochs=3"]))
    >>> crops.start_epoch(1, budget_fraction=lambda: 0.1)  # no note: epoch 1 trains on crops
    >>> crops.cropping
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pcamlab.config import RunConfig

__all__ = ["CROP_BUDGET_SHARE", "crops_in_epoch", "CropSchedule"]

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


class CropSchedule:
    """The crop state of one run: whether the current step crops, and whether crops are over for good.

    Attributes:
        cropping: the current step trains on crops.
        crops_over: the run has trained on full patches (progressive resizing never goes back).
        progressive: crops first, then full patches (``crop_size`` and ``crop_epochs`` both set).
    """

    def __init__(self, config: RunConfig, crops_over: bool = False):
        self.config = config
        self.size = config.augment.crop_size
        self.progressive = bool(config.augment.crop_size and config.augment.crop_epochs)
        self.crops_over = crops_over
        self.cropping = False
        self._note_said = False

    # -- state kept in resume.pt ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"crops_over": self.crops_over}

    def load_state_dict(self, state: Mapping[str, Any], epochs_done: int) -> None:
        """Read ``crops_over``; runs saved before it existed: over once ``epochs_done`` passed ``crop_epochs``."""
        self.crops_over = bool(state.get("crops_over", epochs_done > self.config.augment.crop_epochs > 0))

    # -- what the run says at its start ----------------------------------------------------------
    def plan_notes(self, fresh: bool) -> list[str]:
        """Notes on a plan that differs from what ``augment`` reads like (a resumed run says its own at epoch 1)."""
        augment, epochs = self.config.augment, self.config.train.epochs
        notes = []
        if augment.crop_size and augment.crop_epochs >= epochs and fresh:
            cropped = "epoch 1" if epochs == 2 else f"epochs 1-{epochs - 1}"
            notes.append(
                f"note: augment.crop_epochs {augment.crop_epochs} is not below train.epochs {epochs}: "
                + (f"crops in {cropped}, full patches in epoch {epochs}"
                   if epochs > 1 else "no crops (the only epoch trains on full patches)"))
        if augment.crop_epochs and not augment.crop_size:
            notes.append(f"note: augment.crop_epochs {augment.crop_epochs} has no effect: augment.crop_size is 0 (no crops)")
        return notes

    # -- the rules, asked by the loop ------------------------------------------------------------
    def start_epoch(self, epoch: int, budget_fraction: Callable[[], float | None]) -> str | None:
        """Decide whether epoch ``epoch`` starts on crops; returns a note when crops end earlier than planned.

        ``budget_fraction`` is called only when the epoch's plan has crops (it reads rank 0's clock).
        """
        planned = crops_in_epoch(self.config, epoch)
        self.cropping = planned and not self.crops_over and crops_in_epoch(self.config, epoch, budget_fraction())
        note = None
        if planned and not self.cropping and not self._note_said:
            self._note_said = True
            why = ("the run already trained on full patches" if self.crops_over
                   else f"{CROP_BUDGET_SHARE:.0%} of train.time_budget_minutes is spent")
            note = f"note: {why}: full patches from epoch {epoch} on (augment.crop_epochs says {self.config.augment.crop_epochs})"
        if self.progressive and not self.cropping:
            self.crops_over = True
        return note

    def after_step(self, epoch: int, step: int, steps_per_epoch: int, budget_fraction: float) -> str | None:
        """After step ``step`` (0-based) of a budget run: switch to full patches once half the budget is spent.

        A crop epoch longer than half the budget trains the rest of itself on full patches, unless this was
        its last step (an all-crop epoch never counts as a full-patch one). Returns the note to say, if any.
        """
        if not self.cropping or crops_in_epoch(self.config, epoch, budget_fraction) or step + 1 >= steps_per_epoch:
            return None
        self.cropping, self.crops_over, self._note_said = False, True, True
        return (f"note: {CROP_BUDGET_SHARE:.0%} of train.time_budget_minutes is spent: full patches from "
                f"step {step + 2} of epoch {epoch} on (augment.crop_epochs says {self.config.augment.crop_epochs})")

    def counts_for_patience(self) -> bool:
        """Whether the epoch that just ended counts for early-stopping patience: full-patch epochs only."""
        return not self.cropping or not self.progressive
