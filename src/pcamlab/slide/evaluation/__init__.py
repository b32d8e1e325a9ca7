"""Slide-level evaluation of ``slide predict`` results against annotations, as Camelyon16 scored it.

- :mod:`~pcamlab.slide.evaluation.slide_level`: slide scores (max, top-k mean, a learned aggregator of map
  features), cross-validated over slides: ROC AUC with a bootstrap 95% CI, sensitivity and specificity.
- :mod:`~pcamlab.slide.evaluation.froc`: Camelyon16's lesion-level FROC (evaluation mask, ITCs, hits).
- :mod:`~pcamlab.slide.evaluation.detections`: detections from a map (local maxima or connected components).
- :mod:`~pcamlab.slide.evaluation.pixel`: Dice and IoU of the thresholded map, PCam-rule tile labels.
- :mod:`~pcamlab.slide.evaluation.report`: ROC, FROC and per-slide pictures, the cohort HTML report.
- :mod:`~pcamlab.slide.evaluation.run`: :func:`evaluate_slides`, the whole evaluation of a cohort.

Example:
    >>> from pcamlab.slide.evaluation import evaluate_slides
    >>> evaluation = evaluate_slides("results", "annotations", "reference.csv", "evaluation")
    >>> evaluation.metrics["lesion"]["froc"]
"""

from pcamlab.slide.evaluation.detections import DETECTION_METHODS, DetectionOptions, detect
from pcamlab.slide.evaluation.froc import FP_RATES, EvaluationMask, compute_froc, evaluation_mask, score_slide
from pcamlab.slide.evaluation.run import EVALUATION_FILES, SlideEvaluation, evaluate_slides, load_cohort
from pcamlab.slide.evaluation.slide_level import AGGREGATORS, FEATURES, cross_validate, map_features

__all__ = [
    "AGGREGATORS",
    "DETECTION_METHODS",
    "DetectionOptions",
    "EVALUATION_FILES",
    "EvaluationMask",
    "FEATURES",
    "FP_RATES",
    "SlideEvaluation",
    "cross_validate",
    "detect",
    "evaluate_slides",
    "evaluation_mask",
    "compute_froc",
    "load_cohort",
    "map_features",
    "score_slide",
]
