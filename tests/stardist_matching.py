"""Reference: a faithful port of StarDist's ``stardist/matching.py`` (criterion "iou").

Ported from github.com/stardist/stardist, ``stardist/matching.py`` (BSD-3-Clause), read at
commit 650d3a1: ``_label_overlap`` (numba loop → ``np.add.at``, same counts and dtype),
``intersection_over_union`` and ``_safe_divide`` (float32, as StarDist), ``precision`` /
``recall`` / ``accuracy`` / ``f1`` (0 when TP = 0), ``matching`` with ``criterion="iou"`` and
``report_matches=False``, and the pooled branch (``by_image=False``) of
``matching_dataset_lazy``. Only the numba decorator, the progress bar, the thread pool and the
other criteria are left out; ``relabel_sequential`` is scikit-image's (StarDist's copy of it).

The tests compare :func:`pixelwise.metrics.match_instances` and its pooled and panoptic scores
with this module on many random label maps.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.segmentation import relabel_sequential


def _label_overlap(x, y):
    x = x.ravel()
    y = y.ravel()
    overlap = np.zeros((1 + x.max(), 1 + y.max()), dtype=np.uint)
    np.add.at(overlap, (x, y), 1)
    return overlap


def _safe_divide(x, y, eps=1e-10):
    """computes a safe divide which returns 0 if y is zero"""
    if np.isscalar(x) and np.isscalar(y):
        return x / y if np.abs(y) > eps else 0.0
    out = np.zeros(np.broadcast(x, y).shape, np.float32)
    np.divide(x, y, out=out, where=np.abs(y) > eps)
    return out


def intersection_over_union(overlap):
    if np.sum(overlap) == 0:
        return overlap
    n_pixels_pred = np.sum(overlap, axis=0, keepdims=True)
    n_pixels_true = np.sum(overlap, axis=1, keepdims=True)
    return _safe_divide(overlap, (n_pixels_pred + n_pixels_true - overlap))


def precision(tp, fp, fn):
    return tp / (tp + fp) if tp > 0 else 0


def recall(tp, fp, fn):
    return tp / (tp + fn) if tp > 0 else 0


def accuracy(tp, fp, fn):
    return tp / (tp + fp + fn) if tp > 0 else 0


def f1(tp, fp, fn):
    return (2 * tp) / (2 * tp + fp + fn) if tp > 0 else 0


def matching(y_true, y_pred, thresh=0.5):
    """StarDist's ``matching(y_true, y_pred, thresh, criterion="iou", report_matches=False)``."""
    assert y_true.shape == y_pred.shape
    thresh = float(thresh) if np.isscalar(thresh) else map(float, thresh)

    y_true, _, _ = relabel_sequential(y_true)
    y_pred, _, _ = relabel_sequential(y_pred)

    overlap = _label_overlap(y_true, y_pred)
    scores = intersection_over_union(overlap)
    assert 0 <= np.min(scores) <= np.max(scores) <= 1

    # ignoring background
    scores = scores[1:, 1:]
    n_true, n_pred = scores.shape
    n_matched = min(n_true, n_pred)

    def _single(thr):
        not_trivial = n_matched > 0
        if not_trivial:
            # compute optimal matching with scores as tie-breaker
            costs = -(scores >= thr).astype(float) - scores / (2 * n_matched)
            true_ind, pred_ind = linear_sum_assignment(costs)
            assert n_matched == len(true_ind) == len(pred_ind)
            match_ok = scores[true_ind, pred_ind] >= thr
            tp = np.count_nonzero(match_ok)
        else:
            tp = 0
        fp = n_pred - tp
        fn = n_true - tp

        sum_matched_score = np.sum(scores[true_ind, pred_ind][match_ok]) if not_trivial else 0.0
        mean_matched_score = _safe_divide(sum_matched_score, tp)
        mean_true_score = _safe_divide(sum_matched_score, n_true)
        panoptic_quality = _safe_divide(sum_matched_score, tp + fp / 2 + fn / 2)

        stats_dict = dict(
            criterion="iou",
            thresh=thr,
            fp=fp,
            tp=tp,
            fn=fn,
            precision=precision(tp, fp, fn),
            recall=recall(tp, fp, fn),
            accuracy=accuracy(tp, fp, fn),
            f1=f1(tp, fp, fn),
            n_true=n_true,
            n_pred=n_pred,
            mean_true_score=mean_true_score,
            mean_matched_score=mean_matched_score,
            panoptic_quality=panoptic_quality,
        )
        return namedtuple("Matching", stats_dict.keys())(*stats_dict.values())

    return _single(thresh) if np.isscalar(thresh) else tuple(map(_single, thresh))


def matching_dataset(y_true, y_pred, thresh=0.5):
    """StarDist's ``matching_dataset(..., criterion="iou", by_image=False)``: pooled counts."""
    assert len(y_true) == len(y_pred)
    single_thresh = np.isscalar(thresh)
    thresh = (thresh,) if single_thresh else tuple(thresh)
    stats_all = tuple(matching(t, p, thresh=thresh) for t, p in zip(y_true, y_pred, strict=True))

    accumulate = [{} for _ in thresh]
    for stats in stats_all:
        for i, s in enumerate(stats):
            acc = accumulate[i]
            for k, v in s._asdict().items():
                if k == "mean_true_score":
                    # convert mean_true_score to "sum_matched_score"
                    acc[k] = acc.setdefault(k, 0) + v * s.n_true
                else:
                    try:  # noqa: SIM105 (StarDist's code as written)
                        acc[k] = acc.setdefault(k, 0) + v
                    except TypeError:
                        pass

    for thr, acc in zip(thresh, accumulate, strict=True):
        acc["criterion"] = "iou"
        acc["thresh"] = thr
        tp, fp, fn, n_true = acc["tp"], acc["fp"], acc["fn"], acc["n_true"]
        sum_matched_score = acc["mean_true_score"]
        acc.update(
            precision=precision(tp, fp, fn),
            recall=recall(tp, fp, fn),
            accuracy=accuracy(tp, fp, fn),
            f1=f1(tp, fp, fn),
            mean_true_score=_safe_divide(sum_matched_score, n_true),
            mean_matched_score=_safe_divide(sum_matched_score, tp),
            panoptic_quality=_safe_divide(sum_matched_score, tp + fp / 2 + fn / 2),
        )
    result = tuple(namedtuple("DatasetMatching", a.keys())(*a.values()) for a in accumulate)
    return result[0] if single_thresh else result
