"""Evaluation metrics: semantic-segmentation scores, ISBI 2012 scores, instance matching.

Semantic segmentation (Long, Shelhamer & Darrell 2015, section 5)
-----------------------------------------------------------------
All four FCN scores come from one (K, K) confusion matrix ``n`` where ``n[i, j]`` counts pixels of
ground-truth class ``i`` predicted as class ``j``. With ``t_i = sum_j n[i, j]`` (pixels of class
``i``) and ``p_i = sum_j n[j, i]`` (pixels predicted as ``i``):

* pixel accuracy   ``sum_i n_ii / sum_i t_i``
* mean accuracy    ``(1 / n_cl) sum_i n_ii / t_i``
* mean IoU         ``(1 / n_cl) sum_i n_ii / (t_i + p_i - n_ii)``
* frequency weighted IoU ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + p_i - n_ii)``

Which classes count in ``n_cl`` (the rule used here, stated once):

* a class absent from BOTH ground truth and prediction (``t_i = p_i = 0``) has an undefined IoU; it
  is reported as NaN in ``per_class_iou`` / ``per_class_dice`` and left out of every mean;
* a class present ONLY in the prediction (``t_i = 0 < p_i``) has IoU 0 and Dice 0 and DOES count
  in mean IoU (a hallucinated class is an error);
* mean accuracy averages over classes with ``t_i > 0`` only (``n_ii / t_i`` is undefined
  otherwise), so a prediction-only class does not lower mean accuracy.

ISBI 2012 EM segmentation challenge
-----------------------------------
Inputs are 2-D (H, W) maps of the CELL INTERIOR (the foreground): either boolean, integers in
{0, 1}, 8-bit integers 0..255 (read as value / 255, so the ISBI label files, where 255 = interior
and 0 = membrane, can be passed as they are) or floats in [0, 1] read as the probability of being
interior. A pixel is interior when its value is ``> threshold``. If you have membrane
probabilities ``m``, pass ``1 - m``.

* :func:`pixel_error`: fraction of pixels whose binarised values disagree; for probability inputs
  the minimum over a sweep of thresholds, as the challenge's Fiji evaluation (``thresholds=(0.5,)``
  gives ``1 - pixel accuracy``).
* :func:`rand_error`: foreground-restricted Rand error, ``1 - V_rand`` (Arganda-Carreras et al.
  2015). Segments are the 4-connected components of the interior. Pixels that are membrane in the
  ground truth are excluded. Predicted membrane pixels that fall inside a ground-truth cell are
  each counted as their own singleton segment (the challenge's Fiji convention; a thick predicted
  membrane therefore costs split errors, never a merge). Pair counts follow
  ``skimage.metrics.adapted_rand_error``: sums of ``n (n - 1)`` (pairs of distinct pixels), so
  singletons contribute nothing. With ``pred_background="segment"`` all predicted membrane pixels
  form one segment instead, which is exactly ``adapted_rand_error(gt_segments, pred_segments)``.
  For probability inputs the error is the minimum over a sweep of thresholds, as in the challenge.
* :func:`warping_error`: Jain et al. 2010. The binary ground truth is warped toward the binarised
  prediction by flipping only simple pixels (foreground 4-connected, background 8-connected; the
  image is padded with background), so the warped ground truth keeps the ground truth's topology;
  the error is the fraction of pixels where the warped ground truth still disagrees with the
  prediction. Those are the topological mistakes (splits, merges, holes, missing or extra cells).

Instances
---------
:func:`match_instances` matches predicted and ground-truth objects of (H, W) integer label maps
(0 = background) one-to-one at several IoU thresholds and reports TP/FP/FN, precision, recall,
F1 and the 2018 Data Science Bowl "AP" ``TP / (TP + FP + FN)``, plus split and merge counts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage, optimize

__all__ = [
    "ConfusionMatrix",
    "confusion_matrix",
    "match_instances",
    "pixel_error",
    "rand_error",
    "rand_scores",
    "segmentation_scores",
    "warping_error",
    "warping_scores",
]

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2).tolist())
"""The ten IoU thresholds 0.50, 0.55, ..., 0.95 of the 2018 Data Science Bowl / COCO."""

DEFAULT_RAND_THRESHOLDS: tuple[float, ...] = tuple(
    np.round(np.linspace(0.0, 1.0, 11)[1:-1], 2).tolist()
)
"""Thresholds 0.1, 0.2, ..., 0.9 swept for probability inputs (the ISBI 2012 evaluation also
reported the best Rand score over a threshold sweep)."""

_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def _to_numpy(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(
        f"{name} must be a numpy array or torch tensor, got {type(x).__name__}; "
        "convert it with np.asarray"
    )


# --------------------------------------------------------------------------------------------
# Confusion matrix and FCN scores
# --------------------------------------------------------------------------------------------


def _check_class_indices(x: np.ndarray, name: str) -> None:
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise TypeError(
            f"{name} must hold integer class indices, got dtype {x.dtype}; "
            "take the argmax over the class axis of scores first"
        )


def _first_bad_value(x: np.ndarray, num_classes: int, allowed: np.ndarray | None) -> int | None:
    """Return one value of ``x`` outside [0, num_classes) where ``allowed`` is True, else None."""
    if x.size == 0:
        return None
    low, high = x.min(), x.max()
    if low >= 0 and high < num_classes:
        return None
    bad = (x < 0) | (x >= num_classes)
    if allowed is not None:
        bad &= allowed
    if not bad.any():
        return None
    return int(x[bad][0])


def confusion_matrix(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Count (ground-truth class, predicted class) pairs over all pixels.

    Args:
        pred: predicted class indices, any shape, e.g. (H, W) or (N, H, W); numpy or torch,
            integer dtype.
        target: ground-truth class indices, same shape as ``pred``.
        num_classes: K, the number of classes; valid indices are 0..K-1.
        ignore_index: target value whose pixels are skipped (e.g. 255 for VOC borders); ``pred``
            may hold any value at those pixels.

    Returns:
        (K, K) int64 matrix ``n`` with ``n[i, j]`` = pixels of target class i predicted as j.
        Matrices of several images add up to the dataset's matrix.

    Raises:
        ValueError: shapes differ, ``num_classes`` < 1, or a value lies outside [0, K) (target
            values equal to ``ignore_index`` excepted).
        TypeError: non-integer inputs.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive integer, got {num_classes!r}; "
            "pass the number of classes K"
        )
    k = int(num_classes)
    pred_np = _to_numpy(pred, "pred")
    target_np = _to_numpy(target, "target")
    if pred_np.shape != target_np.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred_np.shape)} and "
            f"target {tuple(target_np.shape)}; resize the prediction to the label's size"
        )
    _check_class_indices(pred_np, "pred")
    _check_class_indices(target_np, "target")
    p = pred_np.reshape(-1)
    t = target_np.reshape(-1)
    counts = np.zeros(k * k + 1, dtype=np.int64)
    # Chunks of 2**18 pixels keep every temporary in cache: about 2x faster than one pass over
    # 20 x 512 x 512 maps.
    for start in range(0, t.size, _CHUNK):
        counts += _count_pairs(
            p[start : start + _CHUNK], t[start : start + _CHUNK], k, ignore_index
        )
    return counts[: k * k].reshape(k, k)


_CHUNK = 1 << 18


def _count_pairs(p: np.ndarray, t: np.ndarray, k: int, ignore_index: int | None) -> np.ndarray:
    """Histogram of t * K + p over one flat chunk; ignored pixels land in the extra bin K * K."""
    ignored = (t == ignore_index) if ignore_index is not None else None
    valid = None if ignored is None else ~ignored
    bad = _first_bad_value(t, k, valid)
    if bad is not None:
        hint = "" if ignore_index is None else f" other than ignore_index={ignore_index}"
        raise ValueError(
            f"target values must lie in [0, {k}){hint}, found {bad}; "
            "fix num_classes or pass ignore_index for void pixels"
        )
    bad = _first_bad_value(p, k, valid)
    if bad is not None:
        raise ValueError(
            f"pred values must lie in [0, {k}), found {bad}; check num_classes and the model's "
            "number of output channels"
        )
    # Smallest integer type holding K * K + 1 bins (uint16 up to K = 255). Values at ignored
    # pixels may wrap around; they are overwritten with the extra bin.
    index_dtype = np.uint16 if k * k < np.iinfo(np.uint16).max else np.int64
    index = t.astype(index_dtype)
    index *= k
    index += p.astype(index_dtype)
    if ignored is not None:
        index[ignored] = k * k
    return np.bincount(index, minlength=k * k + 1)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _float_list(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _mean_or_nan(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def segmentation_scores(cm: np.ndarray) -> dict[str, Any]:
    """FCN paper scores from a confusion matrix (see the module docstring for absent classes).

    Args:
        cm: (K, K) non-negative counts, ``cm[i, j]`` = pixels of true class i predicted as j.

    Returns:
        Plain-Python dict: ``pixel_accuracy``, ``mean_accuracy``, ``mean_iou``, ``fw_iou``
        (floats, NaN when the matrix is empty), ``per_class_iou``, ``per_class_dice``,
        ``per_class_accuracy`` (K floats each, NaN for undefined classes) and ``num_pixels``.

    Example:
        ``cm = [[3, 1], [0, 0]]``: class 1 occurs only in the prediction, so IoU = [3/4, 0],
        mean IoU = 0.375, while mean accuracy = 3/4 (class 1 has no pixels to recall).
    """
    n = np.asarray(cm)
    if n.ndim != 2 or n.shape[0] != n.shape[1]:
        raise ValueError(
            f"cm must be a square (K, K) matrix, got shape {n.shape}; "
            "build it with confusion_matrix"
        )
    if (n < 0).any():
        raise ValueError("cm must hold non-negative counts, found a negative entry")
    n = n.astype(np.float64)
    diag = np.diag(n)
    t = n.sum(axis=1)  # ground-truth pixels per class
    p = n.sum(axis=0)  # predicted pixels per class
    total = t.sum()
    union = t + p - diag
    iou = _safe_ratio(diag, union)
    dice = _safe_ratio(2.0 * diag, t + p)
    accuracy = _safe_ratio(diag, t)
    if total > 0:
        pixel_accuracy = float(diag.sum() / total)
        fw_iou = float(np.nansum(t * np.nan_to_num(iou)) / total)
    else:
        pixel_accuracy = fw_iou = float("nan")
    return {
        "pixel_accuracy": pixel_accuracy,
        "mean_accuracy": _mean_or_nan(accuracy),
        "mean_iou": _mean_or_nan(iou),
        "fw_iou": fw_iou,
        "per_class_iou": _float_list(iou),
        "per_class_dice": _float_list(dice),
        "per_class_accuracy": _float_list(accuracy),
        "num_pixels": int(total),
    }


class ConfusionMatrix:
    """Running confusion matrix over a dataset.

    Example:
        >>> acc = ConfusionMatrix(3, ignore_index=255)
        >>> for pred, target in pairs:  # doctest: +SKIP
        ...     acc.update(pred, target)
        >>> acc.scores()["mean_iou"]  # doctest: +SKIP
    """

    def __init__(self, num_classes: int, *, ignore_index: int | None = None) -> None:
        """Start from an all-zero (K, K) matrix; arguments as in :func:`confusion_matrix`."""
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(
                f"num_classes must be a positive integer, got {num_classes!r}; "
                "pass the number of classes K"
            )
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(
        self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
    ) -> np.ndarray:
        """Add one batch (any shape); returns that batch's own (K, K) matrix."""
        batch = confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index)
        self._matrix += batch
        return batch

    @property
    def matrix(self) -> np.ndarray:
        """(K, K) int64 copy of the accumulated counts."""
        return self._matrix.copy()

    def scores(self) -> dict[str, Any]:
        """:func:`segmentation_scores` of the accumulated matrix."""
        return segmentation_scores(self._matrix)


