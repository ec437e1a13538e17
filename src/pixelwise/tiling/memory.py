"""Automatic tile size: the memory estimate of a tile and the tile size that fits a budget.

`predict` chooses the tile size and batch size here when they are not given: the estimate
(`tile_bytes_per_pixel`: the activations, from shape-only forward passes on a batch of zero
tiles or on the meta device, plus the tile's own input and output buffers); the choice
(`choose_tile_size`) is the tiling that computes the fewest pixels within the budget, counting
the output rows a streamed image holds (`pixelwise.inference.bands`) where there are any.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from pixelwise.models import Geometry
from pixelwise.tiling.plan import plan_axis, resolve_halo, smallest_valid

DEFAULT_MEMORY_BUDGET_MB = 1024.0
"""Default bound on the estimated memory of one tile batch (`tile_bytes_per_pixel`) when the
image and its outputs are in memory. Streamed images have their own, smaller default
(`pixelwise.inference.STREAM_MEMORY_BUDGET_MB`), which also counts the output rows held."""


def activation_bytes_per_pixel(
    model: nn.Module, in_channels: int, *, element_size: int = 4
) -> float:
    """Estimated activation memory per input pixel of a tile, in bytes.

    The sum, over every Conv2d and ConvTranspose2d, of its output channels times its resolution
    relative to the input (1/4^level for U-Net), plus the input channels, times `element_size`.
    Resolutions come from shape-only forward passes at two input sizes n1 < n2 that differ by a
    multiple of the stride: every layer's height is then affine in the input size and the slope
    is its resolution, which also discounts FCN's fixed 100-pixel padding. Counting every
    convolution output, although inference frees most of them, over-estimates the live peak
    (measured ~1.4× for U-Net).

    The passes run a batch of zero tiles, (0, C, n, n), through the model where it is: every
    layer computes nothing and allocates nothing, yet reports the shape it would produce, in
    milliseconds. A model that cannot take an empty batch is probed on the meta device instead
    (`_meta_shapes`: the same shapes, slower, as the meta kernels first import torch's symbolic
    shapes and dynamo, about a second). Both leave the parameters and buffers untouched.

    Args:
        model: the network, with the geometry API (`pixelwise.models.Geometry`).
        in_channels: image channels.
        element_size: bytes per activation (4 for float32, 2 under bf16/fp16 autocast).
    """
    n1 = smallest_valid(model, 1)
    n2 = next(
        n
        for n in model.valid_input_sizes(n1 + 1, n1 + 64 * model.stride)
        if (n - n1) % model.stride == 0
    )
    try:
        shapes = _conv_shapes(model, in_channels, (n1, n2), _empty_batch_forward(model))
    except Exception:  # a model that rejects an empty batch: the meta probe, or its error
        shapes = _conv_shapes(model, in_channels, (n1, n2), _meta_forward(model))
    channels = float(in_channels)
    for (c, h1, w1), (_, h2, w2) in zip(shapes[n1], shapes[n2], strict=True):
        channels += c * ((h2 - h1) / (n2 - n1)) * ((w2 - w1) / (n2 - n1))
    return channels * element_size


def tile_bytes_per_pixel(model: nn.Module, in_channels: int, *, element_size: int = 4) -> float:
    """Estimated memory per input pixel of a tile being predicted, in bytes: the activations
    (`activation_bytes_per_pixel`) plus the tile's own buffers, which stay float32 under
    autocast: its input as read from the image and its channels_last copy (2 × 4 bytes per
    channel), the float32 scores (4 bytes per class) and their int64 argmax (8 bytes).

    Worked example, the tiny valid U-Net of benchmarks/large_images.py (1 channel, 3 classes,
    bf16 autocast): activations 72 B, buffers 8 + 12 + 8 = 28 B, 100 B per pixel. Measured,
    its streamed 16384² run with 2088 × 3320 tiles peaked 676 MB above the process before any
    pixel, 98 B per tile pixel (row bands included); the activations alone under-count it.
    """
    classes = int(getattr(model, "hparams", {}).get("num_classes", in_channels))
    buffers = 2 * 4 * in_channels + 4 * classes + 8
    return activation_bytes_per_pixel(model, in_channels, element_size=element_size) + buffers


_Forward = Callable[[int, int], None]


def _empty_batch_forward(model: nn.Module) -> _Forward:
    """`run(channels, n)`: the model on a (0, channels, n, n) batch, on its device and dtype."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32

    def run(channels: int, n: int) -> None:
        model(torch.empty(0, channels, n, n, device=device, dtype=dtype))

    return run


