"""The run folder as training writes it: refusing to overwrite a run, the epoch's files, and resume state.

Per epoch (first process only): a row of ``history.csv`` and TensorBoard scalars (:class:`EpochLog`),
``last.safetensors`` and, when the monitored value improved, ``best.safetensors``, then ``resume.pt``
(:func:`save_epoch`). ``resume.pt`` holds what a resumed run needs (raw weights, optimiser state, the
epoch, early stopping's and the plateau schedule's state, the chosen threshold, EMA updates, whether the
run was validated, whether the crops are over, the run's seconds so far for its time budget); it is loaded with ``weights_only=True``, so nothing in it
is executed. A finished run folder is never overwritten.

Example:
    >>> prepare_run_dir(Path("runs/new"), resume=False)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from pcamlab.config import RunConfig, config_to_dict
from pcamlab.errors import ConfigError, RunError, RunFolderError
from pcamlab.fileio import atomic_path, write_text_atomic
from pcamlab.runfolder import RunFolder
from pcamlab.runtime.checkpoint import save_checkpoint
from pcamlab.train.model_setup import plain

__all__ = ["HISTORY_COLUMNS", "prepare_run_dir", "refuse_finished_or_kfold", "check_continue", "start_folder",
           "read_resume_state", "resume_state", "restore", "read_history", "save_epoch", "EpochLog"]

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
        if not RunFolder(out_dir).config.is_file():
            raise RunFolderError(
                f"nothing to resume in {where!r}: it holds no pcamlab run (no {RunFolder.CONFIG}); point resume at a "
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


def refuse_finished_or_kfold(out_dir: Path) -> None:
    """A resume of ``out_dir`` must continue an interrupted single run.

    Raises:
        RunFolderError: the run already finished, or the folder is a cross-validation.
    """
    run = RunFolder(out_dir)
    if run.finished():
        raise RunFolderError(
            f"run {str(out_dir)!r} already finished; it is never overwritten: start a new run in another "
            "out_dir, or train it further into a new folder with continue_from", parameters=("out_dir", "continue_from"),
        )
    if run.folds.is_file():
        raise RunFolderError(
            f"{str(out_dir)!r} is a cross-validation folder (it has {RunFolder.FOLDS}); resume it as one "
            "(protocols.run_kfold with resume=True), not as a single run"
        )


def check_continue(config: RunConfig, run: Path) -> Path:
    """``run`` when ``config`` may train it further: a finished run of the same model, more epochs asked.

    Raises:
        RunError: ``run`` is not a finished run, or has no ``resume.pt``.
        ConfigError: ``train.epochs`` is not above the epochs ``run`` ran, or ``config.model`` differs.
    """
    folder = RunFolder(run)
    if not folder.finished():
        raise RunError(
            f"continue_from {str(run)!r} is not a finished run (no finished {RunFolder.SUMMARY}); an interrupted run "
            "is resumed instead"
        )
    if not folder.resume_state.is_file():
        raise RunError(f"continue_from {str(run)!r} has no {RunFolder.RESUME} (its optimiser state); it cannot be "
                       "continued")
    ran = int(folder.read_summary()["epochs_run"])
    if config.train.epochs <= ran:
        raise ConfigError(
            f"train.epochs is {config.train.epochs} but {str(run)!r} already ran {ran} epochs; continuing needs "
            f"more, e.g. train.epochs={2 * ran}"
        )
    saved = yaml.safe_load(folder.config.read_text()) or {}
    if saved.get("model") != plain(config_to_dict(config)["model"]):
        raise ConfigError(
            f"continue_from {str(run)!r} trained model {saved.get('model')}, but config.model is "
            f"{config_to_dict(config)['model']}; continue with the run's own config.yaml"
        )
    return run


def start_folder(out_dir: Path, config: RunConfig, *, fresh_config: bool, source_run: Path | None) -> None:
    """Write ``config.yaml`` (a new or continued run); a continued run starts as a copy of ``source_run``."""
    run = RunFolder(out_dir)
    if fresh_config:
        write_text_atomic(run.config, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    if source_run is not None:
        source = RunFolder(source_run)
        for name in (RunFolder.BEST, RunFolder.LAST, RunFolder.RESUME):
            with atomic_path(run / name) as temporary:
                shutil.copyfile(source / name, temporary)
        if source.tensorboard.is_dir():
            shutil.copytree(source.tensorboard, run.tensorboard, dirs_exist_ok=True)


def read_resume_state(folder: Path, validated: bool) -> dict[str, Any]:
    """``folder/resume.pt``, checked to belong to a run with (or without) validation like this one.

    Raises:
        RunError: a final fit and a validated run cannot continue each other.
    """
    state = torch.load(RunFolder(folder).resume_state, map_location="cpu", weights_only=True)
    if bool(state.get("validated", True)) != validated:
        raise RunError(
            f"{str(folder)!r} was trained " + ("with" if state.get("validated", True) else "without")
            + " a validation split, but this run has " + ("one" if validated else "none")
            + "; a final fit and a validated run cannot continue each other: start a new run"
        )
    return state


def resume_state(epoch: int, *, model, optimizer, ema, crops, early, plateau, threshold: float,
                 validated: bool, elapsed_seconds: float, swa=None) -> dict[str, Any]:
    """What ``resume.pt`` holds after epoch ``epoch``: raw weights, optimiser and every stateful rule's state.

    ``elapsed_seconds`` is the run's time when the epoch was saved (the run clock's); a resume goes on from it.
    """
    return {
        "elapsed_seconds": float(elapsed_seconds),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "epoch": epoch, **early.state_dict(),
        "plateau_factor": plateau.factor, "plateau_stale": plateau.stale, "threshold": threshold,
        "ema_updates": ema.updates if ema is not None else 0,
        "validated": validated,  # False: a final fit (run_folder_protocol reads it)
        **crops.state_dict(),  # progressive resizing reached full patches: no crops after a resume
        **(swa.state_dict() if swa is not None else {}),  # the tail average so far (train.swa_lr_fraction)
    }


def restore(state: dict[str, Any], folder: Path, *, model, optimizer, ema, crops, early, plateau, device,
            swa=None) -> int:
    """Put ``state`` (from ``folder/resume.pt``) back into the run's objects; returns the first epoch to train.

    The weight average is read from ``folder/last.safetensors`` (the checkpoints hold the averaged weights).
    """
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        from safetensors.torch import load_file

        ema.model.load_state_dict(load_file(str(RunFolder(folder).last), device=str(device)))
        ema.updates = int(state["ema_updates"])
    first_epoch = int(state["epoch"]) + 1
    crops.load_state_dict(state, epochs_done=first_epoch - 1)
    early.load_state_dict(state)
    plateau.factor, plateau.stale = float(state["plateau_factor"]), int(state["plateau_stale"])
    if swa is not None:
        swa.load_state_dict(state)
    return first_epoch


def read_history(folder: Path, before_epoch: int) -> list[dict[str, Any]]:
    """The rows of ``folder/history.csv`` for the epochs before ``before_epoch``."""
    with open(RunFolder(folder).history) as file:
        return [row for row in csv.DictReader(file) if int(row["epoch"]) < before_epoch]


def save_epoch(out_dir: Path, scored: torch.nn.Module, config: RunConfig, contract, metadata: dict[str, Any],
               improved: bool, state: dict[str, Any]) -> None:
    """Write ``last.safetensors``, ``best.safetensors`` (when ``improved``) and ``resume.pt`` (``state``)."""
    run = RunFolder(out_dir)
    save_checkpoint(run.last, scored, config, contract, metadata)
    if improved:
        save_checkpoint(run.best, scored, config, contract, metadata)
    with atomic_path(run.resume_state) as temporary:
        torch.save(state, temporary)


class EpochLog:
    """``history.csv`` and TensorBoard for one run (first process only).

    Args:
        out_dir: the run folder.
        history: the rows of epochs already done (a resumed or continued run), written again first.
        first_epoch: the first epoch this process trains (TensorBoard drops later events of an earlier try).
        picture_samples: uint8 (N, H, W, 3) validation patches drawn every epoch, or None.
    """

    def __init__(self, out_dir: Path, history: list[dict[str, Any]], first_epoch: int, picture_samples=None):
        from torch.utils.tensorboard import SummaryWriter

        self.run = RunFolder(out_dir)
        write_text_atomic(
            self.run.history,
            ",".join(HISTORY_COLUMNS) + "\n" + "".join(",".join(str(row[c]) for c in HISTORY_COLUMNS) + "\n" for row in history),
        )
        self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=first_epoch)
        self.picture_samples = picture_samples

    def write(self, row: dict[str, Any], learning_rate: float, scores: dict[str, Any] | None) -> None:
        """Append ``row`` to ``history.csv`` and its scalars (and the PR curve of ``scores``) to TensorBoard."""
        epoch = row["epoch"]
        with open(self.run.history, "a") as file:
            file.write(",".join(str(row[c]) for c in HISTORY_COLUMNS) + "\n")
        for key in ("train_loss", "val_loss", "val_auc", "val_accuracy", "images_per_second"):
            tag = key.replace("_", "/", 1) if key.startswith(("train", "val")) else key
            self.writer.add_scalar(tag, float(row[key]), epoch)
        self.writer.add_scalar("learning_rate", learning_rate, epoch)
        if scores is not None:
            self.writer.add_pr_curve("val/pr_curve", scores["labels"], scores["probabilities"], epoch)
        self.writer.flush()

    def pictures(self, model: torch.nn.Module, epoch: int, contract) -> None:
        """First-layer filters and Grad-CAM of the picture samples (after the checkpoints: never costs an epoch)."""
        if self.picture_samples is None:
            return
        from pcamlab.explain.tensorboard import write_epoch_pictures

        write_epoch_pictures(self.writer, model, epoch, self.picture_samples, contract)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
