"""The overlap-tile engine: `predict` reads tiles, runs the model on them and stitches the result.

`iter_predict` is the same computation as a generator that yields a `Progress` after every tile
batch (for progress bars and cancellation: a consumer that stops advancing it, or closes it,
stops the work before the next batch); `predict` runs it to its end.

It owns the per-call work: reading each tile's input from the region of the image it needs
(mirror-extended through `source_index`), test-time augmentation, running the model in eval mode
on its device and memory format, and writing each tile's cropped output into the result or a
caller's array (`out`). The tile plan comes from `pixelwise.tiling.plan`, the automatic sizes from
`pixelwise.tiling.memory`, the options from `pixelwise.tiling.options`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pixelwise.checks import check_choice
from pixelwise.precision import AUTOCAST_DTYPES
from pixelwise.tiling.memory import (
    DEFAULT_MEMORY_BUDGET_MB,
    choose_tile_size,
    tile_bytes_per_pixel,
)
from pixelwise.tiling.options import PredictOptions
from pixelwise.tiling.plan import Tile, plan_tiles, source_index

OUTPUTS = ("probs", "logits", "labels")

# A transform of the test-time augmentation group: (quarter turns k, flipped dims). Forward: flip
# then rotate by k·90°; inverse: rotate by −k·90° then flip. Dims index (N, C, H, W) tensors.
_Transform = tuple[int, tuple[int, ...]]
_TTA: dict[str | None, tuple[_Transform, ...]] = {
    None: ((0, ()),),
    "flips": ((0, ()), (0, (3,)), (0, (2,)), (0, (2, 3))),
    "d4": tuple((k, f) for k in range(4) for f in ((), (3,))),
}


def predict(
    model: nn.Module,
    image: Any,
    options: PredictOptions | None = None,
    *,
    output: str = "probs",
    out: Any = None,
    **overrides: Any,
) -> np.ndarray:
    """Segment an image of any size with overlap-tile inference.

    Valid-padding models (margin m > 0): the result equals the model applied to the whole
    image mirror-extended by m on every side (and right/bottom up to a valid size), cropped to
    H × W, up to float rounding. Same-padding models: tiles overlap by `halo` pixels per side,
    cropped away; the result equals whole-image inference (image padded right/bottom to a size
    the model accepts, then cropped) exactly when one tile covers the image, and closely in
    the interior otherwise.

    Args:
        model: U-Net or FCN (anything with the geometry API, `pixelwise.models.Geometry`)
            returning logits (N, K, h, w). It is run in eval mode under
            torch.inference_mode(); its training flag, device and memory format are restored.
        image: (H, W) or (C, H, W), already normalised as the network's input (float): numpy
            array, torch tensor, or an array read by regions (np.memmap, tifffile.memmap, zarr
            array, e.g. `zarr.open(tifffile.imread(path, aszarr=True))`). Only the region each
            tile needs is read and cast to float32. An integer image (raw uint8/uint16 pixels)
            is run as it is, cast but not scaled or standardised, with a UserWarning: for raw
            images use `pixelwise.Segmenter.from_checkpoint(path).predict(image)`, which
            applies the checkpoint's normalisation.
        options: how to tile and run (`PredictOptions`); default `PredictOptions()`.
        output: "probs" → (K, H, W) float32 softmax probabilities; "logits" → (K, H, W) float32
            logits; "labels" → (H, W) class map, uint8 if K ≤ 256 else uint16.
        out: optional array-like written tile by tile (np.memmap, tifffile.memmap, zarr): shape
            (K, H, W) floating for probs/logits, (H, W) integer for labels. Peak memory is then
            bounded by the tile batch, not the image. Returned when given.
        **overrides: `PredictOptions` fields (tile_size, batch_size, tta, pad_mode, halo,
            memory_budget_mb, autocast, channels_last, device, progress) replacing those of
            `options`: `predict(model, image, tile_size=572, tta="d4")`.

    Returns:
        The (K, H, W) probabilities/logits or the (H, W) labels; `out` when given.

    Raises:
        ValueError: bad arguments; the message states the rule, the value received and the fix.
        TypeError: an unknown option name, or a model without the geometry API.
    """
    steps = iter_predict(model, image, options, output=output, out=out, **overrides)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


@dataclass(frozen=True)
class Progress:
    """Where an overlap-tile prediction stands after a batch of tiles.

    Attributes:
        tiles: tiles written so far, of `total_tiles`.
        pixels: image pixels written so far, of `total_pixels` = H × W (the tiles' output
            windows partition the image, so `pixels` reaches it exactly with the last tile).
    """

    tiles: int
    total_tiles: int
    pixels: int
    total_pixels: int

    @property
    def fraction(self) -> float:
        """pixels / total_pixels, in [0, 1]."""
        return self.pixels / self.total_pixels


def iter_predict(
    model: nn.Module,
    image: Any,
    options: PredictOptions | None = None,
    *,
    output: str = "probs",
    out: Any = None,
    **overrides: Any,
) -> Generator[Progress, None, np.ndarray]:
    """`predict` as a generator: yields a `Progress` after every tile batch, returns the result.

    The arguments, result and errors are `predict`'s (errors are raised at the first `next`).
    The model's mode, device and memory format are restored when the generator finishes or is
    closed; a consumer that stops early (``close()``, or dropping it) stops the work before the
    next batch.

    Example:
        steps = iter_predict(model, x, tile_size=572)
        while True:
            try:
                progress = next(steps)  # e.g. show progress.fraction; break to cancel
            except StopIteration as done:
                probabilities = done.value  # (K, H, W)
                break
    """
    options = PredictOptions.build(options, **overrides)
    check_choice("output", output, OUTPUTS)
    if options.tta is not None and output == "logits":
        raise ValueError(
            "tta averages probabilities, so it cannot return logits; use output='probs' or "
            "output='labels', or tta=None"
        )
    options.check_model(model)
    source = _as_source(image)
    channels, height, width = _image_dims(source)
    _warn_if_raw(source)
    expected = getattr(model, "hparams", {}).get("in_channels")
    if expected is not None and expected != channels:
        raise ValueError(
            f"image has {channels} channel(s) (shape {tuple(source.shape)}) but the model "
            f"expects {expected}; pass a ({expected}, H, W) array"
        )
    if out is not None:
        _check_out(out, output, height, width)
    tiles, batch_size = _plan(model, (height, width), channels, options)
    with _inference_setup(model, options.device, options.channels_last) as (device, last):
        runner = _TileRunner(model, source, options, output, device, channels_last=last)
        return (yield from runner.run(tiles, batch_size, out, (height, width)))


def _plan(
    model: nn.Module, shape: tuple[int, int], channels: int, options: PredictOptions
) -> tuple[list[Tile], int]:
    """The tiles of an image of `shape` = (H, W) and the tiles per batch: the options' sizes, or
    those that fit `options.memory_budget_mb` (None: `DEFAULT_MEMORY_BUDGET_MB`)."""
    budget = (options.memory_budget_mb or DEFAULT_MEMORY_BUDGET_MB) * 2**20
    tile_size, batch_size = options.tile_size, options.batch_size
    per_pixel = 0.0  # bytes per input pixel, estimated only when a size is automatic
    if tile_size is None or batch_size is None:
        per_pixel = tile_bytes_per_pixel(model, channels, element_size=options.element_size)
    if tile_size is None:
        tile_size = choose_tile_size(
            shape,
            model,
            bytes_per_pixel=per_pixel,
            budget_bytes=budget,
            halo=options.halo,
            batch_size=batch_size or 1,
        )
    tiles = plan_tiles(shape, model, tile_size, halo=options.halo)
    if batch_size is None:
        area = tiles[0].height * tiles[0].width
        batch_size = max(1, min(len(tiles), int(budget // (per_pixel * area))))
    return tiles, batch_size


class _TileRunner:
    """One call's tile loop: read a batch of tiles, run the model (with TTA), write the crops."""

    def __init__(
        self,
        model: nn.Module,
        source: Any,
        options: PredictOptions,
        output: str,
        device: torch.device,
        *,
        channels_last: bool,
    ) -> None:
        self.model, self.source, self.options, self.output = model, source, options, output
        self.device, self.channels_last = device, channels_last
        self.transforms = _TTA[options.tta]
        dtype = AUTOCAST_DTYPES.get(options.autocast)  # None: float32
        self.amp = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    def run(
        self, tiles: list[Tile], batch_size: int, out: Any, shape: tuple[int, int]
    ) -> Generator[Progress, None, Any]:
        """Predict every tile, in batches, into `out` (allocated from the first batch if None),
        yielding the progress after each batch."""
        margin = self.model.margin
        expected = (tiles[0].height - 2 * margin, tiles[0].width - 2 * margin)
        sink = out
        pixels = 0
        show = self.options.progress and sys.stderr.isatty()
        with tqdm(total=len(tiles), unit="tile", disable=not show) as bar:
            for start in range(0, len(tiles), batch_size):
                batch = tiles[start : start + batch_size]
                scores = self._scores(batch, margin, expected)  # (B, K, h, w)
                if sink is None:
                    sink = _allocate(self.output, scores.shape[1], *shape)
                elif start == 0:
                    _check_classes(out, self.output, scores.shape[1])
                _write(sink, batch, scores, self.output)
                bar.update(len(batch))
                pixels += sum(t.output_pixels for t in batch)
                yield Progress(start + len(batch), len(tiles), pixels, shape[0] * shape[1])
        return sink

    def _scores(
        self, batch: Sequence[Tile], margin: int, expected: tuple[int, int]
    ) -> torch.Tensor:
        """(B, K, h, w) float32 scores of a batch of tiles."""
        pad_mode = self.options.pad_mode
        x = np.stack([_read_tile(self.source, t, margin, pad_mode) for t in batch])
        x = torch.from_numpy(x).to(self.device)  # (B, C, th, tw)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.amp:
            return _forward(self.model, x, self.transforms, self.output, expected)