# --------------------------------------------------------------------------------------------
# ISBI 2012: input conventions, pixel error
# --------------------------------------------------------------------------------------------


def _interior_values(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """(H, W) map -> float64 interior values in [0, 1] following the module's convention."""
    a = _to_numpy(x, name)
    if a.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (H, W) map, got shape {tuple(a.shape)}; pass one image at a time"
        )
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.integer):
        low, high = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(
                f"integer {name} must hold 0/1 or 8-bit values 0..255, found range "
                f"[{low}, {high}]; pass a boolean interior mask or probabilities in [0, 1]"
            )
        return a.astype(np.float64) / (255.0 if high > 1 else 1.0)
    if np.issubdtype(a.dtype, np.floating):
        values = a.astype(np.float64)
        if not np.isfinite(values).all() or (
            values.size and (values.min() < 0 or values.max() > 1)
        ):
            raise ValueError(
                f"float {name} must be probabilities in [0, 1] without NaN, found range "
                f"[{np.nanmin(values)}, {np.nanmax(values)}]; apply a sigmoid/softmax first"
            )
        return values
    raise TypeError(f"{name} has unsupported dtype {a.dtype}; pass bool, integer or float")


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred {a.shape} and gt {b.shape}; "
            "crop or resize the prediction to the label's size"
        )


