"""Lesion detections from a probability map: (probability, x, y) points in level-0 pixels.

Camelyon16 asked each team for points, not regions, and left the way to make them open. Two ways are
offered (``DetectionOptions.method``):

- ``"local_maxima"`` (default): the map (glass = 0) is smoothed with a Gaussian of ``smoothing_um``
  (sigma), and every local maximum of at least ``threshold`` that is ``min_distance_um`` or more from a
  higher one becomes a detection at the smoothed value (``skimage.feature.peak_local_max``). Non-maximum
  suppression of this kind is how Liu et al. 2017 ("Detecting Cancer Metastases on Gigapixel Pathology
  Images", arXiv:1703.02442) made their FROC points; smoothing lowers single-cell spikes.
- ``"components"``: one detection per connected region (8-connectivity) of cells ``>= threshold``, at
  the region's highest cell and probability (Wang et al. 2016, arXiv:1606.05718, used the connected
  components of their thresholded heatmap).

A detection sits at the centre of its map cell, rounded to whole level-0 pixels (the challenge's CSV holds
integers, and scoring the rounded points keeps pcamlab's numbers equal to the official script's).

Example:
    >>> points = detect(probability_map, cell_level0=384.0, mpp=0.243)
    >>> points[:, 0].max() <= 1
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pcamlab.config_ranges import Range, check_number
from pcamlab.errors import ConfigError, did_you_mean

__all__ = ["DETECTION_METHODS", "DETECTION_RANGES", "DetectionOptions", "detect"]

DETECTION_METHODS = ("local_maxima", "components")
# The allowed range of each number of DetectionOptions, declared once (field -> (name in messages, range)).
# The message names the evaluate_slides / CLI option (detection_threshold -> --detection-threshold).
# Upper bounds: a Gaussian wider than a macro-metastasis (> 2 mm, AJCC; Camelyon16's largest class) only
# flattens the map, and 10 mm between two lesions is more than most lymph-node sections hold.
DETECTION_RANGES = {
    "threshold": ("detection_threshold", Range(0, 1, example="0.5", meaning="a probability")),
    "smoothing_um": ("smoothing_um", Range(0, 2000, example="50", meaning="um; 0 = no smoothing")),
    "min_distance_um": ("min_distance_um", Range(0, 10000, example="200", meaning="um")),
}


@dataclass(frozen=True)
class DetectionOptions:
    """How detections are made from a map.

    Attributes:
        method: ``"local_maxima"`` or ``"components"`` (see the module docstring).
        threshold: lowest probability a detection may have (components: the cut of the map).
        smoothing_um: Gaussian sigma in um before looking for maxima (0 = none); local_maxima only.
            Default about half a PCam tile (96 px at 0.972 um/px = 93 um), so a lone bright tile is
            damped but a lesion of a few tiles keeps its peak.
        min_distance_um: two maxima closer than this are one lesion (the ITC size, 200 um); local_maxima only.
    """

    method: str = "local_maxima"
    threshold: float = 0.5
    smoothing_um: float = 50.0
    min_distance_um: float = 200.0

    def __post_init__(self):
        if self.method not in DETECTION_METHODS:
            raise ConfigError(f"detection method must be one of {list(DETECTION_METHODS)}; got "
                              f"{self.method!r}{did_you_mean(self.method, DETECTION_METHODS)}",
                              parameters=("method",))
        for field_name, (name, allowed) in DETECTION_RANGES.items():
            check_number(name, getattr(self, field_name), allowed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _suppress(points: list[tuple[float, int, int]], distance: float) -> list[tuple[float, int, int]]:
    """Greedy non-maximum suppression: highest first, a point closer than ``distance`` cells to a kept one
    goes (peak_local_max keeps every cell of a plateau, and its spacing rule is in whole cells)."""
    from scipy.spatial import cKDTree

    if not points or distance <= 0:
        return points
    ordered = sorted(points, key=lambda item: (-item[0], item[1], item[2]))
    tree = cKDTree(np.asarray([(row, col) for _, row, col in ordered], dtype=np.float64))
    suppressed = np.zeros(len(ordered), dtype=bool)
    kept = []
    for index, point in enumerate(ordered):
        if suppressed[index]:
            continue
        kept.append(point)
        near = tree.query_ball_point((point[1], point[2]), r=np.nextafter(distance, 0))  # strictly closer
        suppressed[near] = True
    return kept


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(values, sigma, mode="constant")``, in time bounded by the map's size.

    Outside the map the constant mode pads zeros, so the kernel's taps beyond the map's extent add nothing;
    when the kernel (radius ``4 sigma``, scipy's default ``truncate``) is wider than the map, only the taps
    that can reach another cell are applied, weighted as in the full kernel. The same numbers; without this a
    wide sigma took minutes and gigabytes in a C loop no stop request could interrupt.
    """
    from scipy import ndimage, special

    full = int(4.0 * sigma + 0.5)  # scipy's kernel radius
    if full < max(values.shape):
        return ndimage.gaussian_filter(values, sigma, mode="constant")
    smoothed = values
    for axis in (0, 1):
        radius = values.shape[axis] - 1
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        if full <= 1_000_000:  # the full kernel's sum, exactly
            total = float(np.exp(-0.5 * (np.arange(-full, full + 1) / sigma) ** 2).sum())
        else:  # its integral: the sum of a Gaussian this wide differs by far less than float precision
            total = sigma * math.sqrt(2 * math.pi) * float(special.erf((full + 0.5) / (sigma * math.sqrt(2))))
        smoothed = ndimage.correlate1d(smoothed, taps / total, axis=axis, mode="constant")
    return smoothed