def _meta_forward(model: nn.Module) -> _Forward:
    """`run(channels, n)`: the model with meta copies of its parameters on a meta tile."""
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
    }

    def run(channels: int, n: int) -> None:
        functional_call(model, state, (torch.empty(1, channels, n, n, device="meta"),))

    return run


def _conv_shapes(
    model: nn.Module, in_channels: int, sizes: tuple[int, int], forward: _Forward
) -> dict[int, list[tuple[int, int, int]]]:
    """Input size n → the (channels, height, width) output of every convolution, in call
    order, for an n × n input run by `forward` in eval mode without gradients."""
    shapes: dict[int, list[tuple[int, int, int]]] = {n: [] for n in sizes}
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
            for n in sizes:
                current = shapes[n]
                forward(in_channels, n)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def choose_tile_size(
    shape: tuple[int, int],
    model: Geometry,
    *,
    bytes_per_pixel: float,
    budget_bytes: float,
    halo: int | None = None,
    batch_size: int = 1,
    row_bytes: float = 0.0,
    band_rows: int = 0,
) -> tuple[int, int]:
    """The (height, width) input tile size that computes the fewest pixels within a memory budget.

    For each axis, every tile count is paired with the smallest valid tile size that covers the
    axis with that many tiles; among all (rows, cols) pairs whose memory fits `budget_bytes`,
    the one with the fewest computed input pixels in total (ties: fewer tiles) wins. An image
    that fits is done in a single tile: the least work and exact for every model. Never larger
    than needed to cover the image. If even the smallest usable tile exceeds the budget, it is
    used anyway.

    The memory of a tile size (h, w) is `batch_size` tiles of `bytes_per_pixel`·h·w, plus, for
    an image streamed into row bands (`row_bytes` > 0: the bytes per image row of the map the
    tiles are written into, i.e. its width times its bytes per pixel), the rows the bands hold:
    the tile's output rows and up to two partial bands of `band_rows` above and below,
    `row_bytes`·(output_size(h) + 2·band_rows). Wide images thus get shorter tiles and the
    total stays within the budget as the image grows.
    """
    halo = resolve_halo(model, halo)
    per_axis = [_axis_options(length, model, halo) for length in shape]
    pairs = list(itertools.product(*per_axis))

    def work(pair: tuple[tuple[int, int], tuple[int, int]]) -> tuple[int, int]:
        (nh, kh), (nw, kw) = pair
        return kh * nh * kw * nw, kh * kw

    def area(pair: tuple[tuple[int, int], tuple[int, int]]) -> int:
        return pair[0][0] * pair[1][0]

    def memory(pair: tuple[tuple[int, int], tuple[int, int]]) -> float:
        rows_held = model.output_size(pair[0][0]) + 2 * band_rows
        return batch_size * bytes_per_pixel * area(pair) + row_bytes * rows_held

    fits = [p for p in pairs if memory(p) <= budget_bytes]
    best = min(fits, key=work) if fits else min(pairs, key=lambda p: (memory(p), work(p)))
    return best[0][0], best[1][0]


def _axis_options(length: int, model: Geometry, halo: int) -> list[tuple[int, int]]:
    """(tile size, tile count) along one axis: the smallest size for each achievable count."""
    margin, stride = model.margin, model.stride
    if margin > 0:
        cover = smallest_valid(model, length + 2 * margin)
        sizes = model.valid_input_sizes(1, cover)
    else:
        cover = smallest_valid(model, length)
        sizes = [n for n in model.valid_input_sizes(1, cover) if (cover - n) % stride == 0]
    best: dict[int, int] = {}
    for n in sizes:
        try:
            count = len(plan_axis(length, n, margin=margin, stride=stride, halo=halo, extent=cover))
        except ValueError:  # too small to advance on the grid
            continue
        best.setdefault(count, n)  # sizes ascend: the first size per count is the smallest
    return [(n, k) for k, n in best.items()]
