"""Where patches to predict come from: image files, folders of them, and PCam-style ``_x.h5`` files.

``collect_sources`` checks every input once, up front (it exists, its kind is known, an h5 file holds
a uint8 ``(N, H, W, 3)`` dataset ``x``), so a typo fails before any model runs. ``iterate_patches``
then yields ``(name, image)`` one patch at a time, decoding lazily, so a folder of any size streams
through a fixed amount of memory. Images are uint8 ``(H, W, 3)`` RGB, the data contract of
:mod:`pcamlab.data`.

Example:
    >>> sources = collect_sources(["slide_a/", "extra.png", "camelyonpatch_level_2_split_test_x.h5"])
    >>> total = sum(source.count for source in sources)
    >>> for name, image in iterate_patches(sources):
    ...     ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcamlab.data.readers import IMAGE_SUFFIXES, PATCH_SIZE, BadImageError, check_x_dataset, decode_image_file
from pcamlab.data.walk import walk_files
from pcamlab.errors import DataError
from pcamlab.fileio import printable

__all__ = ["H5_SUFFIXES", "PatchSource", "collect_sources", "h5_row_name", "iterate_patches"]

H5_SUFFIXES = (".h5", ".hdf5")
_ACCEPTED = f"image files ({'/'.join(IMAGE_SUFFIXES)}), folders of them, or a PCam-style *_x.h5 file"


@dataclass(frozen=True)
class PatchSource:
    """One input: a single image file (``count`` 1) or an h5 file of ``count`` patches.

    Attributes:
        path: the file.
        kind: ``"image"`` or ``"h5"``.
        count: number of patches it holds.
    """

    path: Path
    kind: str
    count: int


def h5_row_name(path: Path, row: int) -> str:
    """Name of one row of an h5 file in messages and CSVs (same wording as the h5 reader)."""
    return printable(f"{path} row {row}")


def _h5_source(path: Path, patch_size: int) -> PatchSource:
    from pcamlab.hdf5 import damaged_structure, open_hdf5

    with open_hdf5(path, "input") as file, damaged_structure(path, "input"):  # locked, compressed, a web page...
        if "x" not in file:
            names = list(file.keys())
            hint = " (this looks like a labels file: pass the matching _x.h5 file)" if "y" in names else ""
            raise DataError(
                f"input {str(path)!r} has no dataset 'x' (it has {names}){hint}; predict reads PCam-style "
                "files whose dataset 'x' holds uint8 (N, 96, 96, 3) RGB patches"
            )
        dataset = file["x"]
        shape, dtype = tuple(dataset.shape), dataset.dtype
    check_x_dataset(path, shape, dtype, patch_size)
    if shape[0] == 0:  # finding nothing is not success
        raise DataError(f"input {printable(path)!r} holds no patch (its dataset 'x' has 0 rows); pass a file with patches")
    return PatchSource(path, "h5", shape[0])


def collect_sources(
    inputs: Sequence[str | os.PathLike],
    *,
    patch_size: int = PATCH_SIZE,
    skip_bad: bool = False,
    skipped: list[str] | None = None,
    notes: list[str] | None = None,
    recursive: bool = True,
) -> list[PatchSource]:
    """Resolve inputs into a list of patch sources, checking each one.

    Args:
        inputs: image files, folders and ``.h5`` files with a dataset ``x`` of uint8
            ``(N, patch_size, patch_size, 3)`` patches. Folders are listed at any depth by the walker every
            command uses (:func:`pcamlab.data.walk.walk_files`: links followed, a folder reached twice listed
            once, hidden files and OS junk skipped).
        patch_size: side of the patches the model takes (from the checkpoint contract).
        skip_bad: leave out h5 files that cannot be opened or hold no usable dataset ``x`` instead of
            raising; their names are appended to ``skipped``.
        skipped: list collecting the names of files left out.
        notes: list collecting the walker's notes (hidden files skipped, link loops, broken links, sub-folders
            not read).
        recursive: list folders at any depth (False: their own files only, as the Kaggle ``test/`` folder is
            read; sub-folders are said in ``notes``).

    Returns:
        One source per image file or h5 file, in input order (folders sorted); a file reached
        twice is listed once.

    Raises:
        DataError: an input does not exist, has an unknown suffix, a folder holds no image, or an
            h5 file is not a PCam-style image file.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise DataError(f"no input given; pass {_ACCEPTED}")
    sources: list[PatchSource] = []
    seen: set[Path] = set()

    def add(source: PatchSource) -> None:
        key = source.path.resolve()
        if key not in seen:
            seen.add(key)
            sources.append(source)

    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise DataError(f"input {str(path)!r} does not exist; pass {_ACCEPTED}")
        if path.is_dir():
            listing = walk_files(path, IMAGE_SUFFIXES, recursive=recursive)
            images = listing.files
            if notes is not None:
                notes.extend(listing.notes)
            if not images:
                depth = " at any depth" if recursive else " directly inside it"
                raise DataError(
                    f"input folder {str(path)!r} holds no image file ({'/'.join(IMAGE_SUFFIXES)}){depth}"
                    f"{listing.nothing_found()}; pass a folder of patches, or the .h5 file itself for h5 data"
                )
            for image in images:
                add(PatchSource(image, "image", 1))
        elif path.suffix.lower() in H5_SUFFIXES:
            try:
                add(_h5_source(path, patch_size))
            except DataError:
                if not skip_bad:
                    raise
                if skipped is not None:
                    skipped.append(printable(path))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            add(PatchSource(path, "image", 1))
        else:
            raise DataError(
                f"input {str(path)!r} has suffix {path.suffix or '(none)'!r}, which predict does not read; "
                f"pass {_ACCEPTED}"
            )
    return sources


def iterate_patches(
    sources: Sequence[PatchSource], *, skip_bad: bool = False, skipped: list[str] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, image)`` for every patch of ``sources``: uint8 ``(H, W, 3)`` RGB.

    Args:
        sources: from :func:`collect_sources`.
        skip_bad: skip image files and h5 rows that cannot be used instead of raising; their names
            are appended to ``skipped``.
        skipped: list collecting the names of skipped files and rows.

    Raises:
        BadImageError: an image file is unreadable, truncated, not RGB or the wrong size (names the
            file), unless ``skip_bad``.
        DataError: a row of an h5 file cannot be read, unless ``skip_bad``.
    """
    from pcamlab.hdf5 import damaged_structure, open_hdf5

    for source in sources:
        if source.kind == "image":
            try:
                image = decode_image_file(source.path)
            except BadImageError:
                if not skip_bad:
                    raise
                if skipped is not None:
                    skipped.append(printable(source.path))
                continue
            yield printable(source.path), image
            continue
        with open_hdf5(source.path, "input") as file:
            with damaged_structure(source.path, "input"):
                dataset = file["x"]
            for row in range(source.count):
                try:
                    image = dataset[row]  # (H, W, 3) uint8: one chunk, read one row at a time
                except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:  # a damaged chunk or index
                    if skip_bad:
                        if skipped is not None:
                            skipped.append(h5_row_name(source.path, row))
                        continue
                    raise DataError(
                        f"cannot read {h5_row_name(source.path, row)} ({str(error).splitlines()[0]}): "
                        "the file is damaged; copy it again from the source"
                    ) from None
                yield h5_row_name(source.path, row), image
