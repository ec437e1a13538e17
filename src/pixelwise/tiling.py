"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2): predict images of any size in tiles.

A valid-padding U-Net (margin m > 0) maps an input tile of a valid size n to an output of n − 2m
pixels. To segment an image of any size, the image is extended by mirroring by m on every side
(plus what the right/bottom edges need to reach a valid size) and cut into input tiles that
overlap by 2m, so that their outputs tile the image. Tiles start on multiples of the pooling
stride, so every pooling layer of every tile sits on the grid of the whole extended image: the
stitched result equals the network applied to the whole mirror-extended image, up to float
rounding, for every image size.

A same-padding network (FCN, U-Net with padding="same"; margin 0) keeps the image size, but its
zero padding at tile borders differs from whole-image inference. Tiles then overlap by a halo on
each side, which is cropped away; the image border is treated as in whole-image inference (the
image is only padded right/bottom to a size the model accepts, then cropped).

All sizes come from the models' geometry API (`margin`, `stride`, `receptive_radius`,
`output_size`, `valid_input_sizes`), the single source of the size arithmetic.

Coordinates used throughout: *image* coordinates index the image; *extended* coordinates index
the virtual extended image, extended = image + margin. A tile's input window is given in
extended coordinates; its output pixel j supplies image pixel (tile start + j).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

PAD_MODES = ("reflect", "constant", "replicate")
OUTPUTS = ("probs", "logits", "labels")
TTA_MODES = ("flips", "d4")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

DEFAULT_MEMORY_BUDGET_MB = 1024.0
"""Default bound on the estimated activation memory of one tile batch (see
`activation_bytes_per_pixel`, which over-estimates the live peak by ~1.4× for U-Net)."""

MAX_DEFAULT_HALO = 128
"""Cap of the default halo of same-padding networks, in input pixels. FCN-VGG16's receptive radius
is 202 pixels, but far context barely moves its scores while the overlap cost grows with it."""

# A transform of the test-time augmentation group: (quarter turns k, flipped dims). Forward: flip
# then rotate by k·90°; inverse: rotate by −k·90° then flip. Dims index (N, C, H, W) tensors.
_Transform = tuple[int, tuple[int, ...]]
_TTA: dict[str | None, tuple[_Transform, ...]] = {
    None: ((0, ()),),
    "flips": ((0, ()), (0, (3,)), (0, (2,)), (0, (2, 3))),
    "d4": tuple((k, f) for k in range(4) for f in ((), (3,))),
}


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
    raise ValueError(_choice_message("pad_mode", mode, PAD_MODES))


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
    def input_window(self) -> tuple[slice, slice]:
        """(rows, cols) of the input in extended coordinates."""
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

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
        last = _ceil_to(max(length - out, 0), stride)
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


def default_halo(model: nn.Module) -> int:
    """The halo used when `predict` gets none: 0 for valid models (their tiles are exact);
    for same-padding models the receptive radius, capped at MAX_DEFAULT_HALO and rounded up to
    a multiple of the stride (96 for a depth-5 U-Net, 128 for FCN)."""
    if model.margin > 0:
        return 0
    return _ceil_to(min(model.receptive_radius, MAX_DEFAULT_HALO), model.stride)


