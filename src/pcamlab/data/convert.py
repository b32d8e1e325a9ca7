"""Convert a PCam dataset between the official HDF5 layout, class folders and the Kaggle layout.

The output is written into a temporary sibling folder ``<dst>.tmp-<pid>-<random>`` (one that a killed
convert left is removed with a note, :func:`pcamlab.fileio.remove_stale_temporaries`) and renamed to
``dst`` only when every split is written, so a failed or interrupted conversion never leaves a
half-written ``dst``. An existing ``dst`` is refused.

What each target holds:

- ``h5``: ``camelyonpatch_level_2_split_<split>_{x,y}.h5`` per labelled split (``x`` uint8
  (N, 96, 96, 3) chunked (1, 96, 96, 3) gzip, ``y`` uint8 (N, 1, 1, 1)), readable row by row, with
  Fletcher-32 checksums and checksummed metadata (HDF5 1.10 format) so damage is found when read.
- ``folders``: ``<split>/<label>/<name>.png`` (lossless) or ``.jpg`` with ``image_format="jpg"``
  (quality 95; JPEG source files are copied byte for byte instead of being re-encoded).
- ``kaggle``: the labelled splits other than ``test`` together in ``train/<id>.tif`` +
  ``train_labels.csv``, and ``splits.csv`` (``id,split``) that keeps each image in its source split
  (Kaggle itself has no validation split; without ``splits.csv`` the reader would re-split at random
  and mix the source's validation slides into training). A ``test`` split goes to ``test/<id>.tif``
  and, when it has labels, to ``test_labels.csv``; the Kaggle reader reads both back.

Nothing is dropped silently. Unlabeled splits (the Kaggle ``test`` split) cannot go into ``h5`` or
``folders`` (both need a label per image); they are left out and listed in ``"skipped_splits"``.
``h5`` holds only the splits ``train``, ``valid`` and ``test``: another split name is refused. PCam's
slide meta CSVs (``camelyonpatch_level_2_split_<split>_meta.csv``, used to group k-fold folds by
slide) are carried into ``h5`` (rows of skipped images dropped too, read by
:func:`pcamlab.data.readers.read_meta_csv`; one that does not describe its split row for row is not
carried, and a note says why); the other layouts have no place for them, and the result's ``"notes"``
says so, as it says how a Kaggle source was split.

Example:
    >>> from pcamlab.data.convert import convert
    >>> result = convert("sample", "data/sample-h5", to="h5")
    >>> result["counts"]
    {'train': 800, 'valid': 200}
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pcamlab.data.readers import (
    H5_PATTERN,
    H5_SPLITS,
    KAGGLE_SPLITS,
    BadImageError,
    PatchReader,
    available_splits,
    detect_format,
    meta_csv_path,
    open_split,
    read_meta_csv,
    resolve_root,
)
from pcamlab import stopping
from pcamlab.errors import ConfigError, DataError, RunFolderError, did_you_mean
from pcamlab.fileio import remove_stale_temporaries, temporary_folder_name, write_text_atomic
from pcamlab.registry import Registry

__all__ = ["WRITERS", "IMAGE_FORMATS", "convert", "convert_targets"]

# One writer per target layout, registered by the layout's reader name. A new format's reader file may
# register one too: ``@WRITERS.register("myformat") def write(reader, folder, counter, image_format)``.
WRITERS: Registry[Callable[..., int]] = Registry("convert target")
IMAGE_FORMATS = ("png", "jpg")
CHUNK = 256  # items between progress reports and stop checks (about a second of decoding and encoding)
JPEG_QUALITY = 95  # when re-encoding is unavoidable; PCam's own JPEG copies use 75
# HDF5 written by pcamlab carries checksums: Fletcher-32 on every chunk and the 1.10 file format's checksummed
# metadata and chunk index, so a damaged byte is an error when read, not other pixels (readable by HDF5 >= 1.10,
# 2016). Measured on 3,000 random 1-4 byte flips in the metadata of a 6-patch file: the 1.8 format read 33 of
# them silently as other pixels (its chunk B-tree has no checksum, so a chunk can point at another one's data),
# the 1.10 format none.
H5_LIBVER = "v110"


def convert_targets() -> tuple[str, ...]:
    """Layouts ``convert`` can write: the registered readers that have a writer, in detection order."""
    from pcamlab.data.readers import detection_order

    return tuple(name for name in detection_order() if name in WRITERS)


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str = "h5",
    format: str = "auto",
    progress: Callable[[int, int], object] | None = None,
    *,
    image_format: str = "png",
    splits: list[str] | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
) -> dict:
    """Write the dataset at ``src`` into a new folder ``dst`` in the layout ``to``.

    Args:
        src: dataset folder (any layout ``open_split`` reads) or ``"sample"``.
        dst: folder to create; must not exist.
        to: ``"h5"``, ``"folders"`` or ``"kaggle"``.
        format: layout of ``src`` (``"auto"`` detects it).
        progress: optional ``progress(done, total)`` callable over all images of all splits.
        image_format: ``"png"`` (lossless, default) or ``"jpg"``, for ``to="folders"``.
        splits: splits to convert (default: every split of ``src``).
        valid_fraction: for a Kaggle ``src``: fraction of labelled images that form ``valid``.
        seed: for a Kaggle ``src``: seed of that split.
        skip_bad: leave out unreadable images (counted in ``"skipped_images"``) instead of stopping.

    Returns:
        ``{"path": dst, "format": to, "source_format", "counts": {split: n}, "skipped_images": n,
        "skipped_splits": [...], "notes": [...]}``; ``notes`` are sentences about what the target
        cannot hold or how the source's splits were made.

    Raises:
        ConfigError: unknown ``to``, ``image_format`` or split, or a split ``h5`` cannot name.
        RunFolderError: ``dst`` already exists.
        DataError: the source cannot be read (its one-line message names the file), or a split would be
            written with no image (all skipped, or only unlabeled splits for h5/folders): nothing is written.
    """
    targets = convert_targets()
    if to not in targets:
        raise ConfigError(f"convert target must be one of {list(targets)}; got {to!r}{did_you_mean(to, targets)}")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(
            f"image format must be one of {list(IMAGE_FORMATS)}; got {image_format!r}"
            f"{did_you_mean(image_format, IMAGE_FORMATS)}"
        )
    source = resolve_root(src)
    source_format = detect_format(source) if format == "auto" else format
    present = available_splits(source, source_format)
    chosen = list(present) if splits is None else list(splits)
    for split in chosen:
        if split not in present:
            raise ConfigError(
                f"split {split!r} is not in {str(source)!r}; it has {present}{did_you_mean(split, present)}"
            )
    if to == "h5":
        unnamed = [split for split in chosen if split not in H5_SPLITS]
        if unnamed:
            raise ConfigError(
                f"the h5 layout holds only the splits {list(H5_SPLITS)}; {str(source)!r} has {unnamed}, which "
                "would not read back: convert to folders or kaggle, or choose the splits to convert (splits)"
            )
    destination = Path(dst).expanduser()
    if destination.exists():
        raise RunFolderError(
            f"convert destination {str(destination)!r} already exists; pass a new folder or delete it first"
        )
    readers = [
        open_split(source, split, source_format, valid_fraction=valid_fraction, seed=seed, skip_bad=skip_bad)
        for split in chosen
    ]
    skipped_splits = []
    if to in ("h5", "folders"):
        skipped_splits = [reader.split for reader in readers if getattr(reader, "unlabeled", False)]
        readers = [reader for reader in readers if reader.split not in skipped_splits]
    if not readers:  # finding nothing is not success: never write an empty dataset
        raise DataError(
            f"nothing to convert from {str(source)!r}: the splits {skipped_splits} are unlabeled and {to} needs a "
            "label per image; convert a labelled split, or use to='kaggle'"
        )
    notes = _notes(source, source_format, to, readers)

    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(destination)  # a convert killed with kill -9 left its folder: removed, with a note
    temporary = temporary_folder_name(destination)
    temporary.mkdir()
    writer = WRITERS.get(to)
    counter = _Counter(sum(len(reader) for reader in readers), progress, skip_bad)
    counts = {}
    try:  # Ctrl+C or SIGTERM stops at the next chunk; the temporary folder is removed, nothing is published
        with stopping.safe_points():
            for reader in readers:
                stopping.check()
                counts[reader.split] = writer(reader, temporary, counter, image_format)
                if counts[reader.split] == 0:  # every image skipped: the split would not read back
                    raise DataError(
                        f"split {reader.split!r} of {str(source)!r} has no readable image (all {len(reader)} skipped, "
                        f"first: {reader.name(0)}); nothing was written to {str(destination)!r}: run without skip_bad "
                        "to see why, then fix or replace the files"
                    )
                if to == "h5" and source_format == "h5":
                    not_carried = _copy_meta(reader, temporary, counter.kept[reader.split])
                    notes += [not_carried] if not_carried else []
            if to == "kaggle":
                _finish_kaggle(temporary)
            os.rename(temporary, destination)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return {
        "path": destination,
        "format": to,
        "source_format": source_format,
        "counts": counts,
        "skipped_images": counter.skipped,
        "skipped_splits": skipped_splits,
        "notes": list(dict.fromkeys([*notes, *(note for reader in readers for note in reader.notes)])),
    }


def _notes(source: Path, source_format: str, to: str, readers: list[PatchReader]) -> list[str]:
    """What the conversion cannot carry, or how the source's splits were made, one sentence each."""
    notes = []
    split_sources = {getattr(reader, "split_source", None) for reader in readers if reader.split != "test"}
    for split_source in sorted(filter(None, split_sources)):
        notes.append(f"the Kaggle source's train/valid split is its {split_source}")
    if source_format == "h5" and to != "h5":
        with_meta = [reader.split for reader in readers if meta_csv_path(source, reader.split).is_file()]
        if with_meta:
            notes.append(
                f"the slide meta CSVs of {with_meta} are not carried ({to} has no place for them): k-fold on "
                "the converted data cannot group folds by slide unless you pass the slide ids (groups)"
            )
    return notes


