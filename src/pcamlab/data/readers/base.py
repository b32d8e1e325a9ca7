"""The reader contract (:class:`PatchReader`), the registry of layouts, and what every reader shares.

A layout is one :class:`PatchReader` subclass registered in :data:`READERS` (one file per layout in this
package). Readers whose items are one image file each (class folders, Kaggle) derive from
:class:`ImageFileReader`, which lists files with :func:`pcamlab.data.walk.walk_files` and decodes them with
:func:`pcamlab.data.readers.decode.decode_image_file`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pcamlab.data.readers.decode import PATCH_SIZE, decode_image_file, validate_headers
from pcamlab.data.walk import IMAGE_SUFFIXES, Listing, walk_files
from pcamlab.errors import DataError, did_you_mean
from pcamlab.fileio import printable
from pcamlab.registry import Registry

__all__ = ["READERS", "PatchReader", "ImageFileReader", "sample_root", "resolve_root", "check_x_dataset",
           "unknown_split"]

READERS: Registry[type[PatchReader]] = Registry("data format")


def sample_root() -> Path:
    """Folder of the real PCam sample shipped in the package (800 train + 200 valid patches)."""
    return Path(__file__).resolve().parent.parent / "sample"


def resolve_root(root: str | os.PathLike) -> Path:
    """The dataset folder ``root`` names (``"sample"``: the shipped sample), checked to be a folder.

    Raises:
        DataError: it does not exist or is a file.
    """
    if str(root) == "sample":
        return sample_root()
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"dataset root {str(path)!r} does not exist; pass a folder holding PCam data "
            "(official .h5 files, class folders or the Kaggle layout) or 'sample' for the shipped sample"
        )
    if not path.is_dir():
        raise DataError(
            f"dataset root {str(path)!r} is a file, not a folder; pass the folder that holds it "
            f"({str(path.parent)!r})"
        )
    return path


def check_x_dataset(path: str | os.PathLike, shape: tuple, dtype: np.dtype, patch_size: int = PATCH_SIZE) -> None:
    """Raise a one-line DataError unless an HDF5 dataset 'x' is uint8 (N, patch_size, patch_size, 3)."""
    if dtype != np.uint8:
        raise DataError(
            f"{str(path)!r} dataset 'x' has dtype {dtype}; it must be uint8 RGB: convert it, "
            "e.g. x = np.clip(x, 0, 255).astype('uint8') (times 255 first if it is in [0, 1])"
        )
    if len(shape) != 4 or shape[1:] != (patch_size, patch_size, 3):
        raise DataError(
            f"{str(path)!r} dataset 'x' has shape {shape}; it must be (N, {patch_size}, {patch_size}, 3) "
            f"uint8 RGB, channels last: transpose (N, 3, H, W) data to (N, H, W, 3) and crop or resize "
            f"to {patch_size}x{patch_size}"
        )


class PatchReader:
    """Base of every reader: a sized, indexable split of ``(image, label)`` pairs.

    Attributes:
        root: dataset folder (the resolved one, e.g. below ``train+val/`` for the course layout).
        split: split name, e.g. ``"train"``.
        format: registered name of the layout (``"h5"``, ``"folders"``, ``"kaggle"``).
        labels: int64 array ``(N,)`` of every label, read without decoding any image.
        skip_bad: default of ``load_split_arrays(..., skip_bad=...)`` for this reader.
        notes: what was read in a way the layout does not prescribe but is unambiguous (e.g. Kaggle ids
            written with their .tif suffix); commands show these lines.
    """

    format = ""
    notes: list[str] = []  # read-only default; readers assign their own list
    #: what detection looks for, listed in "no recognisable layout" errors.
    looks_for = ""
    #: place in auto-detection, lowest first: layouts recognised by specific file names before generic ones.
    detect_order = 50
    #: whether ``reader[i]`` may be called from several threads at once (one image file per item:
    #: Pillow releases the GIL while it decodes, so :func:`load_split_arrays` decodes with threads).
    thread_safe = False

    root: Path
    split: str
    labels: np.ndarray
    skip_bad: bool

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` looks like this layout (cheap: file names only)."""
        raise NotImplementedError

    @classmethod
    def splits(cls, root: Path, **options) -> list[str]:
        """Splits present under ``root``."""
        raise NotImplementedError

    @classmethod
    def no_splits_error(cls, root: Path) -> DataError:
        """The error for a folder detected as this layout that holds no complete split."""
        return DataError(
            f"{str(root)!r} looks like the {cls.format} layout but holds no complete split; looked for "
            f"{cls.looks_for}: add the files"
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def name(self, index: int) -> str:
        """File (or file and row) of item ``index``, for messages and CSVs.

        Printable: the bytes of a file name that is not UTF-8 appear as ``\\xe9`` escapes
        (:func:`pcamlab.fileio.printable`), so any UTF-8 file can hold it.
        """
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for split {self.split!r} of {len(self)} patches")
        return index

    def _check_labels(self, where: str, locate: Callable[[int], str] | None = None) -> None:
        allowed = (-1,) if getattr(self, "unlabeled", False) else (0, 1)
        bad = np.flatnonzero(~np.isin(self.labels, allowed))
        if bad.size:
            first = int(bad[0])
            raise DataError(
                f"{where}: label {int(self.labels[first])} at {(locate or self.name)(first)} "
                f"({bad.size} bad labels); "
                "labels must be 0 (no tumour) or 1 (tumour in the centre 32x32 region): fix the labels"
            )

    def class_counts(self) -> dict[int, int]:
        """Number of patches per label, e.g. ``{0: 400, 1: 400}``."""
        values, counts = np.unique(self.labels, return_counts=True)
        return {int(value): int(count) for value, count in zip(values, counts)}

    def validate(self) -> dict:
        """Check the whole split cheaply: counts, labels and every image's size and mode.

        Images are not decoded (file headers only; HDF5: dataset shape and dtype), so unreadable
        or truncated files are found when loading. Raises :class:`DataError` with the fix.

        Returns:
            ``{"format", "split", "count", "class_counts"}``.
        """
        if len(self) == 0:
            raise DataError(f"split {self.split!r} under {str(self.root)!r} is empty; add patches to it")
        self._check_labels(f"split {self.split!r}")
        self._validate_images()
        return {
            "format": self.format,
            "split": self.split,
            "count": len(self),
            "class_counts": self.class_counts(),
        }

    def _validate_images(self) -> None:
        """Per-layout cheap image checks (headers only)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, count={len(self)})"


def unknown_split(root: Path, split: str, available: list[str], layout: str) -> DataError:
    return DataError(
        f"split {split!r} not found in {layout} dataset {str(root)!r}; available splits: {available}"
        f"{did_you_mean(split, available)}"
    )


class ImageFileReader(PatchReader):
    """A reader whose item ``i`` is the image file ``files[i]`` with label ``labels[i]``.

    Subclasses set ``root``, ``split``, ``skip_bad``, ``files`` and ``labels`` (and ``notes``); listing
    (:meth:`list_images`), decoding, names and header checks are written here once.
    """

    thread_safe = True  # one image file per item: Pillow releases the GIL while decoding
    files: list[Path]

    def list_images(self, folder: Path, *, recursive: bool = True) -> list[Path]:
        """The image files of ``folder`` by the walker's rules (:mod:`pcamlab.data.walk`); its notes join ``notes``."""
        return self.walk_images(folder, recursive=recursive).files

    def walk_images(self, folder: Path, *, recursive: bool = True) -> Listing:
        """:meth:`list_images` with the whole :class:`~pcamlab.data.walk.Listing` (for "holds no image" messages)."""
        listing = walk_files(folder, IMAGE_SUFFIXES, recursive=recursive)
        if listing.notes:
            self.notes = [*self.notes, *listing.notes]
        return listing

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = self._check_index(index)
        return decode_image_file(self.files[index]), int(self.labels[index])

    def name(self, index: int) -> str:
        return printable(self.files[index])

    def _validate_images(self) -> None:
        validate_headers(self.files)
