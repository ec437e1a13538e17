"""ISBI 2012 EM segmentation challenge scores, exactly as the challenge's Fiji code computes them.

:func:`isbi2012` ports the challenge's evaluation (fiji/Trainable_Segmentation,
``trainableSegmentation.metrics``; the scripts "Segmentation evaluation metrics" and
"Segmentation evaluation after border thinning" on imagej.net) for one slice or a stack:

=================  =================================================================  =========
key                Fiji call of the challenge script                                  stack
=================  =================================================================  =========
``pixel_error``    ``1 - PixelError.getPixelErrorMaximalFScore(0.0, 1.0, 0.1)``       counts
``rand_error``     ``1 - RandError.getForegroundRestrictedRandIndexMaximalFScore``    counts
                   ``(0.0, 1.0, 0.1)``
``warping_error``  ``WarpingError.getMinimumSplitsAndMergersErrorValue``              counts
                   ``(0.0, 0.9, 0.1, false, 20)``
``v_rand_thin``    ``RandError.getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true)``    mean
``v_info_thin``    ``VariationOfInformation.getMaximalVInfoAfterThinning``            mean
                   ``(0.0, 1.0, 0.1)``
=================  =================================================================  =========

The first three are the leaderboard of 2012 that the U-Net paper's Table 1 reports; the last
two rank the challenge's current leaderboard. "counts": the slices' counts are added before the
score (micro average); "mean": the score is averaged over the slices (macro average).

Conventions, as the challenge ships and reads its files:

* ``labels``: the ground truth, 1 or 255 = cell interior, 0 = membrane (bool also accepted).
* ``probabilities``: the submission, the probability of cell INTERIOR (0 = 100 % membrane
  certainty, 1 = 100 % non-membrane certainty), a 32-bit float image. Floats are rounded to
  float32 as the submission TIFF stores them; 8-bit maps are read as ``value / 255``.
  A pixel is interior at threshold t when ``float64(p) > t``.
* Thresholds: Java's ``for (th = 0.0; th <= 1.0; th += 0.1)``, eleven accumulated values
  (0.30000000000000004, ..., 0.9999999999999999); the warping error stops at 0.9 (ten).

What each score counts:

* Pixel error: 1 - the best F-score over thresholds of the interior pixels (precision = TP /
  (TP + FP), recall = TP / (TP + FN), each 1 when its denominator's error term is 0).
* Rand error: the ground truth's and the prediction's 4-connected interior components;
  membrane pixels of the ground truth are left out, predicted membrane pixels inside a cell
  count as singletons. Pairs are counted "N^2" (ordered pairs with a pixel's pair with itself:
  TP = sum n_ij^2 over cells and predicted segments plus one per singleton). The score is
  1 - the best F-score (precision / recall of same-segment pairs) over thresholds.
* Warping error: the ground truth is warped toward the binarised prediction by sequential
  simple-point flips, most confident pixel first (:mod:`pixelwise.metrics.isbi_topology`);
  the mismatches left are classified and only splits and mergers count, divided by all
  pixels of the stack; the smallest over thresholds.
* V_rand / V_info after thinning: the prediction's membrane is thinned by a watershed from
  its cells (:func:`~pixelwise.metrics.isbi_topology.thin_borders`), then the N^2 Rand F-score
  or the information-theoretic F-score (Arganda-Carreras et al. 2015) is computed per slice,
  averaged, and maximised over thresholds.

Fiji's quirks are kept: a slice whose ground truth has no interior gives NaN counts, which
set the Rand F-score of the whole stack at that threshold to 0 (and its per-slice V_rand and
V_info to 0); a ground-truth slice without membrane makes every warping mismatch of that slice
an object addition (ImageJ's 8-bit conversion blanks the warped labels). Sums follow Java's
loop order so that exact ties (``H(A) == 0``) fall the same way.

Differences from the older pixelwise scores (:mod:`pixelwise.metrics.isbi_legacy`, still
exported under their old names ``pixel_error``, ``rand_error``, ``warping_error``):

* ``pixel_disagreement`` (old ``pixel_error``) is the smallest fraction of disagreeing
  pixels, not 1 - F-score; ``adapted_rand_error`` (old ``rand_error``) counts pairs of
  distinct pixels, n (n - 1), as ``skimage.metrics.adapted_rand_error``; both sweep 0.1-0.9
  and work per image;
* ``classic_warping_error`` (old ``warping_error``) flips pixels in four parallel
  sub-lattices at the one threshold 0.5 and counts every remaining mismatch (holes, added and
  deleted objects too), Jain et al.'s classic definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from pixelwise.arrays import as_numpy, check_same_shape
from pixelwise.metrics.isbi_topology import (
    FOUR,
    count_splits_and_mergers,
    sequential_warp,
    thin_borders,
)

__all__ = [
    "ISBI2012_SCORES",
    "ISBI2012_THRESHOLDS",
    "ISBI2012_WARPING_THRESHOLDS",
    "interior_values",
    "isbi2012",
]


def _java_sweep(stop: float) -> tuple[float, ...]:
    """``for (double th = 0.0; th <= stop; th += 0.1)``: the accumulated doubles."""
    values, th = [], 0.0
    while th <= stop:
        values.append(th)
        th += 0.1
    return tuple(values)


ISBI2012_THRESHOLDS: tuple[float, ...] = _java_sweep(1.0)
"""The 11 thresholds of the pixel, Rand and thinned scores: 0.0, 0.1, ..., 0.9999999999999999."""

ISBI2012_WARPING_THRESHOLDS: tuple[float, ...] = _java_sweep(0.9)
"""The ten thresholds of the warping error (0.0, 0.1, ..., 0.8999999999999999)."""

ISBI2012_SCORES: tuple[str, ...] = (
    "rand_error",
    "pixel_error",
    "warping_error",
    "v_rand_thin",
    "v_info_thin",
)
"""The keys :func:`isbi2012` returns (and accepts in ``scores``)."""


def interior_values(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Any-shape map of cell interior -> float64 values in [0, 1].

    bool as 0/1; integers 0/1 as they are, 8-bit 0..255 as ``value / 255``; floats checked to
    lie in [0, 1]. The one reading of interior maps, for these scores and the legacy ones.
    """
    a = as_numpy(x, name)
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
                f"[{np.nanmin(values)}, {np.nanmax(values)}]; apply a sigmoid/softmax first "
                "(the probability of cell interior is 1 - the membrane probability)"
            )
        return values
    raise TypeError(f"{name} has unsupported dtype {a.dtype}; pass bool, integer or float")


