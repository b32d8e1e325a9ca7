"""Kaggle submissions for the "Histopathologic Cancer Detection" competition (the Kaggle copy of PCam).

The competition scores a CSV ``id,label`` by ROC AUC, where ``id`` is a test file's name without
``.tif`` and ``label`` the predicted probability of tumour. :func:`predict_kaggle` predicts a folder of
those files through the same predictor as ``pcamlab predict`` and writes that CSV atomically, in the
order of the competition's ``sample_submission.csv`` when one is given. Ids are matched before any
model runs: a template id without a file, or a file without a template id, stops the run with one line
(a submission missing rows or carrying extra ones is rejected by Kaggle anyway).

Example:
    >>> result = predict_kaggle("runs/demo/best.safetensors", ["test/"], "submission.csv",
    ...                         template="sample_submission.csv")
    >>> result.out
    PosixPath('submission.csv')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab.data.idcsv import Column, IdTable, read_id_csv
from pcamlab.data.readers.kaggle import KAGGLE_ID
from pcamlab.deploy.predict import PredictionResult, predict_files
from pcamlab.deploy.sources import collect_sources
from pcamlab.errors import DataError, RunFolderError
from pcamlab.fileio import write_text_atomic

__all__ = ["KAGGLE_COLUMNS", "read_template", "read_template_table", "kaggle_ids", "predict_kaggle"]

KAGGLE_COLUMNS = ["id", "label"]
_TEMPLATE_LABEL = Column("label", required=False, parse=str)  # placeholders (0): any text


def read_template(path: str | os.PathLike) -> list[str]:
    """The ids of a ``sample_submission.csv`` (columns ``id,label``; only the ids are read), in file order.

    Read by :func:`pcamlab.data.idcsv.read_id_csv` with the Kaggle id rule, like ``train_labels.csv``:
    a byte-order mark, ``\\r\\n``, ``;`` separators, a pandas index column, ids with ``.tif`` are all read.
    Use :func:`read_template_table` for the notes.

    Raises:
        DataError: the file is missing, not UTF-8 text, has no ``id`` column or no rows, or holds a bad id.
    """
    return read_template_table(path).ids


def read_template_table(path: str | os.PathLike) -> IdTable:
    """:func:`read_template` with the notes of what was read unusually (``table.ids``, ``table.notes``)."""
    # the label column is read (when present) only so that one id with two labels is refused like everywhere
    return read_id_csv(path, [_TEMPLATE_LABEL], id_column=KAGGLE_ID, what="template")


def kaggle_ids(files: Sequence[Path]) -> dict[str, Path]:
    """Map each test file to its Kaggle id (its name without ``.tif``/``.tiff``).

    Raises:
        DataError: a file is not a TIFF, or two files share an id.
    """
    ids: dict[str, Path] = {}
    for path in files:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise DataError(
                f"input {str(path)!r} is not a .tif file; a Kaggle submission is made from the competition's "
                "test/ folder of <id>.tif patches"
            )
        identifier = path.stem
        if identifier in ids:
            raise DataError(
                f"id {identifier!r} is both {str(ids[identifier])!r} and {str(path)!r}; pass one test folder"
            )
        ids[identifier] = path
    return ids


def predict_kaggle(
    model: Any,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    template: str | os.PathLike | None = None,
    tta: bool = False,
    batch_size: int = 256,
    device: str = "cpu",
    force: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> PredictionResult:
    """Predict Kaggle test patches and write the submission CSV ``id,label`` (label = P(tumour)).

    Args:
        model: checkpoint, exported model, or loaded predictor (as for :func:`predict_files`).
        inputs: the ``test/`` folder (or its ``.tif`` files). A folder is read flat (its own files; ids are
            file names), as the Kaggle reader reads ``test/``, by the walker every command uses: hidden files,
            links leading nowhere and sub-folders left out are said in ``result.notes``.
        out: submission CSV to write (atomically).
        template: ``sample_submission.csv``; rows follow its order and its ids must match the files
            exactly. Without it, rows follow the sorted file names.
        tta: average over the 8 dihedral views.
        batch_size: patches per forward pass.
        device: ``cpu`` or ``cuda[:N]`` (torch checkpoints).
        force: replace an existing ``out``.
        progress: optional ``progress(done, total)``.

    Returns:
        The :class:`PredictionResult` (names are the file paths), with ``out`` set.

    Raises:
        DataError: a non-TIFF input, a repeated id, or ids of the template and the files that differ
            (the count and the first few of each are named).
        RunFolderError: ``out`` exists and ``force`` is off.
    """
    out_path = Path(out)
    if out_path.exists() and not force:
        raise RunFolderError(f"{str(out_path)!r} already exists; choose another out or pass force=True to replace it",
                       parameters=("out", "force"))
    notes: list[str] = []
    # the test/ folder is read flat, as the Kaggle reader reads it (ids are file names): same walker, same notes
    sources = collect_sources(inputs, notes=notes, recursive=False)
    files = kaggle_ids([source.path for source in sources])  # an .h5 input fails here: not .tif
    order = list(files)
    if template is not None:
        table = read_template_table(template)
        wanted = table.ids
        notes.extend(table.notes)
        missing = [identifier for identifier in wanted if identifier not in files]
        extra = sorted(set(files) - set(wanted))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} template ids have no .tif file (first {missing[:3]})")
            if extra:
                parts.append(f"{len(extra)} files are not in the template (first {extra[:3]})")
            raise DataError(
                f"the inputs do not match template {str(template)!r}: {'; '.join(parts)}; pass the competition's "
                "complete test/ folder with its own sample_submission.csv"
            )
        order = wanted
    result = predict_files(model, [files[identifier] for identifier in order], None, tta=tta, batch_size=batch_size,
                           device=device, progress=progress)
    result.notes = [*notes, *result.notes]
    lines = ["id,label"] + [f"{identifier},{probability:.6f}" for identifier, probability in
                            zip(order, np.asarray(result.probabilities))]
    result.out = write_text_atomic(out_path, "\n".join(lines) + "\n")
    return result
