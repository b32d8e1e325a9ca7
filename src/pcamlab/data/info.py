"""What a dataset holds: counts, class balance, pixel statistics, duplicates and leakage, pictures.

:func:`dataset_info` decodes every image once (streaming, nothing kept but a 16-byte hash per
image) and returns plain values that ``json.dump`` writes as they are. :func:`contact_sheet` draws
random patches of each class; :func:`augment_sheet` shows what ``pcamlab.data.augment`` does to a few.

Example:
    >>> from pcamlab.data.info import dataset_info, contact_sheet
    >>> info = dataset_info("sample")
    >>> info["splits"]["train"]["class_counts"]
    {'0': 400, '1': 400}
    >>> contact_sheet(open_split("sample", "train"), "sheet.png")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pcamlab.data.readers import (
    BadImageError,
    PatchReader,
    available_splits,
    detect_format,
    open_split,
    resolve_root,
)
from pcamlab.data.slide_counts import slide_counts
from pcamlab.errors import ConfigError, DataError, did_you_mean
from pcamlab.fileio import save_png

__all__ = ["CLASS_NAMES", "dataset_info", "contact_sheet", "augment_sheet", "write_info_folder"]

CLASS_NAMES = {0: "no tumour", 1: "tumour in the centre 32x32", -1: "unlabeled"}
CENTRE = 32  # side of the centre region that decides a PCam label, in pixels
DPI = 100


def dataset_info(
    root: str | os.PathLike,
    format: str = "auto",
    *,
    splits: list[str] | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> dict:
    """Describe every split of a dataset; finds exact duplicates within and across splits.

    Args:
        root: dataset folder or ``"sample"``.
        format: ``"auto"``, ``"h5"``, ``"folders"`` or ``"kaggle"``.
        splits: splits to describe (default: all of them).
        valid_fraction: Kaggle layout: fraction held out as ``valid``.
        seed: Kaggle layout: seed of that split.
        skip_bad: count unreadable images instead of stopping at the first.
        progress: optional ``progress(done, total)`` over all images.

    Returns:
        ``{"root", "format", "splits": {split: {"count", "class_counts", "positive_fraction",
        "image_shape", "dtype", "mean", "std", "duplicate_copies", "duplicate_groups",
        "conflicting_duplicates", "skipped"}}, "duplicates_across": [{"splits", "patches"}],
        "warnings": [...], "notes": [...]}``; ``notes`` say what was read in an unambiguous dialect
        (e.g. Kaggle ids with a .tif suffix). ``mean``/``std`` are per RGB channel on the [0, 1] scale;
        ``duplicate_copies`` counts images whose exact pixels appeared earlier in the same split;
        ``conflicting_duplicates`` counts groups of identical pixels with different labels.
        Class count keys are strings ("0", "1", "-1" for unlabeled) so the dict survives JSON.
        An h5 dataset with PCam's meta CSVs (a release, or ``pcamlab data from-slides``) also gets
        ``"slides"``: :func:`pcamlab.data.slide_counts.slide_counts` (patches per slide and label, and the
        slides that are in two splits, each a ``leakage by slide`` warning).

    Example:
        >>> dataset_info("sample")["splits"]["valid"]["count"]
        200
    """
    path = resolve_root(root)
    layout = detect_format(path) if format == "auto" else format
    present = available_splits(path, layout)
    chosen = present if splits is None else list(splits)
    for split in chosen:
        if split not in present:
            raise ConfigError(f"split {split!r} is not in {str(path)!r}; it has {present}{did_you_mean(split, present)}")
    readers = [
        open_split(path, split, layout, valid_fraction=valid_fraction, seed=seed, skip_bad=skip_bad)
        for split in chosen
    ]
    total, done = sum(len(reader) for reader in readers), 0
    notes = list(dict.fromkeys(note for reader in readers for note in reader.notes))
    result: dict = {"root": str(path), "format": layout, "splits": {}, "duplicates_across": [], "warnings": [],
                    "notes": notes}
    hashes: dict[str, set[bytes]] = {}
    for reader in readers:
        statistics = _SplitStatistics()
        for index in range(len(reader)):
            try:
                image, label = reader[index]
            except BadImageError:
                if not (skip_bad or reader.skip_bad):
                    raise
                statistics.skipped += 1
            else:
                statistics.add(image, label)
            done += 1
            if progress is not None and (done % 256 == 0 or done == total):
                progress(done, total)
        summary = statistics.summary()
        result["splits"][reader.split] = summary
        hashes[reader.split] = set(statistics.labels_by_hash)
        if summary["duplicate_copies"]:
            result["warnings"].append(
                f"split {reader.split!r} holds {summary['duplicate_copies']} exact duplicate copies "
                f"({summary['duplicate_groups']} groups); they weigh double in training and metrics"
            )
        if summary["conflicting_duplicates"]:
            result["warnings"].append(
                f"split {reader.split!r} has {summary['conflicting_duplicates']} groups of identical "
                "patches with different labels; fix or drop them"
            )
        if summary["skipped"]:
            result["warnings"].append(f"split {reader.split!r}: {summary['skipped']} unreadable images skipped")
        if summary["count"] == 0:
            result["warnings"].append(
                f"split {reader.split!r} has no readable image: all {summary['skipped']} were skipped; "
                f"first: {reader.name(0)}"
            )
    if not any(summary["count"] for summary in result["splits"].values()):
        skipped = sum(summary["skipped"] for summary in result["splits"].values())
        raise DataError(
            f"no readable image in {str(path)!r}: all {skipped} images were skipped as unreadable (first: "
            f"{readers[0].name(0)}); run without skip_bad to see why, then fix or replace the files"
        )
    if layout == "h5":
        slides = slide_counts(readers)
        if slides is not None:
            result["slides"] = slides
            result["warnings"] += slides.pop("warnings")
    for first, second in itertools.combinations(hashes, 2):
        shared = len(hashes[first] & hashes[second])
        if shared:
            result["duplicates_across"].append({"splits": [first, second], "patches": shared})
            result["warnings"].append(
                f"leakage: {shared} patches of {second!r} are also in {first!r} (identical pixels); "
                f"remove them from one split or scores on {second!r} are optimistic"
            )
    return result


class _SplitStatistics:
    """Running counts, channel sums and pixel hashes of one split."""

    def __init__(self):
        self.count = self.skipped = 0
        self.class_counts: dict[int, int] = {}
        self.channel_sum = np.zeros(3, dtype=np.float64)
        self.channel_square_sum = np.zeros(3, dtype=np.float64)
        self.pixels = 0
        self.shape: tuple[int, ...] | None = None
        self.dtype = ""
        self.labels_by_hash: dict[bytes, set[int]] = {}
        self.copies_by_hash: dict[bytes, int] = {}
        self.duplicate_copies = 0

    def add(self, image: np.ndarray, label: int) -> None:
        self.count += 1
        self.class_counts[label] = self.class_counts.get(label, 0) + 1
        self.shape, self.dtype = image.shape, str(image.dtype)
        values = image.reshape(-1, 3).astype(np.float64)  # (H*W, 3)
        self.channel_sum += values.sum(axis=0)
        self.channel_square_sum += np.square(values).sum(axis=0)
        self.pixels += values.shape[0]
        key = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()
        if key in self.labels_by_hash:
            self.duplicate_copies += 1
            self.labels_by_hash[key].add(label)
            self.copies_by_hash[key] += 1
        else:
            self.labels_by_hash[key] = {label}
            self.copies_by_hash[key] = 1

    def summary(self) -> dict:
        mean = self.channel_sum / max(self.pixels, 1)
        variance = np.maximum(self.channel_square_sum / max(self.pixels, 1) - mean**2, 0.0)
        groups = list(self.labels_by_hash.values())
        positives = self.class_counts.get(1, 0)
        labelled = self.class_counts.get(0, 0) + positives
        return {
            "count": self.count,
            "class_counts": {str(label): count for label, count in sorted(self.class_counts.items())},
            "positive_fraction": round(positives / labelled, 6) if labelled else None,
            "image_shape": list(self.shape) if self.shape else None,
            "dtype": self.dtype,
            "mean": [round(float(value) / 255, 6) for value in mean],
            "std": [round(float(value) / 255, 6) for value in np.sqrt(variance)],
            "duplicate_copies": self.duplicate_copies,
            "duplicate_groups": sum(1 for copies in self.copies_by_hash.values() if copies > 1),
            "conflicting_duplicates": sum(1 for labels in groups if len(labels) > 1),
            "skipped": self.skipped,
        }


# ----------------------------------------------------------------------------------------------
# Pictures.


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> Path:
    return save_png(figure, path, dpi=DPI)


def _mosaic(images: np.ndarray, columns: int, gap: int = 2) -> np.ndarray:
    """Tile uint8 (N, H, W, 3) images into one (rows*(H+gap)-gap, columns*(W+gap)-gap, 3) picture."""
    count, height, width, _ = images.shape
    rows = max(1, -(-count // columns))
    sheet = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        sheet[top : top + height, left : left + width] = image
    return sheet


def _outline_centres(axes, count: int, columns: int, size: int, gap: int = 2) -> None:
    """Draw the centre 32x32 box (the region that decides the label) on every tile."""
    from matplotlib.patches import Rectangle

    offset = (size - CENTRE) / 2 - 0.5
    for index in range(count):
        row, column = divmod(index, columns)
        axes.add_patch(
            Rectangle(
                (column * (size + gap) + offset, row * (size + gap) + offset), CENTRE, CENTRE,
                fill=False, edgecolor="yellow", linewidth=0.6, alpha=0.8,
            )
        )


def _readable_images(reader: PatchReader, order: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` images of ``order`` that decode, in index order: uint8 (n, 96, 96, 3).

    Unreadable ones are passed over when ``reader.skip_bad`` (the same files the statistics skip).

    Raises:
        BadImageError: an image is unreadable and the reader does not skip bad files.
        DataError: none of the images in ``order`` is readable.
    """
    kept: list[int] = []
    images: dict[int, np.ndarray] = {}
    for index in order:
        if len(kept) == count:
            break
        try:
            images[int(index)] = reader[int(index)][0]
        except BadImageError:
            if not reader.skip_bad:
                raise
            continue
        kept.append(int(index))
    if not kept:
        raise DataError(
            f"none of the {len(order)} images drawn from split {reader.split!r} of {str(reader.root)!r} is "
            f"readable (first: {reader.name(int(order[0]))}); fix or replace the files"
        )
    return np.stack([images[index] for index in sorted(kept)])


