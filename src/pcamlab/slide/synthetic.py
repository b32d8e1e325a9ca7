"""Synthetic whole-slide images made of REAL PCam patches, with their ground truth, for tests and benchmarks.

No public slide can be downloaded here, so :func:`make_synthetic_slide` builds one: a pyramidal, tiled,
JPEG-compressed generic TIFF (tifffile; resolution tags in pixels per centimetre, so OpenSlide and
tiffslide both read its mpp) on a grid of 96 x 96 pixel cells at PCam's 0.972 um/px:

- glass: near-white, unsaturated cells (what a tissue mask must reject);
- normal tissue: a blob covering ``tissue_fraction`` of the slide, each cell a real label-0 PCam patch;
- tumour: a connected region covering ``tumour_fraction`` of the tissue, each cell a real label-1 patch.

Cells are flipped at random (4 variants) so a small pool of patches does not tile visibly. Every
level is rendered from the same cell layout with pre-shrunk patches, strip by strip, and streamed to
tifffile tile by tile, so memory stays small for a Camelyon16-sized slide (25,000 x 50,000 pixels).
The ground truth is written beside the slide: ``<stem>.truth.png`` (one pixel per cell: 0 glass,
128 normal tissue, 255 tumour) and ``<stem>.truth.json`` (cell size, mpp, counts).

Example:
    >>> normal, tumour = sample_pools("valid")
    >>> slide = make_synthetic_slide("slide.tif", normal, tumour, width=3840, height=2880, seed=0)
    >>> slide.truth.shape  # (rows, cols) of 96 px cells: 0 glass, 1 normal, 2 tumour
    (30, 40)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcamlab.errors import ConfigError, DataError
from pcamlab.fileio import atomic_path, printable
from pcamlab.slide._model import PCAM_MPP  # 0.972 um/px (PCam README)

__all__ = [
    "PCAM_MPP",
    "CELL_SIZE",
    "GLASS",
    "NORMAL",
    "TUMOUR",
    "SyntheticSlide",
    "make_synthetic_slide",
    "read_truth",
    "sample_pools",
    "tissue_layout",
    "write_slide",
]

CELL_SIZE = 96  # pixels of a cell = one PCam patch
GLASS, NORMAL, TUMOUR = 0, 1, 2  # cell labels of the truth grid
TRUTH_PNG_VALUES = {GLASS: 0, NORMAL: 128, TUMOUR: 255}  # grey levels in <stem>.truth.png
GLASS_RGB = (236, 234, 238)  # slide background: unsaturated near-white (HSV saturation about 0.02)
TILE_SIZE = 256  # TIFF tile edge in pixels
MIN_LEVEL_SIZE = 256  # stop the pyramid when a level's longer side would fall below this


@dataclass(frozen=True)
class SyntheticSlide:
    """A written synthetic slide.

    Attributes:
        path: the TIFF.
        truth_path: the ground-truth PNG (one pixel per cell).
        truth: int8 ``(rows, cols)`` cell labels: 0 glass, 1 normal tissue, 2 tumour.
        mpp: level-0 microns per pixel.
        cell_size: pixels per cell edge at level 0 (96).
        level_dimensions: ``(width, height)`` per level.
    """

    path: Path
    truth_path: Path
    truth: np.ndarray
    mpp: float
    cell_size: int
    level_dimensions: tuple[tuple[int, int], ...]


def sample_pools(split: str = "valid", root: str | os.PathLike | None = None, *, limit: int | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real PCam patches by class from the sample shipped in pcamlab (or a folder of ``{0,1}/*.jpg``).

    The image files directly in ``0/`` and ``1/`` are listed by :func:`pcamlab.data.walk.list_files`, as every
    command lists image files.

    Args:
        split: the sample's split folder (``train`` or ``valid``) when ``root`` is None.
        root: a folder with ``0/`` and ``1/`` subfolders of 96 x 96 patches instead of the sample.
        limit: at most this many patches per class, drawn at random with ``seed`` (None: all).
        seed: seeds that draw.

    Returns:
        ``(normal, tumour)``: uint8 ``(N0, 96, 96, 3)`` label-0 and ``(N1, 96, 96, 3)`` label-1 patches.

    Raises:
        DataError: the folder has no ``0/`` or ``1/`` image patches (JPEG, PNG, TIFF), or one cannot be listed.
    """
    from pcamlab.data import sample_root
    from pcamlab.data.readers import SKIP_HINT, BadImageError, decode_image_file
    from pcamlab.data.walk import IMAGE_SUFFIXES, list_files

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ConfigError(f"limit (patches loaded per class) must be an integer >= 1; got {limit!r}; e.g. 2000",
                          parameters=("limit",))

    def decode(file: Path) -> np.ndarray:  # the decoder every command uses: one-line errors, 96 x 96 RGB checked
        try:
            return decode_image_file(file)
        except BadImageError as error:
            raise DataError(str(error).replace(f"delete it, or {SKIP_HINT} such files", "or delete it")
                            + f" (patches folder {printable(folder)!r})") from None

    folder = Path(root) if root is not None else sample_root() / split
    pools = []
    for label in ("0", "1"):
        # the walker every command lists image files with (hidden files and OS junk skipped, links followed)
        files = list_files(folder / label, IMAGE_SUFFIXES, recursive=False) if (folder / label).is_dir() else []
        if not files:
            raise DataError(f"no patches in {str(folder / label)!r}; pass a folder with 0/ and 1/ subfolders of "
                            "96x96 patches (e.g. the pcam-jpg split folders)")
        if limit is not None and len(files) > limit:
            chosen = np.random.default_rng([seed, int(label)]).choice(len(files), size=limit, replace=False)
            files = [files[index] for index in sorted(chosen)]
        pools.append(np.stack([decode(file) for file in files]))
    return pools[0], pools[1]


