"""Contacts between objects: which instances touch, and drawing background lines between them.

The U-Net paper separates touching cells in its training masks by a line of background, where
its border weights act; the demo and the nuclei recipe then count how many touching pairs a
prediction keeps apart. These are the one implementation of that logic:

* :func:`contact_pixels`: object pixels with a 4-neighbour in another object;
* :func:`separate_touching`: the instance map with those pixels set to background;
* :func:`touching_pairs` / :func:`count_touching_pairs`: the pairs of objects that share an
  edge (``gap=0``) or that at most ``gap`` background pixels separate along a row or column;
* :func:`touching_pairs_separated`: how many touching ground-truth pairs a prediction keeps
  apart.
"""

from __future__ import annotations

import numpy as np
import torch

from pixelwise.arrays import as_instances, check_same_shape
from pixelwise.checks import is_int

__all__ = [
    "contact_pixels",
    "count_touching_pairs",
    "separate_touching",
    "touching_pairs",
    "touching_pairs_separated",
]


def contact_pixels(instances: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W) bool: object pixels with a 4-neighbour that belongs to a different object.

    Args:
        instances: (H, W) integer ids, 0 = background, 1..K = objects.

    Example:
        ``[[1, 1, 2, 0]]`` → ``[[False, True, True, False]]`` (1 | 2 share an edge).
    """
    inst = as_instances(instances)
    contact = np.zeros(inst.shape, dtype=bool)
    for axis in (0, 1):
        a = np.moveaxis(inst, axis, 0)  # (L, M): neighbours along the first axis
        c = np.moveaxis(contact, axis, 0)  # view: writes reach `contact`
        differ = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)  # (L - 1, M)
        c[1:] |= differ
        c[:-1] |= differ
    return contact


def separate_touching(instances: np.ndarray | torch.Tensor) -> np.ndarray:
    """Instances with a background line wherever two objects touch.

    Every :func:`contact_pixels` pixel is set to 0, so two objects that shared an edge end up
    two background pixels apart: the "separating background labels" of the U-Net paper's
    annotations (§3.1), where its border weights act.

    Args:
        instances: (H, W) integer ids, 0 = background.

    Returns:
        (H, W) copy of the ids (same dtype) with the contact pixels set to 0; afterwards
        ``count_touching_pairs(out) == 0`` and ``count_touching_pairs(out, gap=2)`` finds the
        separated pairs again.
    """
    out = as_instances(instances).copy()
    out[contact_pixels(out)] = 0
    return out


def touching_pairs(instances: np.ndarray | torch.Tensor, *, gap: int = 0) -> np.ndarray:
    """Pairs of distinct objects that touch, or that at most ``gap`` background pixels separate.

    Objects a and b are paired when a straight row or column segment of at most ``gap``
    background pixels joins a pixel of a to a pixel of b. ``gap=0``: they share an edge (a
    corner alone does not count); ``gap=2``: also the pairs :func:`separate_touching` drew
    apart. Other objects in between block the segment.

    Args:
        instances: (H, W) integer ids, 0 = background, 1..K = objects.
        gap: most background pixels between the two objects (>= 0).

    Returns:
        (P, 2) int64 ids ``(a, b)`` with ``a < b``, each pair once, sorted.

    Example:
        ``[[1, 2, 0, 3]]``: ``[[1, 2]]`` (gap 0), ``[[1, 2], [2, 3]]`` (gap 1).
    """
    if not is_int(gap) or gap < 0:
        raise ValueError(
            f"gap must be an integer >= 0, got {gap!r}; pass the most background pixels "
            "allowed between two objects (0 = they share an edge)"
        )
    inst = as_instances(instances).astype(np.int64)
    codes = []
    base = int(inst.max(initial=0)) + 1  # (low, high) ↦ low · base + high
    for axis in (0, 1):
        a = np.moveaxis(inst, axis, 0)  # (L, M): segments along the first axis
        clear = np.ones((max(a.shape[0] - 1, 0), a.shape[1]), dtype=bool)  # pixels between all 0
        for k in range(1, min(gap + 1, a.shape[0] - 1) + 1):
            x, y = a[:-k], a[k:]  # (L - k, M): pixel pairs k apart
            hit = clear & (x > 0) & (y > 0) & (x != y)
            low, high = np.minimum(x[hit], y[hit]), np.maximum(x[hit], y[hit])
            codes.append(low * base + high)
            clear = clear[:-1] & (a[k:-1] == 0)  # (L - k - 1, M): also pixel k is background
    unique = np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64)
    return np.stack([unique // base, unique % base], axis=1)


def count_touching_pairs(instances: np.ndarray | torch.Tensor, *, gap: int = 0) -> int:
    """Number of :func:`touching_pairs` (each unordered pair once; 0 when none touch)."""
    return len(touching_pairs(instances, gap=gap))


def touching_pairs_separated(
    gt: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor, *, gap: int = 2
) -> tuple[int, int]:
    """(touching ground-truth pairs the prediction keeps apart, all touching ground-truth pairs).

    The pairs are ``touching_pairs(gt, gap=gap)``: by default objects at most two background
    pixels apart, which covers ground truth drawn with :func:`separate_touching` lines. A pair
    is kept apart when each of its objects is covered by a different predicted object, where
    a predicted object covers a ground-truth object when it holds more than half its pixels.

    Args:
        gt: (H, W) ground-truth instance ids, 0 = background.
        pred: (H, W) predicted instance ids, 0 = background.
        gap: as in :func:`touching_pairs`.
    """
    g = as_instances(gt, "gt").astype(np.int64)
    p = as_instances(pred, "pred").astype(np.int64)
    check_same_shape(g, p, ("gt", "pred"), "label the prediction at the ground truth's resolution")
    pairs = touching_pairs(g, gap=gap)
    inside = g > 0
    base = int(p.max(initial=0)) + 1
    joint, overlap = np.unique(g[inside] * base + p[inside], return_counts=True)
    gt_id, pred_id = joint // base, joint % base
    area = np.bincount(g[inside], minlength=int(g.max(initial=0)) + 1)
    covers = 2 * overlap > area[gt_id]  # at most one predicted id (or background) per gt id
    owner = np.zeros(area.size, dtype=np.int64)  # gt id -> covering predicted id, 0 = none
    owner[gt_id[covers]] = pred_id[covers]
    a, b = owner[pairs[:, 0]], owner[pairs[:, 1]]
    return int(np.count_nonzero((a > 0) & (b > 0) & (a != b))), len(pairs)