def _forward(
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
    # a weight whose two layouts differ: a (K, 1, 3, 3) or (K, C, 1, 1) one is contiguous in both
    weight = next(
        (p for p in params if p.dim() == 4 and p.shape[1] > 1 and p[0, 0].numel() > 1), None
    )
    convert = (
        channels_last
        and weight is not None
        and not weight.is_contiguous(memory_format=torch.channels_last)
    )
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


def _as_source(image: Any) -> Any:
    """A numpy-indexable view of `image`, without reading array-likes into memory."""
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    if all(hasattr(image, a) for a in ("shape", "ndim", "dtype", "__getitem__")):
        return image
    return np.asarray(image)


def _warn_if_raw(source: Any) -> None:
    """One UserWarning per call for integer pixels: the engine expects normalised floats."""
    dtype = np.dtype(source.dtype)
    if np.issubdtype(dtype, np.integer):
        warnings.warn(
            f"tiling.predict got an image of dtype {dtype} (raw pixels?); it expects the "
            f"network's normalised float input and only casts it to float32. For raw images "
            f"use pixelwise.Segmenter.from_checkpoint(path).predict(image), which applies the "
            f"checkpoint's normalisation, or pass pixelwise.data.to_chw_float(image, "
            f"normalization=meta['normalization'])",
            UserWarning,
            stacklevel=4,  # _warn_if_raw < iter_predict < predict < the caller
        )


def _image_dims(source: Any) -> tuple[int, int, int]:
    shape = tuple(source.shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(
            f"image must have shape (H, W) or (C, H, W) with every size >= 1, got {shape}"
        )
    return (1, *shape) if len(shape) == 2 else shape
