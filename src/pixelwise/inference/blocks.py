"""Objects of images too large for memory: post-processing in overlapping blocks, then tables.

Streamed prediction (`pixelwise.inference`, images over `stream_pixels`) leaves the (K, H, W)
probabilities in a memory-mapped file. `objects_in_blocks` turns them into objects without
reading the whole map: the image is cut into core blocks of `block_size`² pixels; each core is
read with `overlap` pixels of context on every side (its window) and post-processed with
`pixelwise.instances.objects_from_probabilities`, the one way objects are made. An object is
taken from the window whose core holds the top-left corner of its bounding box, so each object
is taken exactly once, whole, by the window that sees at least `overlap` pixels above and left
of it and `overlap` minus its own size below and right. Objects are then renumbered 1..N in
raster order of their first pixel, as `objects_from_probabilities` numbers them.

Exactness. The watershed floods each connected foreground region on its own, from seeds inside it,
so an object whose connected foreground region lies inside a window is the whole-image object. In a
larger region (a confluent sheet of touching cells) a three-class or distance object's outline is
decided by the seeds competing for its pixels, its neighbours: the result then equals the
whole-image result when every object is at most `overlap` / 2 pixels across (its neighbours, within
one object size of it, are inside the window). `tests/test_inference.py` checks that on dense sheets
of touching cells, with and without hole filling (holes are filled per object, so that step stays
local too); the default overlap, 128 pixels, covers objects up to 64 pixels across (nuclei at usual
magnifications). One step of the whole-image post-processing looks further than the neighbours, and
can differ at block seams: two-class seeds (distance maxima, `skimage.feature.peak_local_max` per
connected foreground region with its greedy spacing) depend on the whole region.

Objects that reach the edge of their window are cut there: they are counted
(`BlockObjects.cut`) so the caller can say to pass a larger overlap; pixels two windows give to
different objects are counted too (`BlockObjects.conflicts`, 0 when the windows agree), the
later window's object keeping them. With `exclude_border`, objects are dropped where they touch
the image border, not a window's.

`object_rows` then reads the final map (and the probabilities) once more in row bands to list
each object's area, box, centroid and score (its mean foreground probability, what
`object_scores` computes on a whole map) as `pixelwise.instances.object_table` rows, and
`object_rles` encodes each object's COCO mask from the crop of its box.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pixelwise.instances import PostProcessing, objects_from_probabilities
from pixelwise.instances.tables import rle_encode

BLOCK_OVERLAP = 128
"""Default context (pixels) read around each block: exact for objects up to 64 px across."""

_BAND_PIXELS = 2**22  # pixels per row band of the renumbering and table passes (~16 MB int32)


@dataclass(frozen=True)
class BlockObjects:
    """What `objects_in_blocks` made.

    Attributes:
        count: N, the objects (ids 1..N) in the output map.
        cut: objects that reach the edge of their window (larger than the overlap allows).
        conflicts: pixels claimed by objects of two windows (0 when the windows agree).
    """

    count: int
    cut: int
    conflicts: int


@dataclass(frozen=True)
class _Window:
    """One block: its core rows/columns [top, bottom) × [left, right) and its window."""

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]


def _windows(shape: tuple[int, int], block_size: int, overlap: int) -> Iterator[_Window]:
    height, width = shape
    for top in range(0, height, block_size):
        for left in range(0, width, block_size):
            bottom, right = min(top + block_size, height), min(left + block_size, width)
            window = (
                max(top - overlap, 0),
                min(bottom + overlap, height),
                max(left - overlap, 0),
                min(right + overlap, width),
            )
            yield _Window((top, bottom, left, right), window)


def objects_in_blocks(
    probs: Any,
    params: PostProcessing,
    *,
    scratch: np.ndarray,
    out: Callable[[int], np.ndarray],
    block_size: int,
    overlap: int = BLOCK_OVERLAP,
) -> BlockObjects:
    """Objects of a large probability map, post-processed window by window (module docstring).

    Args:
        probs: (K, H, W) probabilities, an array read by region (np.memmap, tifffile.memmap,
            zarr, or an in-memory array).
        params: the post-processing record, as for `objects_from_probabilities`.
        scratch: (H, W) uint32 array (e.g. np.memmap) of zeros; holds provisional ids.
        out: `out(n)` returns the (H, W) integer array (e.g. a TIFF memory map) that receives
            the objects 1..n, once n is known; its dtype must hold n.
        block_size: side of the core blocks, in pixels (memory grows with (block_size +
            2·overlap)²).
        overlap: context in pixels read on each side of a core block.

    Returns:
        The counts of what was made (`BlockObjects`); the objects are in `out(count)`.
    """
    height, width = scratch.shape
    local = params.replace(exclude_border=False)  # windows' edges are not the image border
    next_id, cut, conflicts = 1, 0, 0
    for block in _windows((height, width), block_size, overlap):
        wt, wb, wl, wr = block.window
        window = np.asarray(probs[:, wt:wb, wl:wr], dtype=np.float32)  # (K, h, w)
        labels = objects_from_probabilities(window, local)  # (h, w)
        for index, box in enumerate(ndimage.find_objects(labels), 1):
            if box is None or not _anchored(box, block):
                continue
            rows, cols = box
            inner = (
                (rows.start == 0 and wt > 0)
                or (cols.start == 0 and wl > 0)
                or (rows.stop == wb - wt and wb < height)
                or (cols.stop == wr - wl and wr < width)
            )
            if params.exclude_border and _on_border(box, block, (height, width)):
                continue
            cut += inner
            mask = labels[box] == index  # (h', w')
            view = scratch[wt + rows.start : wt + rows.stop, wl + cols.start : wl + cols.stop]
            conflicts += int(np.count_nonzero(view[mask]))
            view[mask] = next_id
            next_id += 1
    lookup = _raster_order(scratch, next_id)
    count = int(lookup.max(initial=0))
    target = out(count)
    for r0, r1 in _bands(height, width):
        target[r0:r1] = lookup[np.asarray(scratch[r0:r1])]
    return BlockObjects(count=count, cut=cut, conflicts=conflicts)


def _anchored(box: tuple[slice, slice], block: _Window) -> bool:
    """Is the top-left corner of the object's box (window coordinates) in the block's core?"""
    top, bottom, left, right = block.core
    y0, x0 = box[0].start + block.window[0], box[1].start + block.window[2]
    return top <= y0 < bottom and left <= x0 < right


def _on_border(box: tuple[slice, slice], block: _Window, shape: tuple[int, int]) -> bool:
    """Does the object's box (window coordinates) touch the image border?"""
    wt, _, wl, _ = block.window
    rows, cols = box
    return (
        rows.start + wt == 0
        or cols.start + wl == 0
        or rows.stop + wt == shape[0]
        or cols.stop + wl == shape[1]
    )


