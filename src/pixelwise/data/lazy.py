"""Images read region by region: TIFF of any layout and compression, OME-TIFF, OME-Zarr.

Owns opening an image lazily (`open_lazy`): a TIFF through tifffile (a memory map when its
data are contiguous and uncompressed, else its zarr store, `aszarr`, which decodes only the
tiles or strips a region needs; LZW, JPEG and the like need the `imagecodecs` package), an
OME-Zarr (NGFF) multiscale image through zarr, any other file decoded whole
(`pixelwise.data.io.read_image`). It also owns what such a file holds (`describe`: the images
of a stack, the channels, the pyramid levels), the choice of one level (`level`) and one
channel (`channel`) with their checks, and the physical pixel size the file records
(`PixelSize`: OME-XML, TIFF resolution tags, NGFF scale), scaled to the level read.

Axes are named by letter as tifffile names them: Y, X; C (channels) and S (samples, e.g. RGB)
are channel axes; every other axis (Z, T, Q, I, ...) enumerates the images of a stack, the
"pages" `pixelwise predict` predicts one by one. A `LazyImage` is (H, W) or (H, W, C)
whatever the file's axis order.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from pixelwise.data.errors import DataError, StrPath, data_error
from pixelwise.data.io import TIFF_SUFFIXES, read_image

CHANNEL_AXES = "CS"
ZARR_SUFFIX = ".zarr"

_MICROMETRES = {
    "angstrom": 1e-4,
    "å": 1e-4,
    "nanometer": 1e-3,
    "nm": 1e-3,
    "micrometer": 1.0,
    "micron": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "millimeter": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "cm": 1e4,
    "meter": 1e6,
    "m": 1e6,
}
"""Micrometres per unit of the length units OME-XML, NGFF and ImageJ write."""


@dataclass(frozen=True)
class PixelSize:
    """The physical size of one pixel, in micrometres.

    Attributes:
        y, x: pixel height and width in µm.
    """

    y: float
    x: float

    def scaled(self, factor_y: float, factor_x: float) -> PixelSize:
        """The pixel size of an image `factor` times coarser along each axis."""
        return PixelSize(self.y * factor_y, self.x * factor_x)


@dataclass(frozen=True)
class Layout:
    """What one image file holds.

    Attributes:
        images: images of a stack (product of the axes other than Y, X and the channel axis).
        channels: channels of each image (1 without a channel axis).
        levels: pyramid levels (1 without a pyramid); level 0 is the full resolution.
    """

    images: int
    channels: int
    levels: int


class LazyImage:
    """(H, W) or (H, W, C) view of one image of a file, read region by region.

    `image[r0:r1, c0:c1]` reads only that region of the underlying array (a memory map, a
    zarr array, or a numpy array) and returns it as (h, w) or (h, w, C) numpy pixels in the
    file's dtype; `np.asarray(image)` reads it all.

    Args:
        array: array-like in the file's axis order.
        axes: one letter per axis of `array` (tifffile's names: "YX", "CYX", "QYX", "YXS").
        index: the image of a stack: its position along each axis not in "YX" + CHANNEL_AXES,
            in axis order.
        channel: keep only this channel (the image is then (H, W)); None keeps them all.
        pixel_size: the physical pixel size at this resolution, if recorded.
        source: name used in error messages.
    """

    def __init__(
        self,
        array: Any,
        axes: str,
        *,
        index: Sequence[int] = (),
        channel: int | None = None,
        pixel_size: PixelSize | None = None,
        source: str = "image",
    ) -> None:
        if len(axes) != array.ndim or "Y" not in axes or "X" not in axes:
            raise DataError(
                f"{source}: cannot read axes {axes!r} of an array of shape {array.shape}; "
                f"save the image with Y and X axes"
            )
        self._array, self._axes, self._source = array, axes, source
        channel_axes = [a for a in axes if a in CHANNEL_AXES and array.shape[axes.index(a)] > 1]
        if len(channel_axes) > 1:
            raise DataError(
                f"{source}: image has two channel axes ({axes}, shape {array.shape}); save "
                f"one channel axis"
            )
        self._channel_axis = channel_axes[0] if channel_axes else None
        self._channel = channel
        self._index = tuple(index)
        self.pixel_size = pixel_size
        height, width = array.shape[axes.index("Y")], array.shape[axes.index("X")]
        keeps_channels = self._channel_axis is not None and channel is None
        self.shape: tuple[int, ...] = (height, width)
        if keeps_channels:
            self.shape += (array.shape[axes.index(self._channel_axis)],)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def channels(self) -> int:
        """Channels in the file (before `channel` picked one)."""
        if self._channel_axis is None:
            return 1
        return int(self._array.shape[self._axes.index(self._channel_axis)])

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 2 or not all(isinstance(k, slice) for k in key):
            raise TypeError(f"LazyImage supports [rows, cols] slices, got {key}")
        rows, cols = (*key, slice(None), slice(None))[:2]
        extra = iter(self._index)
        region: list[Any] = []
        kept = []  # letters of the axes the region keeps, in array order
        for axis, length in zip(self._axes, self._array.shape, strict=True):
            if axis == "Y":
                region.append(rows)
                kept.append(axis)
            elif axis == "X":
                region.append(cols)
                kept.append(axis)
            elif axis == self._channel_axis:
                region.append(slice(None) if self._channel is None else self._channel)
                if self._channel is None:
                    kept.append("C")
            elif axis in CHANNEL_AXES and length == 1:
                region.append(0)
            else:
                region.append(next(extra))
        try:
            block = np.asarray(self._array[tuple(region)])
        except (ValueError, OSError, RuntimeError, KeyError) as exc:  # codecs, truncated files
            raise DataError(
                f"{self._source}: cannot decode rows {rows.start}..{rows.stop}, columns "
                f"{cols.start}..{cols.stop} ({type(exc).__name__}: {exc}); check the file is "
                f"complete, and install imagecodecs for LZW, JPEG, JPEG 2000 or zstd "
                f"compressed TIFFs (pip install imagecodecs)"
            ) from exc
        order = [kept.index(a) for a in ("Y", "X", "C") if a in kept]
        block = np.transpose(block, order) if order != sorted(order) else block
        if not block.dtype.isnative:
            block = block.astype(block.dtype.newbyteorder("="))
        return block

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        block = self[:, :]
        return block if dtype is None else block.astype(dtype)


# --------------------------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------------------------


def is_ome_zarr(path: StrPath) -> bool:
    """Whether `path` is a folder holding an OME-Zarr (NGFF) multiscale image."""
    path = Path(path)
    if not path.is_dir():
        return False
    for name in (".zattrs", "zarr.json"):
        meta = path / name
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text())
            except (OSError, ValueError):
                return False
            attrs = attrs.get("attributes", attrs)  # zarr v3 keeps them under "attributes"
            return "multiscales" in attrs or "multiscales" in attrs.get("ome", {})
    return False


def describe(path: StrPath) -> Layout:
    """The images, channels and pyramid levels of an image file (no pixels decoded).

    Raises:
        DataError: the file cannot be read (message names it and the fix).
    """
    with _Opened(Path(path)) as opened:
        return opened.layout()


def open_lazy(
    path: StrPath,
    *,
    page: int | None = None,
    channel: int | None = None,
    level: int = 0,
    where: str | None = None,
) -> LazyImage:
    """One image of a file, read region by region where the format allows.

    Args:
        path: TIFF / OME-TIFF / BigTIFF (tiled or strips, any compression tifffile or
            imagecodecs decodes), OME-Zarr folder, or PNG / JPEG (decoded whole).
        page: the image of a stack (see `describe`), None for a single image.
        channel: keep only this channel (`--channel`); None keeps every channel.
        level: pyramid level (`--level`), 0 = full resolution.
        where: how messages name the image (default: the path).

    Raises:
        DataError: unreadable file, or a channel or level the file does not have (the message
            names the flag, the valid range and the fix).
    """
    path = Path(path)
    where = where or str(path)
    with _Opened(path) as opened:
        layout = opened.layout()
        check_level(level, layout.levels, where)
        if channel is not None:
            check_channel(channel, layout.channels, where)
        return opened.image(page, channel, level, where)


def check_level(level: int, levels: int, where: str) -> None:
    """DataError unless `level` is one of the file's `levels` pyramid levels."""
    if not 0 <= level < levels:
        fix = (
            "the file has no pyramid, so pass --level 0 or leave it out"
            if levels == 1
            else f"pass --level between 0 and {levels - 1} (0 = full resolution)"
        )
        raise DataError(
            f"{where}: --level {level} is out of range: the file has {levels} pyramid "
            f"level(s), 0..{levels - 1}; {fix}"
        )


def check_channel(channel: int, channels: int, where: str) -> None:
    """DataError unless `channel` is one of the image's `channels` channels."""
    if not 0 <= channel < channels:
        raise DataError(
            f"{where}: --channel {channel} is out of range: the image has {channels} "
            f"channel(s), 0..{channels - 1}; pass --channel between 0 and {channels - 1}"
        )


class _Opened:
    """An open image file: its arrays, their axes and the recorded pixel size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tiff: tifffile.TiffFile | None = None

    def __enter__(self) -> _Opened:
        path = self.path
        if is_ome_zarr(path):
            self._open_zarr()
        elif path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
            self._open_tiff()
        else:
            self.kind = "decoded"
            self._pages = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tiff is not None:
            self._tiff.close()

    # -- the three kinds ---------------------------------------------------------------------

    def _open_zarr(self) -> None:
        import zarr

        self.kind = "zarr"
        self._pages = None
        try:
            group = zarr.open_group(str(self.path), mode="r")
            attrs = group.attrs.asdict()
            multiscale = (attrs.get("multiscales") or attrs["ome"]["multiscales"])[0]
            axes = [a["name"] if isinstance(a, dict) else a for a in multiscale["axes"]]
            units = [a.get("unit") if isinstance(a, dict) else None for a in multiscale["axes"]]
            datasets = multiscale["datasets"]
            self._levels = [group[d["path"]] for d in datasets]
        except (KeyError, IndexError, TypeError, ValueError, OSError) as exc:
            raise data_error(
                self.path,
                f"cannot read the OME-Zarr multiscale image ({type(exc).__name__}: {exc})",
                "check it is an NGFF image group (multiscales with axes and datasets)",
            ) from exc
        self._axes = "".join(a.upper() for a in axes)
        scales = [_ngff_scale(d, multiscale) for d in datasets]
        self._zarr_sizes = [_ngff_pixel_size(s, axes, units) for s in scales]

    def _open_tiff(self) -> None:
        self.kind = "tiff"
        try:
            tif = self._tiff = tifffile.TiffFile(self.path)
            series = tif.series[0]
            if len(tif.series) == 1 or len(series.levels) > 1 or tif.is_ome:
                self._series = series
                self._axes = series.axes
                self._pages = None
            else:  # pages of different shapes: each page is an image, as tifffile lists them
                self._series = None
                self._pages = tif.pages
                self._axes = tif.pages[0].axes
            self._tiff_size = _tiff_pixel_size(tif)
        except DataError:
            raise
        except (OSError, ValueError, IndexError, KeyError, TypeError) as exc:
            if self._tiff is not None:
                self._tiff.close()
                self._tiff = None
            raise data_error(
                self.path, f"cannot read image ({exc})", "check the file is a valid TIFF"
            ) from exc

    # -- what the file holds ----------------------------------------------------------------

    def _shapes(self) -> list[tuple[int, ...]]:
        if self.kind == "zarr":
            return [tuple(a.shape) for a in self._levels]
        if self._pages is not None:
            return [tuple(self._pages[0].shape)]
        return [tuple(level.shape) for level in self._series.levels]

    def layout(self) -> Layout:
        if self.kind == "decoded":
            return Layout(images=1, channels=self._decoded_channels(), levels=1)
        shape = self._shapes()[0]
        channels = [n for a, n in zip(self._axes, shape, strict=True) if a in CHANNEL_AXES]
        others = [n for a, n in zip(self._axes, shape, strict=True) if a not in "YX" + CHANNEL_AXES]
        images = len(self._pages) if self._pages is not None else math.prod(others)
        return Layout(images=images, channels=max(channels, default=1), levels=len(self._shapes()))

    def image(self, page: int | None, channel: int | None, level: int, where: str) -> LazyImage:
        if self.kind == "decoded":
            image = self._decoded()
            return LazyImage(image, "YX" if image.ndim == 2 else "YXS", channel=channel,
                             source=where)  # fmt: skip
        shapes = self._shapes()
        size = self._pixel_size(level, shapes)
        if self._pages is not None:
            tiff_page = self._pages[page or 0]
            array = _page_array(self.path, tiff_page)
            return LazyImage(array, tiff_page.axes, channel=channel, pixel_size=size, source=where)
        shape = shapes[level]
        others = [n for a, n in zip(self._axes, shape, strict=True) if a not in "YX" + CHANNEL_AXES]
        index = np.unravel_index(page or 0, others) if others else ()
        array = self._levels[level] if self.kind == "zarr" else self._series_array(level)
        return LazyImage(
            array,
            self._axes,
            index=[int(i) for i in index],
            channel=channel,
            pixel_size=size,
            source=where,
        )

    def _decoded_channels(self) -> int:
        """Channels of a PNG / JPEG as `read_image` gives them, from the header; 1 when the
        header cannot be read (`read_image` then reports the file)."""
        if getattr(self, "_image", None) is not None:
            return 1 if self._image.ndim == 2 else self._image.shape[2]
        try:
            with Image.open(self.path) as image:
                mode = image.mode
                bands = len(image.getbands())
        except (OSError, ValueError, SyntaxError):
            return 1
        return {"P": 1, "PA": 1, "1": 1, "CMYK": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}.get(mode, bands)

    def _decoded(self) -> np.ndarray:
        if getattr(self, "_image", None) is None:
            self._image = read_image(self.path)
        return self._image

    def _series_array(self, level: int) -> Any:
        """A memory map of the series level when its data are contiguous, else its zarr store."""
        try:
            return tifffile.memmap(self.path, series=0, level=level, mode="r")
        except (ValueError, OSError, IndexError, KeyError):
            pass  # compressed, tiled or in several blocks: read through the zarr store
        import zarr

        return zarr.open_array(self._series.aszarr(level=level), mode="r")

    def _pixel_size(self, level: int, shapes: list[tuple[int, ...]]) -> PixelSize | None:
        if self.kind == "zarr":
            return self._zarr_sizes[level]
        base = self._tiff_size
        if base is None or level == 0:
            return base
        y, x = self._axes.index("Y"), self._axes.index("X")
        full, coarse = shapes[0], shapes[level]
        return base.scaled(full[y] / coarse[y], full[x] / coarse[x])


def _page_array(path: Path, page: Any) -> Any:
    """One TIFF page: a memory map when uncompressed and contiguous, else its zarr store."""
    try:
        return tifffile.memmap(path, page=page.index, mode="r")
    except (ValueError, OSError, IndexError, KeyError):
        pass
    import zarr

    return zarr.open_array(page.aszarr(), mode="r")


# --------------------------------------------------------------------------------------------
# Pixel sizes
# --------------------------------------------------------------------------------------------


def _micrometres(value: float, unit: str | None) -> float | None:
    factor = _MICROMETRES.get((unit or "µm").strip().lower())
    return None if factor is None or not value > 0 else float(value) * factor


def _tiff_pixel_size(tif: tifffile.TiffFile) -> PixelSize | None:
    """The pixel size in the OME-XML, else in the resolution tags (inch, cm; ImageJ's unit)."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ElementTree.fromstring(tif.ome_metadata)
        except ElementTree.ParseError:
            root = None
        pixels = (
            None
            if root is None
            else next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
        )
        if pixels is not None and "PhysicalSizeX" in pixels.attrib:
            x = _micrometres(float(pixels.get("PhysicalSizeX")), pixels.get("PhysicalSizeXUnit"))
            y_value = pixels.get("PhysicalSizeY", pixels.get("PhysicalSizeX"))
            y_unit = pixels.get("PhysicalSizeYUnit", pixels.get("PhysicalSizeXUnit"))
            y = _micrometres(float(y_value), y_unit)
            if x and y:
                return PixelSize(y, x)
    page = tif.pages.first
    tags = page.tags
    if "XResolution" not in tags:
        return None
    x_res, y_res = page.resolution  # pixels per unit
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # µm per inch, per cm
    if per_unit is None and tif.is_imagej:  # ImageJ: unit NONE, the unit in its description
        per_unit = _MICROMETRES.get(str((tif.imagej_metadata or {}).get("unit", "")).lower())
    if per_unit is None or not (x_res > 0 and y_res > 0) or (x_res, y_res) == (1, 1):
        return None
    return PixelSize(per_unit / y_res, per_unit / x_res)


def _ngff_scale(dataset: dict, multiscale: dict) -> list[float] | None:
    """A dataset's scale, times the multiscale's own scale when it has one."""

    def scale_of(transforms: list[dict]) -> list[float] | None:
        for t in transforms or []:
            if t.get("type") == "scale":
                return [float(v) for v in t["scale"]]
        return None

    scale = scale_of(dataset.get("coordinateTransformations", []))
    outer = scale_of(multiscale.get("coordinateTransformations", []))
    if scale is not None and outer is not None:
        scale = [a * b for a, b in zip(scale, outer, strict=True)]
    return scale


def _ngff_pixel_size(
    scale: list[float] | None, axes: list[str], units: list[str | None]
) -> PixelSize | None:
    """The y and x scale in µm, when the y and x axes have a length unit."""
    if scale is None or "y" not in axes or "x" not in axes:
        return None
    y, x = axes.index("y"), axes.index("x")
    if units[y] is None or units[x] is None:
        return None
    size_y, size_x = _micrometres(scale[y], units[y]), _micrometres(scale[x], units[x])
    return PixelSize(size_y, size_x) if size_y and size_x else None
