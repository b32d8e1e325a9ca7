"""Readers made of other readers: a subset (a cross-validation fold) and a concatenation (train + valid).

Nothing is decoded or copied: items are read from the underlying readers on demand, so they stream when
those stream, and pickle whenever those do (DataLoader workers).

Example:
    >>> from pcamlab.data import open_split
    >>> from pcamlab.data.combined import ConcatReader, SubsetReader
    >>> fold = SubsetReader(open_split("sample", "train"), [0, 5, 9], description="fold 1/5 valid")
    >>> both = ConcatReader([open_split("sample", "train"), open_split("sample", "valid")])
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from pcamlab.data.readers.base import PatchReader
from pcamlab.errors import DataError

__all__ = ["SubsetReader", "ConcatReader"]


class SubsetReader(PatchReader):
    """The items ``indices`` of another reader, in that order (a cross-validation fold).

    Nothing is decoded or copied: items are read from ``reader`` on demand, so a subset of a streamed
    h5 split streams too. Picklable whenever ``reader`` is (every pcamlab reader is), so it can go into
    DataLoader workers.

    Args:
        reader: the reader to take items from.
        indices: positions in ``reader`` (integers in ``[0, len(reader))``, repeats allowed).
        description: what the subset is, shown in ``split`` (e.g. ``"fold 2/5 valid"``).

    Raises:
        DataError: an index is out of range or not an integer.

    Example:
        >>> valid = SubsetReader(open_split("sample", "train"), [0, 5, 9], description="fold 1/5 valid")
        >>> len(valid), valid.split
        (3, 'train[fold 1/5 valid]')
    """

    def __init__(self, reader: PatchReader, indices: Sequence[int] | np.ndarray, *, description: str = "subset"):
        positions = np.asarray(indices)
        if positions.size and not np.issubdtype(positions.dtype, np.integer):
            raise DataError(
                f"SubsetReader indices must be integers; got dtype {positions.dtype}: pass positions such as "
                "those stratified_folds returns"
            )
        positions = positions.astype(np.int64).reshape(-1)
        bad = np.flatnonzero((positions < 0) | (positions >= len(reader)))
        if bad.size:
            raise DataError(
                f"SubsetReader index {int(positions[bad[0]])} is outside split {reader.split!r} of {len(reader)} "
                f"patches ({bad.size} bad indices); indices must be in [0, {len(reader)})"
            )
        self.reader = reader
        self.indices = positions
        self.root = reader.root
        self.split = f"{reader.split}[{description}]"
        self.format = reader.format
        self.skip_bad = getattr(reader, "skip_bad", False)
        self.unlabeled = getattr(reader, "unlabeled", False)
        self.thread_safe = getattr(reader, "thread_safe", False)
        self.labels = np.asarray(reader.labels, dtype=np.int64)[positions]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.reader[int(self.indices[self._check_index(index)])]

    def name(self, index: int) -> str:
        return self.reader.name(int(self.indices[index]))

    def _validate_images(self) -> None:
        self.reader._validate_images()  # header checks of the whole parent split: cheap, and a superset


class ConcatReader(PatchReader):
    """Several readers end to end (train + valid for a final fit).

    ``root`` is the readers' common root (the first one's when they differ), ``split`` joins their split
    names with ``+`` (``"train+valid"``) and ``format`` is theirs (joined with ``+`` when they differ).

    Args:
        readers: one or more readers; item ``i`` of the concatenation is item ``i - offset`` of the
            reader it falls in.

    Raises:
        DataError: no readers were given.

    Example:
        >>> both = ConcatReader([open_split("sample", "train"), open_split("sample", "valid")])
        >>> len(both), both.split
        (1000, 'train+valid')
    """

    def __init__(self, readers: Sequence[PatchReader]):
        readers = list(readers)
        if not readers:
            raise DataError("ConcatReader needs at least one reader; got none: pass e.g. [train_reader, valid_reader]")
        self.readers = readers
        self.offsets = np.cumsum([0] + [len(reader) for reader in readers]).tolist()  # start of each reader
        roots = {str(reader.root) for reader in readers}
        self.root = readers[0].root
        self.split = "+".join(reader.split for reader in readers)
        formats = list(dict.fromkeys(reader.format for reader in readers))
        self.format = "+".join(formats)
        self.skip_bad = any(getattr(reader, "skip_bad", False) for reader in readers)
        self.unlabeled = all(getattr(reader, "unlabeled", False) for reader in readers)
        self.thread_safe = all(getattr(reader, "thread_safe", False) for reader in readers)
        self.labels = np.concatenate([np.asarray(reader.labels, dtype=np.int64) for reader in readers])
        self.common_root = len(roots) == 1

    def _locate(self, index: int) -> tuple[PatchReader, int]:
        part = bisect.bisect_right(self.offsets, index) - 1
        return self.readers[part], index - self.offsets[part]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        reader, position = self._locate(self._check_index(index))
        return reader[position]

    def name(self, index: int) -> str:
        reader, position = self._locate(int(index))
        return reader.name(position)

    def _validate_images(self) -> None:
        for reader in self.readers:
            reader._validate_images()