def _copy_meta(reader: PatchReader, folder: Path, kept: list[int]) -> str | None:
    """Write the source's slide meta CSV of ``reader.split`` with the rows of the kept images only.

    Returns:
        None when there is no meta CSV or it was carried; else a note saying why it was not (a meta CSV
        that does not describe its split row for row, or cannot be read, is not ours to rewrite).
    """
    source = meta_csv_path(reader.root, reader.split)
    if not source.is_file():
        return None
    try:
        table = read_meta_csv(source, count=len(reader))
    except DataError as error:
        return f"the slide meta CSV of split {reader.split!r} is not carried: {error}"
    write_text_atomic(meta_csv_path(folder, reader.split), table.to_csv(kept))
    return None


class _Counter:
    """Reads items, skipping bad ones when asked, and reports progress over every split."""

    def __init__(self, total: int, progress: Callable[[int, int], object] | None, skip_bad: bool):
        self.total, self.progress, self.skip_bad = total, progress, skip_bad
        self.done = self.skipped = 0
        self.used_ids: set[str] = set()  # Kaggle ids written so far, unique across splits
        self.kept: dict[str, list[int]] = {}  # split -> source indices written, in order

    def items(self, reader: PatchReader):
        """Yield ``(index, image, label)`` of every usable item."""
        kept = self.kept.setdefault(reader.split, [])
        for index in range(len(reader)):
            try:
                image, label = reader[index]
            except BadImageError:
                if not (self.skip_bad or reader.skip_bad):
                    raise
                self.skipped += 1
            else:
                kept.append(index)
                yield index, image, label
            self.done += 1
            if self.done % CHUNK == 0 or self.done == self.total:  # a chunk done: report, then stop if asked
                if self.progress is not None:
                    self.progress(self.done, self.total)
                stopping.check()


