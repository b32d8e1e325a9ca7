"""The official PCam release: ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` and its meta CSVs.

Source: the PCam README (https://github.com/basveeling/pcam): ``x`` holds uint8 ``(N, 96, 96, 3)`` RGB
patches, ``y`` uint8 ``(N, 1, 1, 1)`` labels, 1 when the centre 32x32 region holds tumour. Beside them,
``camelyonpatch_level_2_split_<split>_meta.csv`` describes patch i in row i: a pandas index column, then
``coord_y``, ``coord_x`` (the patch's place in its slide), ``tumor_patch``, ``center_tumor_patch`` and
``wsi`` (the slide). :func:`read_meta_csv` is the one reader of that file (k-fold grouping by slide,
``data convert``, ``data info``), built on :func:`pcamlab.data.idcsv.read_row_csv`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pcamlab.data.idcsv import Column, RowTable, read_row_csv
from pcamlab.data.readers.base import READERS, PatchReader, check_x_dataset, unknown_split
from pcamlab.data.readers.decode import SKIP_HINT, BadImageError
from pcamlab.errors import DataError, plain_line
from pcamlab.fileio import printable

__all__ = ["H5_PATTERN", "H5_SPLITS", "H5_META_PATTERN", "H5_META_HEADER", "H5Reader", "meta_csv_path",
           "read_meta_csv"]

H5_PATTERN = "camelyonpatch_level_2_split_{split}_{kind}.h5"
H5_SPLITS = ("train", "valid", "test")
H5_META_PATTERN = "camelyonpatch_level_2_split_{split}_meta.csv"  # slide of each row (column 'wsi')
#: The header of PCam's meta CSVs (the first, unnamed column is pandas' index), as the release writes it.
H5_META_HEADER = ("", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi")


def meta_csv_path(root: str | os.PathLike, split: str) -> Path:
    """``root/camelyonpatch_level_2_split_<split>_meta.csv`` (which need not exist)."""
    return Path(root) / H5_META_PATTERN.format(split=split)


def _slide_id(text: str) -> str:
    if not text:
        raise ValueError("every patch needs its slide id")
    return text


def read_meta_csv(path: str | os.PathLike, *, count: int | None = None, column: str = "wsi") -> RowTable:
    """PCam's meta CSV of one split: row i describes patch i; ``column`` (the slide id) is read and checked.

    The file follows the CSV rules of :mod:`pcamlab.data.idcsv` (BOM, CRLF, ``;``/tab separators, header
    names in any case and spacing, the pandas index column, blank lines); the other columns are kept as
    written (``table.to_csv(rows)`` writes chosen rows back, as ``data convert`` does).

    Args:
        path: the CSV (``camelyonpatch_level_2_split_<split>_meta.csv``, :func:`meta_csv_path`).
        count: patches in the split; the number of rows must equal it when given.
        column: the slide id column (PCam: ``wsi``); every row needs a value.

    Returns:
        A :class:`~pcamlab.data.idcsv.RowTable`; ``table.column(column)`` is the slide of each patch (str).

    Raises:
        DataError: a missing or unreadable file, no ``column`` in the header, a row without a slide id, or a
            row count other than ``count``; the message names the file (and line).

    Example:
        >>> table = read_meta_csv(meta_csv_path("data/pcam", "train"), count=262144)
        >>> table.column("wsi")[0]
    """
    table = read_row_csv(path, [Column(column, parse=_slide_id)], what="slide meta CSV")
    if count is not None and len(table) != count:
        raise DataError(
            f"slide meta CSV {printable(table.path)!r} has {len(table)} rows but the split has {count} patches; "
            "row i must describe patch i: use the meta CSV of the same split and release"
        )
    return table


@READERS.register("h5")
class H5Reader(PatchReader):
    """The official PCam HDF5 files: ``camelyonpatch_level_2_split_<split>_{x,y}.h5``.

    ``x`` holds dataset ``x`` uint8 ``(N, 96, 96, 3)``, ``y`` holds dataset ``y`` uint8 ``(N, 1, 1, 1)``.
    Labels are read once at open; the image file is opened lazily on the first ``__getitem__`` and
    re-opened in a forked process (the pid is stored), so the reader can go into DataLoader workers.
    Images are read one row at a time (``x[i]``), which is what the (1, 96, 96, 3) chunking favours.
    """

    format = "h5"
    looks_for = "h5: camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5"
    detect_order = 10  # exact file names

    def __init__(self, root: Path, split: str, *, skip_bad: bool = False, **options):
        self.root, self.split, self.skip_bad = root, split, skip_bad
        available = self.splits(root)
        self.x_path = root / H5_PATTERN.format(split=split, kind="x")
        self.y_path = root / H5_PATTERN.format(split=split, kind="y")
        present = [path for path in (self.x_path, self.y_path) if path.exists()]
        gzipped = [Path(f"{path}.gz") for path in (self.x_path, self.y_path) if Path(f"{path}.gz").exists()]
        if split not in available:
            if gzipped:
                raise DataError(
                    f"{str(gzipped[0])!r} is still gzip-compressed; decompress it first: gunzip -k {gzipped[0]}"
                )
            if len(present) == 1:
                missing = self.y_path if present[0] == self.x_path else self.x_path
                raise DataError(
                    f"{str(missing)!r} is missing (found {present[0].name}); each split needs both the "
                    "_x (images) and _y (labels) files: download or copy the missing one"
                )
            raise unknown_split(root, split, available, "h5")
        self._file = None
        self._images = None
        self._pid = None
        self.count = self._check_x()
        self.labels = self._read_labels()
        if len(self.labels) != self.count:
            raise DataError(
                f"{self.x_path.name} has {self.count} images but {self.y_path.name} has {len(self.labels)} "
                f"labels in {str(root)!r}; the _x and _y files of one split must match: use the pair from "
                "the same release"
            )
        self._check_labels(f"{str(self.y_path)!r} dataset 'y'", locate=lambda index: f"row {index}")

    @classmethod
    def _present(cls, root: Path, suffix: str = "") -> list[str]:
        return [
            split
            for split in H5_SPLITS
            if all((root / (H5_PATTERN.format(split=split, kind=kind) + suffix)).exists() for kind in "xy")
        ]

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(root.glob("camelyonpatch_level_2_split_*.h5")) or any(
            root.glob("camelyonpatch_level_2_split_*.h5.gz")
        )

    @classmethod
    def splits(cls, root: Path, **options) -> list[str]:
        return cls._present(root)

    @classmethod
    def no_splits_error(cls, root: Path) -> DataError:
        gzipped = sorted(root.glob("camelyonpatch_level_2_split_*.h5.gz"))
        if gzipped:
            return DataError(
                f"{str(gzipped[0])!r} is still gzip-compressed ({len(gzipped)} .h5.gz files in {str(root)!r}, no "
                f"usable .h5 pair); decompress them first: gunzip -k {root / 'camelyonpatch_level_2_split_*.h5.gz'}"
            )
        for split in H5_SPLITS:
            x_path, y_path = (root / H5_PATTERN.format(split=split, kind=kind) for kind in "xy")
            if x_path.exists() != y_path.exists():
                present, missing = (x_path, y_path) if x_path.exists() else (y_path, x_path)
                return DataError(
                    f"{str(missing)!r} is missing (found {present.name}); each split needs both the _x (images) "
                    "and _y (labels) files: download or copy the missing one"
                )
        found = sorted(path.name for path in root.glob("camelyonpatch_level_2_split_*.h5"))
        return DataError(
            f"{str(root)!r} holds {found} but no complete _x/_y pair of the splits {list(H5_SPLITS)}; each split "
            "needs camelyonpatch_level_2_split_<split>_x.h5 (images) and _y.h5 (labels): rename or add the files"
        )

    @staticmethod
    def _open(path: Path):
        from pcamlab.hdf5 import open_hdf5

        return open_hdf5(path)  # one line naming why: locked, compressed, a web page, truncated, ...

    @staticmethod
    def _dataset(file, name: str, path: Path):
        if name not in file:
            names = list(file.keys())
            raise DataError(
                f"{str(path)!r} has no dataset {name!r} (it has {names}); official PCam files hold "
                f"dataset {name!r}: rename it, e.g. with h5py: f[{name!r}] = f[{names[0] if names else 'old'!r}]"
            )
        return file[name]

    def _check_x(self) -> int:
        from pcamlab.hdf5 import damaged_structure

        with self._open(self.x_path) as file, damaged_structure(self.x_path):
            images = self._dataset(file, "x", self.x_path)
            shape, dtype = tuple(images.shape), images.dtype
        check_x_dataset(self.x_path, shape, dtype)
        return shape[0]

    def _read_labels(self) -> np.ndarray:
        from pcamlab.hdf5 import damaged_structure

        with self._open(self.y_path) as file, damaged_structure(self.y_path):
            labels = self._dataset(file, "y", self.y_path)
            shape, dtype = tuple(labels.shape), labels.dtype
            if not (len(shape) >= 1 and all(size == 1 for size in shape[1:])):
                raise DataError(
                    f"{str(self.y_path)!r} dataset 'y' has shape {shape}; it must be (N, 1, 1, 1) or (N,), "
                    "one label per image: reshape it"
                )
            if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)):
                raise DataError(
                    f"{str(self.y_path)!r} dataset 'y' has dtype {dtype}; it must be an integer type "
                    "(uint8 0/1 in the official files): convert it with astype('uint8')"
                )
            values = labels[()]  # whole dataset in one read: N bytes
        return np.asarray(values).reshape(shape[0]).astype(np.int64)

    def _ensure_open(self):
        if self._images is None or self._pid != os.getpid():
            # A forked worker must not share the parent's HDF5 handle: open a fresh one.
            from pcamlab.hdf5 import damaged_structure

            self._file = self._open(self.x_path)
            with damaged_structure(self.x_path):
                self._images = self._file["x"]
            self._pid = os.getpid()
        return self._images

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = self._check_index(index)
        images = self._ensure_open()
        try:
            image = images[index]  # (96, 96, 3) uint8, one chunk
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:  # a damaged chunk or index
            raise BadImageError(
                f"cannot read {self.name(index)} ({plain_line(error, 120)}): that part of the file is damaged; "
                f"copy or download the file again, or {SKIP_HINT} such rows", parameters=("skip_bad",)
            ) from None
        return image, int(self.labels[index])

    def name(self, index: int) -> str:
        return printable(f"{self.x_path} row {index}")

    def close(self) -> None:
        """Close the image file (it re-opens on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._images = self._pid = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = state["_images"] = state["_pid"] = None  # h5py handles do not pickle
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