def detect(probability_map: np.ndarray, cell_level0: float, mpp: float,
           options: DetectionOptions = DetectionOptions()) -> np.ndarray:
    """Detections of one slide's map.

    Args:
        probability_map: float ``(rows, cols)`` tumour probability per map cell, NaN where no tile was
            predicted (treated as 0).
        cell_level0: edge of one map cell in level-0 pixels (cell (r, c) covers x in
            ``[c * cell, (c + 1) * cell)``).
        mpp: level-0 microns per pixel.
        options: :class:`DetectionOptions`.

    Returns:
        float64 ``(N, 3)``: probability, x, y (integer-valued level-0 pixels), highest probability first.
    """
    from skimage import feature, measure

    values = np.nan_to_num(np.asarray(probability_map, dtype=np.float64), nan=0.0)
    if values.ndim != 2 or values.size == 0:
        return np.zeros((0, 3))
    cell_um = cell_level0 * mpp
    if options.method == "components":
        regions = measure.label(values >= options.threshold, connectivity=2)
        points = []
        for region in measure.regionprops(regions, intensity_image=values):
            coordinates = region.coords  # (K, 2) row, col
            best = coordinates[int(np.argmax(values[coordinates[:, 0], coordinates[:, 1]]))]
            points.append((values[best[0], best[1]], best[0], best[1]))
    else:
        sigma = options.smoothing_um / cell_um
        smoothed = _smooth(values, sigma) if sigma > 0 else values
        floor = np.nextafter(options.threshold, -np.inf)  # peak_local_max keeps values > floor: >= threshold
        peaks = feature.peak_local_max(smoothed, min_distance=1, threshold_abs=floor, exclude_border=False)
        points = _suppress([(smoothed[row, col], row, col) for row, col in peaks.tolist()],
                           options.min_distance_um / cell_um)
    if not points:
        return np.zeros((0, 3))
    array = np.asarray(points, dtype=np.float64)  # (N, 3) probability, row, col
    x = np.round((array[:, 2] + 0.5) * cell_level0)
    y = np.round((array[:, 1] + 0.5) * cell_level0)
    detections = np.stack([np.clip(array[:, 0], 0.0, 1.0), x, y], axis=1)
    return detections[np.argsort(-detections[:, 0], kind="stable")]