def _stem(reader: PatchReader, index: int) -> str:
    """A file name stem for item ``index`` that keeps the source's own name where it has one."""
    files = getattr(reader, "files", None)
    if files is not None:
        return files[index].stem
    return f"{index:07d}"  # h5: the row number


def _unique(stem: str, used: set[str]) -> str:
    name, number = stem, 1
    while name in used:
        name, number = f"{stem}_{number}", number + 1
    used.add(name)
    return name


# ----------------------------------------------------------------------------------------------


@WRITERS.register("h5")
def _write_h5(reader: PatchReader, folder: Path, counter: _Counter, image_format: str) -> int:
    import h5py

    x_path = folder / H5_PATTERN.format(split=reader.split, kind="x")
    y_path = folder / H5_PATTERN.format(split=reader.split, kind="y")
    labels = []
    with h5py.File(x_path, "w", libver=H5_LIBVER) as file:
        images = file.create_dataset(
            "x", shape=(len(reader), 96, 96, 3), maxshape=(None, 96, 96, 3), dtype=np.uint8,
            chunks=(1, 96, 96, 3), compression="gzip", compression_opts=4, fletcher32=True,
        )
        for _, image, label in counter.items(reader):
            images[len(labels)] = image  # one chunk per row, like the official files
            labels.append(label)
        images.resize(len(labels), axis=0)  # rows of skipped images are dropped
    with h5py.File(y_path, "w", libver=H5_LIBVER) as file:
        values = np.asarray(labels, dtype=np.uint8).reshape(-1, 1, 1, 1)
        chunked = len(values) > 0  # a checksum needs a chunk; an empty split is refused by the caller anyway
        file.create_dataset("y", data=values, chunks=values.shape if chunked else None, fletcher32=chunked)
    return len(labels)


