"""Tissue detection on a low-resolution image of the slide: which tiles are worth predicting.

Two rules, on an RGB image of the whole slide (uint8 ``(H, W, 3)``) read from a low pyramid level:

- ``"saturation"`` (default, PCam's own rule): blur, convert to HSV, and call a pixel tissue when its
  saturation is at least ``threshold`` (0.07 on the 0-1 scale). Glass is grey-white (saturation about 0)
  and H&E stain is pink-purple (0.15-0.6). This is the tissue rule the PCam issue of this project gives
  for how PCam's patches were kept (Veeling et al. 2018, github.com/basveeling/pcam); the blur radius
  and the 0.07 cut are that description's values, not re-derived from the PCam code.
- ``"otsu"``: the same blurred saturation, thresholded at Otsu's value (the split of the histogram that
  maximises the between-class variance), for slides whose background is tinted.

Example:
    >>> mask = tissue_mask(thumbnail, method="saturation", threshold=0.07)  # bool (H, W)
"""

from __future__ import annotations

import numpy as np

from pcamlab.errors import ConfigError, did_you_mean

__all__ = ["TISSUE_METHODS", "DEFAULT_SATURATION_THRESHOLD", "saturation", "otsu_threshold", "tissue_mask"]

TISSUE_METHODS = ("saturation", "otsu")
DEFAULT_SATURATION_THRESHOLD = 0.07  # PCam's rule: HSV saturation (0-1) below this is background glass
DEFAULT_BLUR_RADIUS = 1.0  # Gaussian blur radius in mask pixels before the HSV conversion (about 12 um at the default mask scale)


def saturation(image: np.ndarray, blur_radius: float = DEFAULT_BLUR_RADIUS) -> np.ndarray:
    """HSV saturation in [0, 1] as float32 ``(H, W)`` of a uint8 RGB image after a Gaussian blur."""
    from PIL import Image, ImageFilter

    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if blur_radius > 0:
        picture = picture.filter(ImageFilter.GaussianBlur(blur_radius))
    return np.asarray(picture.convert("HSV"))[..., 1].astype(np.float32) / 255.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising between-class variance of the histogram."""
    histogram, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(histogram).astype(np.float64)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(histogram * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def tissue_mask(
    image: np.ndarray,
    *,
    method: str = "saturation",
    threshold: float = DEFAULT_SATURATION_THRESHOLD,
    blur_radius: float = DEFAULT_BLUR_RADIUS,
) -> np.ndarray:
    """Boolean ``(H, W)`` mask of tissue pixels of a uint8 RGB ``(H, W, 3)`` low-resolution slide image.

    Args:
        image: the slide at low resolution (e.g. 8-16 um/px).
        method: ``"saturation"`` (fixed threshold) or ``"otsu"``.
        threshold: saturation cut for ``"saturation"`` (0-1; PCam's 0.07); ignored by ``"otsu"``.
        blur_radius: Gaussian blur radius in pixels of ``image`` before the HSV conversion.

    Raises:
        ConfigError: unknown ``method`` or a threshold outside (0, 1).
    """
    if method not in TISSUE_METHODS:
        raise ConfigError(f"tissue_method must be one of {list(TISSUE_METHODS)}; got {method!r}"
                          f"{did_you_mean(method, TISSUE_METHODS)}")
    if not 0 < threshold < 1:
        raise ConfigError(f"tissue_threshold must be in (0, 1) (HSV saturation); got {threshold!r}, e.g. 0.07")
    values = saturation(image, blur_radius)
    if method == "otsu":
        # Otsu on an all-glass image splits noise; never cut below PCam's floor, so glass stays glass.
        threshold = max(otsu_threshold(values), DEFAULT_SATURATION_THRESHOLD)
    return values >= threshold
