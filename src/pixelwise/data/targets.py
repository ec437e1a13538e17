"""Training targets derived from instance labels: what an instance model learns to predict.

An instance mask (0 = background, 1..K = objects) becomes a class mask, as the training option
`target` says (`pixelwise.train.TrainConfig.target`):

* ``"two-class"`` (:func:`two_class_target`): background 0, object 1 — the U-Net paper's target;
  touching objects are kept apart only by the border weights of the loss
  (:func:`pixelwise.losses.weight_map`, from the instance ids).
* ``"three-class"`` (:func:`three_class_target`): background 0, interior 1, boundary 2, where the
  boundary is each object's one-pixel inner outline
  (``skimage.segmentation.find_boundaries(instances, mode="inner")``): the pixels of an object
  with a 4-neighbour of another label, background or another object. Touching objects are then
  separated by boundary pixels (one from each side), which is what the watershed of
  :func:`pixelwise.instances.objects_from_probabilities` splits them along. The image edge is no
  boundary: an object cut by the border keeps interior pixels there.
* ``"distance"`` (:func:`distance_target`): background 0, then :data:`DISTANCE_BANDS` classes
  1..B, the bands of each object pixel's normalised distance to the outside of its object
  (:func:`normalized_distance`, StarDist's "object probability": 1 at the object's centre, about
  1/r at its edge). It is the Deep Watershed Transform's way (Bai & Urtasun 2017) of learning a
  distance as classes: the network regresses the distance through its class probabilities (the
  expected band), whose basins seed the watershed and whose low rim separates touching objects.

The target names are :data:`pixelwise.instances.TARGETS` (the post-processing's); this module
only derives the masks, so the data modules need nothing from the prediction side.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pixelwise.checks import check_choice

__all__ = [
    "DISTANCE_BANDS",
    "TARGET_CLASS_NAMES",
    "derive_target",
    "distance_target",
    "normalized_distance",
    "three_class_target",
    "two_class_target",
]

DISTANCE_BANDS = 4
"""Bands B of the ``"distance"`` target: class k = 1..B holds distances in ((k − 1)/B, k/B]."""

TARGET_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "two-class": ("background", "object"),
    "three-class": ("background", "interior", "boundary"),
    "distance": ("background", "edge", "outer", "inner", "core"),
}
"""The classes of each target, in class-index order (their count is the model's output count)."""


def _check_instances(instances: np.ndarray) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.ndim != 2 or instances.dtype.kind not in "iub":
        raise ValueError(
            f"instances must be an (H, W) integer label map, got shape {instances.shape} of "
            f"{instances.dtype}; pass instance ids (0 = background, 1..K = objects)"
        )
    return instances


def two_class_target(instances: np.ndarray) -> np.ndarray:
    """Background 0, object 1.

    Args:
        instances: (H, W) integer instance ids, 0 = background.

    Returns:
        (H, W) uint8 class mask.
    """
    return (_check_instances(instances) > 0).astype(np.uint8)


def three_class_target(instances: np.ndarray) -> np.ndarray:
    """Background 0, interior 1, boundary 2 (each object's one-pixel inner outline).

    Args:
        instances: (H, W) integer instance ids, 0 = background.

    Returns:
        (H, W) uint8 class mask.
    """
    from skimage.segmentation import find_boundaries

    instances = _check_instances(instances)
    objects = instances > 0
    target = objects.astype(np.uint8)
    target[find_boundaries(instances, connectivity=1, mode="inner") & objects] = 2
    return target


def normalized_distance(instances: np.ndarray) -> np.ndarray:
    """Each object pixel's Euclidean distance to the nearest pixel outside its object, divided by
    the largest such distance in the object (StarDist's ``edt_prob``); 0 on the background.

    Another object counts as outside (touching objects get low values where they meet); the image
    edge does not (an object cut by the border is measured as if it went on).

    Worked example: a 5 × 5 square alone in the middle of an image has distances 1 on its rim, 2
    on the ring inside and 3 at the centre, so 1/3, 2/3 and 1.

    Args:
        instances: (H, W) integer instance ids, 0 = background.

    Returns:
        (H, W) float32 in [0, 1].
    """
    from scipy import ndimage

    instances = _check_instances(instances).astype(np.int64, copy=False)  # (bool: one object)
    out = np.zeros(instances.shape, np.float32)
    height, width = instances.shape
    for i, box in enumerate(ndimage.find_objects(instances), 1):
        if box is None:
            continue
        # One pixel of context beyond the box, inside the image only (the edge is no outside).
        rows, cols = box
        grown = (
            slice(max(rows.start - 1, 0), min(rows.stop + 1, height)),
            slice(max(cols.start - 1, 0), min(cols.stop + 1, width)),
        )
        inside = instances[grown] == i
        if inside.all():  # nothing outside in view: the object fills the image
            out[grown][inside] = 1.0
            continue
        distance = ndimage.distance_transform_edt(inside)[inside]
        out[grown][inside] = distance / distance.max()
    return out


def distance_target(instances: np.ndarray, bands: int = DISTANCE_BANDS) -> np.ndarray:
    """Background 0, object pixels 1..`bands` by their normalised distance d: class k for d in
    ((k − 1)/bands, k/bands] (:func:`normalized_distance`), so each object's centre is `bands`.

    Args:
        instances: (H, W) integer instance ids, 0 = background.
        bands: the number of distance classes (the model then has `bands` + 1 outputs).

    Returns:
        (H, W) uint8 class mask.
    """
    distance = normalized_distance(instances)
    # An object pixel's distance is >= 1 pixel, so d > 0 and its class >= 1.
    return np.ceil(distance * bands).clip(0, bands).astype(np.uint8)


_DERIVE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "two-class": two_class_target,
    "three-class": three_class_target,
    "distance": distance_target,
}


def derive_target(instances: np.ndarray, target: str) -> np.ndarray:
    """The (H, W) uint8 class mask of `target` (a key of TARGET_CLASS_NAMES) for `instances`."""
    check_choice("target", target, tuple(_DERIVE))
    return _DERIVE[target](instances)
