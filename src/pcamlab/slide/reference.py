"""The reference CSV of a cohort: which slides hold tumour (Camelyon16's ``reference.csv``).

One row per slide, columns ``slide,label``: the slide id (its file's stem; a file name is accepted and its
suffix dropped) and ``tumor``/``tumour``/``normal`` or ``1``/``0``, case-insensitive. The header is
optional: Camelyon16's own file has none and further columns (lesion type, size), which are ignored.

This is the one reader of that file in pcamlab until the shared id-CSV reader lands (then its body is
swapped for it; the signature stays).

Example:
    >>> read_reference("reference.csv")
    {'test_001': 1, 'test_002': 1, 'test_003': 0}
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from pcamlab.errors import DataError
from pcamlab.fileio import printable

__all__ = ["read_reference", "read_split_map", "REFERENCE_LABELS"]

REFERENCE_LABELS = {"tumor": 1, "tumour": 1, "1": 1, "normal": 0, "0": 0}  # lower-case label -> 1 tumour, 0 normal
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


def _slide_id(text: str) -> str:
    name = Path(text.strip()).name
    return name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in SLIDE_SUFFIXES else name


def read_reference(path: str | os.PathLike) -> dict[str, int]:
    """Slide id -> 1 (tumour) or 0 (normal) from a ``slide,label`` CSV.

    Raises:
        DataError: the file is missing or empty, a row lacks a label, a label is not tumour/normal/1/0,
            or a slide appears twice with different labels.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DataError(f"reference CSV {printable(path)!r} cannot be read ({error.strerror or error}); "
                        "pass a CSV with columns slide,label") from None
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if rows and rows[0] and rows[0][0].strip().lower() in ("slide", "image", "slide_id", "id", "wsi"):
        rows = rows[1:]
    if not rows:
        raise DataError(f"reference CSV {printable(path)!r} has no slides; write one row per slide: slide,label "
                        "(label tumor or normal)")
    labels: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip():
            raise DataError(f"reference CSV {printable(path)!r}, row {number}: {row!r} needs two columns slide,label")
        slide, label = _slide_id(row[0]), row[1].strip().lower()
        if label not in REFERENCE_LABELS:
            raise DataError(f"reference CSV {printable(path)!r}, row {number}: label {row[1].strip()!r} of slide "
                            f"{slide!r} must be tumor, tumour, normal, 1 or 0")
        value = REFERENCE_LABELS[label]
        if labels.get(slide, value) != value:
            raise DataError(f"reference CSV {printable(path)!r}: slide {slide!r} is listed as both tumour and "
                            "normal; keep one row per slide")
        labels[slide] = value
    return labels


def read_split_map(path: str | os.PathLike) -> dict[str, str]:
    """Slide id -> split name from a ``slide,split`` CSV (header optional), e.g. slides grouped by hospital.

    Raises:
        DataError: the file is missing or empty, a row lacks a split, or a slide appears twice with two splits.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DataError(f"split CSV {printable(path)!r} cannot be read ({error.strerror or error}); pass a CSV "
                        "with columns slide,split") from None
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if rows and rows[0] and rows[0][0].strip().lower() in ("slide", "image", "slide_id", "id", "wsi"):
        rows = rows[1:]
    if not rows:
        raise DataError(f"split CSV {printable(path)!r} has no slides; write one row per slide: slide,split")
    splits: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"split CSV {printable(path)!r}, row {number}: {row!r} needs two columns slide,split")
        slide, split = _slide_id(row[0]), row[1].strip().lower()
        if splits.get(slide, split) != split:
            raise DataError(f"split CSV {printable(path)!r}: slide {slide!r} is in two splits "
                            f"({splits[slide]!r} and {split!r}); a slide is in one split only")
        splits[slide] = split
    return splits
