"""The one colour map of pixelwise: PASCAL VOC colours and palette checks.

Used to decode RGB masks (:mod:`pixelwise.data.masks`), to colour palette PNG class maps
(:func:`pixelwise.data.write_image`) and overlays (:mod:`pixelwise.report`). Owns no file I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC colour map: class ``i`` gets the colour built from the bits of ``i``.

    Bits 0, 1, 2 of ``i`` set the top bit of R, G, B; bits 3, 4, 5 the next bit, and so on, so the
    first colours are far apart: 0 black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ...
    Worked example: ``i = 255`` → R = G = 128+64+32 = 224, B = 128+64 = 192 → (224, 224, 192),
    the VOC "void/boundary" colour.

    Args:
        n: number of entries, 1..256 (a PNG palette holds at most 256 colours).

    Returns:
        (n, 3) uint8 array, row ``i`` = RGB colour of class ``i``.
    """
    if not 1 <= n <= 256:
        raise ValueError(f"n must be in 1..256, got {n}; a PNG palette has at most 256 colours")
    index = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


VOC_PALETTE = voc_palette()
"""(256, 3) uint8: the full VOC colour map."""


def as_palette(palette: Any) -> np.ndarray:
    """Check a palette and return it as an (n, 3) uint8 array (row i = RGB colour of class i)."""
    array = np.asarray(palette)
    if (
        array.ndim != 2
        or array.shape[1] != 3
        or not 1 <= array.shape[0] <= 256
        or array.dtype.kind not in "iu"
        or array.min() < 0
        or array.max() > 255
    ):
        raise ValueError(
            f"palette must be an (n, 3) integer array of RGB values 0..255 with 1 <= n <= 256, "
            f"got shape {array.shape} dtype {array.dtype}; pass one RGB row per class"
        )
    return array.astype(np.uint8)


def checkpoint_palette(meta: dict[str, Any], num_classes: int) -> tuple[np.ndarray, str | None]:
    """(colours, note): a checkpoint's class colours, as `pixelwise predict` and napari use them.

    The checkpoint's recorded "palette" completed by the VOC map to max(num_classes, 2) rows
    (at most 256); a palette that is not (n, 3) RGB is ignored, and `note` says so (else None).

    Returns:
        (max(K, 2), 3) uint8 colours, row i = class i, and the note.
    """
    colours = voc_palette(min(max(num_classes, 2), 256))
    recorded = meta.get("palette")
    if recorded is None:
        return colours, None
    try:
        given = as_palette(recorded)
    except (ValueError, TypeError) as e:
        return colours, f"checkpoint palette ignored ({e}); using the PASCAL VOC colours"
    rows = min(len(given), len(colours))
    colours[:rows] = given[:rows]
    return colours, None
