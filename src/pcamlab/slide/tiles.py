"""Tiles of a slide at a target resolution: the grid on the nearest level, reading tiles, their tissue share.

``slide predict`` (:mod:`pcamlab.slide.predict`) and ``data from-slides`` (:mod:`pcamlab.slide.dataset`)
see a slide the same way, so a model trained on patches cut from slides is applied to slides as it was
trained. Written once here:

- :func:`plan_grid`: the pyramid level nearest the target microns per pixel (read as is within 5%,
  else the next finer level resampled), and the :class:`~pcamlab.slide.grid.Grid` of tiles on it;
- :func:`read_tiles`: the tiles at given level-0 corners, from one region of that level, resampled to
  the target resolution when the level is not within 5% of it;
- :func:`tile_tissue`: the tissue mask of the slide at about 8 x 8 mask pixels per tile and the share of
  each tile that is tissue (:func:`tissue_fractions`, an integral image).

Example:
    >>> with open_slide("slide.tif") as slide:
    ...     grid = plan_grid(slide, 96, 96, 0.972)
    ...     x, y = grid.tile_origins_level0(np.array([0, 1]), np.array([3, 3]))
    ...     tiles = read_tiles(slide, grid, x, y)  # uint8 (2, 96, 96, 3)
"""

from __future__ import annotations

import math

import numpy as np

from pcamlab.errors import ConfigError, DataError
from pcamlab.slide.grid import Grid
from pcamlab.slide.reader import ResolutionError, Slide, describe_mpp_source, read_downsampled
from pcamlab.slide.tissue import tissue_mask

__all__ = ["LEVEL_TOLERANCE", "MAX_UPSAMPLING", "MASK_PIXELS_PER_TILE", "plan_grid", "read_tiles",
           "tissue_fractions", "tile_tissue"]

LEVEL_TOLERANCE = 0.05  # a level within 5% of the target mpp is read as is; otherwise regions are resampled
MAX_UPSAMPLING = 2.0  # a slide coarser than 2x the target mpp is refused: its tiles would be mostly interpolation
MASK_PIXELS_PER_TILE = 8  # the tissue mask has about 8 x 8 pixels per tile


def _choose_level(slide: Slide, mpp0: float, target_mpp: float) -> tuple[int, float]:
    """(level, read_scale): the level nearest ``target_mpp``; resample from the next finer one if none is close."""
    level_mpps = [mpp0 * downsample for downsample in slide.level_downsamples]
    nearest = min(range(len(level_mpps)), key=lambda index: abs(math.log(level_mpps[index] / target_mpp)))
    if abs(level_mpps[nearest] / target_mpp - 1) <= LEVEL_TOLERANCE:
        return nearest, 1.0
    finer = [index for index, value in enumerate(level_mpps) if value < target_mpp]
    level = max(finer, key=lambda index: level_mpps[index]) if finer else 0  # coarsest finer level, else upsample
    return level, target_mpp / level_mpps[level]


# Whose tiles a grid reads, as messages say it: (owner of the resolution, fix when too coarse, fix when too small).
TILE_TARGETS = {
    "model": ("the model's", "use a model trained at a coarser resolution",
              "use a model with a smaller patch_size or a larger slide"),
    "patches": ("the patches'", "cut the patches at a coarser resolution", "cut smaller patches or use a larger slide"),
}


def plan_grid(slide: Slide, patch_size: int, stride: int, target_mpp: float, *, target: str = "model") -> Grid:
    """The tile grid of ``slide`` for tiles of ``patch_size`` pixels at ``target_mpp`` um/px.

    ``target`` says whose resolution that is in messages (:data:`TILE_TARGETS`): ``"model"`` (slide predict)
    or ``"patches"`` (a dataset cut from slides).

    Raises:
        MissingResolutionError: the slide's mpp is unknown.
        ResolutionError: the slide's level 0 is coarser than MAX_UPSAMPLING x ``target_mpp``.
        ConfigError: ``stride`` does not divide ``patch_size``.
        DataError: the model's patch does not fit in the slide at the model's resolution.
    """
    if not (isinstance(stride, int) and 1 <= stride <= patch_size and patch_size % stride == 0):
        divisors = [d for d in range(patch_size, 0, -1) if patch_size % d == 0][:6]
        raise ConfigError(f"stride must divide the model's patch size {patch_size} (e.g. {divisors}); got {stride!r}")
    whose, coarser_fix, smaller_fix = TILE_TARGETS[target]
    mpp0 = slide.require_mpp()
    if mpp0 > MAX_UPSAMPLING * target_mpp:
        source = describe_mpp_source(slide.mpp_source, slide.vendor)
        raise ResolutionError(
            f"slide {str(slide.path)!r} is {mpp0:.4g} um/px at level 0 (from {source}), coarser than "
            f"{MAX_UPSAMPLING:g}x {whose} {target_mpp:.4g} um/px (tiles would be upsampled "
            f"{mpp0 / target_mpp:.3g}x); if that resolution is wrong, give the right one as mpp (e.g. 0.25 for a "
            f"40x scan), else {coarser_fix}"
        )
    level, read_scale = _choose_level(slide, mpp0, target_mpp)
    level_width, level_height = slide.level_dimensions[level]
    model_width, model_height = int(level_width / read_scale), int(level_height / read_scale)
    level_mpp = mpp0 * slide.level_downsamples[level]
    if model_width < patch_size or model_height < patch_size:
        raise DataError(
            f"slide {str(slide.path)!r} is {model_width} x {model_height} pixels at {whose} {target_mpp:.3g} "
            f"um/px, smaller than {whose} {patch_size} x {patch_size} patch; {smaller_fix}"
        )
    return Grid(
        level=level, level_downsample=slide.level_downsamples[level], read_scale=read_scale,
        model_mpp=level_mpp * read_scale, patch_size=patch_size, stride=stride,
        rows=(model_height - patch_size) // stride + 1, cols=(model_width - patch_size) // stride + 1,
        slide_width_level0=slide.dimensions[0], slide_height_level0=slide.dimensions[1], mpp0=mpp0,
    )


