"""OME-Zarr outputs: NGFF 0.4 multiscale images (class maps and instances as label images,
probabilities as a channel image), written region by region, and chunked scratch arrays.

Owns the NGFF layout pixelwise writes (`ngff_image`): a zarr v2 group whose arrays "0", "1",
... are the pyramid levels (each half the size of the one before, down to one chunk; labels
subsampled, probabilities averaged over 2 × 2 pixels), with `multiscales` metadata (axes y, x,
and c for probabilities; a scale per level in micrometres when the input recorded its pixel
size) and, for label images, `image-label` metadata (the class colours and names) so that
ome-zarr-py and napari open them as labels. A group is written into a temporary folder beside
its destination and renamed over it when complete (`pixelwise.atomic.atomic_folder`), so an
interrupted run leaves no half-written image under a final name.
Level 0 is filled by the caller (row bands of whole chunks, `pixelwise.inference.bands`); the
coarser levels are computed from it band by band, never from the whole image.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.atomic import atomic_folder
from pixelwise.data.lazy import PixelSize

NGFF_VERSION = "0.4"
CHUNK = 512
"""Chunk side of the arrays pixelwise writes (pixels); one chunk row is one band in memory."""


@dataclass(frozen=True)
class LabelInfo:
    """The `image-label` metadata of a label image.

    Attributes:
        colors: (n, 3) uint8 colours of label values 0..n-1, or None (viewers pick colours).
        names: the names of label values 0..n-1 (NGFF `properties`), or None.
    """

    colors: np.ndarray | None = None
    names: Sequence[str] | None = None

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"version": NGFF_VERSION}
        if self.colors is not None:
            meta["colors"] = [
                {"label-value": i, "rgba": [*(int(v) for v in rgb), 0 if i == 0 else 255]}
                for i, rgb in enumerate(self.colors)
            ]
        if self.names is not None:
            meta["properties"] = [
                {"label-value": i, "class": str(name)} for i, name in enumerate(self.names)
            ]
        return meta


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------


def _compressor(*, scratch: bool) -> Any:
    """Blosc: zstd (level 1, bit shuffle) for outputs, the NGFF tools' common choice; lz4
    (level 1) for scratch arrays, read back once."""
    import numcodecs

    if scratch:
        return numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)
    return numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE)


def chunked_array(
    group: Any,
    name: str,
    shape: Sequence[int],
    dtype: Any,
    *,
    chunk: int = CHUNK,
    scratch: bool = True,
) -> Any:
    """A zero-filled zarr array `name` in `group`, chunks of chunk × chunk pixels (one plane
    per chunk along leading axes), Blosc compressed (fast lz4 for `scratch` arrays, else
    zstd), '/' chunk keys (NGFF 0.4)."""
    chunks = (1,) * (len(shape) - 2) + (chunk, chunk)
    return group.create_array(
        name,
        shape=tuple(int(n) for n in shape),
        chunks=chunks,
        dtype=np.dtype(dtype),
        compressors=_compressor(scratch=scratch),
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )


def open_scratch_group(path: Path) -> Any:
    """A zarr v2 group in the one file `path` (a zip: chunks appended, each written once by
    the band writers) for arrays that live only while one image is written; the caller
    closes `group.store` and deletes the file. One file, so a killed run leaves one
    temporary, removed by the next run (`pixelwise.atomic`)."""
    import zarr

    store = zarr.storage.ZipStore(path, mode="w")
    return zarr.open_group(store=store, mode="w", zarr_format=2)


def level_shapes(shape: Sequence[int], chunk: int) -> list[tuple[int, ...]]:
    """Shapes of the pyramid levels: level 0 = `shape`, each next one ⌈half⌉ the height and
    width, until both fit in one chunk. Worked example: (1000, 300), chunk 256 →
    (1000, 300), (500, 150), (250, 75)."""
    shapes = [tuple(int(n) for n in shape)]
    while max(shapes[-1][-2:]) > chunk:
        *lead, h, w = shapes[-1]
        shapes.append((*lead, math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def downsample(block: np.ndarray) -> np.ndarray:
    """(…, h, w) → (…, ⌈h/2⌉, ⌈w/2⌉): integers (labels) subsampled [::2, ::2], floats the mean
    of each 2 × 2 block (the last row / column repeated when h or w is odd)."""
    if np.issubdtype(block.dtype, np.integer):
        return block[..., ::2, ::2]
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    even = np.pad(block, pad, mode="edge") if h % 2 or w % 2 else block
    lead = even.shape[:-2]
    blocks = even.reshape(*lead, even.shape[-2] // 2, 2, even.shape[-1] // 2, 2)
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(block.dtype)


def _fill_level(source: Any, target: Any, chunk: int) -> None:
    """Target level = downsample(source level), one band of chunk rows of the target at a time
    (2·chunk source rows read)."""
    height = target.shape[-2]
    for top in range(0, height, chunk):
        band = np.asarray(source[..., 2 * top : 2 * (top + chunk), :])
        target[..., top : top + chunk, :] = downsample(band)


# --------------------------------------------------------------------------------------------
# NGFF images
# --------------------------------------------------------------------------------------------


@contextmanager
def ngff_image(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype: Any,
    *,
    name: str,
    pixel_size: PixelSize | None = None,
    label: LabelInfo | None = None,
    channel_names: Sequence[str] | None = None,
    chunk: int = CHUNK,
) -> Iterator[Any]:
    """Write an NGFF multiscale image at `path` (a folder, e.g. out/a.ome.zarr).

    Yields the zero-filled level-0 zarr array for the caller to fill (by whole chunk rows for
    speed: `BandWriter(array, rows=chunk)`); when the block ends without error the coarser
    levels are computed from it, the metadata written and the folder renamed into place
    (`atomic_folder`).

    Args:
        path: the group's folder.
        shape: (H, W) for a label image, (C, H, W) for a channel image.
        dtype: the arrays' dtype.
        name: the image's name in the metadata.
        pixel_size: level 0's pixel size; None writes unit-less scales (1 at level 0).
        label: `image-label` metadata: makes it a label image (2-D only).
        channel_names: names of the C channels (the `omero` channel labels).
        chunk: chunk side in pixels; levels are made until one chunk holds the image.
    """
    import zarr

    shapes = level_shapes(shape, chunk)
    with atomic_folder(path) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        levels = [
            chunked_array(group, str(i), s, dtype, chunk=chunk, scratch=False)
            for i, s in enumerate(shapes)
        ]
        yield levels[0]
        for finer, coarser in itertools.pairwise(levels):
            _fill_level(finer, coarser, chunk)
        group.attrs.update(
            _metadata(name, shapes, pixel_size, label, channel_names, np.dtype(dtype))
        )


def _metadata(
    name: str,
    shapes: list[tuple[int, ...]],
    pixel_size: PixelSize | None,
    label: LabelInfo | None,
    channel_names: Sequence[str] | None,
    dtype: np.dtype,
) -> dict[str, Any]:
    """The group attributes: `multiscales` (+ `image-label` or `omero`)."""
    unit = {} if pixel_size is None else {"unit": "micrometer"}
    axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    base = (1.0, 1.0) if pixel_size is None else (pixel_size.y, pixel_size.x)
    channels = len(shapes[0]) == 3
    if channels:
        axes.insert(0, {"name": "c", "type": "channel"})
    datasets = []
    for level in range(len(shapes)):
        scale = [base[0] * 2**level, base[1] * 2**level]
        transform = {"type": "scale", "scale": ([1.0] if channels else []) + scale}
        datasets.append({"path": str(level), "coordinateTransformations": [transform]})
    integer = np.issubdtype(dtype, np.integer)
    attrs: dict[str, Any] = {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": axes,
                "datasets": datasets,
                "type": "nearest" if integer else "mean",
                "metadata": {
                    "method": "subsampling [::2, ::2]" if integer else "2 × 2 mean",
                    "software": "pixelwise",
                },
            }
        ]
    }
    if label is not None:
        attrs["image-label"] = label.metadata()
    if channels:
        names = list(channel_names or [f"channel {i}" for i in range(shapes[0][0])])
        attrs["omero"] = {
            "name": name,
            "version": NGFF_VERSION,
            "channels": [
                {
                    "label": str(n),
                    "color": "FFFFFF",
                    "active": True,
                    "window": {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0},
                }
                for n in names
            ],
            "rdefs": {"model": "greyscale"},
        }
    return attrs


def write_ngff(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    name: str,
    pixel_size: PixelSize | None = None,
    label: LabelInfo | None = None,
    channel_names: Sequence[str] | None = None,
    chunk: int = CHUNK,
) -> Path:
    """Write an in-memory (H, W) or (C, H, W) array as an NGFF image (see `ngff_image`)."""
    with ngff_image(
        path,
        array.shape,
        array.dtype,
        name=name,
        pixel_size=pixel_size,
        label=label,
        channel_names=channel_names,
        chunk=chunk,
    ) as level0:
        for top in range(0, array.shape[-2], chunk):
            level0[..., top : top + chunk, :] = array[..., top : top + chunk, :]
    return Path(path)
