"""The inputs of `predict_files`: which files, their output names, and reading each image.

Owns expanding files and folders (`expand_inputs`; an OME-Zarr folder is one image), the unique
output names (`output_names`), the images of a stack (`pages`), opening an image
(`open_image`: region by region through `pixelwise.data.lazy`, with its pyramid level and
channel), the checks of an image against the model (empty, shape, channels), and
`NormalizedImage`, the lazily normalised view that streamed prediction reads tile by tile.
Writing is in `pixelwise.inference.outputs`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise.checks import is_int
from pixelwise.data import (
    IMAGE_SUFFIXES,
    DataError,
    is_percentile,
    percentile_levels,
    read_image,
    to_chw_float,
)
from pixelwise.data.lazy import LazyImage, describe, is_ome_zarr, open_lazy
from pixelwise.inference.summary import Failure


def _folder_images(folder: Path) -> list[Path]:
    """PNG/TIFF/JPEG files and OME-Zarr images directly inside `folder` (not recursive, no
    hidden entries), by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and ((p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or is_ome_zarr(p))
    )


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Failure]]:
    """Files to predict: each file as given, each folder's image files (sorted by name).

    A file named twice (also through its folder) is kept once, at its first position.

    Returns:
        (files, failures): failures for paths that do not exist and folders without images.
    """
    files: list[Path] = []
    failures: list[Failure] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if is_ome_zarr(path):
            found = [path]
        elif path.is_dir():
            found = _folder_images(path)
            if not found:
                failures.append(
                    Failure(
                        str(path),
                        f"{path}: folder has no image files ({', '.join(IMAGE_SUFFIXES)}); "
                        f"point at the folder holding the images",
                    )
                )
        elif path.is_file():
            found = [path]
        else:
            failures.append(Failure(str(path), f"{path}: no such file or folder; check the path"))
            found = []
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    return files, failures


def output_names(files: Sequence[Path]) -> list[str]:
    """Output base name of each file: its stem (without ".ome": x.ome.tif and x.ome.zarr give
    x); stems that repeat get their suffix appended, then their folder's name prepended, then a
    counter, until every name is unique.

    Worked example: [x/a.png, x/a.tif, x/b.png, y/b.png] → [a_png, a_tif, x_b_png, y_b_png].
    """
    candidates = [
        lambda p: _stem(p),
        lambda p: f"{_stem(p)}_{p.suffix.lstrip('.').lower()}",
        lambda p: f"{p.parent.name}_{_stem(p)}_{p.suffix.lstrip('.').lower()}",
    ]
    names = [candidates[0](p) for p in files]
    for make in candidates[1:]:
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        names = [make(p) if counts[n] > 1 else n for p, n in zip(files, names, strict=True)]
    seen: dict[str, int] = {}
    unique = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return unique


def _stem(path: Path) -> str:
    stem = path.stem
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def pages(path: Path) -> list[int | None]:
    """[None] for a single image, [0, 1, ...] for the images of a stack (the pages of a
    multi-page TIFF; the Z / T planes of an OME-TIFF or OME-Zarr; not its channels or levels).

    Raises:
        DataError: the file cannot be read.
    """
    n = describe(path).images
    return [None] if n == 1 else list(range(n))


def where(path: Path, page: int | None) -> str:
    """How messages name an image: the path, and the page of a multi-page TIFF."""
    return str(path) if page is None else f"{path} [page {page}]"


def open_image(
    path: Path, page: int | None, *, channel: int | None = None, level: int = 0
) -> LazyImage | np.ndarray:
    """(H, W) or (H, W, C) pixels read region by region (`pixelwise.data.lazy.open_lazy`): a
    memory map of uncompressed TIFF data, the zarr store of compressed or tiled TIFFs and
    OME-Zarr, decoded pixels for PNG / JPEG; `channel` keeps one channel, `level` picks a
    pyramid level.

    Raises:
        DataError: unreadable file, or a channel or level the file lacks (naming the flag).
    """
    image = open_lazy(path, page=page, channel=channel, level=level, where=where(path, page))
    if image.size == 0:  # nothing to read lazily: the decoder's array, as check_image words it
        return read_image(path, page=page)
    return image


