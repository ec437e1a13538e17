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

The target names are :data:`pixelwise.instances.TARGETS` (the post-processing's); this module
only derives the masks, so the data modules need nothing from the prediction side.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pixelwise.checks import check_choice

__all__ = ["TARGET_CLASS_NAMES", "derive_target", "three_class_target", "two_class_target"]

TARGET_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "two-class": ("background", "object"),
    "three-class": ("background", "interior", "boundary"),
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


_DERIVE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "two-class": two_class_target,
    "three-class": three_class_target,
}


def derive_target(instances: np.ndarray, target: str) -> np.ndarray:
    """The (H, W) uint8 class mask of `target` ("two-class" or "three-class") for `instances`."""
    check_choice("target", target, tuple(_DERIVE))
    return _DERIVE[target](instances)