def contact_sheet(
    reader: PatchReader, path: str | os.PathLike, per_class: int = 16, seed: int = 0, columns: int = 8
) -> Path:
    """Write a PNG grid of ``per_class`` random patches of each class, centre 32x32 outlined.

    Args:
        reader: an opened split.
        path: PNG file to write (atomically).
        per_class: patches drawn per class (fewer when a class has fewer).
        seed: seed of the ``numpy.random.default_rng`` that draws them.
        columns: patches per row.

    Returns:
        ``path``.

    Example:
        >>> contact_sheet(open_split("sample", "valid"), "runs/valid.png", per_class=8)  # doctest: +SKIP
    """
    if per_class < 1:
        raise ConfigError(f"per_class must be at least 1; got {per_class!r}")
    generator = np.random.default_rng(seed)
    classes = sorted(int(label) for label in np.unique(reader.labels))
    if not classes:
        raise DataError(f"split {reader.split!r} of {str(reader.root)!r} is empty; nothing to draw")
    columns = min(columns, per_class)
    blocks = []
    for label in classes:
        members = np.flatnonzero(reader.labels == label)
        images = _readable_images(reader, generator.permutation(members), per_class)  # (n, 96, 96, 3)
        blocks.append((label, len(members), images))
    rows = [max(1, -(-len(images) // columns)) for _, _, images in blocks]
    figure = _new_figure(columns * 1.0 + 0.3, sum(rows) * 1.0 + 0.45 * len(blocks) + 0.2)
    grid = figure.add_gridspec(len(blocks), 1, height_ratios=rows)
    for position, (label, available, images) in enumerate(blocks):
        axes = figure.add_subplot(grid[position])
        axes.imshow(_mosaic(images, columns), interpolation="nearest")
        _outline_centres(axes, len(images), columns, images.shape[1])
        axes.set_title(
            f"{reader.split} - label {label} ({CLASS_NAMES.get(label, '?')}): {len(images)} of {available}",
            fontsize=9,
        )
        axes.set_axis_off()
    figure.suptitle(f"{reader.root.name} ({reader.format}), seed {seed}; yellow: centre 32x32", fontsize=8)
    return _save(figure, path)


def augmented_versions(originals: np.ndarray, config, per_patch: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """``per_patch`` versions of each patch, augmented as training augments them with ``config``.

    Args:
        originals: uint8 (N, H, W, 3) patches.
        config: an ``AugmentConfig``.
        per_patch: versions per patch.
        seed: seed of the ``torch.Generator`` that draws the augmentations.

    Returns:
        uint8 (N, per_patch, H, W, 3) and the number of leading versions that are label-keeping crops
        (``config.crop_size`` px, :func:`pcamlab.data.augment.random_label_crop`, centred on white at their
        own size): all of them when ``crop_epochs`` is 0, half (at least one) when crops are only for the
        first epochs, none without ``crop_size``.
    """
    import torch

    from pcamlab.data.augment import augment_batch, random_label_crop

    count, size = len(originals), originals.shape[1]
    crop_columns = 0
    if config.crop_size:
        crop_columns = per_patch if config.crop_epochs == 0 else max(1, per_patch // 2)
    torch_generator = torch.Generator().manual_seed(seed)

    def augmented(images: np.ndarray, crop: bool) -> np.ndarray:  # uint8 (m, H, W, 3) -> uint8 (m, H, W, 3)
        batch = torch.from_numpy(np.ascontiguousarray(images))  # (m, H, W, 3) uint8
        if crop:
            batch = random_label_crop(batch, config.crop_size, torch_generator)  # (m, c, c, 3): holds the centre
        batch = batch.permute(0, 3, 1, 2).float().div(255)  # (m, 3, c, c)
        batch = augment_batch(batch, config, torch_generator)
        result = (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if result.shape[1] == size:
            return result
        framed = np.full((len(result), size, size, 3), 255, dtype=np.uint8)  # a crop at its own size, on white
        offset = (size - result.shape[1]) // 2
        framed[:, offset : offset + result.shape[1], offset : offset + result.shape[2]] = result
        return framed

    versions = np.empty((count, per_patch, size, size, 3), dtype=np.uint8)
    if crop_columns:
        cropped = augmented(np.repeat(originals, crop_columns, axis=0), crop=True)
        versions[:, :crop_columns] = cropped.reshape(count, crop_columns, size, size, 3)
    if crop_columns < per_patch:
        full = augmented(np.repeat(originals, per_patch - crop_columns, axis=0), crop=False)
        versions[:, crop_columns:] = full.reshape(count, per_patch - crop_columns, size, size, 3)
    return versions, crop_columns


def augment_sheet(
    reader: PatchReader,
    path: str | os.PathLike,
    config=None,
    *,
    count: int = 4,
    per_patch: int = 7,
    seed: int = 0,
) -> Path:
    """Write a PNG: ``count`` random patches (first column) and ``per_patch`` augmented versions each.

    The versions are made the way training makes them from ``config`` (an ``AugmentConfig``; default: the
    defaults of ``pcamlab.config.AugmentConfig``, i.e. dihedral transforms only), with a ``torch.Generator``
    seeded with ``seed``: with ``config.crop_size`` the first columns are the crop epochs' inputs
    (:func:`pcamlab.data.augment.random_label_crop`, then :func:`~pcamlab.data.augment.augment_batch`),
    drawn at their own size on white, and the others the full patches of the later epochs (all of them
    crops when ``crop_epochs`` is 0, crops in every epoch). The title lists every setting that differs
    from the defaults.

    Returns:
        ``path``.
    """
    import textwrap

    from pcamlab.config import AugmentConfig

    config = config if config is not None else AugmentConfig()
    generator = np.random.default_rng(seed)
    originals = _readable_images(reader, generator.permutation(len(reader)), count)  # (n, 96, 96, 3) uint8
    count, size = len(originals), originals.shape[1]
    versions, crop_columns = augmented_versions(originals, config, per_patch, seed)  # (n, k, 96, 96, 3)
    tiles = np.concatenate([originals[:, None], versions], axis=1).reshape(-1, size, size, 3)
    columns = per_patch + 1
    changed = {
        field.name: getattr(config, field.name)
        for field in dataclasses.fields(config)
        if getattr(config, field.name) != field.default
    }
    settings = ", ".join(f"{name}={value}" for name, value in changed.items()) or "the defaults: dihedral only"
    enabled = [name for name in ("dihedral", "brightness", "contrast", "saturation", "hue", "hed", "blur")
               if getattr(config, name)]
    enabled += ["resized crop"] * (config.crop_scale < 1) + [f"{config.crop_size} px label crops"] * bool(crop_columns)
    lines = [f"first column: original; then augmented as training does it, seed {seed} ({settings}; "
             f"on: {', '.join(enabled) or 'nothing'})"]
    if crop_columns:
        epochs = "every epoch" if config.crop_epochs == 0 else f"the first {config.crop_epochs} epochs"
        lines.append(f"columns 2-{crop_columns + 1}: random {config.crop_size} px crops holding the centre 32x32, "
                     f"drawn at their size ({epochs})"
                     + (f"; columns {crop_columns + 2}-{columns}: full patches (the epochs after)"
                        if crop_columns < per_patch else ""))
    title = "\n".join(textwrap.fill(line, width=15 * columns) for line in lines)
    figure = _new_figure(columns * 1.0 + 0.3, count * 1.0 + 0.25 + 0.15 * (title.count("\n") + 1))
    axes = figure.add_subplot()
    axes.imshow(_mosaic(tiles, columns), interpolation="nearest")
    axes.set_axis_off()
    axes.set_title(title, fontsize=7)
    return _save(figure, path)


def write_info_folder(
    info: dict,
    out: str | os.PathLike,
    *,
    per_class: int = 16,
    seed: int = 0,
    valid_fraction: float = 0.1,
    skip_bad: bool = False,
    augment: bool = False,
    augment_config=None,
) -> list[Path]:
    """Write what ``pcamlab data info`` keeps: ``info.json`` (atomically), one contact sheet per split and,
    with ``augment``, ``augment.png`` of the first split.

    Args:
        info: the result of :func:`dataset_info` (its ``root`` and ``format`` say which data to draw).
        out: folder to write into (created).
        per_class: patches per class on each contact sheet.
        seed: seed of the drawn patches (and of a Kaggle layout's split, with ``valid_fraction``).
        valid_fraction: Kaggle layout: held-out fraction (as given to :func:`dataset_info`).
        skip_bad: skip unreadable images while drawing.
        augment: also write ``augment.png``.
        augment_config: the ``AugmentConfig`` that picture uses (default: its defaults).

    Returns:
        The files written, ``info.json`` first.

    Raises:
        RunFolderError: ``out`` already holds one of these files (an earlier result is never replaced).
    """
    from pcamlab.fileio import refuse_existing, write_json_atomic

    out = Path(out)
    names = ["info.json", *(f"contact_{split}.png" for split in info["splits"]), *(["augment.png"] if augment else [])]
    for name in names:  # all checked before anything is written
        refuse_existing(out / name, "out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "info.json", info)
    written = [out / "info.json"]
    options = dict(valid_fraction=valid_fraction, seed=seed, skip_bad=skip_bad)
    for split in info["splits"]:
        reader = open_split(info["root"], split, info["format"], **options)
        written.append(contact_sheet(reader, out / f"contact_{split}.png", per_class=per_class, seed=seed))
    if augment:
        reader = open_split(info["root"], next(iter(info["splits"])), info["format"], **options)
        written.append(augment_sheet(reader, out / "augment.png", augment_config, seed=seed))
    return written
