"""The napari sample: the demo's held-out image of touching cells and its true objects.

`pixelwise demo` scores its two trained models on this image (`pixelwise.demo.run_demo`: a
512 × 512 `touching_cells` image seeded 10 000, stored as uint8, objects separated by a
background line where they touch), so a checkpoint the demo trained can be tried on it in napari
at once. The image is made, not downloaded (about a second).
"""

from __future__ import annotations

from pixelwise.instances import separate_touching
from pixelwise.napari.layers import LayerData
from pixelwise.synthetic import to_uint8, touching_cells

__all__ = ["DEMO_SEED", "DEMO_SIZE", "touching_cells_sample"]

DEMO_SIZE = 512
"""Side of the demo's held-out image (`run_demo`, not quick)."""
DEMO_SEED = 10_000
"""Its `touching_cells` seed (`run_demo`'s seed 0 + 10 000)."""


def touching_cells_sample(size: int = DEMO_SIZE, seed: int = DEMO_SEED) -> list[LayerData]:
    """The sample's layers: the (size, size) uint8 image and its int32 true objects.

    Args:
        size: image side in pixels; the default is the demo's.
        seed: `touching_cells` seed; the default is the demo's.

    Returns:
        [(image, {"name": "touching cells"}, "image"),
        (objects, {"name": "touching cells: true objects", "visible": False}, "labels")].
    """
    image, objects = touching_cells((size, size), rng=seed)
    return [
        (to_uint8(image), {"name": "touching cells"}, "image"),
        (
            separate_touching(objects),
            {"name": "touching cells: true objects", "visible": False},
            "labels",
        ),
    ]