def _label_stack(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W) or (N, H, W) labels (0 = membrane; 1 or 255 = interior) -> bool interior."""
    a = as_numpy(x, "labels")
    if a.dtype == np.bool_:
        return a
    values = np.unique(a)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        raise ValueError(
            f"labels must be binary, 0 = membrane and 1 or 255 = cell interior, found values "
            f"{values[:8].tolist()}{' ...' if values.size > 8 else ''}; pass the challenge's "
            "label images (or label > 0)"
        )
    return a > 0


def _stacks(
    probabilities: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Checked (N, H, W) float32 probabilities and (N, H, W) bool interior labels."""
    # float32: what the submission TIFF stores (8-bit maps as value / 255)
    p = interior_values(probabilities, "probabilities").astype(np.float32)
    g = _label_stack(labels)
    if p.ndim not in (2, 3) or p.ndim != g.ndim:
        raise ValueError(
            f"probabilities and labels must both be one slice (H, W) or a stack (N, H, W), "
            f"got shapes {tuple(p.shape)} and {tuple(g.shape)}; stack the slices with np.stack"
        )
    check_same_shape(p, g, ("probabilities", "labels"), "pass the prediction of each label slice")
    if p.ndim == 2:
        p, g = p[None], g[None]  # (1, H, W)
    if 0 in p.shape:
        raise ValueError(f"the stack is empty, shape {tuple(p.shape)}; pass at least one pixel")
    return p, g


def _fscore(tp: float, fp: float, fn: float) -> float:
    """Fiji's ClassificationStatistics F-score (precision, recall 1 when fp, fn are 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = 1.0 if fp == 0 else float(np.float64(tp) / (tp + fp))
        recall = 1.0 if fn == 0 else float(np.float64(tp) / (tp + fn))
    if precision + recall > 0:  # False for NaN, leaving Fiji's initial 0
        return 2.0 * precision * recall / (precision + recall)
    return 0.0


def _ordered_total(values: np.ndarray) -> float:
    """Left-to-right float sum, as a Java ``for`` loop adds (``np.sum`` sums pairwise)."""
    return float(np.cumsum(values)[-1]) if values.size else 0.0


def _ordered_sums(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per group (ascending), the left-to-right sum of its values in their given order."""
    order = np.argsort(groups, kind="stable")
    g, v = groups[order], values[order]
    _, starts, counts = np.unique(g, return_index=True, return_counts=True)
    sums = v[starts].copy()
    for k in range(1, int(counts.max(initial=1))):
        more = counts > k
        sums[more] += v[starts[more] + k]
    return sums