def _smooth_field(generator: np.random.Generator, rows: int, cols: int, grain: int) -> np.ndarray:
    """A smooth random float32 field ``(rows, cols)``: coarse Gaussian noise upsampled bicubically."""
    from PIL import Image

    coarse = generator.standard_normal((max(2, rows // grain + 2), max(2, cols // grain + 2))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((cols, rows), Image.Resampling.BICUBIC))


def tissue_layout(generator: np.random.Generator, rows: int, cols: int, tissue_fraction: float,
            tumour_fraction: float) -> np.ndarray:
    """int8 ``(rows, cols)`` cell labels: a tissue blob with a tumour region inside, glass around.

    Args:
        generator: draws the blob's outline and the tumour's place.
        rows, cols: the grid of 96-px cells.
        tissue_fraction: share of cells that are tissue (0-1).
        tumour_fraction: share of the tissue cells that are tumour (0 for none).
    """
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    envelope = 1 - ((y - rows / 2) / (rows / 2)) ** 2 - ((x - cols / 2) / (cols / 2)) ** 2  # 1 centre, 0 edge
    field = envelope + 0.35 * _smooth_field(generator, rows, cols, grain=max(3, min(rows, cols) // 6))
    field[[0, -1], :] = field[:, [0, -1]] = -np.inf  # a glass border all round
    tissue_count = int(round(tissue_fraction * rows * cols))
    order = np.argsort(-field, axis=None, kind="stable")
    labels = np.zeros(rows * cols, dtype=np.int8)
    labels[order[:tissue_count]] = NORMAL
    labels = labels.reshape(rows, cols)
    # Tumour: the tissue cells nearest a centre deep inside the tissue, with an irregular rim.
    tissue_rows, tissue_cols = np.nonzero(labels)
    pick = generator.integers(len(tissue_rows) // 4) if len(tissue_rows) >= 4 else 0
    deep = np.argsort(-field[tissue_rows, tissue_cols], kind="stable")[pick]
    centre_y, centre_x = tissue_rows[deep], tissue_cols[deep]
    aspect = generator.uniform(0.6, 1.0)
    distance = np.hypot((y - centre_y) * aspect, x - centre_x) / max(rows, cols)
    score = distance + 0.08 * _smooth_field(generator, rows, cols, grain=max(2, min(rows, cols) // 10))
    score[labels == GLASS] = np.inf
    tumour_count = int(round(tumour_fraction * tissue_count))
    labels.reshape(-1)[np.argsort(score, axis=None, kind="stable")[:tumour_count]] = TUMOUR
    return labels


def _halve(patches: np.ndarray) -> np.ndarray:
    """uint8 (N, c, c, 3) -> (N, c / 2, c / 2, 3): the rounded mean of each 2 x 2 block (integer arithmetic)."""
    wide = patches.astype(np.uint16)
    total = wide[:, 0::2, 0::2] + wide[:, 1::2, 0::2] + wide[:, 0::2, 1::2] + wide[:, 1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def _tiles_of_level(pool: np.ndarray, index: np.ndarray, flips: np.ndarray, cell: int) -> object:
    """Yield the level's TILE_SIZE x TILE_SIZE tiles row-major (edge tiles padded with glass)."""
    rows, cols = index.shape
    height, width = rows * cell, cols * cell
    padded_width = -(-width // TILE_SIZE) * TILE_SIZE
    for top in range(0, height, TILE_SIZE):
        first_row, last_row = top // cell, min(rows, -(-(top + TILE_SIZE) // cell))
        strip = np.empty(((last_row - first_row) * cell, padded_width, 3), dtype=np.uint8)
        strip[:, width:] = GLASS_RGB
        for row in range(first_row, last_row):
            cells = pool[index[row]]  # (cols, cell, cell, 3) copies
            horizontal, vertical = (flips[row] & 1).astype(bool), (flips[row] & 2).astype(bool)
            cells[horizontal] = cells[horizontal][:, :, ::-1]
            cells[vertical] = cells[vertical][:, ::-1]
            y = (row - first_row) * cell
            strip[y:y + cell, :width] = cells.transpose(1, 0, 2, 3).reshape(cell, width, 3)
        offset = top - first_row * cell
        band = strip[offset:offset + TILE_SIZE]
        if len(band) < TILE_SIZE:
            band = np.concatenate([band, np.full((TILE_SIZE - len(band), padded_width, 3), GLASS_RGB, np.uint8)])
        for left in range(0, padded_width, TILE_SIZE):
            yield band[:, left:left + TILE_SIZE]


def make_synthetic_slide(
    path: str | os.PathLike,
    normal_patches: np.ndarray,
    tumour_patches: np.ndarray,
    *,
    width: int,
    height: int,
    mpp: float = PCAM_MPP,
    tissue_fraction: float = 0.4,
    tumour_fraction: float = 0.15,
    seed: int = 0,
    jpeg_quality: int = 85,
    resolution_tags: bool = True,
) -> SyntheticSlide:
    """Write a pyramidal tiled JPEG TIFF of real PCam patches and its ground truth beside it.

    Args:
        path: the TIFF to write (``.tif``); the truth goes to ``<stem>.truth.png`` / ``.truth.json``.
        normal_patches: uint8 ``(N0, 96, 96, 3)`` label-0 patches (normal tissue).
        tumour_patches: uint8 ``(N1, 96, 96, 3)`` label-1 patches (tumour).
        width, height: level-0 size in pixels, rounded up to whole 96-pixel cells.
        mpp: level-0 microns per pixel written to the resolution tags (PCam's 0.972).
        tissue_fraction: share of the slide area covered by tissue (0-1).
        tumour_fraction: share of the tissue that is tumour (0-1).
        seed: seeds the layout and the choice of patches (same seed, same file content).
        jpeg_quality: JPEG quality of the tiles (1-100).
        resolution_tags: False writes no resolution (a slide whose mpp is unknown).

    Returns:
        A :class:`SyntheticSlide`.

    Raises:
        ConfigError: a size or fraction out of range, or patches of the wrong shape.
    """
    for name, pool in (("normal_patches", normal_patches), ("tumour_patches", tumour_patches)):
        if pool.ndim != 4 or pool.shape[1:] != (CELL_SIZE, CELL_SIZE, 3) or pool.dtype != np.uint8 or not len(pool):
            raise ConfigError(f"{name} must be uint8 (N, 96, 96, 3) with N >= 1; got {pool.dtype} {pool.shape}")
    if width < 3 * CELL_SIZE or height < 3 * CELL_SIZE:
        raise ConfigError(f"width and height must be >= {3 * CELL_SIZE} pixels; got {width} x {height}")
    if not (0 < tissue_fraction < 1 and 0 <= tumour_fraction < 1):
        raise ConfigError(f"tissue_fraction must be in (0, 1) and tumour_fraction in [0, 1); got "
                          f"{tissue_fraction}, {tumour_fraction}")
    generator = np.random.default_rng(seed)
    rows, cols = -(-height // CELL_SIZE), -(-width // CELL_SIZE)
    labels = tissue_layout(generator, rows, cols, tissue_fraction, tumour_fraction)
    return write_slide(path, labels, normal_patches, tumour_patches, generator=generator, mpp=mpp, seed=seed,
                       jpeg_quality=jpeg_quality, resolution_tags=resolution_tags)


def write_slide(
    path: str | os.PathLike,
    labels: np.ndarray,
    normal_patches: np.ndarray,
    tumour_patches: np.ndarray,
    *,
    generator: np.random.Generator,
    mpp: float = PCAM_MPP,
    seed: int = 0,
    jpeg_quality: int = 85,
    resolution_tags: bool = True,
) -> SyntheticSlide:
    """Render a given cell layout as a pyramidal tiled JPEG TIFF, and its truth beside it.

    Args:
        path: the TIFF to write.
        labels: int8 ``(rows, cols)`` cell labels (:data:`GLASS`, :data:`NORMAL`, :data:`TUMOUR`).
        normal_patches, tumour_patches: uint8 ``(N, 96, 96, 3)`` pools (see :func:`make_synthetic_slide`).
        generator: draws the patch of each cell and its flip.
        mpp, jpeg_quality, resolution_tags: as :func:`make_synthetic_slide`; ``seed`` is recorded in the truth.
    """
    import tifffile

    path = Path(path)
    rows, cols = labels.shape

    glass = np.clip(np.asarray(GLASS_RGB, np.float32) + generator.normal(0, 1.5, (16, CELL_SIZE, CELL_SIZE, 3)),
                    0, 255).astype(np.uint8)
    pool = np.concatenate([glass, normal_patches, tumour_patches])
    starts = {GLASS: 0, NORMAL: len(glass), TUMOUR: len(glass) + len(normal_patches)}
    sizes = {GLASS: len(glass), NORMAL: len(normal_patches), TUMOUR: len(tumour_patches)}
    index = np.empty((rows, cols), dtype=np.int32)
    for label in (GLASS, NORMAL, TUMOUR):
        chosen = labels == label
        index[chosen] = starts[label] + generator.integers(sizes[label], size=int(chosen.sum()))
    flips = generator.integers(4, size=(rows, cols), dtype=np.uint8)

    factors = [1]
    while CELL_SIZE % (factors[-1] * 2) == 0 and max(rows, cols) * CELL_SIZE // (factors[-1] * 2) >= MIN_LEVEL_SIZE:
        factors.append(factors[-1] * 2)
    level_dimensions = tuple((cols * CELL_SIZE // f, rows * CELL_SIZE // f) for f in factors)
    with atomic_path(path) as temporary, tifffile.TiffWriter(temporary, bigtiff=True) as tiff:
        level_pool = pool
        for level, factor in enumerate(factors):
            if level:
                level_pool = _halve(level_pool)  # each level from the one before: the factors double
            cell = CELL_SIZE // factor
            level_width, level_height = level_dimensions[level]
            options = {}
            if resolution_tags:
                pixels_per_cm = 1e4 / (mpp * factor)
                options = {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}
            tiff.write(
                _tiles_of_level(level_pool, index, flips, cell),
                shape=(level_height, level_width, 3), dtype=np.uint8, tile=(TILE_SIZE, TILE_SIZE),
                photometric="rgb", compression="jpeg", compressionargs={"level": jpeg_quality},
                subfiletype=0 if level == 0 else 1, metadata=None, **options,
            )
    truth_path = path.with_name(path.stem + ".truth.png")
    _write_truth(truth_path, labels, mpp, seed)
    return SyntheticSlide(path, truth_path, labels, float(mpp), CELL_SIZE, level_dimensions)


def _write_truth(truth_path: Path, labels: np.ndarray, mpp: float, seed: int) -> None:
    from PIL import Image

    grey = np.zeros(labels.shape, dtype=np.uint8)
    for label, value in TRUTH_PNG_VALUES.items():
        grey[labels == label] = value
    with atomic_path(truth_path) as temporary:
        Image.fromarray(grey).save(temporary, format="PNG")
    facts = {
        "cell_size": CELL_SIZE, "mpp": mpp, "seed": seed, "png_values": {"glass": 0, "normal": 128, "tumour": 255},
        "cells": {"glass": int((labels == GLASS).sum()), "normal": int((labels == NORMAL).sum()),
                  "tumour": int((labels == TUMOUR).sum())},
    }
    from pcamlab.fileio import write_text_atomic

    write_text_atomic(truth_path.with_suffix(".json"), json.dumps(facts, indent=2) + "\n")


def read_truth(truth_path: str | os.PathLike) -> np.ndarray:
    """int8 ``(rows, cols)`` cell labels (0 glass, 1 normal, 2 tumour) from a ``.truth.png``."""
    from PIL import Image

    grey = np.asarray(Image.open(truth_path))
    labels = np.zeros(grey.shape, dtype=np.int8)
    labels[grey == TRUTH_PNG_VALUES[NORMAL]] = NORMAL
    labels[grey == TRUTH_PNG_VALUES[TUMOUR]] = TUMOUR
    return labels
