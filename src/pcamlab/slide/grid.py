"""Where the tiles of a slide lie: model-resolution tiles mapped to a pyramid level and to level-0 pixels.

:class:`Grid` is the one description of the tiling that prediction (:mod:`pcamlab.slide.predict`), the
writers of the outputs (:mod:`pcamlab.slide.outputs`) and the service's heat layer share. It is a plain
frozen dataclass, saved into ``summary.json`` as ``grid`` and rebuilt with ``Grid(**summary["grid"])``.

Example:
    >>> grid = Grid(level=0, level_downsample=1.0, read_scale=1.0, model_mpp=0.972, patch_size=96, stride=96,
    ...             rows=30, cols=40, slide_width_level0=3840, slide_height_level0=2880, mpp0=0.972)
    >>> grid.tile_origin_level0(1, 2), grid.tile_size_level0
    ((192, 96), 96)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Grid"]


@dataclass(frozen=True)
class Grid:
    """Where the tiles lie: model-resolution tiles mapped to a pyramid level and to level-0 pixels.

    Attributes:
        level: pyramid level read.
        level_downsample: that level's downsample relative to level 0.
        read_scale: level pixels per model pixel (1.0 when the level matches the model's mpp).
        model_mpp: microns per model pixel actually used (the level's mpp when read as is).
        patch_size: tile edge in model pixels.
        stride: step between tiles in model pixels (divides ``patch_size``).
        rows, cols: tile grid size.
        slide_width_level0, slide_height_level0: level-0 size of the slide.
        mpp0: level-0 microns per pixel.
    """

    level: int
    level_downsample: float
    read_scale: float
    model_mpp: float
    patch_size: int
    stride: int
    rows: int
    cols: int
    slide_width_level0: int
    slide_height_level0: int
    mpp0: float

    @property
    def level0_per_model_pixel(self) -> float:
        return self.read_scale * self.level_downsample

    @property
    def tile_size_level0(self) -> int:
        return int(round(self.patch_size * self.level0_per_model_pixel))

    @property
    def cells_per_tile(self) -> int:
        return self.patch_size // self.stride

    def tile_origin_level0(self, row: int, col: int) -> tuple[int, int]:
        """Top-left level-0 pixel of tile (row, col)."""
        scale = self.stride * self.level0_per_model_pixel
        return int(round(col * scale)), int(round(row * scale))

    def tile_origins_level0(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int64 (N,) level-0 ``x`` and ``y`` of the top-left pixels of tiles (rows, cols): the same as
        :meth:`tile_origin_level0`, for arrays."""
        scale = self.stride * self.level0_per_model_pixel
        return (np.round(np.asarray(cols) * scale).astype(np.int64),
                np.round(np.asarray(rows) * scale).astype(np.int64))

    @property
    def map_width_level0(self) -> float:
        return (self.cols - 1 + self.cells_per_tile) * self.stride * self.level0_per_model_pixel

    @property
    def map_height_level0(self) -> float:
        return (self.rows - 1 + self.cells_per_tile) * self.stride * self.level0_per_model_pixel

    @property
    def extent_mm(self) -> tuple[float, float]:
        """Width and height of the probability map in millimetres."""
        return self.map_width_level0 * self.mpp0 / 1000, self.map_height_level0 * self.mpp0 / 1000

    @property
    def slide_extent_mm(self) -> tuple[float, float]:
        return self.slide_width_level0 * self.mpp0 / 1000, self.slide_height_level0 * self.mpp0 / 1000

    @property
    def cell_area_mm2(self) -> float:
        return (self.stride * self.model_mpp / 1000) ** 2
