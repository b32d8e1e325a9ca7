"""Lesion-level evaluation: Camelyon16's free-response ROC (FROC), as the challenge's own code scores it.

Source: Bejnordi et al., "Diagnostic Assessment of Deep Learning Algorithms for Detection of Lymph Node
Metastases in Women With Breast Cancer", JAMA 2017;318(22):2199-2210 (the evaluation protocol), and the
challenge's ``Evaluation_FROC.py`` (camelyon16.grand-challenge.org, "Evaluation"). What that code does, and
what this module reproduces:

1. **Evaluation mask** (:func:`evaluation_mask`): the tumour annotation rasterised at pyramid level 5
   (downsample 32, 7.776 um per pixel at Camelyon16's 0.243 um/px); every pixel whose Euclidean distance
   to the annotation is below ``75 / (0.243 * 2**5 * 2)`` pixels joins it; holes are filled
   (``binary_fill_holes``); connected regions are labelled with 8-connectivity. Note the ``* 2``: the
   code grows each border by 37.5 um, so a region's diameter grows by the 75 um ("the size of 5 tumour
   cells") that the paper speaks of. pcamlab follows the code (``dilation_um=75`` is the diameter growth,
   the radius is half of it), so its numbers match the official script's.
2. **Isolated tumour cells** (ITC): a region whose longest axis is under 275 um (200 um, the ITC size of
   the TNM staging, plus the 75 um of the dilation). The official code measures the axis as
   scikit-image's ``major_axis_length`` (of the ellipse with the region's second moments);
   ``itc_axis="feret"`` uses the maximum Feret diameter instead (the caliper length, closer to how a
   pathologist measures).
3. **Hits** (:func:`score_slide`): a detection is a (probability, x, y) point in level-0 pixels. On a
   tumour slide it looks up the mask at ``(int(y / 32), int(x / 32))``: background is a false positive;
   a non-ITC region is a true positive for that region at the highest probability of the detections on
   it (a region counts once); an ITC region is ignored (neither hit nor false positive). On a normal
   slide every detection is a false positive.
4. **Curve** (:func:`compute_froc`): thresholds are the distinct probabilities pooled over all slides (false
   positives and each region's best probability, 0 for a missed or ITC region), except the lowest one,
   as in the code; at each threshold, false positives per slide (over every slide) and sensitivity
   (regions hit / non-ITC regions of the cohort); sensitivities at 1/4, 1/2, 1, 2, 4 and 8 false
   positives per slide are read with ``np.interp`` on the curve; the FROC score is their mean.

Where pcamlab differs, and why:

- The official code assumes 0.243 um/px for every slide and level 5 for the mask. pcamlab takes each
  slide's own level-0 mpp, and rasterises the mask at the power-of-two downsample whose pixel is nearest
  7.776 um (32 for a 0.243 or 0.226 um/px Camelyon16 scan, 8 for a 0.972 um/px synthetic slide), so lengths
  in um mean the same on every scanner.
- The annotation arrives as polygons (ASAP XML, GeoJSON) rather than the challenge's mask TIFF; they are
  rasterised (pixels whose centre lies inside) before the steps above. Camelyon16's ``_2`` (non-tumour)
  polygons inside a tumour are subtracted by the annotation reader and filled again by step 1, as in
  the mask TIFF route.
- A detection outside the slide is refused (the official code would index past the mask and crash).

Detections written by :func:`write_detections_csv` are the challenge's submission format (one
``<slide>.csv`` per slide, lines ``Confidence,X coordinate,Y coordinate``, no header, integer level-0
pixels), so the official script can score them too.

Example:
    >>> mask = evaluation_mask(tumour_mask, downsample=8, mpp=0.972)
    >>> slide = score_slide("tumor_001", np.array([[0.9, 1200, 800]]), mask)
    >>> compute_froc([slide, normal_slide]).score
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcamlab.errors import ConfigError, DataError
from pcamlab.fileio import atomic_path

__all__ = [
    "FP_RATES",
    "CAMELYON16_MPP",
    "MASK_MPP",
    "DILATION_UM",
    "ITC_UM",
    "ITC_AXES",
    "EvaluationMask",
    "SlideLesions",
    "FROCResult",
    "mask_downsample",
    "evaluation_mask",
    "score_slide",
    "compute_froc",
    "write_detections_csv",
    "read_detections_csv",
]

FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # average false positives per slide (Evaluation_FROC.py, Bejnordi 2017)
CAMELYON16_MPP = 0.243  # um/px at level 0 that Evaluation_FROC.py assumes for every slide (L0_RESOLUTION)
MASK_MPP = CAMELYON16_MPP * 2**5  # 7.776 um per evaluation-mask pixel: the official code's level 5
DILATION_UM = 75.0  # diameter growth of a region ("5 tumour cells"); the code's radius is half: 75/(mpp*2^5*2) px
ITC_UM = 275.0  # ITC: longest axis < 200 um before the dilation, 275 um after (Evaluation_FROC.py computeITCList)
ITC_AXES = ("major_axis", "feret")  # how a region's longest axis is measured (official: major_axis)


@dataclass(frozen=True)
class EvaluationMask:
    """The reference regions of one tumour slide.

    Attributes:
        labels: int32 ``(rows, cols)`` region label per mask pixel, 0 = background, 1..regions.
        downsample: level-0 pixels per mask pixel.
        mpp: level-0 microns per pixel.
        itc: labels of the isolated-tumour-cell regions (ignored when hit, never missed).
        axes_um: longest axis of each region in um (index ``label - 1``), as measured by ``itc_axis``.
    """

    labels: np.ndarray
    downsample: float
    mpp: float
    itc: frozenset[int]
    axes_um: tuple[float, ...]

    @property
    def regions(self) -> int:
        return len(self.axes_um)

    @property
    def lesions(self) -> int:
        """Regions that count: every region but the ITCs."""
        return self.regions - len(self.itc)

    def label_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Region label (int64, 0 = background) at level-0 points ``(x, y)``, the official ``int(v / 32)`` lookup.

        Raises:
            DataError: a point lies outside the mask (outside the slide).
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        columns = np.floor(x / self.downsample).astype(np.int64)
        rows = np.floor(y / self.downsample).astype(np.int64)
        outside = (rows < 0) | (columns < 0) | (rows >= self.labels.shape[0]) | (columns >= self.labels.shape[1])
        if np.any(outside):
            index = int(np.flatnonzero(outside)[0])
            raise DataError(
                f"detection at level-0 pixel ({x[index]:g}, {y[index]:g}) lies outside the slide "
                f"({self.labels.shape[1] * self.downsample:g} x {self.labels.shape[0] * self.downsample:g} pixels); "
                "detections are (probability, x, y) in level-0 pixels of the slide"
            )
        return self.labels[rows, columns].astype(np.int64)


def mask_downsample(mpp: float) -> float:
    """The power-of-two downsample whose pixel is nearest :data:`MASK_MPP` (7.776 um) at level-0 ``mpp``.

    Example:
        >>> mask_downsample(0.243), mask_downsample(0.2265), mask_downsample(0.972)
        (32.0, 32.0, 8.0)
    """
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise DataError(f"slide mpp must be a positive number of microns per pixel; got {mpp!r}")
    return float(2 ** max(0, round(math.log2(MASK_MPP / mpp))))


def _longest_axis(region, axis: str) -> float:
    return float(region.feret_diameter_max if axis == "feret" else region.axis_major_length)


def evaluation_mask(
    tumour: np.ndarray,
    downsample: float,
    mpp: float,
    *,
    dilation_um: float = DILATION_UM,
    itc_um: float = ITC_UM,
    itc_axis: str = "major_axis",
) -> EvaluationMask:
    """Camelyon16's evaluation mask of one slide from its tumour annotation rasterised at ``downsample``.

    Args:
        tumour: ``(rows, cols)`` mask of the annotated tumour (nonzero = tumour), one pixel per
            ``downsample`` level-0 pixels (e.g. ``annotations.rasterize(tumour, shape, downsample)``).
        downsample: level-0 pixels per mask pixel (:func:`mask_downsample`; the official code's 32).
        mpp: level-0 microns per pixel of the slide.
        dilation_um: growth of a region's diameter in um; pixels nearer than ``dilation_um / 2`` to the
            annotation join it (the official ``75 / (0.243 * 2**5 * 2)`` pixels at level 5).
        itc_um: a region whose longest axis (after the dilation) is below this is an isolated-tumour-cell
            region (275 um = 200 um + 75 um).
        itc_axis: ``"major_axis"`` (the official code's ``regionprops.major_axis_length``) or ``"feret"``
            (``feret_diameter_max``).

    Returns:
        An :class:`EvaluationMask` (labels with 8-connectivity, holes filled).

    Raises:
        ConfigError: a negative length, or an unknown ``itc_axis``.

    Example:
        >>> mask = evaluation_mask(np.pad(np.ones((50, 50)), 10), downsample=8, mpp=0.972)
        >>> mask.regions, mask.itc
        (1, frozenset())
    """
    from scipy import ndimage
    from skimage import measure

    if itc_axis not in ITC_AXES:
        raise ConfigError(f"itc_axis must be one of {list(ITC_AXES)}; got {itc_axis!r}")
    for name, value in (("dilation_um", dilation_um), ("itc_um", itc_um)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a length in um >= 0; got {value!r}")
    tumour = np.asarray(tumour) != 0
    if tumour.ndim != 2:
        raise DataError(f"the tumour mask must be 2-D (rows, cols); got shape {tumour.shape}")
    labels = np.zeros(tumour.shape, dtype=np.int32)
    pixel_um = downsample * mpp
    if not tumour.any():
        return EvaluationMask(labels, float(downsample), float(mpp), frozenset(), ())
    radius = dilation_um / (pixel_um * 2)  # the official Threshold, in mask pixels
    # Work on the tumour's bounding box padded past the dilation: the same result, far less memory.
    rows, columns = np.nonzero(tumour)
    pad = int(math.ceil(radius)) + 2
    top, left = max(0, rows.min() - pad), max(0, columns.min() - pad)
    bottom, right = min(tumour.shape[0], rows.max() + pad + 1), min(tumour.shape[1], columns.max() + pad + 1)
    crop = tumour[top:bottom, left:right]
    distance = ndimage.distance_transform_edt(~crop)  # 0 on the tumour, Euclidean pixels elsewhere
    grown = ndimage.binary_fill_holes((distance < radius) | crop)  # the annotation itself even at radius 0
    crop_labels = measure.label(grown, connectivity=2)
    labels[top:bottom, left:right] = crop_labels
    axes = []
    itc = set()
    for region in measure.regionprops(crop_labels):  # ordered by label, 1..max
        axis_um = _longest_axis(region, itc_axis) * pixel_um
        axes.append(axis_um)
        if axis_um < itc_um:
            itc.add(int(region.label))
    return EvaluationMask(labels, float(downsample), float(mpp), frozenset(itc), tuple(axes))


HIT, ITC_HIT, FALSE_POSITIVE = "hit", "itc", "false_positive"  # what each detection was


@dataclass(frozen=True)
class SlideLesions:
    """One slide's detections scored against its regions.

    Attributes:
        slide: the slide id.
        is_tumour: the slide's reference label.
        detections: float64 ``(N, 3)``: probability, x, y (level-0 pixels).
        outcome: ``(N,)`` str per detection: ``"hit"``, ``"itc"`` (on an ITC region, ignored) or
            ``"false_positive"``.
        false_positives: float64 probabilities of the false-positive detections.
        region_probabilities: float64 ``(regions,)``: each region's highest hitting probability, 0 for a
            missed region and for every ITC region (the official ``TP_probs``).
        hit: bool ``(regions,)``: the region was hit by at least one detection (ITCs included).
        itc: labels of the ITC regions.
        axes_um: longest axis of each region in um.
    """

    slide: str
    is_tumour: bool
    detections: np.ndarray
    outcome: np.ndarray
    false_positives: np.ndarray
    region_probabilities: np.ndarray
    hit: np.ndarray
    itc: frozenset[int]
    axes_um: tuple[float, ...]

    @property
    def lesions(self) -> int:
        """Regions that count (non-ITC): the denominator of sensitivity."""
        return len(self.region_probabilities) - len(self.itc)

    @property
    def lesions_hit(self) -> int:
        return int(sum(1 for label in range(1, len(self.hit) + 1) if self.hit[label - 1] and label not in self.itc))

    @property
    def largest_lesion_um(self) -> float | None:
        return max(self.axes_um) if self.axes_um else None


def _check_detections(detections: np.ndarray, slide: str) -> np.ndarray:
    detections = np.asarray(detections, dtype=np.float64)
    if detections.size == 0:
        return np.zeros((0, 3))
    if detections.ndim != 2 or detections.shape[1] != 3:
        raise DataError(f"detections of slide {slide!r} must be an (N, 3) array of probability, x, y; "
                        f"got shape {detections.shape}")
    if not np.all(np.isfinite(detections)):
        raise DataError(f"detections of slide {slide!r} hold NaN or infinite values; each must be a finite "
                        "probability and level-0 x, y")
    probabilities = detections[:, 0]
    if np.any((probabilities < 0) | (probabilities > 1)):
        raise DataError(f"detection probabilities of slide {slide!r} must lie in [0, 1]; got "
                        f"{probabilities.min():g}..{probabilities.max():g}")
    return detections


def score_slide(slide: str, detections: np.ndarray, mask: EvaluationMask | None) -> SlideLesions:
    """Score one slide's detections against its evaluation mask (``compute_FP_TP_Probs`` of the official code).

    Args:
        slide: the slide id (for messages and tables).
        detections: ``(N, 3)`` probability, x, y in level-0 pixels (N may be 0).
        mask: the slide's :class:`EvaluationMask` for a tumour slide; None for a normal slide (every
            detection is then a false positive, as in the official code).

    Raises:
        DataError: malformed detections, or a detection outside the slide.
    """
    detections = _check_detections(detections, slide)
    probabilities = detections[:, 0]
    if mask is None:
        outcome = np.full(len(detections), FALSE_POSITIVE, dtype=object)
        return SlideLesions(slide, False, detections, outcome, probabilities.copy(), np.zeros(0), np.zeros(0, bool),
                            frozenset(), ())
    labels = mask.label_at(detections[:, 1], detections[:, 2])  # (N,)
    best = np.zeros(mask.regions)
    hit = np.zeros(mask.regions, dtype=bool)
    outcome = np.empty(len(detections), dtype=object)
    for index, (probability, label) in enumerate(zip(probabilities.tolist(), labels.tolist())):
        if label == 0:
            outcome[index] = FALSE_POSITIVE
            continue
        hit[label - 1] = True
        if label in mask.itc:
            outcome[index] = ITC_HIT
            continue
        outcome[index] = HIT
        best[label - 1] = max(best[label - 1], probability)  # a region counts once, at its best detection
    false_positives = probabilities[labels == 0]
    return SlideLesions(slide, True, detections, outcome, false_positives, best, hit, mask.itc, mask.axes_um)


@dataclass(frozen=True)
class FROCResult:
    """The cohort's FROC.

    Attributes:
        false_positives_per_slide: float64 ``(T + 1,)`` average false positives per slide at each threshold
            (decreasing), the last point (0, 0).
        sensitivity: float64 ``(T + 1,)`` share of the cohort's non-ITC regions hit at each threshold.
        thresholds: float64 ``(T,)`` the probabilities used as thresholds (increasing).
        sensitivities: false positives per slide (:data:`FP_RATES`) -> sensitivity there (``np.interp``);
            None when the cohort has no lesion.
        score: mean of ``sensitivities`` (Camelyon16's FROC score), None when the cohort has no lesion.
        slides: slides in the cohort.
        lesions: non-ITC regions of the cohort.
    """

    false_positives_per_slide: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    sensitivities: dict[float, float] | None
    score: float | None
    slides: int
    lesions: int


def compute_froc(slides: Sequence[SlideLesions], fp_rates: Sequence[float] = FP_RATES) -> FROCResult:
    """The FROC curve and score of a cohort (``computeFROC`` and the main loop of the official code).

    Args:
        slides: every slide of the cohort, normal ones included (they add false positives and slides).
        fp_rates: average false positives per slide at which sensitivity is read.

    Raises:
        DataError: no slide.

    Example:
        >>> result = compute_froc([tumour_slide, normal_slide])
        >>> result.score, result.sensitivities[0.25]
    """
    if not slides:
        raise DataError("no slides to score: the FROC needs at least one slide's detections")
    false_positives = np.concatenate([slide.false_positives for slide in slides])
    true_positives = np.concatenate([slide.region_probabilities for slide in slides])
    lesions = sum(slide.lesions for slide in slides)
    all_probabilities = np.unique(np.concatenate([false_positives, true_positives]))  # sorted, distinct
    thresholds = all_probabilities[1:]  # the official loop starts at all_probs[1:]
    total_fps = [(false_positives >= threshold).sum() for threshold in thresholds] + [0]
    total_tps = [(true_positives >= threshold).sum() for threshold in thresholds] + [0]
    fps_per_slide = np.asarray(total_fps, dtype=np.float64) / len(slides)
    if lesions == 0:
        return FROCResult(fps_per_slide, np.zeros(len(total_tps)), thresholds, None, None, len(slides), 0)
    sensitivity = np.asarray(total_tps, dtype=np.float64) / lesions
    read = np.interp(list(fp_rates), fps_per_slide[::-1], sensitivity[::-1])
    sensitivities = {float(rate): float(value) for rate, value in zip(fp_rates, read)}
    return FROCResult(fps_per_slide, sensitivity, thresholds, sensitivities, float(np.mean(read)), len(slides), lesions)


def write_detections_csv(path: str | os.PathLike, detections: np.ndarray) -> Path:
    """One slide's detections in the challenge's format: ``Confidence,X coordinate,Y coordinate`` per line.

    No header (the official ``readCSVContent`` reads every line), probability with 6 decimals, x and y
    as integer level-0 pixels. Written atomically.
    """
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 3)
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as stream:
        for probability, x, y in detections.tolist():
            stream.write(f"{probability:.6f},{int(x)},{int(y)}\n")
    return Path(path)


def read_detections_csv(path: str | os.PathLike) -> np.ndarray:
    """Read a challenge detection CSV back: float64 ``(N, 3)`` probability, x, y.

    Raises:
        DataError: a line that is not three numbers.
    """
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            probability, x, y = (float(value) for value in line.split(","))
        except ValueError:
            raise DataError(f"{str(path)!r} line {number}: expected 'Confidence,X coordinate,Y coordinate' "
                            f"(three numbers); got {line[:60]!r}") from None
        rows.append((probability, x, y))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)
