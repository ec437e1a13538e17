"""pixelwise's own per-image ISBI-style scores, kept beside the challenge's (:mod:`.isbi`).

These are correct for their own definitions (they agree exactly with scikit-image's adapted
Rand error) but they are not what the ISBI 2012 challenge computed; :func:`pixelwise.metrics.
isbi2012` is. Each works on one (H, W) map of the CELL INTERIOR: boolean, integers in {0, 1},
8-bit integers 0..255 (read as value / 255, so the ISBI label files, 255 = interior, 0 =
membrane, can be passed as they are) or floats in [0, 1], the probability of being interior.
A pixel is interior when its value is ``> threshold``. With membrane probabilities ``m`` pass
``1 - m``.

* :func:`pixel_disagreement`: the fraction of pixels whose binarised values disagree; for
  probability inputs the minimum over thresholds 0.1-0.9 (``thresholds=(0.5,)`` gives ``1 -
  pixel accuracy``). The challenge's pixel error is 1 - the best F-score of interior pixels.
* :func:`adapted_rand_error` / :func:`adapted_rand_scores`: foreground-restricted Rand error
  ``1 - V_rand``. Segments are the 4-connected components of the interior; ground-truth
  membrane pixels are left out; predicted membrane pixels inside a cell are singletons. Pair
  counts are sums of ``n (n - 1)`` (pairs of distinct pixels) as in
  ``skimage.metrics.adapted_rand_error``, so singletons add nothing (the challenge counts
  ``n^2``, self-pairs included: on a 1x5 cell cut in its middle 2/3 here, 8/17 there). With
  ``pred_background="segment"`` all predicted membrane pixels form one segment, exactly
  ``adapted_rand_error(gt_segments, pred_segments)``. Minimum over thresholds 0.1-0.9.
* :func:`classic_warping_error` / :func:`classic_warping_scores`: Jain et al. 2010's classic
  warping error: the ground truth is warped toward the prediction at one threshold (0.5) by
  flipping simple pixels (foreground 4-, background 8-connected, outside = background) in four
  interleaved sub-lattices, and every remaining mismatch counts (splits, mergers, holes, added
  and deleted objects). The challenge flips sequentially, most confident pixel first, counts
  only splits and mergers and takes the minimum over ten thresholds.

The old names ``pixel_error``, ``rand_error``, ``rand_scores``, ``warping_error`` and
``warping_scores`` still point here, with unchanged behaviour, for the callers that have not
moved to :func:`~pixelwise.metrics.isbi2012` yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage

from pixelwise.arrays import as_numpy, check_same_shape
from pixelwise.metrics.isbi import interior_values
from pixelwise.metrics.isbi_topology import FOUR, neighbour_codes, simple_point_table

__all__ = [
    "DEFAULT_RAND_THRESHOLDS",
    "adapted_rand_error",
    "adapted_rand_scores",
    "classic_warping_error",
    "classic_warping_scores",
    "pixel_disagreement",
]

DEFAULT_RAND_THRESHOLDS: tuple[float, ...] = tuple(
    np.round(np.linspace(0.0, 1.0, 11)[1:-1], 2).tolist()
)
"""Thresholds 0.1, 0.2, ..., 0.9 swept for probability inputs by the legacy scores (the
challenge sweeps 0.0, 0.1, ..., 1.0: :data:`pixelwise.metrics.ISBI2012_THRESHOLDS`)."""


def _interior_values(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """(H, W) map -> float64 interior values in [0, 1] following the module's convention."""
    a = as_numpy(x, name)
    if a.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (H, W) map, got shape {tuple(a.shape)}; pass one image at a time"
        )
    return interior_values(a, name)


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    check_same_shape(a, b, ("pred", "gt"), "crop or resize the prediction to the label's size")