def _check_threshold(threshold: float) -> float:
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(
            f"threshold must be in [0, 1), got {threshold}; a pixel is interior when its "
            "value is > threshold"
        )
    return float(threshold)


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def pixel_error(
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
            inputs, 0.1, 0.2, ..., 0.9 for probability maps (as :func:`rand_error`). Pass
            ``(0.5,)`` for ``1 - pixel accuracy`` of the 0.5 decision.

    Returns:
        ``min_t (disagreeing pixels at t) / (all pixels)``.
    """
    p = _interior_values(pred, "pred")
    g = _interior_values(gt, "gt") > 0.5
    _check_same_shape(p, g)
    if thresholds is None:
        thresholds = (0.5,) if _is_binary(p) else DEFAULT_RAND_THRESHOLDS
    sweep = [_check_threshold(t) for t in thresholds]
    if not sweep:
        raise ValueError("thresholds must not be empty; pass e.g. (0.5,)")
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
    pred_segments, n_pred = ndimage.label(pred_interior, structure=_FOUR)
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


def rand_scores(
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
    p = _interior_values(pred, "pred")
    g = _interior_values(gt, "gt") > 0.5
    _check_same_shape(p, g)
    if thresholds is None:
        thresholds = (0.5,) if _is_binary(p) else DEFAULT_RAND_THRESHOLDS
    sweep = [_check_threshold(t) for t in thresholds]
    if not sweep:
        raise ValueError("thresholds must not be empty; pass e.g. (0.5,)")
    gt_segments, _ = ndimage.label(g, structure=_FOUR)
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


def rand_error(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    *,
    thresholds: Sequence[float] | None = None,
    pred_background: Literal["singletons", "segment"] = "singletons",
) -> float:
    """Foreground-restricted Rand error ``1 - max_t V_rand`` (ISBI 2012); see :func:`rand_scores`.

    Worked example: gt = one 1x5 cell; the prediction marks its middle pixel as membrane, giving
    segments of 2 and 2 pixels plus a singleton. Ordered pairs of distinct pixels: gt 5*4 = 20,
    prediction 2*1 + 2*1 = 4, in both 4, so V_rand = 2*4 / (20 + 4) = 1/3; the error is 2/3.
    """
    scores = rand_scores(pred, gt, thresholds=thresholds, pred_background=pred_background)
    return scores["rand_error"]


# --------------------------------------------------------------------------------------------
# ISBI 2012: warping error
# --------------------------------------------------------------------------------------------

# 8-neighbourhood of a pixel in clockwise order; bit k of a neighbour code is offset k.
_RING: tuple[tuple[int, int], ...] = (
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
    (1, 0),
    (1, -1),
    (0, -1),
)


def _count_components(cells: list[tuple[int, int]], diagonal: bool) -> list[set]:
    """Connected components of a set of neighbourhood cells (4- or 8-adjacency)."""
    remaining = set(cells)
    components = []
    while remaining:
        stack = [remaining.pop()]
        component = set(stack)
        while stack:
            y, x = stack.pop()
            for other in list(remaining):
                dy, dx = abs(other[0] - y), abs(other[1] - x)
                if dy + dx == 1 or (diagonal and dy == 1 and dx == 1):
                    remaining.remove(other)
                    component.add(other)
                    stack.append(other)
        components.append(component)
    return components


@functools.cache
def _simple_lut() -> np.ndarray:
    """256-entry table: is the centre pixel simple for (4, 8) topology given its 8 neighbours?

    The centre is simple iff T4(p, X) = 1 and T8(p, X') = 1 (Bertrand 1994): exactly one
    4-component of foreground neighbours is 4-adjacent to p, and the background neighbours form
    exactly one 8-component. The answer does not depend on the centre's own value, so one table
    serves both deletions and additions.
    """
    lut = np.zeros(256, dtype=bool)
    for code in range(256):
        fg = [off for bit, off in enumerate(_RING) if code >> bit & 1]
        bg = [off for bit, off in enumerate(_RING) if not code >> bit & 1]
        t4 = sum(
            1
            for comp in _count_components(fg, diagonal=False)
            if any(abs(y) + abs(x) == 1 for y, x in comp)
        )
        t8 = len(_count_components(bg, diagonal=True))
        lut[code] = t4 == 1 and t8 == 1
    return lut


def _warp(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Warp boolean ``gt`` toward boolean ``pred`` by flipping simple disagreeing pixels.

    Pixels are visited in four interleaved sub-lattices (y % 2, x % 2). Two pixels of one
    sub-lattice are never 8-neighbours, so each one's 3x3 neighbourhood is untouched by the
    others' flips and all simple pixels of a sub-lattice can be flipped at once, exactly as a
    sequential scan would. Sweeps repeat until none of the four sub-lattices flips a pixel.
    The warp is not unique; this order makes it deterministic.
    """
    h, w = gt.shape
    lut = _simple_lut()
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
            code = np.zeros(ys.size, dtype=np.uint8)
            for bit, (dy, dx) in enumerate(_RING):
                code |= padded[ys + dy, xs + dx].astype(np.uint8) << bit
            simple = lut[code]
            if simple.any():
                padded[ys[simple], xs[simple]] ^= True
                changed = True
    return warped.copy()


def warping_scores(
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


def warping_error(
    pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, *, threshold: float = 0.5
) -> float:
    """Topology-aware warping error (Jain et al. 2010); see :func:`warping_scores`.

    A boundary moved by a pixel costs nothing (those pixels are simple and get warped away),
    whereas a cell cut in two leaves at least one pixel of the cut that cannot be flipped
    without merging the two halves again.
    """
    return warping_scores(pred, gt, threshold=threshold)["warping_error"]


# --------------------------------------------------------------------------------------------
# Instance matching
# --------------------------------------------------------------------------------------------


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map object ids to 1..N (background 0 stays 0); returns (dense labels, N)."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lookup = np.concatenate([[0], ids])
    return np.searchsorted(lookup, labels), int(ids.size)


def _check_label_map(x: np.ndarray, name: str) -> None:
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(
            f"{name} must be an integer label map (0 = background), got dtype {x.dtype}; "
            "label the mask first, e.g. pixelwise.instances.label"
        )
    if x.size and x.min() < 0:
        raise ValueError(f"{name} must hold non-negative object ids, found {int(x.min())}")


def _match_count(iou: np.ndarray, threshold: float) -> tuple[int, list[float]]:
    """Largest one-to-one matching among pairs with IoU >= threshold (ties: highest IoU sum).

    Each eligible pair is worth 1 + IoU / (m + 1) with m = min(#pred, #gt): the IoU bonus of a
    whole matching is < 1, so more matches always win and IoU only breaks ties.
    """
    eligible = iou >= threshold
    rows = np.nonzero(eligible.any(axis=1))[0]
    cols = np.nonzero(eligible.any(axis=0))[0]
    if rows.size == 0:
        return 0, []
    sub_iou = iou[np.ix_(rows, cols)]
    sub_ok = eligible[np.ix_(rows, cols)]
    weight = np.where(sub_ok, 1.0 + sub_iou / (min(sub_iou.shape) + 1), 0.0)
    r, c = optimize.linear_sum_assignment(weight, maximize=True)
    keep = sub_ok[r, c]
    return int(keep.sum()), [float(v) for v in sub_iou[r[keep], c[keep]]]


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def match_instances(
    pred_labels: np.ndarray | torch.Tensor,
    gt_labels: np.ndarray | torch.Tensor,
    *,
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, Any]:
    """Match predicted to ground-truth objects and score detection quality.

    Args:
        pred_labels: (H, W) (or any shape) integer label map, 0 = background, other values are
            object ids (need not be consecutive).
        gt_labels: ground-truth label map of the same shape.
        thresholds: IoU thresholds; a pair may match when IoU >= threshold. Default 0.50, 0.55,
            ..., 0.95.

    Returns:
        JSON-serialisable dict:

        * ``n_pred``, ``n_gt``: object counts;
        * ``per_threshold``: one dict per threshold with ``threshold``, ``tp``, ``fp``, ``fn``,
          ``precision`` = TP/(TP+FP), ``recall`` = TP/(TP+FN), ``f1`` = 2TP/(2TP+FP+FN),
          ``ap`` = TP/(TP+FP+FN) (2018 Data Science Bowl) and ``mean_matched_iou``; a ratio with a
          zero denominator is NaN;
        * ``ap_50_95``: mean ``ap`` over ``thresholds``; ``f1_50``: F1 at IoU 0.5;
        * merges and splits, defined by majority overlap: a ground-truth object is *covered* by a
          predicted object holding more than half of its pixels (at most one can). A predicted
          object that covers >= 2 ground-truth objects is a merge: ``merges`` counts such
          predicted objects and ``merged_gt`` the ground-truth objects they cover. Symmetrically,
          a ground-truth object that covers >= 2 predicted objects (each has more than half of
          its own pixels inside it) is split: ``splits`` counts such ground-truth objects and
          ``split_pred`` the predicted pieces.

    Matching is one-to-one with the most matches (scipy's ``linear_sum_assignment``); above
    IoU 0.5 the matching is unique anyway, since an object can have IoU > 0.5 with one other at
    most.
    """
    pred_np = _to_numpy(pred_labels, "pred_labels")
    gt_np = _to_numpy(gt_labels, "gt_labels")
    if pred_np.shape != gt_np.shape:
        raise ValueError(
            f"pred_labels and gt_labels must have the same shape, got {pred_np.shape} and "
            f"{gt_np.shape}; label the prediction at the ground truth's resolution"
        )
    _check_label_map(pred_np, "pred_labels")
    _check_label_map(gt_np, "gt_labels")
    levels = [float(t) for t in thresholds]
    if not levels or any(not 0.0 < t <= 1.0 for t in levels):
        raise ValueError(
            f"thresholds must be a non-empty list of IoU values in (0, 1], got {levels}"
        )
    pred_dense, n_pred = _dense_ids(pred_np)
    gt_dense, n_gt = _dense_ids(gt_np)
    # Contingency table: overlap[i, j] = pixels of gt object i in predicted object j (0 = bg).
    flat = gt_dense.reshape(-1).astype(np.int64) * (n_pred + 1) + pred_dense.reshape(-1)
    overlap = np.bincount(flat, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)
    gt_area = overlap.sum(axis=1)[1:]
    pred_area = overlap.sum(axis=0)[1:]
    inter = overlap[1:, 1:].astype(np.float64)
    union = gt_area[:, None] + pred_area[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

    def scores_at(t: float) -> dict[str, Any]:
        tp, matched_iou = _match_count(iou, t)
        fp, fn = n_pred - tp, n_gt - tp
        return {
            "threshold": t,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "ap": _ratio(tp, tp + fp + fn),
            "mean_matched_iou": float(np.mean(matched_iou)) if matched_iou else float("nan"),
        }

    per_threshold = [scores_at(t) for t in levels]
    at_50 = next((row for row in per_threshold if row["threshold"] == 0.5), None) or scores_at(0.5)
    # covers_gt[i, j]: predicted j holds > half of gt i; covers_pred[i, j]: gt i holds > half of j.
    covers_gt = 2 * inter > gt_area[:, None]
    covers_pred = 2 * inter > pred_area[None, :]
    gt_per_pred = covers_gt.sum(axis=0)
    pred_per_gt = covers_pred.sum(axis=1)
    return {
        "n_pred": n_pred,
        "n_gt": n_gt,
        "per_threshold": per_threshold,
        "ap_50_95": _mean_or_nan(np.array([row["ap"] for row in per_threshold])),
        "f1_50": at_50["f1"],
        "merges": int(np.count_nonzero(gt_per_pred >= 2)),
        "merged_gt": int(gt_per_pred[gt_per_pred >= 2].sum()),
        "splits": int(np.count_nonzero(pred_per_gt >= 2)),
        "split_pred": int(pred_per_gt[pred_per_gt >= 2].sum()),
    }
