"""Tuning the post-processing on validation images, as StarDist optimises its thresholds.

:func:`tune_postprocessing` searches a small grid of :class:`~pixelwise.instances.PostProcessing`
records for the one whose objects score best on images with ground truth (pooled over the
images, :func:`~pixelwise.metrics.pool_matches`). Training calls it at the end of an instance
run with the validation images' probabilities and stores the winner in the checkpoint; it never
sees test images. It sits after :mod:`pixelwise.metrics` because it scores.

The grid is searched one coordinate at a time (thresholds first, then sizes), twice over, so it
costs a few dozen post-processings per image instead of the full product.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pixelwise.instances.postprocess import PostProcessing, objects_from_probabilities
from pixelwise.metrics.objects import DEFAULT_IOU_THRESHOLDS, match_instances, pool_matches

__all__ = ["DEFAULT_GRID", "score_postprocessing", "tune_postprocessing"]

DEFAULT_GRID: dict[str, tuple[Any, ...]] = {
    "mask_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "seed_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "seed_distance": (0, 2, 3, 4, 6, 8),
    "min_size": (0, 8, 16, 32, 64),
    "fill_holes": (True, False),
}
"""Values tried per option; options that do not apply to the target are skipped."""

OBJECTIVE = "dsb_score"
"""What tuning maximises: the mean accuracy TP/(TP+FP+FN) over IoU 0.5, 0.55, ..., 0.95."""

_UNUSED = {
    "three-class": "seed_distance",
    "distance": "seed_distance",
    "two-class": "seed_threshold",
}


def score_postprocessing(
    params: PostProcessing,
    probabilities: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    *,
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, Any]:
    """Pooled object scores of `params` on images with ground truth.

    Args:
        params: the post-processing to score.
        probabilities: per image, (K, H, W) softmax probabilities.
        ground_truth: per image, (H, W) integer instance labels (0 = background).
        thresholds: IoU thresholds of the matching.

    Returns:
        :func:`~pixelwise.metrics.pool_matches` of the images.
    """
    if len(probabilities) != len(ground_truth) or not probabilities:
        raise ValueError(
            f"need one ground truth per probability map and at least one image, got "
            f"{len(probabilities)} and {len(ground_truth)}"
        )
    matches = [
        match_instances(objects_from_probabilities(p, params), gt, thresholds=thresholds)
        for p, gt in zip(probabilities, ground_truth, strict=True)
    ]
    return pool_matches(matches)


def tune_postprocessing(
    probabilities: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    *,
    start: PostProcessing,
    grid: dict[str, Sequence[Any]] | None = None,
    rounds: int = 2,
) -> tuple[PostProcessing, dict[str, Any]]:
    """The post-processing that maximises the pooled DSB score on the given images.

    Coordinate search: for each option in `grid` in turn, try every value with the others fixed
    at the best so far and keep the best (ties keep the earlier value); `rounds` passes.

    Args:
        probabilities: per image, (K, H, W) softmax probabilities (validation images).
        ground_truth: per image, (H, W) instance labels.
        start: the record to start from; its `target` is kept.
        grid: values per option; default :data:`DEFAULT_GRID`.
        rounds: passes over the options.

    Returns:
        (best record, its pooled scores).
    """
    grid = DEFAULT_GRID if grid is None else grid
    best = start
    best_scores = score_postprocessing(best, probabilities, ground_truth)
    tried = {best: best_scores[OBJECTIVE]}
    for _ in range(rounds):
        for name, values in grid.items():
            if name == _UNUSED[start.target]:
                continue
            for value in values:
                candidate = best.replace(**{name: value})
                if candidate in tried:
                    continue
                scores = score_postprocessing(candidate, probabilities, ground_truth)
                tried[candidate] = scores[OBJECTIVE]
                if scores[OBJECTIVE] > best_scores[OBJECTIVE]:
                    best, best_scores = candidate, scores
    return best, best_scores