def read_tiles(slide: Slide, grid: Grid, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The tiles of ``grid`` whose top-left level-0 corners are ``x``, ``y``, read as one region.

    The region spanning them is read from ``grid.level`` and, when ``grid.read_scale`` is not 1, resized to
    the target resolution (box filter when shrinking, bilinear when enlarging); each tile is cut from it
    where its level-0 corner falls. Keep the tiles close together (a block of about 1024 level pixels):
    the region's memory grows with their spread.

    Args:
        slide: the open slide.
        grid: its tile grid (:func:`plan_grid`).
        x, y: int (N,) level-0 corners, e.g. :meth:`Grid.tile_origins_level0` of tile rows and columns.

    Returns:
        uint8 (N, patch_size, patch_size, 3).

    Raises:
        DamagedSlideError: the region does not decode.
    """
    from PIL import Image

    size, scale = grid.patch_size, grid.level0_per_model_pixel
    x, y = np.asarray(x), np.asarray(y)
    left, top = int(x.min()), int(y.min())
    width = int(np.ceil((x.max() - left) / scale)) + size  # target pixels
    height = int(np.ceil((y.max() - top) / scale)) + size
    read_size = (max(1, int(round(width * grid.read_scale))), max(1, int(round(height * grid.read_scale))))
    region = slide.read_region((left, top), grid.level, read_size)
    if grid.read_scale != 1.0:
        resample = Image.Resampling.BOX if grid.read_scale > 1 else Image.Resampling.BILINEAR
        region = np.asarray(Image.fromarray(region).resize((width, height), resample))
    tiles = np.empty((len(x), size, size, 3), dtype=np.uint8)
    for index, (column, row) in enumerate(zip(np.round((x - left) / scale).astype(int).tolist(),
                                              np.round((y - top) / scale).astype(int).tolist())):
        tiles[index] = region[row:row + size, column:column + size]
    return tiles


def tissue_fractions(mask: np.ndarray, grid: Grid, mask_downsample: float) -> np.ndarray:
    """float32 (rows, cols): share of each tile's footprint that ``mask`` calls tissue (an integral image).

    Args:
        mask: bool (H, W) tissue mask of the whole slide.
        grid: the tile grid.
        mask_downsample: level-0 pixels per mask pixel.
    """
    dtype = np.int32 if mask.size < 2**31 else np.int64  # int32 halves the memory of a whole slide's integral
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=dtype)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=dtype), axis=1, dtype=dtype)
    step = grid.stride * grid.level0_per_model_pixel / mask_downsample
    size = grid.patch_size * grid.level0_per_model_pixel / mask_downsample
    tops = np.clip(np.round(np.arange(grid.rows) * step).astype(int), 0, mask.shape[0])
    lefts = np.clip(np.round(np.arange(grid.cols) * step).astype(int), 0, mask.shape[1])
    bottoms = np.clip(np.round(np.arange(grid.rows) * step + size).astype(int), 0, mask.shape[0])
    rights = np.clip(np.round(np.arange(grid.cols) * step + size).astype(int), 0, mask.shape[1])
    area = np.maximum((bottoms - tops)[:, None] * (rights - lefts)[None, :], 1)
    inside = (integral[bottoms][:, rights] - integral[tops][:, rights] - integral[bottoms][:, lefts]
              + integral[tops][:, lefts])
    return (inside / area).astype(np.float32)


def tile_tissue(slide: Slide, grid: Grid, *, method: str, threshold: float
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """The slide's tissue mask at about 8 x 8 pixels per tile, and each tile's tissue share.

    Args:
        slide: the open slide.
        grid: its tile grid.
        method, threshold: the tissue rule (:func:`pcamlab.slide.tissue.tissue_mask`).

    Returns:
        ``(mask, mask_downsample, fractions)``: bool (H, W) mask, level-0 pixels per mask pixel, float32
        (rows, cols) share of each tile that is tissue.
    """
    mask_downsample = max(1.0, grid.tile_size_level0 / MASK_PIXELS_PER_TILE)
    mask = tissue_mask(read_downsampled(slide, mask_downsample), method=method, threshold=threshold)
    return mask, mask_downsample, tissue_fractions(mask, grid, mask_downsample)
