"""napari's "Save layer" for Labels layers, in the files `pixelwise predict` writes.

A class map layer made by the widget (metadata "pixelwise" kind "classes") goes to a palette PNG
coloured like the command line's class maps (`<out>/<name>.png`; read back as class indices by
`pixelwise.data.read_image` and `pixelwise evaluate`), or a grey TIFF of class ids; any other
Labels layer (the widget's objects, hand-drawn labels) to a uint16 TIFF or PNG of its ids, uint32
TIFF above 65 535 objects, as `pixelwise predict --instances` writes instances/<name>.tif. Every
file is written atomically through `pixelwise.data.write_image` (`pixelwise.atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.arrays import as_instances
from pixelwise.data import write_image
from pixelwise.inference.outputs import instance_dtype

__all__ = ["write_labels"]


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer (npe2 single-layer writer).

    Args:
        path: destination, ending in .png, .tif or .tiff.
        data: the layer's (H, W) integer labels (0 = background).
        meta: the layer's attributes; `meta["metadata"]["pixelwise"]` marks the widget's layers.

    Returns:
        [path] once written.

    Raises:
        ValueError: not a 2-D image of labels ≥ 0, or more than 65 535 ids for a PNG (the
            message names the layer's shape or values and the fix).
    """
    labels = as_instances(np.asarray(data), f"layer {meta.get('name', 'labels')!r}")  # (H, W)
    record = (meta.get("metadata") or {}).get("pixelwise") or {}
    highest = int(labels.max(initial=0))
    if record.get("kind") == "classes":
        dtype = np.uint8 if highest < 256 else np.uint16
        colours = np.asarray(record.get("palette", []), np.uint8).reshape(-1, 3)
        png = Path(path).suffix.lower() == ".png"
        palette = colours if png and highest < len(colours) else None  # else grey ids
        write_image(path, labels.astype(dtype), palette=palette)
    else:
        write_image(path, labels.astype(instance_dtype(highest)))
    return [path]
