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

import os

from pcamlab.data.idcsv import SLIDE_ID, Column, read_id_csv, tumour_label

__all__ = ["read_reference", "read_split_map", "LABEL", "SPLIT"]

LABEL = Column("label", aliases=("class", "diagnosis"), parse=tumour_label)  # Tumor/Tumour/Normal or 1/0
SPLIT = Column("split", aliases=("set", "subset"), parse=lambda text: text.lower())


def read_reference(path: str | os.PathLike) -> dict[str, int]:
    """Slide id -> 1 (tumour) or 0 (normal) from a ``slide,label`` CSV (header optional, as Camelyon16's).

    Read by :func:`pcamlab.data.idcsv.read_id_csv`, the one reader of id CSVs (byte-order mark, CRLF,
    ``;`` separators, pandas index column, ids with a slide-file suffix: the same rules everywhere).

    Returns:
        ``{slide_id: 0 | 1}`` in file order.

    Raises:
        DataError: the file is missing or empty, a row lacks a label, a label is not tumour/normal/1/0,
            or a slide appears twice with different labels (each message names the file and line).
    """
    return dict(read_id_csv(path, [LABEL], id_column=SLIDE_ID, what="reference CSV", headerless=True).column("label"))


def read_split_map(path: str | os.PathLike) -> dict[str, str]:
    """Slide id -> split name from a ``slide,split`` CSV (header optional), e.g. slides grouped by hospital.

    Raises:
        DataError: the file is missing or empty, a row lacks a split, or a slide appears twice with two splits.
    """
    return dict(read_id_csv(path, [SPLIT], id_column=SLIDE_ID, what="split CSV", headerless=True).column("split"))
