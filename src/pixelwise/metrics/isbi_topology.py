"""The order-dependent image algorithms behind the ISBI 2012 scores, as Fiji runs them.

Fiji's challenge code (fiji/Trainable_Segmentation, ``trainableSegmentation.metrics``) computes
two of its scores with sequential algorithms whose result depends on the order in which pixels
are visited. This module reproduces those orders exactly and vectorises them, processing
together the pixels whose decisions cannot affect one another:

* :func:`sequential_warp`: ``WarpingError.simplePointWarp2d``. The binary ground truth is warped
  toward the binarised prediction by flipping simple pixels (foreground 4-, background
  8-connected; outside the image is background), one pass after another. In each pass the
  mismatching pixels are visited one by one, most confident prediction first (``|p - t|``
  descending, ties in column-major order), each tested against the flips made before it.
* :func:`count_splits_and_mergers`: ``WarpingError.classifyMismatches2d`` followed by
  ``clusterMismatchesByType`` with the radius 20 of the challenge script: the mismatches left
  after warping, classified by the warped ground truth's 4-connected components around them
  (ImageJ's 8-bit conversion quirk included: see ``blank_components``).
* :func:`thin_borders`: ``WatershedTransform2D`` (Vincent & Soille 1991 flooding, 4-connected)
  of the binarised prediction with membrane = 255, interior = 0: the cells become basins and
  the membrane is flooded from them in first-in first-out order, leaving watershed lines
  (label 0) one to two pixels wide where basins meet.

A sequential scan is replayed in waves (:func:`sequential_waves`): a pixel waits only for the
earlier pixels of the scan within its 3x3 neighbourhood, the only ones its decision reads.
Pixels in one wave are never neighbours, so each wave is one vectorised step and the result is
the sequential one. :func:`simple_point_table` is the 256-entry simple-point table that both
warps (this one and :mod:`pixelwise.metrics.isbi_legacy`'s) use; Fiji's
``simple2DBertrand`` (a 3-D test on the 3x3 patch) gives the same table.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

__all__ = [
    "CHALLENGE_RADIUS",
    "FOUR",
    "RING",
    "count_splits_and_mergers",
    "neighbour_codes",
    "sequential_warp",
    "sequential_waves",
    "simple_point_table",
    "thin_borders",
]

FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
"""4-connectivity structuring element (Fiji's connected components use 4-adjacency)."""

RING: tuple[tuple[int, int], ...] = (
    (-1, -1),
    (-1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
    (1, 0),
    (1, -1),
    (0, -1),
)
"""The 8 neighbours (dy, dx) clockwise from north-west; bit k of a neighbour code is RING[k]."""

# Neighbour order of Fiji's Neighborhood2DC4 in (dx, dy): left, up, right, down.
_FIFO_NEIGHBOURS: tuple[tuple[int, int], ...] = ((-1, 0), (0, -1), (1, 0), (0, 1))
CHALLENGE_RADIUS = 20
_WINDOWS_PER_CALL = 2048  # windows labelled per ndimage.label call (about 3.4 M pixels at r = 20)
"""Radius of the local re-labelling when a mismatch may split a cell (the challenge script's 20)."""


def _components(cells: list[tuple[int, int]], diagonal: bool) -> list[set]:
    """Connected components of a set of neighbourhood cells (4- or 8-adjacency)."""
    remaining = set(cells)
    components = []
    while remaining:
        stack = [remaining.pop()]
        component = set(stack)
        while stack:
            y, x = stack.pop()
            for other in list(remaining):
                dy, dx = abs(other[0] - y), abs(other[1] - x)
                if dy + dx == 1 or (diagonal and dy == 1 and dx == 1):
                    remaining.remove(other)
                    component.add(other)
                    stack.append(other)
        components.append(component)
    return components


@functools.cache
def simple_point_table() -> np.ndarray:
    """256-entry table: is the centre pixel simple for (4, 8) topology given its 8 neighbours?

    Entry ``code`` has bit k set when neighbour :data:`RING` [k] is foreground. The centre is
    simple iff T4(p, X) = 1 and T8(p, X') = 1 (Bertrand 1994): exactly one 4-component of
    foreground neighbours is 4-adjacent to p, and the background neighbours form exactly one
    8-component. The answer does not depend on the centre's own value, so one table serves
    both deletions and additions.
    """
    table = np.zeros(256, dtype=bool)
    for code in range(256):
        fg = [off for bit, off in enumerate(RING) if code >> bit & 1]
        bg = [off for bit, off in enumerate(RING) if not code >> bit & 1]
        t4 = sum(
            1
            for comp in _components(fg, diagonal=False)
            if any(abs(y) + abs(x) == 1 for y, x in comp)
        )
        t8 = len(_components(bg, diagonal=True))
        table[code] = t4 == 1 and t8 == 1
    return table


def neighbour_codes(padded: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(M,) uint8 :data:`RING` codes of the 8 neighbours of (ys, xs) in a padded bool map."""
    code = np.zeros(ys.size, dtype=np.uint8)
    for bit, (dy, dx) in enumerate(RING):
        code |= padded[ys + dy, xs + dx].astype(np.uint8) << bit
    return code


def sequential_waves(neighbour_rank: np.ndarray) -> Iterator[np.ndarray]:
    """Replay a sequential scan in waves of pixels that do not depend on one another.

    Pixel ``r`` (its position in the scan) depends on each neighbour with a smaller rank. A
    wave holds the pixels whose earlier neighbours are all decided (Kahn's topological order);
    two neighbours are never in one wave, so deciding a whole wave at once from the current
    state gives the state of the sequential scan.

    Args:
        neighbour_rank: (M, K) int array, the scan ranks of each pixel's K neighbours that
            take part in the scan, -1 for the others.

    Yields:
        (W,) int arrays of ranks, in an order that respects every dependency.
    """
    m = neighbour_rank.shape[0]
    own = np.arange(m)[:, None]  # (M, 1)
    earlier = (neighbour_rank >= 0) & (neighbour_rank < own)  # (M, K)
    later = neighbour_rank > own  # (M, K)
    waiting = earlier.sum(axis=1)  # (M,) undecided earlier neighbours
    wave = np.flatnonzero(waiting == 0)
    while wave.size:
        yield wave
        successors = neighbour_rank[wave][later[wave]]
        ranks, counts = np.unique(successors, return_counts=True)
        waiting[ranks] -= counts
        wave = ranks[waiting[ranks] == 0]


def _forward_closure(seeds: np.ndarray, neighbours: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Sorted ranks reachable from ``seeds`` through later-ranked alive neighbours (seeds too)."""
    reached = np.zeros(alive.size, dtype=bool)
    reached[seeds] = True
    frontier = seeds
    while frontier.size:
        later = neighbours[frontier]  # (F, 8)
        later = later[later > frontier[:, None]]
        later = later[alive[later] & ~reached[later]]
        frontier = np.unique(later)
        reached[frontier] = True
    return np.flatnonzero(reached)


def sequential_warp(
    gt: np.ndarray, probabilities: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp ``gt`` toward ``probabilities > threshold`` as ``simplePointWarp2d`` does.

    Fiji re-lists the mismatches before every pass, but a flipped pixel never mismatches again
    and the confidence order is fixed, so one ranking of the first mismatches serves every
    pass. A pass only needs the pixels that can flip in it: a mismatch whose neighbourhood has
    not changed since its own test in the previous pass is still not simple. Those are the
    pixels with a neighbour that flipped after their turn, and, within the pass, every later
    pixel next to one of them (:func:`_forward_closure`); the rest keep their state.

    Args:
        gt: (H, W) bool ground-truth interior.
        probabilities: (H, W) float32 interior probabilities (compared in float64, as Java).
        threshold: binarisation threshold (interior = ``> threshold``).

    Returns:
        ``(warped, ys, xs)``: the (H, W) bool warped ground truth and the (M,) coordinates of
        the pixels where it still disagrees with the binarised prediction.
    """
    values = probabilities.astype(np.float64)
    target = np.pad(values > threshold, 1)  # (H + 2, W + 2), outside = background
    confidence = np.abs(values - threshold).astype(np.float32)  # Java's (float) Math.abs
    source = np.pad(gt.astype(bool), 1)
    xs, ys = np.nonzero((source != target).T)  # column-major, the order Java lists them in
    order = np.argsort(-confidence[ys - 1, xs - 1], kind="stable")  # most confident first
    ys, xs = ys[order], xs[order]  # padded coordinates, in scan order
    rank = np.full(source.shape, -1, dtype=np.int64)
    rank[ys, xs] = np.arange(ys.size)
    neighbours = np.stack([rank[ys + dy, xs + dx] for dy, dx in RING], axis=1)  # (M, 8)
    alive = np.ones(ys.size, dtype=bool)  # still mismatched
    table = simple_point_table()
    tested = np.arange(ys.size)  # the first pass tests every mismatch
    while tested.size:
        local = np.full(ys.size + 1, -1, dtype=np.int64)  # last entry: rank -1 stays -1
        local[tested] = np.arange(tested.size)
        flipped = []
        for wave in sequential_waves(local[neighbours[tested]]):
            ranks = tested[wave]
            simple = table[neighbour_codes(source, ys[ranks], xs[ranks])]
            source[ys[ranks[simple]], xs[ranks[simple]]] ^= True
            flipped.append(ranks[simple])
        flipped = np.concatenate(flipped) if flipped else np.zeros(0, dtype=np.int64)
        alive[flipped] = False
        earlier = neighbours[flipped]  # (F, 8): who was tested before these flips
        dirty = np.unique(earlier[(earlier >= 0) & (earlier < flipped[:, None])])
        tested = _forward_closure(dirty[alive[dirty]], neighbours, alive)
    left = np.flatnonzero(alive)
    return source[1:-1, 1:-1], ys[left] - 1, xs[left] - 1


def _distinct(values: np.ndarray) -> np.ndarray:
    """(M,) number of distinct values >= 0 in each row of an (M, K) array (-1 = absent)."""
    s = np.sort(values, axis=1)
    new = s[:, 1:] != s[:, :-1]
    return (s[:, 0] >= 0).astype(np.int64) + ((s[:, 1:] >= 0) & new).sum(axis=1)


_PLANES = np.zeros((3, 3, 3), dtype=bool)
_PLANES[1] = FOUR  # 4-connected within each window of a (K, 2r + 1, 2r + 1) stack, not across


def _splits_after_deletion(labels: np.ndarray, cy: int, cx: int) -> np.ndarray:
    """(K,) more than two ids (background counts) among the 8 neighbours of (cy, cx)?

    ``labels`` is (K, h, w), padded with -1 where a neighbour lies outside the image.
    """
    around = np.stack([labels[:, cy + dy, cx + dx] for dy, dx in RING], axis=1)  # (K, 8)
    return _distinct(around) > 2


def _split_tests(warped: np.ndarray, ys: np.ndarray, xs: np.ndarray, radius: int) -> np.ndarray:
    """(M,) Fiji's split test for foreground mismatches with one cell and background around.

    Each pixel is deleted and its neighbourhood re-labelled (4-connected); more than two ids
    among its 8 neighbours afterwards (background counts as one) make it a split. With
    ``radius`` >= 1 only the (2r + 1)^2 window around the pixel is re-labelled (outside the
    image is background there); with -1 the whole image (neighbours outside it are left out).
    """
    if radius == -1:  # images smaller than the radius: one whole-image labelling per pixel
        splits = np.zeros(ys.size, dtype=bool)
        for k, (y, x) in enumerate(zip(ys.tolist(), xs.tolist(), strict=True)):
            image = warped.copy()
            image[y, x] = False
            labels = np.pad(ndimage.label(image, structure=FOUR)[0], 1, constant_values=-1)
            splits[k] = _splits_after_deletion(labels[None], y + 1, x + 1)[0]
        return splits
    side = 2 * radius + 1
    views = sliding_window_view(np.pad(warped, radius), (side, side))  # (H, W, side, side)
    splits = []
    for start in range(0, ys.size, _WINDOWS_PER_CALL):
        windows = views[
            ys[start : start + _WINDOWS_PER_CALL], xs[start : start + _WINDOWS_PER_CALL]
        ]
        windows = windows.copy()  # (K, side, side), centred on the pixels
        windows[:, radius, radius] = False
        labels, _ = ndimage.label(windows, structure=_PLANES)
        splits.append(_splits_after_deletion(labels, radius, radius))
    return np.concatenate(splits)


def count_splits_and_mergers(
    warped: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    *,
    blank_components: bool = False,
    radius: int = CHALLENGE_RADIUS,
) -> tuple[int, int]:
    """Classify the mismatches left after warping; count the splits and the mergers.

    Args:
        warped: (H, W) bool warped ground truth.
        ys, xs: (M,) coordinates of the remaining mismatches.
        blank_components: ImageJ's 8-bit conversion of the warped labels, scaled by the
            ground-truth slice's display range, turns every pixel to 0 when that slice has no
            membrane pixel (range 255..255); then no mismatch is a split or a merger. Pass
            ``gt.all()``.
        radius: window radius of the local split test; -1 (or a radius larger than the image)
            uses the whole image.

    Returns:
        ``(splits, mergers)``: a mismatch on a foreground pixel whose neighbours hold two or
        more cells (or whose deletion would leave two) is a split; on a background pixel whose
        neighbours hold two or more cells a merger.
    """
    h, w = warped.shape
    if radius < 1 or radius > w or radius > h:
        radius = -1
    if ys.size == 0:
        return 0, 0
    labels = (
        np.zeros((h, w), dtype=np.int64)
        if blank_components
        else ndimage.label(warped, structure=FOUR)[0].astype(np.int64)
    )
    padded = np.pad(labels, 1, constant_values=-1)  # -1: outside the image, left out
    around = np.stack([padded[ys + 1 + dy, xs + 1 + dx] for dy, dx in RING], axis=1)  # (M, 8)
    distinct = _distinct(around)
    centre = labels[ys, xs]
    several = (distinct >= 3) | (distinct == 0)  # Fiji's last branch (0: a 1x1 image)
    mergers = int(np.count_nonzero(several & (centre == 0)))
    splits = int(np.count_nonzero(several & (centre != 0)))
    local = np.flatnonzero((distinct == 2) & (centre != 0))
    if local.size:
        splits += int(np.count_nonzero(_split_tests(warped, ys[local], xs[local], radius)))
    return splits, mergers


def _fifo_neighbours(index: np.ndarray, width: int, height: int) -> np.ndarray:
    """(M, 4) flat indices of the left, up, right, down neighbours in a (W, H) map, -1 outside."""
    x, y = np.divmod(index, height)
    return np.stack(
        [
            np.where(
                (x + dx >= 0) & (x + dx < width) & (y + dy >= 0) & (y + dy < height),
                index + dx * height + dy,
                -1,
            )
            for dx, dy in _FIFO_NEIGHBOURS
        ],
        axis=1,
    )


def _fifo_order(interior: np.ndarray) -> np.ndarray:
    """Flat indices of the membrane pixels reached from the cells, in Fiji's FIFO order.

    ``interior`` is (W, H), indexed [x, y] like Java's tabLabels. The queue starts with the
    membrane pixels 4-adjacent to a cell, column-major; each pixel taken from the queue appends
    its undiscovered membrane neighbours in the order left, up, right, down.
    """
    width, height = interior.shape
    discovered = interior.ravel().copy()
    touching = ndimage.binary_dilation(interior, structure=FOUR) & ~interior
    layer = np.flatnonzero(touching.ravel())
    layers = []
    while layer.size:
        discovered[layer] = True
        layers.append(layer)
        # parent-major, direction-minor: the order the queue receives them
        candidates = _fifo_neighbours(layer, width, height).ravel()
        candidates = candidates[candidates >= 0]
        candidates = candidates[~discovered[candidates]]
        _, first = np.unique(candidates, return_index=True)
        layer = candidates[np.sort(first)]
    return np.concatenate(layers) if layers else np.zeros(0, dtype=np.int64)


def thin_borders(interior: np.ndarray) -> np.ndarray:
    """Fiji's border thinning: ``WatershedTransform2D`` of the binarised prediction.

    A membrane pixel taken from the queue gets the label of the one cell among its already
    labelled neighbours, or 0 (a watershed line) when it sees none or two (Fiji's flag logic
    comes down to that); the waves of :func:`sequential_waves` replay the queue's order.

    Args:
        interior: (H, W) bool, True = cell interior (``probability > threshold``).

    Returns:
        (H, W) int64 labels: the cells' 4-connected components (numbered column-major, as the
        flooding finds them) grown over the membrane, 0 on the watershed lines where two cells
        meet; membrane regions that touch no cell get labels of their own.
    """
    t = np.ascontiguousarray(interior.T)  # (W, H): Java's [x][y], C order = column-major
    width, height = t.shape
    basins, count = ndimage.label(t, structure=FOUR)
    labels = np.append(basins.ravel().astype(np.int64), -1)  # last entry: outside the image
    labels[:-1][~t.ravel()] = -1  # membrane: undecided
    fifo = _fifo_order(t)
    if fifo.size:
        neighbour_index = _fifo_neighbours(fifo, width, height)  # (M, 4), -1 = outside
        rank = np.full(labels.size, -1, dtype=np.int64)
        rank[fifo] = np.arange(fifo.size)
        for wave in sequential_waves(rank[neighbour_index]):
            seen = labels[neighbour_index[wave]]  # (W, 4): cells > 0, lines 0, undecided -1
            cells = seen > 0
            high = np.where(cells, seen, 0).max(axis=1)
            low = np.where(cells, seen, np.iinfo(np.int64).max).min(axis=1)
            labels[fifo[wave]] = np.where(cells.any(axis=1) & (high == low), high, 0)
    out = labels[:-1].reshape(width, height)
    unreached = out < 0  # membrane not connected to any cell: new minima at level 255
    if unreached.any():
        extra, _ = ndimage.label(unreached, structure=FOUR)
        out[unreached] = extra[unreached] + count
    return out.T
