"""The files of a run folder (what ``pcamlab train --out`` writes), named once.

A run folder holds::

    config.yaml         the resolved run config (written once the data is read: it marks a started run)
    history.csv         one row per epoch
    best.safetensors    the checkpoint of the best validation epoch;  last.safetensors  the latest one
    resume.pt           what a resumed run needs (optimiser, scheduler, random state)
    summary.json        the run's facts; ``"finished": true`` once training ended
    tensorboard/        TensorBoard event files

A cross-validation folder (``pcamlab train --protocol kfold``) holds ``config.yaml``, ``folds.csv``,
``cv_results.csv``, ``cv_summary.json`` and one run folder per fold at ``repeat-R/fold-K/``
(:meth:`RunFolder.fold`). A final fit (``pcamlab train --final``) is a run folder that also holds
``final.json`` and, when its threshold had to be chosen by a model trained like it, ``threshold-fit/``
(a run folder of its own).

Every module that reads or writes these files takes their names from here (timm's ``CheckpointSaver``
owns ``last``/``model_best`` the same way).

Example:
    >>> run = RunFolder("runs/first")
    >>> run.best
    PosixPath('runs/first/best.safetensors')
    >>> run.fold(1, 2).history
    PosixPath('runs/first/repeat-1/fold-2/history.csv')
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["RunFolder"]


@dataclass(frozen=True)
class RunFolder:
    """A run folder's path and the names of its files.

    Attributes:
        path: the folder (need not exist).
    """

    path: Path

    CONFIG: ClassVar[str] = "config.yaml"
    HISTORY: ClassVar[str] = "history.csv"
    SUMMARY: ClassVar[str] = "summary.json"
    BEST: ClassVar[str] = "best.safetensors"
    LAST: ClassVar[str] = "last.safetensors"
    SWA: ClassVar[str] = "swa.safetensors"  # train.swa_lr_fraction: the average of the decayed tail's epochs
    RESUME: ClassVar[str] = "resume.pt"
    TENSORBOARD: ClassVar[str] = "tensorboard"
    FOLDS: ClassVar[str] = "folds.csv"  # cross-validation: which patches each fold holds out
    CV_SUMMARY: ClassVar[str] = "cv_summary.json"  # cross-validation: every fold and the mean +- sd
    CV_RESULTS: ClassVar[str] = "cv_results.csv"  # cross-validation: one row per finished fold (rewritten after each)
    FINAL: ClassVar[str] = "final.json"  # final fit: epochs and their source, threshold, test metrics
    THRESHOLD_FIT: ClassVar[str] = "threshold-fit"  # final fit: the run folder of the model that chose its threshold
    REPEAT_PREFIX: ClassVar[str] = "repeat-"  # cross-validation: repeat-R/ (from 1)
    FOLD_PREFIX: ClassVar[str] = "fold-"  # cross-validation: repeat-R/fold-K/ (from 1)
    RUN_MARKERS: ClassVar[tuple[str, ...]] = (CONFIG, SUMMARY, HISTORY)  # any one: a (started) training run

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def history(self) -> Path:
        return self.path / self.HISTORY

    @property
    def summary(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def swa(self) -> Path:
        return self.path / self.SWA

    @property
    def resume_state(self) -> Path:
        return self.path / self.RESUME

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def folds(self) -> Path:
        return self.path / self.FOLDS

    @property
    def cv_summary(self) -> Path:
        return self.path / self.CV_SUMMARY

    @property
    def cv_results(self) -> Path:
        return self.path / self.CV_RESULTS

    @property
    def final(self) -> Path:
        return self.path / self.FINAL

    @property
    def threshold_fit(self) -> RunFolder:
        """The run folder of the model trained like a final fit to choose its threshold."""
        return RunFolder(self.path / self.THRESHOLD_FIT)

    def fold(self, repeat: int, fold: int) -> RunFolder:
        """The run folder of fold ``fold`` of repeat ``repeat`` (both from 1) of a cross-validation folder."""
        return RunFolder(self.path / f"{self.REPEAT_PREFIX}{repeat}" / f"{self.FOLD_PREFIX}{fold}")

    def fold_name(self) -> str | None:
        """``"repeat-R/fold-K"`` when this is a fold of a cross-validation folder (one holding ``folds.csv``), else None."""
        repeat = self.path.parent
        if (self.path.name.startswith(self.FOLD_PREFIX) and repeat.name.startswith(self.REPEAT_PREFIX)
                and (repeat.parent / self.FOLDS).is_file()):
            return f"{repeat.name}/{self.path.name}"
        return None

    def is_run(self) -> bool:
        """Whether the folder holds a (started) training run: any of config.yaml, summary.json, history.csv."""
        return any((self.path / name).is_file() for name in self.RUN_MARKERS)

    def read_summary(self) -> dict[str, Any] | None:
        """``summary.json`` as a dict, or None when it is absent (a run stopped before its end has none)."""
        if not self.summary.is_file():
            return None
        return json.loads(self.summary.read_text())

    def finished(self) -> bool:
        """Whether training ended (``summary.json`` says ``"finished": true``)."""
        summary = self.read_summary()
        return bool(summary and summary.get("finished"))
