"""Labelling: from a semantic prediction to an (H, W) instance map.

* :func:`label` turns an (H, W) class map or (C, H, W) probabilities into an (H, W) int32
  instance map (0 = background, objects 1..N) by connected components, optionally split by a
  seeded watershed on the distance transform (scipy.ndimage for the distance and seeds plus a
  small priority flood, :func:`_priority_flood`; scikit-image is not a dependency).
* :func:`instances_from_border_class` reads maps with an explicit border class (e.g. the
  3-class background / interior / border encoding used for touching nuclei).

Describing the objects is :mod:`pixelwise.instances.tables`' job, their contacts
:mod:`pixelwise.instances.contacts`'.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from pixelwise.arrays import as_numpy

__all__ = ["instances_from_border_class", "label"]


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (4, 8):
        raise ValueError(
            f"connectivity must be 4 or 8, got {connectivity}; 4 joins edge neighbours only, "
            "8 also diagonal ones"
        )
    return ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)


def _class_map(x: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) class map, (H, W) probabilities or (C, H, W) probabilities -> (H, W) int classes."""
    if x.ndim == 3:
        if x.shape[0] == 2:
            return (x[1] > threshold).astype(np.int64)
        return x.argmax(axis=0)
    if x.ndim != 2:
        raise ValueError(
            f"x must be an (H, W) class map or (C, H, W) probabilities, got shape {x.shape}; "
            "pass one image at a time"
        )
    if np.issubdtype(x.dtype, np.floating):
        return (x > threshold).astype(np.int64)
    if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer):
        return x.astype(np.int64)
    raise TypeError(f"x has unsupported dtype {x.dtype}; pass integer classes or probabilities")


def _peaks(distance: np.ndarray, components: np.ndarray, n: int, min_distance: int) -> np.ndarray:
    """Seed labels: plateaus of local maxima of ``distance`` within (2 r + 1)^2 windows.

    Every component gets at least one seed (its deepest pixel) so no object is lost.
    """
    window = 2 * min_distance + 1
    is_peak = (distance == ndimage.maximum_filter(distance, size=window)) & (components > 0)
    seeds, n_seeds = ndimage.label(is_peak, structure=np.ones((3, 3), dtype=bool))
    index = np.arange(1, n + 1)
    has_seed = np.asarray(ndimage.maximum(seeds > 0, components, index), dtype=bool)
    for component in index[~has_seed]:
        y, x = ndimage.maximum_position(distance, components, component)
        n_seeds += 1
        seeds[y, x] = n_seeds
    return seeds


def _priority_flood(
    cost: np.ndarray, seeds: np.ndarray, mask: np.ndarray, structure: np.ndarray
) -> np.ndarray:
    """Seeded watershed by priority flooding (Meyer 1991) inside ``mask``.

    Pixels leave a heap in order of flooding level ``max(level of the pixel that reached it,
    cost)``; each unlabelled neighbour of a popped pixel inherits its label; ties go
    first-come-first-served. Costs are quantised to 1/1024 and each heap entry is one Python
    int ``level << 2b | arrival << b | pixel`` (about 2-3x faster than tuples); a 512 x 512
    mask of touching discs takes well under a second on one core.
    ``scipy.ndimage.watershed_ift`` is not used: on the 1-D profile
    [4 3 2 1 0 1 2 3 4 3 2 1 0 1 2 3 4] with seeds at both minima it puts the boundary two
    pixels past the ridge.
    """
    h, w = cost.shape
    width = w + 2
    labels_2d = np.full((h + 2, width), -1, dtype=np.int64)  # -1: outside the mask, never set
    labels_2d[1:-1, 1:-1] = np.where(mask, seeds, -1)
    level_2d = np.zeros((h + 2, width), dtype=np.int64)
    level_2d[1:-1, 1:-1] = np.round((cost - cost.min()) * 1024)
    offsets = [int(dy * width + dx) for dy, dx in np.argwhere(structure) - 1 if (dy, dx) != (0, 0)]
    labels = labels_2d.ravel().tolist()
    levels = level_2d.ravel().tolist()
    bits = labels_2d.size.bit_length()
    pixel_mask = (1 << bits) - 1
    starts = np.flatnonzero(labels_2d.ravel() > 0).tolist()
    heap = [levels[p] << 2 * bits | i << bits | p for i, p in enumerate(starts)]
    heapq.heapify(heap)
    arrival = len(heap)
    while heap:
        key = heapq.heappop(heap)
        p, level = key & pixel_mask, key >> 2 * bits
        owner = labels[p]
        for offset in offsets:
            q = p + offset
            if labels[q] == 0:
                labels[q] = owner
                heapq.heappush(heap, max(level, levels[q]) << 2 * bits | arrival << bits | q)
                arrival += 1
    out = np.asarray(labels, dtype=np.int64).reshape(h + 2, width)[1:-1, 1:-1]
    return np.maximum(out, 0)