def check_selection(*, channel: int | None, level: int) -> None:
    """ValueError unless `channel` is None or an integer >= 0 and `level` an integer >= 0 (the
    file-free part of the rule; each file's range is checked when it is opened)."""
    rules = (
        ("channel", channel, True, "--channel 0 for the first channel, or leave it out"),
        ("level", level, False, "--level 0 for the full resolution"),
    )
    for flag, value, none, fix in rules:
        if (value is None and none) or (is_int(value) and value >= 0):
            continue
        raise ValueError(
            f"--{flag} must be an integer >= 0 ({flag}= in Python), got {value!r}; pass {fix}"
        )


def _channel_problem(channels: int, expected: int) -> str | None:
    if channels == expected:
        return None
    kind = {1: "grayscale, 1 channel", 3: "RGB, 3 channels", 4: "RGBA, 4 channels"}
    have = kind.get(channels, f"{channels} channels")
    if expected == 1 and channels in (3, 4):
        fix = (
            f"convert it to grayscale (e.g. PIL's Image.convert('L')) or use a model trained "
            f"on {channels}-channel images"
        )
    elif expected == 3 and channels == 1:
        fix = "convert it to RGB or use a model trained on 1-channel images"
    else:
        fix = (
            f"convert it to {expected} channel(s) or use a model trained on {channels}-channel "
            f"images"
        )
    return f"image is {have} but the model takes {expected} channel(s); {fix}"


def check_image(image: np.ndarray, where: str, expected_channels: int) -> None:
    """DataError for an empty image, a shape that is not (H, W[, C]), or the wrong channels."""
    if image.size == 0:
        raise DataError(
            f"{where}: image is empty ({' × '.join(map(str, image.shape))}, 0 pixels); "
            f"remove the file or replace it with a real image"
        )
    if image.ndim not in (2, 3):
        raise DataError(
            f"{where}: expected an (H, W) or (H, W, C) image, got shape {image.shape}; "
            f"save one 2-D image per file or page"
        )
    channels = 1 if image.ndim == 2 else image.shape[2]
    problem = _channel_problem(channels, expected_channels)
    if problem:
        raise DataError(f"{where}: {problem}")


class NormalizedImage:
    """(C, H, W) float32 view of an (H, W) or (H, W, C) image, normalised when read.

    Reading `view[:, r0:r1, c0:c1]` reads only that region of the underlying array (a
    memory-mapped TIFF stays on disk), then applies `pixelwise.data.to_chw_float`: dtype scaling
    (uint8 / 255, ...), the per-channel standardisation (x − mean) / std, and the NaN check. So
    `tiling.predict(model, view)` equals `tiling.predict(model, to_chw_float(image, ...))` while
    holding only one tile batch in memory.

    Args:
        image: (H, W) or (H, W, C) array-like supporting 2-D slicing (numpy array, np.memmap).
        normalization: the checkpoint's {"mean", "std", "scale"} record, its per-image
            percentile record (levels measured once on the whole image), or None (dtype
            scaling only).
        source: name used in error messages.
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, image: Any, normalization: dict | None, source: str) -> None:
        if image.ndim not in (2, 3):
            raise DataError(f"{source}: expected an (H, W) or (H, W, C) image, got {image.shape}")
        channels = 1 if image.ndim == 2 else image.shape[2]
        self.shape = (channels, *image.shape[:2])
        self._image, self._normalization, self._source = image, normalization, source
        # A percentile record's levels belong to the whole image: measured once, on a regular
        # subsample read region by region, and applied to every block.
        self._levels = (
            percentile_levels(image, normalization, source=source)
            if is_percentile(normalization)
            else None
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        channels, rows, cols = key
        if not (isinstance(rows, slice) and isinstance(cols, slice)):
            raise TypeError(f"NormalizedImage supports slices for rows and columns, got {key}")
        block = np.asarray(self._image[rows, cols])
        x = to_chw_float(
            block, normalization=self._normalization, source=self._source, levels=self._levels
        )
        return x[channels]