@WRITERS.register("folders")
def _write_folders(reader: PatchReader, folder: Path, counter: _Counter, image_format: str) -> int:
    from PIL import Image

    files = getattr(reader, "files", None)
    used: dict[int, set[str]] = {0: set(), 1: set()}
    for label in (0, 1):
        (folder / reader.split / str(label)).mkdir(parents=True, exist_ok=True)
    count = 0
    for index, image, label in counter.items(reader):
        name = _unique(_stem(reader, index), used[label]) + "." + image_format
        path = folder / reader.split / str(label) / name
        source = files[index] if files is not None else None
        if image_format == "jpg" and source is not None and source.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(source, path)  # keep the original JPEG bytes: no second compression
        elif image_format == "jpg":
            Image.fromarray(image).save(path, quality=JPEG_QUALITY)
        else:
            Image.fromarray(image).save(path)
        count += 1
    for label in (0, 1):
        class_folder = folder / reader.split / str(label)
        if not any(class_folder.iterdir()):
            class_folder.rmdir()  # an empty class folder would not read back
    return count


@WRITERS.register("kaggle")
def _write_kaggle(reader: PatchReader, folder: Path, counter: _Counter, image_format: str) -> int:
    from PIL import Image

    is_test = reader.split == "test"
    images_folder = folder / ("test" if is_test else "train")
    images_folder.mkdir(exist_ok=True)
    labels_path = folder / ("test_labels.csv" if is_test else "train_labels.csv")
    ids = getattr(reader, "ids", None)
    prefix = "" if ids is not None or reader.split in ("train", "test") else f"{reader.split}_"
    rows, identifiers = [], []
    used = counter.used_ids
    for index, image, label in counter.items(reader):
        stem = ids[index] if ids is not None else _stem(reader, index)
        identifier = _unique(_kaggle_safe(prefix + stem), used)
        Image.fromarray(image).save(images_folder / f"{identifier}.tif")
        rows.append(f"{identifier},{label}")
        identifiers.append(identifier)
    if rows and not (is_test and getattr(reader, "unlabeled", False)):
        _append_rows(labels_path, "id,label", rows)
    if identifiers and not is_test:  # the split each image came from, so it reads back into the same split
        _append_rows(folder / KAGGLE_SPLITS, "id,split", [f"{identifier},{reader.split}" for identifier in identifiers])
    return len(rows)


def _append_rows(path: Path, header: str, rows: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        if handle.tell() == 0:
            handle.write(header + "\n")
        handle.write("\n".join(rows) + "\n")


def _kaggle_safe(stem: str) -> str:
    """A Kaggle id the Kaggle reader accepts: characters outside ``A-Za-z0-9_.-`` become ``_``.

    Source file names may hold spaces, accents or bytes that are not UTF-8 (``tumeur_\\xe9t\\xe9``);
    the id must be a plain file stem that ``train_labels.csv`` (UTF-8 text) can name exactly.
    """
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", stem) or "patch"


def _finish_kaggle(folder: Path) -> None:
    (folder / "train").mkdir(exist_ok=True)
    if not (folder / "train_labels.csv").exists():
        (folder / "train_labels.csv").write_text("id,label\n")

