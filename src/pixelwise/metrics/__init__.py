"""Evaluation metrics, one module per family; every name is importable from here.

* :mod:`~pixelwise.metrics.semantic`: the (K, K) confusion matrix and the FCN paper's scores
  (pixel accuracy, mean accuracy, mean IoU, frequency-weighted IoU, per-class IoU and Dice);
* :mod:`~pixelwise.metrics.isbi`: the ISBI 2012 EM challenge's scores exactly as its Fiji
  evaluation computes them (:func:`isbi2012`: pixel, Rand and warping errors, V_rand and
  V_info after thinning, for a slice or a stack); :mod:`~pixelwise.metrics.isbi_topology` its
  order-dependent warping and thinning; :mod:`~pixelwise.metrics.isbi_legacy` pixelwise's own
  per-image variants (pixel disagreement, adapted Rand error, classic warping error);
* :mod:`~pixelwise.metrics.objects`: one-to-one matching of predicted and ground-truth
  instances (TP/FP/FN, F1, AP, merges and splits).

Metrics come after :mod:`pixelwise.instances` in the prediction flow and before
:mod:`pixelwise.report`, which only shows what they compute.
"""

from pixelwise.metrics.isbi import (
    ISBI2012_SCORES,
    ISBI2012_THRESHOLDS,
    ISBI2012_WARPING_THRESHOLDS,
    isbi2012,
)
from pixelwise.metrics.isbi_legacy import (
    DEFAULT_RAND_THRESHOLDS,
    adapted_rand_error,
    adapted_rand_scores,
    classic_warping_error,
    classic_warping_scores,
    pixel_disagreement,
)
from pixelwise.metrics.objects import (
    DEFAULT_IOU_THRESHOLDS,
    match_instances,
    matched_pairs,
    panoptic_quality,
    pool_matches,
)
from pixelwise.metrics.semantic import ConfusionMatrix, confusion_matrix, segmentation_scores

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "DEFAULT_RAND_THRESHOLDS",
    "ISBI2012_SCORES",
    "ISBI2012_THRESHOLDS",
    "ISBI2012_WARPING_THRESHOLDS",
    "ConfusionMatrix",
    "adapted_rand_error",
    "adapted_rand_scores",
    "classic_warping_error",
    "classic_warping_scores",
    "confusion_matrix",
    "isbi2012",
    "match_instances",
    "matched_pairs",
    "panoptic_quality",
    "pixel_disagreement",
    "pool_matches",
    "segmentation_scores",
]
