"""How a `Segmentation` becomes napari Labels layers, and the colours of a checkpoint's classes.

`segmentation_layers` returns napari layer-data tuples ``(data, kwargs, "labels")``: the class
map, coloured as `pixelwise predict` colours its palette PNGs (the checkpoint's "palette", else
the PASCAL VOC colours; background transparent) with the checkpoint's class names as the layer's
features (napari shows the name of the class under the cursor), and, for instance models, the
objects with their scores as features. Pure data: no napari import, so it is usable and testable
without Qt.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pixelwise.data.palette import checkpoint_palette
from pixelwise.segmenter import Segmentation

__all__ = ["class_names", "segmentation_layers"]

LayerData = tuple[Any, dict[str, Any], str]
"""napari's layer-data tuple: (data, layer keyword arguments, layer type)."""


def class_names(meta: dict[str, Any], num_classes: int) -> list[str]:
    """The checkpoint's K class names, completed with "class <i>" where it records fewer."""
    names = list(meta.get("class_names") or [])[:num_classes]
    return names + [f"class {i}" for i in range(len(names), num_classes)]


def _colormap(colours: np.ndarray) -> dict[int | None, tuple[float, ...]]:
    """napari direct colormap {label: RGBA in [0, 1]}: class 0 and unknown labels transparent."""
    rgba = {i: (*(c / 255).tolist(), 1.0) for i, c in enumerate(colours)}
    rgba[0] = rgba[None] = (0.0, 0.0, 0.0, 0.0)
    return rgba


def segmentation_layers(
    result: Segmentation,
    meta: dict[str, Any],
    *,
    name: str,
    checkpoint: str,
    **layer_kwargs: Any,
) -> list[LayerData]:
    """The Labels layers of one segmented image.

    Args:
        result: `Segmenter.predict`'s (or `SegmentationJob`'s) result for the image.
        meta: the checkpoint's metadata (class names, palette).
        name: the image's name; the layers are "<name> classes" and "<name> objects".
        checkpoint: the checkpoint's path, recorded in the layers' metadata.
        **layer_kwargs: more napari layer arguments for both (e.g. the image's scale).

    Returns:
        [(labels (H, W), kwargs, "labels")] and, for instance models,
        [(instances (H, W) int32, kwargs, "labels")] after it.
    """
    k = result.probabilities.shape[0]
    names = class_names(meta, k)
    colours, _ = checkpoint_palette(meta, k)
    record = {"checkpoint": checkpoint, "class_names": names, "palette": colours.tolist()}
    classes = {
        "name": f"{name} classes",
        "colormap": _colormap(colours),
        "features": {"index": np.arange(k), "class": names},
        "metadata": {"pixelwise": {"kind": "classes", **record}},
        **layer_kwargs,
    }
    layers: list[LayerData] = [(result.labels, classes, "labels")]
    if result.instances is not None:
        scores = np.asarray(result.scores, np.float64)  # (N,)
        objects = {
            "name": f"{name} objects",
            "features": {"index": np.arange(1, len(scores) + 1), "score": scores},
            "metadata": {"pixelwise": {"kind": "instances", **record}},
            **layer_kwargs,
        }
        layers.append((result.instances, objects, "labels"))
    return layers
