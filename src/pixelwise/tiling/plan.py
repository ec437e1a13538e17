"""Tile plans: where each tile reads its input and which image pixels its output supplies.

Pure integer arithmetic on the models' geometry API (`pixelwise.models.Geometry`), no tensors:
the mirror index map of the extended image (`source_index`), the tiles along one axis
(`plan_axis`) and over an image (`plan_tiles`), and the checks of tile sizes and halos that the
options (`pixelwise.tiling.options`) and the engine (`pixelwise.tiling.engine`) share, so each
error has one wording.

Coordinates: *image* coordinates index the image; *extended* coordinates index the virtual
extended image, extended = image + margin. A tile's input window is given in extended
coordinates; its output pixel j supplies image pixel (tile start + j).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from pixelwise.checks import choice_message, is_int
from pixelwise.models import Geometry

PAD_MODES = ("reflect", "constant", "replicate")

MAX_DEFAULT_HALO = 128
"""Cap of the default halo of same-padding networks, in input pixels. FCN-VGG16's receptive radius
is 202 pixels, but far context barely moves its scores while the overlap cost grows with it."""


# --------------------------------------------------------------------------------------------
# Mirror extension: index maps
# --------------------------------------------------------------------------------------------


def source_index(coords: np.ndarray, n: int, mode: str = "reflect") -> np.ndarray:
    """Map coordinates of the extended axis to indices of an axis of length `n`.

    Args:
        coords: integer image coordinates of any value (negative: before the image, ≥ n: after).
        n: length of the image axis, ≥ 1.
        mode: "reflect" (mirror without repeating the edge pixel, as np.pad(mode="reflect") and
            the paper), "replicate" (repeat the edge pixel) or "constant" (zeros).

    Returns:
        int64 array shaped like `coords`: the source index in [0, n), or −1 where the value is
        the constant zero ("constant" mode outside the image).

    Reflection is periodic with period 2(n − 1), which makes it correct for any distance from
    the image, also when the margin exceeds the image size (repeated reflection). Worked example
    for n = 4 (period 6): coordinates −5..8 fold to 1 2 3 2 1 | 0 1 2 3 | 2 1 0 1 2. An axis of
    length 1 reflects to itself.
    """
    c = np.asarray(coords, dtype=np.int64)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(c)
        period = 2 * (n - 1)
        c = np.mod(c, period)  # in [0, period)
        return np.where(c < n, c, period - c)
    if mode == "replicate":
        return np.clip(c, 0, n - 1)
    if mode == "constant":
        return np.where((c >= 0) & (c < n), c, -1)
    raise ValueError(choice_message("pad_mode", mode, PAD_MODES))


# --------------------------------------------------------------------------------------------
# Tile geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """One tile: where its input is read and which image pixels its output supplies.

    Attributes:
        top, left: first input pixel in extended coordinates (image + margin); multiples of the
            model's stride.
        height, width: input size, valid for the model.
        row_start, row_stop, col_start, col_stop: the image window [row_start, row_stop) ×
            [col_start, col_stop) that this tile's output supplies; the windows of a plan
            partition the image.
    """

    top: int
    left: int
    height: int
    width: int
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int

    @property
    def output_pixels(self) -> int:
        """The number of image pixels this tile's output supplies."""
        return (self.row_stop - self.row_start) * (self.col_stop - self.col_start)

    @property
    def output_window(self) -> tuple[slice, slice]:
        """(rows, cols) of the image written by this tile."""
        return slice(self.row_start, self.row_stop), slice(self.col_start, self.col_stop)

    @property
    def crop(self) -> tuple[slice, slice]:
        """(rows, cols) of the tile's output map that go to `output_window`."""
        return (
            slice(self.row_start - self.top, self.row_stop - self.top),
            slice(self.col_start - self.left, self.col_stop - self.left),
        )