def plan_tiles(
    shape: tuple[int, int],
    model: nn.Module,
    tile_size: int | tuple[int, int],
    *,
    halo: int | None = None,
) -> list[Tile]:
    """Plan the tiles of an image of `shape` = (H, W) for `model`.

    Args:
        shape: image (height, width).
        model: a model with the geometry API (`margin`, `stride`, `receptive_radius`,
            `valid_input_sizes`).
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
    halo = _resolve_halo(model, halo)
    th, tw = _pair(tile_size, "tile_size")
    for n in (th, tw):
        _check_valid_size(model, n)
    axes = []
    for length, n in zip(shape, (th, tw), strict=True):
        if margin > 0:
            n = min(n, _smallest_valid(model, length + 2 * margin))
            axes.append((n, plan_axis(length, n, margin=margin, stride=stride)))
        else:
            extent = _smallest_valid(model, length)
            n = _align_to_extent(min(n, extent), extent, stride)
            _check_valid_size(model, n)
            axes.append(
                (n, plan_axis(length, n, margin=0, stride=stride, halo=halo, extent=extent))
            )
    (th, rows), (tw, cols) = axes
    return [
        Tile(top, left, th, tw, r0, r1, c0, c1)
        for (top, r0, r1), (left, c0, c1) in itertools.product(rows, cols)
    ]


# --------------------------------------------------------------------------------------------
# Automatic tile and batch sizes
# --------------------------------------------------------------------------------------------


def activation_bytes_per_pixel(
    model: nn.Module, in_channels: int, *, element_size: int = 4
) -> float:
    """Estimated activation memory per input pixel of a tile, in bytes.

    The sum, over every Conv2d and ConvTranspose2d, of its output channels times its resolution
    relative to the input (1/4^level for U-Net), plus the input channels, times `element_size`.
    Resolutions come from a shape-only forward pass on the meta device (no computation, no
    memory) at two input sizes n1 < n2 that differ by a multiple of the stride: every layer's
    height is then affine in the input size and the slope is its resolution, which also
    discounts FCN's fixed 100-pixel padding. Counting every convolution output, although
    inference frees most of them, over-estimates the live peak (measured ~1.4× for U-Net).

    Args:
        model: the network; its parameters are not touched (replaced by meta tensors).
        in_channels: image channels.
        element_size: bytes per activation (4 for float32, 2 under bf16/fp16 autocast).
    """
    n1 = _smallest_valid(model, 1)
    n2 = next(
        n
        for n in model.valid_input_sizes(n1 + 1, n1 + 64 * model.stride)
        if (n - n1) % model.stride == 0
    )
    shapes: dict[int, list[tuple[int, int, int]]] = {n1: [], n2: []}
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
    }
    current: list[tuple[int, int, int]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, y: current.append(tuple(y.shape[1:])))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    was_training = model.training
    try:
        model.eval()  # batch norm in training mode rejects the 1×1 maps of tiny probes
        with torch.no_grad():
            for n in (n1, n2):
                current = shapes[n]
                functional_call(model, state, (torch.empty(1, in_channels, n, n, device="meta"),))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    channels = float(in_channels)
    for (c, h1, w1), (_, h2, w2) in zip(shapes[n1], shapes[n2], strict=True):
        channels += c * ((h2 - h1) / (n2 - n1)) * ((w2 - w1) / (n2 - n1))
    return channels * element_size


def choose_tile_size(
    shape: tuple[int, int],
    model: nn.Module,
    *,
    bytes_per_pixel: float,
    budget_bytes: float,
    halo: int | None = None,
) -> tuple[int, int]:
    """The (height, width) input tile size that computes the fewest pixels within a memory budget.

    For each axis, every tile count is paired with the smallest valid tile size that covers the
    axis with that many tiles; among all (rows, cols) pairs whose tile fits `budget_bytes`
    (`bytes_per_pixel`·height·width), the one with the fewest computed input pixels in total
    (ties: fewer tiles) wins. An image that fits is done in a single tile: the least work and
    exact for every model. Never larger than needed to cover the image. If even the smallest
    usable tile exceeds the budget, it is used anyway.
    """
    halo = _resolve_halo(model, halo)
    per_axis = [_axis_options(length, model, halo) for length in shape]
    pairs = list(itertools.product(*per_axis))

    def work(pair: tuple[tuple[int, int], tuple[int, int]]) -> tuple[int, int]:
        (nh, kh), (nw, kw) = pair
        return kh * nh * kw * nw, kh * kw

    def area(pair: tuple[tuple[int, int], tuple[int, int]]) -> int:
        return pair[0][0] * pair[1][0]

    fits = [p for p in pairs if bytes_per_pixel * area(p) <= budget_bytes]
    best = min(fits, key=work) if fits else min(pairs, key=lambda p: (area(p), work(p)))
    return best[0][0], best[1][0]


def _axis_options(length: int, model: nn.Module, halo: int) -> list[tuple[int, int]]:
    """(tile size, tile count) along one axis: the smallest size for each achievable count."""
    margin, stride = model.margin, model.stride
    if margin > 0:
        cover = _smallest_valid(model, length + 2 * margin)
        sizes = model.valid_input_sizes(1, cover)
    else:
        cover = _smallest_valid(model, length)
        sizes = [n for n in model.valid_input_sizes(1, cover) if (cover - n) % stride == 0]
    best: dict[int, int] = {}
    for n in sizes:
        try:
            count = len(plan_axis(length, n, margin=margin, stride=stride, halo=halo, extent=cover))
        except ValueError:  # too small to advance on the grid
            continue
        best.setdefault(count, n)  # sizes ascend: the first size per count is the smallest
    return [(n, k) for k, n in best.items()]


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


def predict(
    model: nn.Module,
    image: Any,
    *,
    tile_size: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
    pad_mode: str = "reflect",
    tta: str | None = None,
    output: str = "probs",
    out: Any = None,
    progress: bool = False,
    device: str | torch.device | None = None,
    halo: int | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    autocast: str | None = None,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Segment an image of any size with overlap-tile inference.

    Valid-padding models (margin m > 0): the result equals the model applied to the whole
    image mirror-extended by m on every side (and right/bottom up to a valid size), cropped to
    H × W, up to float rounding. Same-padding models: tiles overlap by `halo` pixels per side,
    cropped away; the result equals whole-image inference (image padded right/bottom to a size
    the model accepts, then cropped) exactly when one tile covers the image, and closely in
    the interior otherwise.

    Args:
        model: U-Net or FCN (anything with the geometry API) returning logits (N, K, h, w).
            It is run in eval mode under torch.inference_mode(); its training flag, device and
            memory format are restored afterwards.
        image: (H, W) or (C, H, W), already normalised: numpy array, torch tensor, or an array
            read by regions (np.memmap, tifffile.memmap, zarr array, e.g.
            `zarr.open(tifffile.imread(path, aszarr=True))`). Only the region each tile needs is
            read and cast to float32, so integer images are accepted.
        tile_size: input tile size, int or (height, width), a valid input size (572 for the
            paper). Default: the size that computes the fewest pixels while one tile batch fits
            `memory_budget_mb` (`choose_tile_size`), e.g. the whole image when it fits.
        batch_size: tiles per forward pass. Default: as many as fit `memory_budget_mb`.
        pad_mode: how the image is extended beyond its border: "reflect" (mirror, as the
            paper), "constant" (zeros) or "replicate" (edge pixel).
        tta: None, "flips" (identity, horizontal, vertical, both: 4 passes) or "d4" (the flips
            with 90° rotations: 8 passes); probabilities are averaged. Applied per tile: each
            input tile is transformed, predicted, and the output transformed back.
        output: "probs" → (K, H, W) float32 softmax probabilities; "logits" → (K, H, W) float32
            logits; "labels" → (H, W) class map, uint8 if K ≤ 256 else uint16.
        out: optional array-like written tile by tile (np.memmap, tifffile.memmap, zarr): shape
            (K, H, W) floating for probs/logits, (H, W) integer for labels. Peak memory is then
            bounded by the tile batch, not the image. Returned when given.
        progress: show a tqdm progress bar (only when stderr is a terminal).
        device: run the model there (default: where its parameters are); tiles are moved per
            batch.
        halo: same-padding models: pixels of each tile's output discarded next to a
            neighbouring tile. Default `default_halo(model)` (the receptive radius rounded up
            to the stride, at most 128).
        memory_budget_mb: bound on the estimated activation memory of one tile batch
            (`activation_bytes_per_pixel`), used to choose the tile size and batch size.
        autocast: None (float32), "bf16" or "fp16": torch.autocast on the device's type.
        channels_last: run the model and the tiles in channels_last memory format. Default
            None: on for CPU devices, where oneDNN convolutions run ~1.4× faster in it
            (benchmarks/tiling.py, section 4), off elsewhere.

    Returns:
        The (K, H, W) probabilities/logits or the (H, W) labels; `out` when given.

    Raises:
        ValueError: bad arguments; the message states the rule and the value received.
    """
    _check_choice("pad_mode", pad_mode, PAD_MODES)
    _check_choice("output", output, OUTPUTS)
    _check_choice("tta", tta, (None, *TTA_MODES))
    _check_choice("autocast", autocast, (None, *AUTOCAST_DTYPES))
    if tta is not None and output == "logits":
        raise ValueError(
            "tta averages probabilities, so it cannot return logits; use output='probs' or "
            "output='labels', or tta=None"
        )
    if batch_size is not None:
        _check_positive_int("batch_size", batch_size)
    if not memory_budget_mb > 0:
        raise ValueError(
            f"memory_budget_mb must be > 0, got {memory_budget_mb}; it bounds one tile batch"
        )
    source = _as_source(image)
    channels, height, width = _image_dims(source)
    expected = getattr(model, "hparams", {}).get("in_channels")
    if expected is not None and expected != channels:
        raise ValueError(
            f"image has {channels} channel(s) (shape {tuple(source.shape)}) but the model "
            f"expects {expected}; pass a ({expected}, H, W) array"
        )
    if out is not None:
        _check_out(out, output, height, width)
    halo = _resolve_halo(model, halo)
    budget = memory_budget_mb * 2**20
    margin = model.margin
    transforms = _TTA[tta]

    with _inference_setup(model, device, channels_last) as (dev, channels_last):
        per_pixel = None
        if tile_size is None or batch_size is None:
            element_size = 4 if autocast is None else 2
            per_pixel = activation_bytes_per_pixel(model, channels, element_size=element_size)
        if tile_size is None:
            tile_budget = budget / (batch_size or 1)
            tile_size = choose_tile_size(
                (height, width), model, bytes_per_pixel=per_pixel, budget_bytes=tile_budget
            )
        tiles = plan_tiles((height, width), model, tile_size, halo=halo)
        th, tw = tiles[0].height, tiles[0].width
        if batch_size is None:
            batch_size = max(1, min(len(tiles), int(budget // (per_pixel * th * tw))))
        expected_out = (th - 2 * margin, tw - 2 * margin)
        amp = (
            torch.autocast(dev.type, dtype=AUTOCAST_DTYPES[autocast])
            if autocast is not None
            else nullcontext()
        )
        sink = out
        show = progress and sys.stderr.isatty()
        with tqdm(total=len(tiles), unit="tile", disable=not show) as bar:
            for start in range(0, len(tiles), batch_size):
                batch = tiles[start : start + batch_size]
                x = np.stack([_read_tile(source, t, margin, pad_mode) for t in batch])
                x = torch.from_numpy(x).to(dev)  # (B, C, th, tw)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with amp:
                    scores = _run(model, x, transforms, output, expected_out)
                if sink is None:
                    sink = _allocate(output, scores.shape[1], height, width)
                elif start == 0:
                    _check_classes(out, output, scores.shape[1])
                _write(sink, batch, scores, output)
                bar.update(len(batch))
    return sink


def _run(
    model: nn.Module,
    x: torch.Tensor,
    transforms: Sequence[_Transform],
    output: str,
    expected: tuple[int, int],
) -> torch.Tensor:
    """(B, C, th, tw) tiles → (B, K, h, w) float32 scores: logits, or probabilities averaged
    over `transforms` (for output="labels" without TTA, logits: their argmax is the same)."""
    total = None
    for k, dims in transforms:
        xt = torch.rot90(x.flip(dims), k, dims=(2, 3)) if dims or k else x
        y = model(xt)  # (B, K, h', w')
        y = torch.rot90(y, -k, dims=(2, 3)).flip(dims) if dims or k else y
        if tuple(y.shape[-2:]) != expected:
            raise RuntimeError(
                f"the model returned maps of {tuple(y.shape[-2:])} for tiles of "
                f"{tuple(xt.shape[-2:])}; its geometry API promises {expected} "
                f"(input − 2·margin)"
            )
        y = y.float()
        if output == "logits" or (output == "labels" and len(transforms) == 1):
            return y
        y = y.softmax(dim=1)
        total = y if total is None else total.add_(y)
    return total / len(transforms)


def _write(sink: Any, batch: Sequence[Tile], scores: torch.Tensor, output: str) -> None:
    """Write each tile's cropped (K, h, w) scores (or argmax labels) into `sink`."""
    if output == "labels":
        dtype = np.dtype(sink.dtype)
        result = scores.argmax(dim=1).cpu().numpy()  # (B, h, w) int64
        for t, labels in zip(batch, result, strict=True):
            rows, cols = t.output_window
            sink[rows, cols] = labels[t.crop].astype(dtype)
        return
    result = scores.cpu().numpy()  # (B, K, h, w)
    for t, s in zip(batch, result, strict=True):
        rows, cols = t.output_window
        sink[:, rows, cols] = s[(slice(None), *t.crop)]


def _allocate(output: str, classes: int, height: int, width: int) -> np.ndarray:
    if output == "labels":
        return np.empty((height, width), np.uint8 if classes <= 256 else np.uint16)
    return np.empty((classes, height, width), np.float32)


def _check_out(out: Any, output: str, height: int, width: int) -> None:
    shape = tuple(getattr(out, "shape", ()))
    dtype = np.dtype(getattr(out, "dtype", np.float64))
    if output == "labels":
        if shape != (height, width) or not np.issubdtype(dtype, np.integer):
            raise ValueError(
                f"out must be an integer ({height}, {width}) array for output='labels', got "
                f"shape {shape} and dtype {dtype}"
            )
    elif len(shape) != 3 or shape[1:] != (height, width) or not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"out must be a floating (K, {height}, {width}) array for output={output!r}, got "
            f"shape {shape} and dtype {dtype}"
        )


def _check_classes(out: Any, output: str, classes: int) -> None:
    """Once the number of classes K is known: does `out` hold K maps, or labels up to K − 1?"""
    if output == "labels":
        if np.iinfo(np.dtype(out.dtype)).max < classes - 1:
            raise ValueError(
                f"out has dtype {np.dtype(out.dtype)}, too small for labels up to {classes - 1}; "
                f"use uint8 for up to 256 classes, else uint16"
            )
    elif out.shape[0] != classes:
        raise ValueError(
            f"out must have shape {(classes, *out.shape[1:])} (K, H, W) for a model with "
            f"K = {classes} classes, got {tuple(out.shape)}"
        )


def _read_tile(source: Any, tile: Tile, offset: int, mode: str) -> np.ndarray:
    """The (C, height, width) float32 input of `tile`, read from the region of `source` it needs.

    Rows and columns of the extended window are mapped to source indices (`source_index`); the
    smallest source block containing them is read (a view for numpy and memmaps, a region read
    for zarr), then gathered and cast.
    """
    n_rows, n_cols = source.shape[-2:]
    rows = source_index(np.arange(tile.top, tile.top + tile.height) - offset, n_rows, mode)
    cols = source_index(np.arange(tile.left, tile.left + tile.width) - offset, n_cols, mode)
    channels = source.shape[0] if source.ndim == 3 else 1
    result = np.zeros((channels, tile.height, tile.width), np.float32)
    inside_r, inside_c = np.flatnonzero(rows >= 0), np.flatnonzero(cols >= 0)
    if inside_r.size == 0 or inside_c.size == 0:
        return result
    r, c = rows[inside_r], cols[inside_c]
    r0, c0 = int(r.min()), int(c.min())
    region = (slice(None),) * (source.ndim - 2) + (
        slice(r0, int(r.max()) + 1),
        slice(c0, int(c.max()) + 1),
    )
    block = np.asarray(source[region]).reshape(channels, -1, int(c.max()) + 1 - c0)
    result[:, inside_r[:, None], inside_c[None, :]] = block[:, (r - r0)[:, None], (c - c0)[None]]
    return result


@contextmanager
def _inference_setup(
    model: nn.Module, device: str | torch.device | None, channels_last: bool | None
) -> Iterator[tuple[torch.device, bool]]:
    """Eval mode, target device and memory format for the duration; all restored afterwards.

    Yields the device and whether inputs go in channels_last (None resolves to: on a CPU)."""
    params = list(model.parameters())
    home = params[0].device if params else torch.device("cpu")
    target = torch.device(device) if device is not None else home
    if channels_last is None:
        channels_last = target.type == "cpu"
    weight = next((p for p in params if p.dim() == 4), None)
    convert = channels_last and weight is not None and weight.is_contiguous()
    was_training = model.training
    try:
        model.eval()
        if target != home:
            model.to(target)
        if convert:
            model.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            yield target, channels_last
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)
        if target != home:
            model.to(home)
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _ceil_to(n: int, step: int) -> int:
    return -(-n // step) * step


def _smallest_valid(model: nn.Module, lo: int) -> int:
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


def _check_valid_size(model: nn.Module, n: int) -> None:
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


def _resolve_halo(model: nn.Module, halo: int | None) -> int:
    if halo is None:
        return default_halo(model)
    if not isinstance(halo, int) or isinstance(halo, bool) or halo < 0:
        raise ValueError(f"halo must be an integer >= 0, got {halo!r}")
    if model.margin > 0 and halo:
        raise ValueError(
            f"halo applies to same-padding models; this model has margin {model.margin} and "
            f"its tiles are exact without one; pass halo=None"
        )
    return halo


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair
    ):
        raise ValueError(
            f"{name} must be a positive integer or a (height, width) pair of them, got {value!r}"
        )
    return pair


def _as_source(image: Any) -> Any:
    """A numpy-indexable view of `image`, without reading array-likes into memory."""
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    if all(hasattr(image, a) for a in ("shape", "ndim", "dtype", "__getitem__")):
        return image
    return np.asarray(image)


def _image_dims(source: Any) -> tuple[int, int, int]:
    shape = tuple(source.shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(
            f"image must have shape (H, W) or (C, H, W) with every size >= 1, got {shape}"
        )
    return (1, *shape) if len(shape) == 2 else shape


def _check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(_choice_message(name, value, choices))


def _choice_message(name: str, value: object, choices: Sequence[object]) -> str:
    return f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}"


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