def _bands(height: int, width: int) -> Iterator[tuple[int, int]]:
    """Row bands [r0, r1) of about `_BAND_PIXELS` pixels."""
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for r0 in range(0, height, rows):
        yield r0, min(r0 + rows, height)


def _raster_order(scratch: np.ndarray, n_ids: int) -> np.ndarray:
    """(n_ids,) lookup provisional id → final id, 1..N in raster order of first pixel; ids no
    pixel kept (fully overwritten) and 0 map to 0."""
    width = scratch.shape[1]
    never = np.iinfo(np.int64).max
    first = np.full(n_ids, never, np.int64)
    for r0, r1 in _bands(scratch.shape[0], width):
        ids, index = np.unique(np.asarray(scratch[r0:r1]), return_index=True)
        first[ids] = np.minimum(first[ids], index + r0 * width)
    first[0] = never
    present = np.flatnonzero(first < never)
    order = present[np.argsort(first[present], kind="stable")]
    lookup = np.zeros(n_ids, np.int64)
    lookup[order] = np.arange(1, order.size + 1)
    return lookup


def object_rows(objects: np.ndarray, probs: Any, count: int) -> list[dict[str, Any]]:
    """`object_table` rows of a map too large for memory, read in row bands.

    Args:
        objects: (H, W) objects 1..count (e.g. the TIFF memory map `objects_in_blocks` filled).
        probs: (K, H, W) probabilities read by region; class 0 is the background.
        count: N.

    Returns:
        One row per object, as `pixelwise.instances.object_table` gives them, with ``class`` 1
        (the object class) and ``mean_probability`` its score: the mean foreground probability
        1 − P(background) over its pixels (`pixelwise.instances.object_scores`).
    """
    height, width = objects.shape
    area = np.zeros(count + 1, np.int64)
    sums = np.zeros((3, count + 1))  # Σ row, Σ column, Σ foreground probability
    y0 = np.full(count + 1, height)
    x0 = np.full(count + 1, width)
    y1 = np.zeros(count + 1, np.int64)
    x1 = np.zeros(count + 1, np.int64)
    columns = np.arange(width, dtype=np.float64)
    for r0, r1 in _bands(height, width):
        band = np.asarray(objects[r0:r1]).astype(np.int64)  # (rows, W)
        flat = band.ravel()
        area += np.bincount(flat, minlength=count + 1)
        rows = np.repeat(np.arange(r0, r1, dtype=np.float64), width)
        sums[0] += np.bincount(flat, weights=rows, minlength=count + 1)
        sums[1] += np.bincount(flat, weights=np.tile(columns, r1 - r0), minlength=count + 1)
        foreground = 1.0 - np.asarray(probs[0, r0:r1], np.float64).ravel()
        sums[2] += np.bincount(flat, weights=foreground, minlength=count + 1)
        for obj, box in enumerate(ndimage.find_objects(band, max_label=count), 1):
            if box is not None:
                y0[obj] = min(y0[obj], box[0].start + r0)
                y1[obj] = max(y1[obj], box[0].stop + r0)
                x0[obj] = min(x0[obj], box[1].start)
                x1[obj] = max(x1[obj], box[1].stop)
    return [
        {
            "id": obj,
            "class": 1,
            "area": int(area[obj]),
            "bbox": (int(y0[obj]), int(x0[obj]), int(y1[obj]), int(x1[obj])),
            "centroid": (float(sums[0, obj] / area[obj]), float(sums[1, obj] / area[obj])),
            "mean_probability": float(sums[2, obj] / area[obj]),
        }
        for obj in range(1, count + 1)
        if area[obj]
    ]


def object_rles(objects: np.ndarray, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """COCO uncompressed RLE of each row's object, from the crop of its box only."""
    size = objects.shape
    result = []
    for row in rows:
        top, left, bottom, right = row["bbox"]
        crop = np.asarray(objects[top:bottom, left:right]) == row["id"]  # (h, w)
        result.append(rle_encode(crop, offset=(top, left), size=size))
    return result
