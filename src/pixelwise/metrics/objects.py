"""Instance matching: predicted objects against ground-truth objects.

:func:`match_instances` matches predicted and ground-truth objects of (H, W) integer label maps
(0 = background) one-to-one at several IoU thresholds and reports TP/FP/FN, precision, recall,
F1 and the 2018 Data Science Bowl "AP" ``TP / (TP + FP + FN)``, plus split and merge counts; it
agrees with StarDist's ``stardist/matching.py``. :func:`pool_matches` pools the images of a
dataset (counts summed, then the ratios: the StarDist paper's and the DSB's convention);
:func:`panoptic_quality` adds PQ = SQ × RQ (Kirillov et al. 2019) of the same matching, and
:func:`matched_pairs` names the matched objects (for pictures of hits and misses).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import optimize

from pixelwise.arrays import as_numpy, check_same_shape

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "match_instances",
    "matched_pairs",
    "panoptic_quality",
    "pool_matches",
]

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


def _assign(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Matched pairs (gt rows, predicted columns) of the largest one-to-one matching among pairs
    with IoU >= threshold, ties broken as StarDist's ``matching`` (stardist/matching.py).

    At IoU >= 0.5 an object has at most one partner above the threshold (or only partners at
    exactly 0.5), so the matching is unique up to equal IoUs: the eligible pairs are solved on
    their own rows and columns, each worth 1 + IoU / (m + 1) (m = min of that block's sides; the
    bonus of a whole matching is < 1, so more matches always win). Below 0.5 several largest
    matchings may exist; StarDist's rule then decides: the assignment of the whole (N_gt,
    N_pred) matrix minimising −[IoU >= t] − IoU / (2 min(N_gt, N_pred)), whose tie-break also
    counts the IoU of assigned pairs under the threshold.

    Returns:
        (rows, cols): int arrays of equal length, indices into ``iou``'s axes.
    """
    eligible = iou >= threshold
    none = np.zeros(0, np.intp)
    if threshold < 0.5:
        if not eligible.any():
            return none, none
        cost = -eligible.astype(np.float64) - iou / (2 * min(iou.shape))
        r, c = optimize.linear_sum_assignment(cost)
        keep = eligible[r, c]
        return r[keep], c[keep]
    rows = np.nonzero(eligible.any(axis=1))[0]
    cols = np.nonzero(eligible.any(axis=0))[0]
    if rows.size == 0:
        return none, none
    sub_iou = iou[np.ix_(rows, cols)]
    sub_ok = eligible[np.ix_(rows, cols)]
    weight = np.where(sub_ok, 1.0 + sub_iou / (min(sub_iou.shape) + 1), 0.0)
    r, c = optimize.linear_sum_assignment(weight, maximize=True)
    keep = sub_ok[r, c]
    return rows[r[keep]], cols[c[keep]]


def _match_count(iou: np.ndarray, threshold: float) -> tuple[int, list[float]]:
    """(TP, IoU of each matched pair) of :func:`_assign`'s matching."""
    r, c = _assign(iou, threshold)
    return int(r.size), [float(v) for v in iou[r, c]]


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


