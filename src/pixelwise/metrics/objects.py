"""Instance matching: predicted objects against ground-truth objects.

:func:`match_instances` matches predicted and ground-truth objects of (H, W) integer label maps
(0 = background) one-to-one at several IoU thresholds and reports TP/FP/FN, precision, recall,
F1 and the 2018 Data Science Bowl "AP" ``TP / (TP + FP + FN)``, plus split and merge counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import optimize

from pixelwise.arrays import as_numpy, check_same_shape

__all__ = ["DEFAULT_IOU_THRESHOLDS", "match_instances", "pool_matches"]

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2).tolist())
"""The ten IoU thresholds 0.50, 0.55, ..., 0.95 of the 2018 Data Science Bowl / COCO."""


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


def _overlaps(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inter, gt_area, pred_area): pixels shared by each (gt, predicted) pair of objects.

    Returns:
        inter: (N_gt, N_pred) float64 overlaps, objects in increasing id order;
        gt_area: (N_gt,) and pred_area: (N_pred,) object sizes in pixels.
    """
    pred_dense, n_pred = _dense_ids(pred)
    gt_dense, n_gt = _dense_ids(gt)
    # Contingency table: overlap[i, j] = pixels of gt object i in predicted object j (0 = bg).
    flat = gt_dense.reshape(-1).astype(np.int64) * (n_pred + 1) + pred_dense.reshape(-1)
    overlap = np.bincount(flat, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)
    return overlap[1:, 1:].astype(np.float64), overlap.sum(axis=1)[1:], overlap.sum(axis=0)[1:]


def _scores_at(iou: np.ndarray, threshold: float) -> dict[str, Any]:
    """Detection counts and ratios at one IoU threshold; iou: (N_gt, N_pred)."""
    n_gt, n_pred = iou.shape
    tp, matched_iou = _match_count(iou, threshold)
    fp, fn = n_pred - tp, n_gt - tp
    return {
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "ap": _ratio(tp, tp + fp + fn),
        "mean_matched_iou": float(np.mean(matched_iou)) if matched_iou else float("nan"),
    }


def _merges_and_splits(
    inter: np.ndarray, gt_area: np.ndarray, pred_area: np.ndarray
) -> dict[str, int]:
    """Majority-overlap merge and split counts (see :func:`match_instances`)."""
    # covers_gt[i, j]: predicted j holds > half of gt i; covers_pred[i, j]: gt i holds > half of j.
    gt_per_pred = (2 * inter > gt_area[:, None]).sum(axis=0)  # (N_pred,)
    pred_per_gt = (2 * inter > pred_area[None, :]).sum(axis=1)  # (N_gt,)
    return {
        "merges": int(np.count_nonzero(gt_per_pred >= 2)),
        "merged_gt": int(gt_per_pred[gt_per_pred >= 2].sum()),
        "splits": int(np.count_nonzero(pred_per_gt >= 2)),
        "split_pred": int(pred_per_gt[pred_per_gt >= 2].sum()),
    }


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
    pred_np = as_numpy(pred_labels, "pred_labels")
    gt_np = as_numpy(gt_labels, "gt_labels")
    check_same_shape(
        pred_np,
        gt_np,
        ("pred_labels", "gt_labels"),
        "label the prediction at the ground truth's resolution",
    )
    _check_label_map(pred_np, "pred_labels")
    _check_label_map(gt_np, "gt_labels")
    levels = [float(t) for t in thresholds]
    if not levels or any(not 0.0 < t <= 1.0 for t in levels):
        raise ValueError(
            f"thresholds must be a non-empty list of IoU values in (0, 1], got {levels}"
        )
    inter, gt_area, pred_area = _overlaps(pred_np, gt_np)
    union = gt_area[:, None] + pred_area[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)  # (N_gt, N_pred)
    per_threshold = [_scores_at(iou, t) for t in levels]
    at_50 = next((r for r in per_threshold if r["threshold"] == 0.5), None) or _scores_at(iou, 0.5)
    return {
        "n_pred": int(pred_area.size),
        "n_gt": int(gt_area.size),
        "per_threshold": per_threshold,
        # every ap is NaN (no objects at all) or none is: the plain mean is the mean of the defined
        "ap_50_95": float(np.mean([r["ap"] for r in per_threshold])),
        "f1_50": at_50["f1"],
        **_merges_and_splits(inter, gt_area, pred_area),
    }


def pool_matches(matches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Scores of a dataset: TP, FP and FN summed over images, then the ratios (pooled).

    The StarDist paper's and the 2018 Data Science Bowl's convention: one-to-one matching per
    image (:func:`match_instances`), counts added over the images, ratios of the sums.

    Args:
        matches: `match_instances` results of the images, all with the same thresholds.

    Returns:
        For each threshold t (formatted ``0.5``, ``0.55``, ...): ``tp@t``, ``fp@t``, ``fn@t``,
        ``precision@t`` = TP/(TP+FP), ``recall@t`` = TP/(TP+FN), ``f1@t`` = 2TP/(2TP+FP+FN) and
        ``accuracy@t`` = TP/(TP+FP+FN) (what the DSB and StarDist call AP); ``dsb_score``: the
        mean accuracy over the thresholds; ``n_pred``, ``n_gt``, ``merges``, ``splits``: sums.
        Ratios with a zero denominator are NaN.
    """
    if not matches:
        raise ValueError("pool_matches needs at least one match_instances result")
    out: dict[str, Any] = {
        key: int(sum(m[key] for m in matches)) for key in ("n_pred", "n_gt", "merges", "splits")
    }
    accuracies = []
    for i, first in enumerate(matches[0]["per_threshold"]):
        t = f"{first['threshold']:g}"
        tp, fp, fn = (
            int(sum(m["per_threshold"][i][k] for m in matches)) for k in ("tp", "fp", "fn")
        )
        out |= {f"tp@{t}": tp, f"fp@{t}": fp, f"fn@{t}": fn}
        out[f"precision@{t}"] = _ratio(tp, tp + fp)
        out[f"recall@{t}"] = _ratio(tp, tp + fn)
        out[f"f1@{t}"] = _ratio(2 * tp, 2 * tp + fp + fn)
        out[f"accuracy@{t}"] = _ratio(tp, tp + fp + fn)
        accuracies.append(out[f"accuracy@{t}"])
    out["dsb_score"] = float(np.mean(accuracies))
    return out
