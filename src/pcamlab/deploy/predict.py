"""Predict patches on disk with a checkpoint (or an exported model) and write a CSV.

Inputs are image files, folders of images (searched recursively) and PCam-style ``_x.h5`` files. They
are checked before any model runs, then streamed in batches, so memory does not grow with the number
of patches. The CSV (columns ``patch, probability, predicted, class_name``; ``predicted`` is 1 when
the probability reaches the checkpoint's threshold) is written to a temporary file beside the target
and renamed at the end: an interrupted run leaves no half-written file, and an existing file is
never replaced unless ``force``.

Example:
    >>> result = predict_files("runs/demo/best.safetensors", ["new_patches/"], "predictions.csv")
    >>> result.probabilities.shape, result.out
    ((120,), PosixPath('predictions.csv'))
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab.config_ranges import check_field
from pcamlab.errors import DataError, RunFolderError
from pcamlab.fileio import publish, temporary_file
from pcamlab.runtime.predictor import load_predictor

__all__ = ["CSV_COLUMNS", "PredictionResult", "predict_files"]

CSV_COLUMNS = ["patch", "probability", "predicted", "class_name"]


@dataclass
class PredictionResult:
    """What :func:`predict_files` predicted.

    Attributes:
        names: one name per predicted patch (file path, or ``"<file.h5> row <i>"``).
        probabilities: float64 (N,) probability of class 1 (tumour).
        predicted: int64 (N,) 1 where ``probability >= threshold``.
        threshold: the decision threshold used.
        threshold_source: where it came from: ``given`` (the caller's), or the model contract's
            ``threshold_source`` (``fixed``, or the ``evaluate.threshold_method`` that chose it on validation).
        class_names: names of classes 0 and 1.
        skipped: files skipped as unusable (only with ``skip_bad``).
        out: the CSV written, or None.
        runtime: the runtime that scored (``torch | onnx | int8 | torchscript``) and why it was chosen.
        notes: what reading the inputs skipped or read unusually (hidden files, link loops, template quirks).
    """

    names: list[str]
    probabilities: np.ndarray
    predicted: np.ndarray
    threshold: float
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)
    threshold_source: str = "fixed"
    out: Path | None = None
    runtime: str = "torch"
    runtime_reason: str = ""
    notes: list[str] = field(default_factory=list)


def _open_output(out: Path, force: bool) -> tuple[Any, str]:
    if out.exists() and not force:
        raise RunFolderError(f"{str(out)!r} already exists; choose another out or pass force=True to replace it",
                       parameters=("out", "force"))
    if out.is_dir():
        raise RunFolderError(f"out {str(out)!r} is a folder; pass a file name such as {str(out / 'predictions.csv')!r}",
                       parameters=("out",))
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = temporary_file(out)  # pid in the name: a killed writer's file is removed by the next one
    return os.fdopen(handle, "w", newline="", encoding="utf-8"), temporary


def predict_files(
    checkpoint: Any,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    tta: bool = False,
    batch_size: int = 256,
    threshold: float | None = None,
    device: str = "cpu",
    force: bool = False,
    skip_bad: bool = False,
    progress: Callable[[int, int], object] | None = None,
    runtime: str = "auto",
) -> PredictionResult:
    """Predict every patch of ``inputs`` and optionally write a CSV.

    Args:
        checkpoint: a ``.safetensors`` checkpoint, an ``.onnx`` or TorchScript ``.pt`` file from
            ``pcamlab export``, or an already loaded checkpoint / predictor.
        inputs: image files (jpg/png/tif), folders of them (recursively), PCam-style ``_x.h5`` files.
        out: CSV to write (columns ``patch, probability, predicted, class_name``); None writes nothing.
        tta: average the probability over the 8 dihedral transforms.
        batch_size: patches per forward pass (also the decoding chunk).
        threshold: decision threshold; default the one stored in the checkpoint.
        device: ``cpu`` or ``cuda[:N]`` (torch models only).
        force: replace an existing ``out``.
        skip_bad: skip unusable image files, h5 files and h5 rows (listed in ``result.skipped``)
            instead of stopping.
        progress: optional ``progress(done, total)`` callable, called after each batch.
        runtime: for a checkpoint path: ``auto`` (the fastest export of this very checkpoint beside
            it, else torch; see :func:`pcamlab.runtime.fastest.open_fastest`), ``torch``, ``onnx`` or
            ``int8``.

    Returns:
        A :class:`PredictionResult`.

    Raises:
        DataError: a missing input, an unknown file kind, an empty folder, or an unusable image
            (wrong size, not RGB, unreadable), each naming the file.
        RunFolderError: ``out`` exists and ``force`` is off.
        CheckpointError: the model file cannot be loaded.

    Example:
        >>> result = predict_files("best.safetensors", ["patch.png", "more/"], "predictions.csv", tta=True)
    """
    from pcamlab.deploy.sources import collect_sources, iterate_patches

    check_field("evaluate.batch_size", batch_size, name="batch_size")
    check_field("evaluate.threshold", threshold, name="threshold")
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.exists() and not force:
        raise RunFolderError(f"{str(out_path)!r} already exists; choose another out or pass force=True to replace it",
                             parameters=("out", "force"))
    if isinstance(checkpoint, (str, os.PathLike)):
        from pcamlab.runtime.fastest import open_fastest

        predictor, runtime, runtime_reason = open_fastest(checkpoint, runtime, device=device)
    else:
        from pcamlab.runtime.fastest import runtime_of

        predictor, runtime_reason = load_predictor(checkpoint, device=device), "a loaded model"
        runtime = runtime_of(predictor)
    contract = predictor.contract
    threshold_source = contract.threshold_source if threshold is None else "given"
    threshold = float(contract.threshold if threshold is None else threshold)  # the contract checks its own
    class_names = list(contract.class_names)
    names: list[str] = []
    probabilities: list[np.ndarray] = []
    skipped: list[str] = []
    notes: list[str] = []
    sources = collect_sources(inputs, patch_size=contract.patch_size, skip_bad=skip_bad,
                              skipped=skipped, notes=notes)
    total = sum(source.count for source in sources)
    file, temporary = _open_output(out_path, force) if out_path is not None else (None, None)
    try:
        writer = csv.writer(file) if file is not None else None
        if writer is not None:
            writer.writerow(CSV_COLUMNS)
        batch_names: list[str] = []
        batch_images: list[np.ndarray] = []

        def flush() -> None:
            images = np.stack(batch_images)  # (B, H, W, 3) uint8
            batch_probabilities = predictor.predict_proba(images, batch_size=batch_size, tta=tta)
            for name, probability in zip(batch_names, batch_probabilities):
                label = int(probability >= threshold)
                if writer is not None:
                    writer.writerow([name, f"{probability:.6f}", label, class_names[label]])
            names.extend(batch_names)
            probabilities.append(batch_probabilities)
            batch_names.clear()
            batch_images.clear()
            if progress is not None:
                progress(len(names) + len(skipped), total)

        for name, image in iterate_patches(sources, skip_bad=skip_bad, skipped=skipped):
            batch_names.append(name)
            batch_images.append(image)
            if len(batch_images) == batch_size:
                flush()
        if batch_images:
            flush()
        if not names:
            first = f", first {skipped[0]!r}" if skipped else ""
            raise DataError(
                f"the inputs hold no usable patch ({len(skipped)} files skipped{first}); nothing to predict"
            )
        if file is not None:
            file.close()
            publish(temporary, out_path)
    except BaseException:
        if file is not None:
            file.close()
            Path(temporary).unlink(missing_ok=True)
        raise
    values = np.concatenate(probabilities)
    return PredictionResult(
        names=names,
        probabilities=values,
        predicted=(values >= threshold).astype(np.int64),
        threshold=threshold,
        threshold_source=threshold_source,
        class_names=class_names,
        skipped=skipped,
        out=out_path,
        runtime=runtime,
        runtime_reason=runtime_reason,
        notes=notes,
    )