def _check_threshold(threshold: float) -> float:
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(
            f"threshold must be in [0, 1), got {threshold}; a pixel is interior when its "
            "value is > threshold"
        )
    return float(threshold)


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def _swept_inputs(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    thresholds: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(pred values (H, W) float64, gt interior (H, W) bool, thresholds to sweep), checked.

    Default sweep: 0.5 for a binary ``pred``, :data:`DEFAULT_RAND_THRESHOLDS` for probabilities.
    """
    p = _interior_values(pred, "pred")
    g = _interior_values(gt, "gt") > 0.5
    _check_same_shape(p, g)
    if thresholds is None:
        thresholds = (0.5,) if _is_binary(p) else DEFAULT_RAND_THRESHOLDS
    sweep = [_check_threshold(t) for t in thresholds]
    if not sweep:
        raise ValueError("thresholds must not be empty; pass e.g. (0.5,)")
    return p, g, sweep


def pixel_disagreement(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    *,
    thresholds: Sequence[float] | None = None,
) -> float:
    """ISBI 2012 pixel error: the fraction of pixels whose binarised values disagree, minimised
    over a sweep of thresholds as the challenge's Fiji evaluation does.

    Worked example: gt a 10x10 frame of membrane around 64 interior pixels; a probability map
    0.9 on 60 of them and 0.2 elsewhere. At t = 0.5 four interior pixels are called membrane
    (error 4/100); at t = 0.1 every membrane pixel is called interior (36/100): the error is 0.04.

    Args:
        pred: (H, W) interior map (bool, 0/1, 0..255 or probabilities; module docstring).
        gt: (H, W) ground truth in the same convention (ISBI labels: 255 interior, 0 membrane),
            binarised at 0.5.
        thresholds: values at which ``pred`` is binarised (``> t``). Default: 0.5 for binary
            inputs, 0.1, 0.2, ..., 0.9 for probability maps (as :func:`adapted_rand_error`). Pass
            ``(0.5,)`` for ``1 - pixel accuracy`` of the 0.5 decision.

    Returns:
        ``min_t (disagreeing pixels at t) / (all pixels)``.
    """
    p, g, sweep = _swept_inputs(pred, gt, thresholds)
    return min(float(np.count_nonzero((p > t) != g) / p.size) for t in sweep)


# --------------------------------------------------------------------------------------------
# ISBI 2012: foreground-restricted Rand error
# --------------------------------------------------------------------------------------------


def _pair_count(sizes: np.ndarray) -> int:
    """Ordered pairs of distinct pixels inside groups of the given sizes: sum n (n - 1)."""
    s = sizes.astype(np.int64)
    return int(np.dot(s, s - 1))


def _rand_fscore(
    gt_segments: np.ndarray,
    pred_interior: np.ndarray,
    pred_background: Literal["singletons", "segment"],
) -> tuple[float, float, float]:
    """(V_rand, V_split, V_merge) of one binarised prediction against labelled gt segments."""
    pred_segments, n_pred = ndimage.label(pred_interior, structure=FOUR)
    inside = gt_segments > 0
    g = gt_segments[inside].astype(np.int64)
    s = pred_segments[inside].astype(np.int64)
    # Contingency table n_ij (gt segment i, predicted segment j) restricted to gt interior.
    joint = np.unique(g * (n_pred + 1) + s, return_counts=True)
    joint_j = joint[0] % (n_pred + 1)
    joint_counts = joint[1]
    gt_sizes = np.bincount(g)
    pred_sizes = np.bincount(s, minlength=n_pred + 1)
    if pred_background == "singletons":
        # Predicted membrane pixels: each its own segment, n (n - 1) = 0 for a singleton.
        joint_counts = joint_counts[joint_j > 0]
        pred_sizes = pred_sizes[1:]
    sum_joint = _pair_count(joint_counts)
    sum_gt = _pair_count(gt_sizes)
    sum_pred = _pair_count(pred_sizes)
    if sum_gt + sum_pred == 0:
        return float("nan"), float("nan"), float("nan")
    v_rand = 2.0 * sum_joint / (sum_gt + sum_pred)
    v_split = sum_joint / sum_gt if sum_gt else float("nan")
    v_merge = sum_joint / sum_pred if sum_pred else float("nan")
    return v_rand, v_split, v_merge


def adapted_rand_scores(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    *,
    thresholds: Sequence[float] | None = None,
    pred_background: Literal["singletons", "segment"] = "singletons",
) -> dict[str, float]:
    """Foreground-restricted Rand scores at the best threshold of a sweep.

    Args:
        pred: (H, W) interior map (bool, 0/1, 0..255 or probabilities of cell interior).
        gt: (H, W) ground truth, same convention; binarised at 0.5. Its segments are the
            4-connected components of the interior; membrane pixels are left out.
        thresholds: values at which ``pred`` is binarised (``> t``). Default: 0.5 for binary
            inputs, 0.1, 0.2, ..., 0.9 for probability maps.
        pred_background: ``"singletons"`` (default, challenge convention): each predicted
            membrane pixel inside a gt cell is its own segment; ``"segment"``: they form one
            segment (plain ``skimage.metrics.adapted_rand_error`` on the two label maps).

    Returns:
        ``rand_error`` = 1 - max V_rand, ``v_rand`` (Rand F-score), ``v_rand_split`` (recall of
        same-segment pairs, lowered by splits), ``v_rand_merge`` (precision, lowered by merges) and
        ``threshold`` at the best V_rand. NaN when the ground truth has no pair of interior
        pixels in one segment and the prediction has none either.
    """
    if pred_background not in ("singletons", "segment"):
        raise ValueError(
            f"pred_background must be 'singletons' or 'segment', got {pred_background!r}"
        )
    p, g, sweep = _swept_inputs(pred, gt, thresholds)
    gt_segments, _ = ndimage.label(g, structure=FOUR)
    best: dict[str, float] = {}
    for t in sweep:
        v_rand, v_split, v_merge = _rand_fscore(gt_segments, p > t, pred_background)
        if not best or np.isnan(best["v_rand"]) or v_rand > best["v_rand"]:
            best = {
                "rand_error": 1.0 - v_rand,
                "v_rand": v_rand,
                "v_rand_split": v_split,
                "v_rand_merge": v_merge,
                "threshold": t,
            }
    return best


def adapted_rand_error(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    *,
    thresholds: Sequence[float] | None = None,
    pred_background: Literal["singletons", "segment"] = "singletons",
) -> float:
    """Adapted Rand error ``1 - max_t V_rand`` (foreground-restricted); see adapted_rand_scores.

    Worked example: gt = one 1x5 cell; the prediction marks its middle pixel as membrane, giving
    segments of 2 and 2 pixels plus a singleton. Ordered pairs of distinct pixels: gt 5*4 = 20,
    prediction 2*1 + 2*1 = 4, in both 4, so V_rand = 2*4 / (20 + 4) = 1/3; the error is 2/3.
    """
    scores = adapted_rand_scores(pred, gt, thresholds=thresholds, pred_background=pred_background)
    return scores["rand_error"]


# --------------------------------------------------------------------------------------------
# ISBI 2012: warping error
# --------------------------------------------------------------------------------------------


def _warp(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Warp boolean ``gt`` toward boolean ``pred`` by flipping simple disagreeing pixels.

    Pixels are visited in four interleaved sub-lattices (y % 2, x % 2). Two pixels of one
    sub-lattice are never 8-neighbours, so each one's 3x3 neighbourhood is untouched by the
    others' flips and all simple pixels of a sub-lattice can be flipped at once, exactly as a
    sequential scan would. Sweeps repeat until none of the four sub-lattices flips a pixel.
    The warp is not unique; this order makes it deterministic.
    """
    h, w = gt.shape
    lut = simple_point_table()
    padded = np.zeros((h + 2, w + 2), dtype=bool)  # outside the image counts as background
    padded[1:-1, 1:-1] = gt
    warped = padded[1:-1, 1:-1]  # view
    lattices = [(oy, ox) for oy in (0, 1) for ox in (0, 1)]
    changed = True
    while changed:
        changed = False
        for oy, ox in lattices:
            disagree = warped[oy::2, ox::2] != pred[oy::2, ox::2]
            ys, xs = np.nonzero(disagree)
            if ys.size == 0:
                continue
            ys = ys * 2 + oy + 1  # coordinates in the padded array
            xs = xs * 2 + ox + 1
            simple = lut[neighbour_codes(padded, ys, xs)]
            if simple.any():
                padded[ys[simple], xs[simple]] ^= True
                changed = True
    return warped.copy()


def classic_warping_scores(
    pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, *, threshold: float = 0.5
) -> dict[str, Any]:
    """Warping error with the warped ground truth (Jain et al. 2010).

    Args:
        pred: (H, W) interior map (module docstring), binarised as ``> threshold``.
        gt: (H, W) ground truth, same convention and threshold.
        threshold: binarisation threshold for both maps.

    Returns:
        ``warping_error`` (fraction of pixels where the warped gt differs from the prediction),
        ``warped_gt`` ((H, W) bool numpy array, same topology as gt) and ``error_mask`` ((H, W)
        bool, the disagreeing pixels).
    """
    t = _check_threshold(threshold)
    p = _interior_values(pred, "pred") > t
    g = _interior_values(gt, "gt") > t
    _check_same_shape(p, g)
    warped = _warp(g, p)
    error_mask = warped != p
    return {
        "warping_error": float(np.count_nonzero(error_mask) / p.size),
        "warped_gt": warped,
        "error_mask": error_mask,
    }


def classic_warping_error(
    pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, *, threshold: float = 0.5
) -> float:
    """Topology-aware warping error (Jain et al. 2010); see :func:`classic_warping_scores`.

    A boundary moved by a pixel costs nothing (those pixels are simple and get warped away),
    whereas a cell cut in two leaves at least one pixel of the cut that cannot be flipped
    without merging the two halves again.
    """
    return classic_warping_scores(pred, gt, threshold=threshold)["warping_error"]
