"""Pixel- and tile-level agreement of a slide's map with its annotation.

- :func:`overlap`: Dice and IoU (Jaccard) of the thresholded map against the annotation mask, both at
  the map's resolution (one pixel per map cell). Glass (NaN) cells are never tumour.
- :func:`tile_labels`: the reference label of every predicted tile by PCam's own rule (README of
  PatchCamelyon, Veeling et al. 2018): a tile is tumour when the centre 32 x 32 pixels of its 96 x 96
  patch (the centre third of the tile) touch annotated tumour. Its ROC AUC over a cohort's tiles says how
  well the model does the job it was trained for, on these slides.

Example:
    >>> overlap(probability_map >= 0.5, truth_mask)["dice"]
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CENTRE_FRACTION", "overlap", "tile_labels"]

CENTRE_FRACTION = 32 / 96  # PCam: a patch is tumour when its centre 32x32 of 96x96 holds tumour (PCam README)


def overlap(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Dice and IoU of two same-shaped binary masks.

    Args:
        predicted: bool ``(rows, cols)``, e.g. ``probability_map >= threshold`` (NaN compares False).
        truth: ``(rows, cols)`` nonzero = annotated tumour.

    Returns:
        ``{"intersection", "predicted", "truth": int pixel counts, "dice", "iou": float or None}``;
        Dice and IoU are None when both masks are empty (a normal slide the map leaves clean: nothing to
        overlap, and no error either).
    """
    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(truth) != 0
    if predicted.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {predicted.shape} vs {truth.shape}")  # internal invariant
    intersection = int(np.sum(predicted & truth))
    predicted_count, truth_count = int(predicted.sum()), int(truth.sum())
    union = predicted_count + truth_count - intersection
    empty = predicted_count + truth_count == 0
    return {
        "intersection": intersection, "predicted": predicted_count, "truth": truth_count,
        "dice": None if empty else 2 * intersection / (predicted_count + truth_count),
        "iou": None if empty else intersection / union,
    }


def tile_labels(rows: np.ndarray, cols: np.ndarray, tile_step_level0: float, tile_size_level0: float,
                tumour: Any) -> np.ndarray:
    """PCam-rule labels of tiles: 1 when the centre third of the tile overlaps the tumour geometry.

    Args:
        rows, cols: int ``(N,)`` grid positions of the tiles.
        tile_step_level0: level-0 pixels between neighbouring tiles (the stride).
        tile_size_level0: tile edge in level-0 pixels.
        tumour: shapely geometry of the annotated tumour in level-0 pixels (may be empty).

    Returns:
        int64 ``(N,)`` labels 0/1. A centre that only touches the tumour's border counts as normal.
    """
    import shapely

    rows = np.asarray(rows, dtype=np.float64)
    cols = np.asarray(cols, dtype=np.float64)
    if tumour is None or tumour.is_empty or rows.size == 0:
        return np.zeros(rows.shape, dtype=np.int64)
    margin = tile_size_level0 * (1 - CENTRE_FRACTION) / 2
    left, top = cols * tile_step_level0 + margin, rows * tile_step_level0 + margin
    centre = tile_size_level0 * CENTRE_FRACTION
    boxes = shapely.box(left, top, left + centre, top + centre)  # (N,) vectorised
    shapely.prepare(tumour)
    inside = shapely.intersects(tumour, boxes) & ~shapely.touches(tumour, boxes)
    return inside.astype(np.int64)