def _watershed(mask: np.ndarray, structure: np.ndarray, min_distance: int) -> np.ndarray:
    """Split touching objects of a boolean mask: watershed of the inverted distance transform.

    Seeds are local maxima of the Euclidean distance to the background (one per round blob);
    basins grow from them by :func:`_priority_flood` and never leave the mask.
    """
    components, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return components
    distance = ndimage.distance_transform_edt(mask)
    seeds = _peaks(distance, components, n, min_distance)
    return _priority_flood(-distance, seeds, mask, structure)


def _relabel_sequential(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects smaller than ``min_size`` pixels and renumber the rest 1..N (scan order)."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    # Renumber in order of first appearance in raster order, so ids are deterministic.
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    kept_ids = ids[keep[ids]]
    order = kept_ids[np.argsort(first[keep[ids]])]
    lookup = np.zeros(sizes.size, dtype=np.int32)
    lookup[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return lookup[labels]


def label(
    x: np.ndarray | torch.Tensor,
    *,
    threshold: float = 0.5,
    foreground: Sequence[int] | None = None,
    min_size: int = 0,
    watershed: bool = False,
    min_distance: int = 3,
    connectivity: int = 4,
) -> np.ndarray:
    """Instance map from a semantic prediction.

    Args:
        x: one of
            * (H, W) integer or boolean class map;
            * (H, W) float probabilities of foreground (foreground = ``x > threshold``);
            * (2, H, W) probabilities (foreground = ``x[1] > threshold``);
            * (C, H, W) probabilities with C > 2 (classes = argmax over C).
        threshold: probability threshold for the (H, W) float and (2, H, W) cases.
        foreground: classes that form objects; default every class except 0. Objects never
            span two classes: components are found per class.
        min_size: objects with fewer pixels are removed (set to 0).
        watershed: split touching objects with a watershed seeded at maxima of the distance
            transform (useful for touching round cells; may over-split elongated objects).
        min_distance: radius in pixels of the window in which a distance maximum must be the
            largest to become a seed; larger values give fewer seeds.
        connectivity: 4 or 8 neighbourhood for components and watershed.

    Returns:
        (H, W) int32 map, 0 = background, objects numbered 1..N in raster order of their first
        pixel.
    """
    structure = _structure(connectivity)
    if min_size < 0 or min_distance < 1:
        raise ValueError(
            f"min_size must be >= 0 and min_distance >= 1, got {min_size} and {min_distance}"
        )
    classes = _class_map(as_numpy(x, "x"), threshold)
    present = np.unique(classes)
    wanted = present[present != 0] if foreground is None else np.asarray(foreground)
    out = np.zeros(classes.shape, dtype=np.int64)
    offset = 0
    for c in wanted:
        mask = classes == c
        if not mask.any():
            continue
        if watershed:
            part = _watershed(mask, structure, min_distance)
        else:
            part, _ = ndimage.label(mask, structure=structure)
        out[part > 0] = part[part > 0] + offset
        offset += int(part.max())
    return _relabel_sequential(out, min_size)


def instances_from_border_class(
    class_map: np.ndarray | torch.Tensor,
    *,
    interior: int = 1,
    border: int = 2,
    connectivity: int = 4,
) -> np.ndarray:
    """Instances from a map that marks cell borders with their own class.

    Each connected component of ``interior`` pixels seeds one object; every ``border`` pixel is
    then given to the object of its nearest interior pixel (Euclidean distance, via
    ``distance_transform_edt(..., return_indices=True)``), so touching cells come back whole.

    Args:
        class_map: (H, W) integer classes, e.g. 0 background, 1 interior, 2 border.
        interior: class id of cell interiors.
        border: class id of cell borders.
        connectivity: 4 or 8, for the interior components.

    Returns:
        (H, W) int32 instance map, 0 = background.
    """
    classes = as_numpy(class_map, "class_map")
    if classes.ndim != 2:
        raise ValueError(f"class_map must be (H, W), got shape {classes.shape}")
    seeds, n = ndimage.label(classes == interior, structure=_structure(connectivity))
    out = seeds.astype(np.int32)
    border_mask = classes == border
    if n == 0 or not border_mask.any():
        return out
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    out[border_mask] = seeds[iy[border_mask], ix[border_mask]]
    return out
