"""Whole-slide tumour maps from a trained patch model (``pcamlab slide``).

- :mod:`~pcamlab.slide.reader`: open a slide with OpenSlide, else tiffslide; levels, mpp (a given one wins),
  regions; a damaged slide (cut short, a tile that does not decode) is a ``DamagedSlideError``.
- :mod:`~pcamlab.slide.integrity`: is the file whole (tifffile's tile offsets vs its size), what a
  failed decode is, and ``verify_slide`` (every tile decoded).
- :mod:`~pcamlab.slide.grid`: :class:`Grid`, where the tiles lie at the model's resolution.
- :mod:`~pcamlab.slide.tissue`: the tissue mask (PCam's HSV-saturation rule, or Otsu).
- :mod:`~pcamlab.slide.tiles`: the grid on the level nearest a target mpp, reading its tiles, their tissue
  share (one reader for ``slide predict`` and ``data from-slides``).
- :mod:`~pcamlab.slide.predict`: :func:`predict_slide`, tiled inference through a Predictor, resumable.
- :mod:`~pcamlab.slide.outputs`: heatmap, overlay, GeoJSON for QuPath, CSV, HTML section.
- :mod:`~pcamlab.slide.synthetic`: pyramidal TIFF slides of real PCam patches, with ground truth.

This package never imports ``pcamlab.train``; models are loaded through the shared Predictor.

Example:
    >>> from pcamlab.slide import load_predictor, predict_slide
    >>> result = predict_slide(load_predictor("model.onnx"), "slide.tif", "out/slide")
    >>> result.summary["score_max"]
"""

from pcamlab.slide._model import PCAM_MPP, load_predictor
from pcamlab.slide.grid import Grid
from pcamlab.slide.predict import OUTPUT_FILES, SlideResult, predict_slide
from pcamlab.slide.reader import (
    BACKENDS,
    PLAUSIBLE_MPP,
    DamagedSlideError,
    MissingResolutionError,
    ResolutionError,
    Slide,
    SlideInfo,
    open_slide,
    slide_info,
)
from pcamlab.slide.synthetic import SyntheticSlide, make_synthetic_slide, read_truth, sample_pools
from pcamlab.slide.tiles import plan_grid, read_tiles
from pcamlab.slide.tissue import TISSUE_METHODS, tissue_mask

__all__ = [
    "BACKENDS",
    "DamagedSlideError",
    "Grid",
    "MissingResolutionError",
    "OUTPUT_FILES",
    "PCAM_MPP",
    "PLAUSIBLE_MPP",
    "ResolutionError",
    "Slide",
    "SlideInfo",
    "SlideResult",
    "SyntheticSlide",
    "TISSUE_METHODS",
    "load_predictor",
    "make_synthetic_slide",
    "open_slide",
    "plan_grid",
    "predict_slide",
    "read_tiles",
    "read_truth",
    "sample_pools",
    "slide_info",
    "tissue_mask",
]