def plan_axis(
    length: int,
    tile: int,
    *,
    margin: int,
    stride: int,
    halo: int = 0,
    extent: int | None = None,
) -> list[tuple[int, int, int]]:
    """Tiles along one axis: (input start, keep start, keep stop) for each.

    Args:
        length: image size along the axis.
        tile: input tile size (valid for the model); its output has tile − 2·margin pixels.
        margin: context lost per side by the model (0 for same padding).
        stride: pooling grid; every input start is a multiple of it.
        halo: pixels of each tile's output discarded next to a neighbouring tile (same-padding
            models); 0 for valid models, whose tiles are exact.
        extent: same-padding models only: the padded axis length the tiles stay inside (the
            smallest size ≥ length the model accepts); the last tile ends exactly there, so no
            tile sees more padding than whole-image inference. Defaults to `length`.

    Returns:
        For each tile: its input start in extended coordinates and the image range
        [keep start, keep stop) its output supplies. The keep ranges partition [0, length).

    Raises:
        ValueError: more than one tile is needed but a tile's usable output (tile − 2·margin −
            2·halo) is shorter than the stride, so tiles cannot advance on the pooling grid.

    Tile-start arithmetic, worked example (paper U-Net: margin 92, stride 16; length 1000,
    tile 572, so output tiles of 388 pixels): the last start is the first multiple of 16 whose
    output reaches the end, ⌈(1000 − 388)/16⌉·16 = 624. Starts may advance by at most 384, the
    largest multiple of 16 ≤ 388 (the paper's 388-pixel step would leave the pooling grid),
    so 1 + ⌈624/384⌉ = 3 tiles, spread evenly on the grid: 16·⌊i·39/2⌋ = 0, 304, 624. Their
    outputs cover [0, 388), [304, 692), [624, 1012); each overlap is split at its middle,
    (304 + 0 + 388)//2 = 346 and (624 + 304 + 388)//2 = 658, so the tiles supply [0, 346),
    [346, 658), [658, 1000). Inputs are read at extended [0, 572), [304, 876), [624, 1196):
    mirrored by 92 before the image and by 1196 − 1092 = 104 after it.
    """
    out = tile - 2 * margin
    if margin > 0:
        last = ceil_to(max(length - out, 0), stride)
    else:
        last = (length if extent is None else extent) - tile
    if last <= 0:
        return [(0, 0, length)]
    step = (out - 2 * halo) // stride * stride
    if step <= 0:
        raise ValueError(
            f"tile size {tile} is too small to tile an axis of {length} pixels: its output "
            f"({out} pixels) minus twice the halo ({halo}) must be at least the pooling stride "
            f"{stride}; use a tile size of at least {tile + stride - (out - 2 * halo)}"
        )
    count = 1 + math.ceil(last / step)
    grid_steps = last // stride  # `last` is on the grid: multiple of stride
    starts = [stride * (i * grid_steps // (count - 1)) for i in range(count)]
    # Split each overlap of consecutive outputs, [next start, this start + out), at its middle.
    bounds = [0, *(min((b + a + out) // 2, length) for a, b in itertools.pairwise(starts))]
    bounds.append(length)
    return [(a, lo, hi) for a, lo, hi in zip(starts, bounds, bounds[1:], strict=False) if lo < hi]


def default_halo(model: Geometry) -> int:
    """The halo used when `predict` gets none: 0 for valid models (their tiles are exact);
    for same-padding models the receptive radius, capped at MAX_DEFAULT_HALO and rounded up to
    a multiple of the stride (96 for a depth-5 U-Net, 128 for FCN)."""
    if model.margin > 0:
        return 0
    return ceil_to(min(model.receptive_radius, MAX_DEFAULT_HALO), model.stride)


def plan_tiles(
    shape: tuple[int, int],
    model: Geometry,
    tile_size: int | tuple[int, int],
    *,
    halo: int | None = None,
) -> list[Tile]:
    """Plan the tiles of an image of `shape` = (H, W) for `model`.

    Args:
        shape: image (height, width).
        model: a model with the geometry API.
        tile_size: input tile size, int or (height, width); each must be a valid input size.
            A size larger than needed to cover the image in one tile is reduced to that size.
            For same-padding models whose every size is valid (FCN), a size is raised by less
            than the stride so that the last tile, which ends at the image border, also
            starts on the pooling grid.
        halo: same-padding models: output pixels discarded next to neighbouring tiles;
            default `default_halo(model)`. Must be None or 0 for valid models.

    Returns:
        Tiles in row-major order; their output windows partition the image.

    Raises:
        ValueError: a tile size is not a valid input size (the message names the nearest valid
            ones), too small to advance on the pooling grid, or a bad halo.
    """
    margin, stride = model.margin, model.stride
    halo = resolve_halo(model, halo)
    sizes = tile_pair(tile_size)
    for n in sizes:
        check_tile_size(model, n)
    axes = []
    for length, n in zip(shape, sizes, strict=True):
        if margin > 0:
            n = min(n, smallest_valid(model, length + 2 * margin))
            axes.append((n, plan_axis(length, n, margin=margin, stride=stride)))
        else:
            extent = smallest_valid(model, length)
            n = _align_to_extent(min(n, extent), extent, stride)
            check_tile_size(model, n)
            axes.append(
                (n, plan_axis(length, n, margin=0, stride=stride, halo=halo, extent=extent))
            )
    (th, rows), (tw, cols) = axes
    return [
        Tile(top, left, th, tw, r0, r1, c0, c1)
        for (top, r0, r1), (left, c0, c1) in itertools.product(rows, cols)
    ]


# --------------------------------------------------------------------------------------------
# Checks shared with the options and the engine (one wording each)
# --------------------------------------------------------------------------------------------


def tile_pair(value: object) -> tuple[int, int]:
    """(height, width) of a tile size given as an int or a pair; ValueError otherwise."""
    pair = (value, value) if is_int(value) else value
    if not (
        isinstance(pair, (tuple, list))
        and len(pair) == 2
        and all(is_int(v) and v >= 1 for v in pair)
    ):
        raise ValueError(
            f"tile_size must be a positive integer or a (height, width) pair of them, got "
            f"{value!r}; e.g. 572 or (572, 444), or None to fit the memory budget"
        )
    return int(pair[0]), int(pair[1])


def check_tile_size(model: Geometry, n: int) -> None:
    """ValueError naming the nearest valid sizes unless `n` is a valid input size of `model`."""
    if n in model.valid_input_sizes(n, n):
        return
    window = 4 * model.stride + 8 * model.margin + 8
    below = model.valid_input_sizes(max(1, n - window), n - 1)[-1:]
    above = model.valid_input_sizes(n + 1, n + window)[:1]
    raise ValueError(
        f"tile_size {n} is not a valid input size for this model (margin {model.margin}, "
        f"stride {model.stride}); nearest valid sizes: "
        f"{', '.join(str(v) for v in below + above)}"
    )


def check_halo(halo: object) -> None:
    """ValueError unless `halo` is None or an integer ≥ 0 (the model-free part of the rule)."""
    if halo is not None and (not is_int(halo) or halo < 0):
        raise ValueError(
            f"halo must be an integer >= 0, got {halo!r}; or None for the default (the "
            f"receptive radius, at most {MAX_DEFAULT_HALO})"
        )


def resolve_halo(model: Geometry, halo: int | None) -> int:
    """The halo to use: `halo`, or `default_halo(model)` for None.

    Raises:
        ValueError: not None or an integer ≥ 0, or a non-zero halo for a valid model.
    """
    check_halo(halo)
    if halo is None:
        return default_halo(model)
    if model.margin > 0 and halo:
        raise ValueError(
            f"halo applies to same-padding models; this model has margin {model.margin} and "
            f"its tiles are exact without one, got halo={halo}; pass halo=None"
        )
    return int(halo)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def ceil_to(n: int, step: int) -> int:
    """The smallest multiple of `step` ≥ n."""
    return -(-n // step) * step


def smallest_valid(model: Geometry, lo: int) -> int:
    """The smallest valid input size ≥ lo (valid sizes recur at least every few strides)."""
    window = 4 * model.stride + 8 * model.margin + 8
    while True:
        sizes = model.valid_input_sizes(lo, lo + window)
        if sizes:
            return sizes[0]
        lo += window + 1


def _align_to_extent(n: int, extent: int, stride: int) -> int:
    """Raise n by less than `stride` so that extent − n is a multiple of `stride`.

    Worked example (FCN, stride 32): extent 1000, n = 500 → 1000 − 500 = 500 = 15·32 + 20, so
    n becomes 520 and the last tile starts at 480 = 15·32. A no-op for U-Net, whose same-padding
    sizes and extents are all multiples of the stride.
    """
    return extent - (extent - n) // stride * stride
