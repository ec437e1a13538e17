"""The inputs of `predict_files`: which files, their output names, and reading each image.

Owns expanding files and folders (`expand_inputs`), the unique output names (`output_names`),
pages of multi-page TIFFs, opening an image (memory-mapped when the TIFF allows), the checks of
an image against the model (empty, shape, channels), and `NormalizedImage`, the lazily
normalised view that streamed prediction reads tile by tile. Writing is in
`pixelwise.inference.outputs`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from pixelwise.data import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    DataError,
    page_count,
    read_image,
    to_chw_float,
)
from pixelwise.inference.summary import Failure


def _folder_images(folder: Path) -> list[Path]:
    """PNG/TIFF/JPEG files directly inside `folder` (not recursive, no hidden files), by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
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
        if path.is_dir():
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
    """Output base name of each file: its stem; stems that repeat get their suffix appended,
    then their folder's name prepended, then a counter, until every name is unique.

    Worked example: [x/a.png, x/a.tif, x/b.png, y/b.png] → [a_png, a_tif, x_b_png, y_b_png].
    """
    candidates = [
        lambda p: p.stem,
        lambda p: f"{p.stem}_{p.suffix.lstrip('.').lower()}",
        lambda p: f"{p.parent.name}_{p.stem}_{p.suffix.lstrip('.').lower()}",
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


def pages(path: Path) -> list[int | None]:
    """[None] for a single image, [0, 1, ...] for a multi-page TIFF."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return [None]
    n = page_count(path)
    return [None] if n == 1 else list(range(n))


def where(path: Path, page: int | None) -> str:
    """How messages name an image: the path, and the page of a multi-page TIFF."""
    return str(path) if page is None else f"{path} [page {page}]"


def open_image(path: Path, page: int | None) -> np.ndarray:
    """(H, W) or (H, W, C) pixels: a read-only memory map for uncompressed TIFF pages, else
    the decoded array (`pixelwise.data.read_image`)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tif:
                keyframe = tif.pages[page or 0]
                separate = keyframe.samplesperpixel > 1 and keyframe.planarconfig == 2
            image = tifffile.memmap(path, page=page or 0, mode="r")
            return np.moveaxis(image, 0, -1) if separate else image
        except (ValueError, OSError, IndexError, KeyError):
            pass  # compressed, tiled or corrupt: decode (read_image reports corrupt files)
    return read_image(path, page=page)


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
        normalization: the checkpoint's {"mean", "std", "scale"} record, or None (dtype scaling
            only).
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

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        channels, rows, cols = key
        if not (isinstance(rows, slice) and isinstance(cols, slice)):
            raise TypeError(f"NormalizedImage supports slices for rows and columns, got {key}")
        block = np.asarray(self._image[rows, cols])
        x = to_chw_float(block, normalization=self._normalization, source=self._source)
        return x[channels]
