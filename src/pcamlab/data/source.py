"""The data a run was trained on, resolved one way for every command that reopens it.

A checkpoint's config names its data (``data.path``, ``data.format``) and, for a layout without a
validation split (Kaggle), how that split was made (``data.valid_fraction``, ``data.seed``). Evaluate,
explain and the final fit's test evaluation all open a split through :func:`open_run_split`, so two
commands given the same checkpoint see the same patches in the same order.

Example:
    >>> reader = open_run_split(checkpoint.config.data, "valid")                 # the training data
    >>> reader = open_run_split(checkpoint.config.data, "test", path="../other")  # other data, same split rule
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pcamlab.config import DataConfig
from pcamlab.data.readers import PatchReader, open_split
from pcamlab.errors import DataError

__all__ = ["RunData", "open_run_split", "resolve_run_data"]


@dataclass(frozen=True)
class RunData:
    """Where a split of a run's data is read from.

    Attributes:
        path: dataset root (or ``"sample"``).
        format: a registered reader name, or ``"auto"``.
        valid_fraction: Kaggle layout: fraction of labelled images held out as ``valid``.
        seed: Kaggle layout: seed of that stratified split.
    """

    path: str
    format: str
    valid_fraction: float
    seed: int


def _same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    if str(a) == str(b):
        return True
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def resolve_run_data(data: DataConfig, path: str | os.PathLike | None = None, format: str | None = None) -> RunData:
    """The data of a run's config, optionally read from another folder.

    Args:
        data: the run's ``data`` config (from its checkpoint).
        path: another dataset root; None = ``data.path``.
        format: a reader name or ``"auto"``; None = ``data.format`` at the run's own path, ``"auto"`` at
            another path (its layout may differ).

    Returns:
        A :class:`RunData`; ``valid_fraction`` and ``seed`` are always the run's, so a Kaggle-layout
        ``valid`` split is the one the run validated on.
    """
    root = data.path if path is None else str(path)
    if format is None:
        format = data.format if _same_path(root, data.path) else "auto"
    return RunData(str(root), format, data.valid_fraction, data.seed)


def open_run_split(
    data: DataConfig,
    split: str,
    *,
    path: str | os.PathLike | None = None,
    format: str | None = None,
    skip_bad: bool = False,
    stored_in: str | None = None,
) -> PatchReader:
    """Open ``split`` of a run's data (see :func:`resolve_run_data`) as a :class:`PatchReader`.

    Args:
        data: the run's ``data`` config.
        split: e.g. ``valid`` or ``test``.
        path: another dataset root; None = the run's.
        format: reader name or ``auto``; None = the run's at its own path, else ``auto``.
        skip_bad: default of ``load_split_arrays``: skip unreadable images instead of stopping.
        stored_in: what the run's data path was read from (e.g. ``checkpoint 'runs/a/best.safetensors'``),
            named when that path is gone.

    Raises:
        DataError: ``path`` is None and the run's stored data path does not exist (moved data, or a
            relative path read from another working folder): one line naming it, with
            ``parameters=("data",)`` (the CLI says ``--data``). Otherwise as :func:`pcamlab.data.open_split`.
    """
    if path is None and data.path != "sample" and not Path(data.path).expanduser().exists():
        raise DataError(
            f"dataset root {data.path!r} (the data path stored in {stored_in or 'the run'}) does not exist; "
            "pass data, the folder holding that dataset here", parameters=("data",),
        )
    resolved = resolve_run_data(data, path, format)
    return open_split(resolved.path, split, resolved.format, valid_fraction=resolved.valid_fraction,
                      seed=resolved.seed, skip_bad=skip_bad)