def _label_maps(
    pred_labels: np.ndarray | torch.Tensor, gt_labels: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Both label maps as numpy, checked: same shape, integer, non-negative."""
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
    return pred_np, gt_np


def _iou(inter: np.ndarray, gt_area: np.ndarray, pred_area: np.ndarray) -> np.ndarray:
    """(N_gt, N_pred) IoU of every pair from :func:`_overlaps`' counts (0 where both empty)."""
    union = gt_area[:, None] + pred_area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


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

    Matching is one-to-one with the most matches (scipy's ``linear_sum_assignment``), exactly as
    StarDist's ``matching(y_true, y_pred, thresh, criterion="iou")`` (tested against a port of
    stardist/matching.py): the same TP, FP, FN and ratios, the same matched IoUs. At IoU >= 0.5
    the matching is unique anyway (an object can have IoU > 0.5 with one other at most); below,
    StarDist's tie-break picks among the largest matchings (see :func:`_assign`). Conventions
    that differ from StarDist's: a ratio with a zero denominator is NaN here, 0 there, and
    ``mean_matched_iou`` is NaN without matches (StarDist: 0).
    """
    pred_np, gt_np = _label_maps(pred_labels, gt_labels)
    levels = [float(t) for t in thresholds]
    if not levels or any(not 0.0 < t <= 1.0 for t in levels):
        raise ValueError(
            f"thresholds must be a non-empty list of IoU values in (0, 1], got {levels}"
        )
    inter, gt_area, pred_area = _overlaps(pred_np, gt_np)
    iou = _iou(inter, gt_area, pred_area)  # (N_gt, N_pred)
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


def _at_threshold(match: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The ``per_threshold`` row of `match` at `threshold`; raises naming those available."""
    for row in match["per_threshold"]:
        if row["threshold"] == threshold:
            return row
    have = [row["threshold"] for row in match["per_threshold"]]
    raise ValueError(
        f"threshold {threshold} was not matched (thresholds: {have}); call match_instances with "
        "it in thresholds="
    )


def panoptic_quality(
    matches: dict[str, Any] | Sequence[dict[str, Any]], *, threshold: float = 0.5
) -> dict[str, float]:
    """Panoptic quality of one image or a dataset (pooled), at one IoU threshold.

    PQ = (sum of the matched pairs' IoU) / (TP + FP/2 + FN/2) = SQ × RQ, with the segmentation
    quality SQ = mean IoU of the matched pairs and the recognition quality RQ = TP / (TP + FP/2
    + FN/2) (= F1). Kirillov et al., "Panoptic Segmentation", CVPR 2019, eq. 1, whose matching
    threshold is 0.5; StarDist's ``panoptic_quality``. Over a dataset, sums and counts are
    pooled over the images before the ratios, as :func:`pool_matches`.

    Args:
        matches: one :func:`match_instances` result, or those of the images of a dataset.
        threshold: IoU threshold; must be one the matches were computed at.

    Returns:
        ``pq@t``, ``sq@t``, ``rq@t`` (t formatted as in :func:`pool_matches`); NaN with a zero
        denominator (no objects at all; SQ: no match).
    """
    images = [matches] if isinstance(matches, dict) else list(matches)
    if not images:
        raise ValueError("panoptic_quality needs at least one match_instances result")
    rows = [_at_threshold(m, float(threshold)) for m in images]
    tp, fp, fn = (sum(int(r[k]) for r in rows) for k in ("tp", "fp", "fn"))
    matched_iou = sum(r["mean_matched_iou"] * r["tp"] for r in rows if r["tp"])
    t = f"{float(threshold):g}"
    return {
        f"pq@{t}": _ratio(matched_iou, tp + fp / 2 + fn / 2),
        f"sq@{t}": _ratio(matched_iou, tp),
        f"rq@{t}": _ratio(tp, tp + fp / 2 + fn / 2),
    }


def matched_pairs(
    pred_labels: np.ndarray | torch.Tensor,
    gt_labels: np.ndarray | torch.Tensor,
    *,
    threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """Which objects :func:`match_instances` matches at one IoU threshold.

    Args:
        pred_labels, gt_labels: (H, W) integer label maps as for :func:`match_instances`.
        threshold: IoU threshold in (0, 1].

    Returns:
        ``pred_ids`` and ``gt_ids``: (T,) int64 object ids as they appear in the maps, pair i
        matched (the true positives); ``iou``: (T,) float64 their IoU. Predicted objects not in
        ``pred_ids`` are the false positives, ground-truth objects not in ``gt_ids`` the misses.
    """
    pred_np, gt_np = _label_maps(pred_labels, gt_labels)
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be an IoU value in (0, 1], got {threshold}")
    inter, gt_area, pred_area = _overlaps(pred_np, gt_np)
    iou = _iou(inter, gt_area, pred_area)  # (N_gt, N_pred)
    rows, cols = _assign(iou, float(threshold))
    pred_ids, gt_ids = (np.unique(x) for x in (pred_np, gt_np))
    pred_ids, gt_ids = pred_ids[pred_ids != 0], gt_ids[gt_ids != 0]  # dense id k → ids[k - 1]
    return {
        "pred_ids": pred_ids[cols].astype(np.int64),
        "gt_ids": gt_ids[rows].astype(np.int64),
        "iou": iou[rows, cols],
    }