def _contingency(
    gt: np.ndarray, pred: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(n, i, j, p_ij): the overlap table of two label maps, row-major, gt cells i >= 1 only.

    ``n`` is the number of ground-truth interior pixels and ``p_ij = n_ij / n``; j = 0 is the
    prediction's background (membrane or watershed line).
    """
    g, s = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    n = int(np.count_nonzero(g))
    width = int(s.max()) + 1
    keys = g * width + s
    if (int(g.max()) + 1) * width <= 1 << 24:
        counts = np.bincount(keys)
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    else:
        keys, counts = np.unique(keys, return_counts=True)
    i, j = np.divmod(keys, width)
    cell = i > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = counts[cell] / np.float64(n)
    return n, i[cell], j[cell], p


def _rand_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """(TP, FP, FN) of RandError.getForegroundRestrictedRandIndexStatsN2 (NaN if no gt cell)."""
    n, i, j, p = _contingency(gt, pred)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    segment = j > 0
    a = _ordered_sums(i, p)  # a_i = sum_j p_ij, j ascending
    b = _ordered_sums(j[segment], p[segment])  # b_j = sum_{i >= 1} p_ij, i ascending
    singletons = _ordered_total(p[~segment])  # predicted background inside cells
    sum_a2 = _ordered_total(a * a)
    sum_b2 = _ordered_total(b * b) + singletons / n
    sum_ab2 = _ordered_total(p[segment] * p[segment]) + singletons / n
    n2 = float(n) * n
    tp = n2 * sum_ab2
    return tp, n2 * sum_b2 - tp, n2 * sum_a2 - tp


def _info_fscore(gt: np.ndarray, pred: np.ndarray) -> float:
    """VariationOfInformation.foregroundRestrictedFscore: F of C(A|B) and C(B|A)."""
    n, i, j, p = _contingency(gt, pred)
    if n == 0:
        return 0.0  # Fiji: H(A) == 0 -> precision 0, recall 1 -> F = 0
    segment = j > 0
    a = _ordered_sums(i, p)
    b = _ordered_sums(j[segment], p[segment])
    singletons = _ordered_total(p[~segment])
    log_n = np.log(np.float64(n))
    sum_a = _ordered_total(a * np.log(a))
    sum_b = _ordered_total(b * np.log(b)) - singletons * log_n
    sum_ab = _ordered_total(p[segment] * np.log(p[segment])) - singletons * log_n
    ha, hb = -sum_a, -sum_b
    hab, hba = sum_b - sum_ab, sum_a - sum_ab
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = float(np.float64(ha - hab) / ha)
        recall = float(np.float64(hb - hba) / hb)
        if ha == 0:
            precision, recall = 0.0, 1.0
        if hb == 0:
            precision, recall = 1.0, 0.0
        return float(np.float64(2.0 * precision * recall) / (precision + recall))


def _best(values: list[float]) -> float:
    """Fiji's maximum: start at 0, keep a value only when strictly larger (NaN never is)."""
    best = 0.0
    for value in values:
        if value > best:
            best = value
    return best


def _pixel_error(p: np.ndarray, g: np.ndarray, thresholds: Sequence[float]) -> float:
    """1 - the best F-score of interior pixels over thresholds, counts added over the stack."""
    values = p.astype(np.float64)
    scores = []
    for th in thresholds:
        interior = values > th
        tp = np.count_nonzero(interior & g)
        fp = np.count_nonzero(interior & ~g)
        fn = np.count_nonzero(~interior & g)
        scores.append(_fscore(float(tp), float(fp), float(fn)))
    return 1.0 - _best(scores)


def _segment_scores(
    p: np.ndarray, g: np.ndarray, thresholds: Sequence[float], wanted: set[str]
) -> dict[str, float]:
    """Rand error (counts over the stack) and V_rand / V_info after thinning (slice mean)."""
    values = p.astype(np.float64)
    cells = [ndimage.label(slice_, structure=FOUR)[0] for slice_ in g]
    rand, v_rand, v_info = [], [], []
    for th in thresholds:
        totals = np.zeros(3)
        f_rand = f_info = 0.0
        for k, gt in enumerate(cells):
            interior = values[k] > th
            if "rand_error" in wanted:
                totals += _rand_counts(gt, ndimage.label(interior, structure=FOUR)[0])
            if wanted & {"v_rand_thin", "v_info_thin"}:
                thinned = thin_borders(interior)
                if "v_rand_thin" in wanted:
                    f_rand += _fscore(*_rand_counts(gt, thinned))
                if "v_info_thin" in wanted:
                    f_info += _info_fscore(gt, thinned)
        rand.append(_fscore(*totals))
        v_rand.append(f_rand / len(cells))
        v_info.append(f_info / len(cells))
    return {
        "rand_error": 1.0 - _best(rand),
        "v_rand_thin": _best(v_rand),
        "v_info_thin": _best(v_info),
    }


def _warping_error(p: np.ndarray, g: np.ndarray, thresholds: Sequence[float]) -> float:
    """The fewest splits + mergers left after warping, over thresholds, per stack pixel."""
    best = float("inf")  # Fiji: Double.MAX_VALUE
    for th in thresholds:
        errors = 0
        for probs, gt in zip(p, g, strict=True):
            warped, ys, xs = sequential_warp(gt, probs, th)
            splits, mergers = count_splits_and_mergers(
                warped, ys, xs, blank_components=bool(gt.all())
            )
            errors += splits + mergers
        error = errors / g.size
        if error < best:
            best = error
    return best


def isbi2012(
    probabilities: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    scores: Sequence[str] = ISBI2012_SCORES,
    thresholds: Sequence[float] | None = None,
) -> dict[str, float]:
    """The ISBI 2012 challenge's scores of one slice or a stack, as its Fiji evaluation prints.

    Worked example: a 3x7 slice, one 1x5 cell in a frame of membrane, and a prediction (0 or 1)
    that calls the cell's middle pixel membrane. Rand: n = 5, predicted segments of 2 + 2
    pixels and one singleton: TP = 2^2 + 2^2 + 1 = 9 of 5^2 = 25 same-cell pairs, so recall =
    9/25, precision = 1 and the Rand error is 1 - 2 (9/25) / (1 + 9/25) = 8/17 (the adapted
    Rand error of :mod:`.isbi_legacy`: 2/3). Pixel: TP = 4, FN = 1, F = 8/9, error 1/9.
    Warping: the middle pixel cannot be flipped without cutting the cell, so it stays a split:
    1/21 at every threshold.

    Args:
        probabilities: (H, W) or (N, H, W) probability of cell interior: floats in [0, 1]
            (stored as float32, the submission format), 8-bit 0..255 or bool.
        labels: same shape, 0 = membrane, 1 or 255 (or True) = cell interior.
        scores: the subset of :data:`ISBI2012_SCORES` to compute (the warping error and the
            thinning take most of the time).
        thresholds: binarisation thresholds for every score instead of the challenge's
            (:data:`ISBI2012_THRESHOLDS`, :data:`ISBI2012_WARPING_THRESHOLDS`), e.g.
            ``(0.5,)`` for the scores of the 0.5 decision.

    Returns:
        A dict with the requested keys: ``rand_error``, ``pixel_error``, ``warping_error``
        (lower is better) and ``v_rand_thin``, ``v_info_thin`` (higher is better), floats.

    Raises:
        ValueError: shapes differ or are not (H, W) / (N, H, W), probabilities outside
            [0, 1], labels not binary, an unknown score or a threshold outside [0, 1].
    """
    unknown = [s for s in scores if s not in ISBI2012_SCORES]
    if unknown or not scores:
        raise ValueError(
            f"scores must be a non-empty subset of {list(ISBI2012_SCORES)}, got {list(scores)}"
        )
    if thresholds is not None:
        thresholds = [float(t) for t in thresholds]
        if not thresholds or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(
                f"thresholds must be a non-empty list of values in [0, 1], got {thresholds}; "
                "pass None for the challenge's sweeps"
            )
    p, g = _stacks(probabilities, labels)
    sweep = ISBI2012_THRESHOLDS if thresholds is None else thresholds
    wanted = set(scores)
    result: dict[str, float] = {}
    if "pixel_error" in wanted:
        result["pixel_error"] = _pixel_error(p, g, sweep)
    segment_keys = wanted & {"rand_error", "v_rand_thin", "v_info_thin"}
    if segment_keys:
        segment = _segment_scores(p, g, sweep, segment_keys)
        result.update({k: segment[k] for k in segment_keys})
    if "warping_error" in wanted:
        warp_sweep = ISBI2012_WARPING_THRESHOLDS if thresholds is None else thresholds
        result["warping_error"] = _warping_error(p, g, warp_sweep)
    return {k: result[k] for k in ISBI2012_SCORES if k in result}
