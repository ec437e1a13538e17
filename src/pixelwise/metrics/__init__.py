"""Evaluation metrics, one module per family; every name is importable from here.

* :mod:`~pixelwise.metrics.semantic`: the (K, K) confusion matrix and the FCN paper's scores
  (pixel accuracy, mean accuracy, mean IoU, frequency-weighted IoU, per-class IoU and Dice);
* :mod:`~pixelwise.metrics.isbi`: the ISBI 2012 EM challenge's pixel, Rand and warping errors
  on (H, W) maps of cell interior;
* :mod:`~pixelwise.metrics.objects`: one-to-one matching of predicted and ground-truth
  instances (TP/FP/FN, F1, AP, merges and splits).

Metrics come after :mod:`pixelwise.instances` in the prediction flow and before
:mod:`pixelwise.report`, which only shows what they compute.
"""

from pixelwise.metrics.isbi import (
    DEFAULT_RAND_THRESHOLDS,
    pixel_error,
    rand_error,
    rand_scores,
    warping_error,
    warping_scores,
)
from pixelwise.metrics.objects import DEFAULT_IOU_THRESHOLDS, match_instances, pool_matches
from pixelwise.metrics.semantic import ConfusionMatrix, confusion_matrix, segmentation_scores

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "DEFAULT_RAND_THRESHOLDS",
    "ConfusionMatrix",
    "confusion_matrix",
    "match_instances",
    "pixel_error",
    "pool_matches",
    "rand_error",
    "rand_scores",
    "segmentation_scores",
    "warping_error",
    "warping_scores",
]
