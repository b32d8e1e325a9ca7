"""One slide of an evaluated cohort, as :mod:`pcamlab.slide.evaluation.run` checked it (read by the report too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcamlab.slide.annotations import SlideAnnotations

__all__ = ["SlideInput"]


@dataclass
class SlideInput:
    """One slide of the cohort, checked: its result folder, label, geometry and annotation.

    Attributes:
        slide: the slide id (the result folder's name).
        folder: the result folder.
        label: 1 tumour, 0 normal (reference CSV).
        summary: the folder's ``summary.json``.
        annotations: the slide's annotations (None for a normal slide without a file).
        cell_level0: edge of a probability-map cell in level-0 pixels.
        tile_size_level0: edge of a tile in level-0 pixels.
        mpp: level-0 microns per pixel.
        dimensions: level-0 ``(width, height)``.
    """

    slide: str
    folder: Path
    label: int
    summary: dict[str, Any]
    annotations: SlideAnnotations | None
    cell_level0: float
    tile_size_level0: float
    mpp: float
    dimensions: tuple[int, int]

    @property
    def tumour(self):
        import shapely

        return self.annotations.tumour if self.annotations is not None else shapely.MultiPolygon()
