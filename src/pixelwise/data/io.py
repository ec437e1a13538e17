"""Reading and writing image files: PNG, JPEG and (multi-page) TIFF.

:func:`read_image`, :func:`page_count`, :func:`iter_pages` and :func:`read_stack` keep the file's
dtype: images are ``(H, W)`` or ``(H, W, C)``, stacks ``(Z, H, W[, C])``. :func:`write_image`
writes one image through :mod:`pixelwise.atomic` (readers never see a half-written file; the file
gets the umask's permissions, 0644 under umask 022). Decoding masks into classes and scaling
images for the network live in :mod:`pixelwise.data.masks` and
:mod:`pixelwise.data.normalization`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile
from PIL import Image

from pixelwise.atomic import atomic_path
from pixelwise.data.errors import DataError, StrPath, data_error, location
from pixelwise.data.palette import as_palette

if TYPE_CHECKING:
    from pixelwise.data.lazy import PixelSize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
JPEG_SUFFIXES = (".jpg", ".jpeg")

_READ_FIX = "check the file is a valid PNG/TIFF/JPEG"
# Pillow raises these for missing, truncated or corrupt files; tifffile raises ValueError kinds.
_READ_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


def _native(array: np.ndarray) -> np.ndarray:
    """Native byte order (16-bit TIFF/PNG data may come back big-endian)."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _resolve_page(path: Path, page: int | None, n_pages: int) -> int:
    if page is None:
        if n_pages > 1:
            raise data_error(
                path,
                f"file has {n_pages} pages, expected a single image",
                "use read_stack() or iter_pages() for multi-page TIFFs, or pass page=",
            )
        return 0
    if not 0 <= page < n_pages:
        raise data_error(
            path,
            f"page {page} out of range (file has {n_pages} pages)",
            f"pass page between 0 and {n_pages - 1}",
        )
    return page


def _pillow_to_array(image: Image.Image) -> np.ndarray:
    if image.mode == "1":
        image = image.convert("L")  # bilevel → 0/255
    elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    array = np.array(image)
    if image.mode == "PA":
        array = array[..., 0]  # palette indices, alpha dropped
    return _native(array)


def _read_pillow(path: Path, page: int | None) -> np.ndarray:
    with Image.open(path) as image:
        index = _resolve_page(path, page, getattr(image, "n_frames", 1))
        if index:
            image.seek(index)
        image.load()
        return _pillow_to_array(image)


def _read_tiff(path: Path, page: int | None) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            index = _resolve_page(path, page, len(tif.pages))
            tiff_page = tif.pages[index]
            array = tiff_page.asarray()
            keyframe = getattr(tiff_page, "keyframe", tiff_page)
            if keyframe.samplesperpixel > 1 and keyframe.planarconfig == 2:  # 2 = separate
                array = np.moveaxis(array, 0, -1)  # (C, H, W) planes → (H, W, C)
            return _native(array)
    except DataError:
        raise
    except ValueError as exc:
        if "imagecodecs" not in str(exc):
            raise
    # tifffile needs the optional imagecodecs package for LZW/deflate; Pillow decodes those.
    return _read_pillow(path, page)


def read_image(path: StrPath, *, page: int | None = None) -> np.ndarray:
    """Read one image, keeping its dtype.

    TIFFs are read with tifffile (Pillow when a codec such as LZW needs the missing
    ``imagecodecs`` package), everything else with Pillow. Palette (``P`` mode) PNGs come back as
    their palette indices; bilevel images as 0/255 uint8.

    Args:
        path: PNG, JPEG or TIFF file.
        page: page of a multi-page TIFF; ``None`` requires a single-page file.

    Returns:
        (H, W) or (H, W, C) array in the file's dtype.

    Raises:
        DataError: missing, unreadable or corrupt file (message names the file and the fix).
    """
    path = Path(path)
    where = location(path, page)
    if not path.is_file():
        raise data_error(where, "cannot read image (file not found)", "check the path")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _read_tiff(path, page)
        return _read_pillow(path, page)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise data_error(where, f"cannot read image ({exc})", _READ_FIX) from exc


def page_count(path: StrPath) -> int:
    """Number of pages (TIFF) or frames (other formats) in an image file, without decoding."""
    path = Path(path)
    if not path.is_file():
        raise data_error(path, "cannot read image (file not found)", "check the path")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                return len(tif.pages)
        with Image.open(path) as image:
            return int(getattr(image, "n_frames", 1))
    except _READ_ERRORS as exc:
        raise data_error(path, f"cannot read image ({exc})", _READ_FIX) from exc


def iter_pages(path: StrPath) -> Iterator[np.ndarray]:
    """Yield the pages of a (multi-page) image one at a time, each (H, W) or (H, W, C)."""
    for index in range(page_count(path)):
        yield read_image(path, page=index)


def read_stack(path: StrPath) -> np.ndarray:
    """Read all pages of a multi-page TIFF (a single image gives Z = 1).

    Returns:
        (Z, H, W) or (Z, H, W, C) array in the file's dtype.

    Raises:
        DataError: unreadable file or pages of different shapes / dtypes.
    """
    pages = list(iter_pages(path))
    shapes = {(page.shape, page.dtype.str) for page in pages}
    if len(shapes) > 1:
        raise data_error(
            path,
            f"pages differ in shape/dtype: {sorted(shapes)}",
            "read pages one at a time with iter_pages()",
        )
    return np.stack(pages)


def _to_pillow(array: np.ndarray, palette: Any, path: Path) -> Image.Image:
    if palette is not None:
        colours = as_palette(palette)
        if array.ndim != 2 or array.dtype.kind not in "biu":
            raise ValueError(
                f"a palette PNG needs an (H, W) integer class map, got shape {array.shape} "
                f"dtype {array.dtype} for {path}; pass class indices"
            )
        if array.min() < 0 or array.max() >= len(colours):
            raise ValueError(
                f"class map values must be in 0..{len(colours) - 1} for a palette of "
                f"{len(colours)} colours, got {array.min()}..{array.max()} for {path}; "
                "pass a palette with one row per class"
            )
        image = Image.fromarray(array.astype(np.uint8))
        image.putpalette(colours.tobytes())  # turns the 'L' image into a 'P' image
        return image
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype.kind == "f":
        raise ValueError(
            f"float arrays cannot be saved as PNG/JPEG ({path}); use a .tif path or convert "
            "to uint8/uint16"
        )
    if array.dtype.kind in "iu" and array.dtype not in (np.uint8, np.uint16):
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= 255:
            array = array.astype(np.uint8)
        elif low >= 0 and high <= 65535 and array.ndim == 2:
            array = array.astype(np.uint16)
        else:
            raise ValueError(
                f"values {low}..{high} ({array.dtype}) do not fit an 8/16-bit PNG ({path}); "
                "use a .tif path"
            )
    if array.dtype == np.uint16 and (array.ndim == 3 or path.suffix.lower() in JPEG_SUFFIXES):
        raise ValueError(
            f"16-bit colour PNG and 16-bit JPEG are not supported ({path}); use a .tif path"
        )
    return Image.fromarray(array)


def _encoder(
    array: np.ndarray, palette: Any, path: Path, pixel_size: PixelSize | None
) -> Callable[[Path], None]:
    """The function that writes `array` to a given file in the format of `path`'s suffix."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        if palette is not None:
            raise ValueError(f"palette is only supported for PNG, got {path}; use a .png path")
        photometric = "rgb" if array.ndim == 3 and array.shape[2] in (3, 4) else "minisblack"
        planar = "contig" if array.ndim == 3 else None
        resolution = {}
        if pixel_size is not None:  # pixels per centimetre
            resolution = {
                "resolution": (1e4 / pixel_size.x, 1e4 / pixel_size.y),
                "resolutionunit": "CENTIMETER",
            }
        return lambda target: tifffile.imwrite(
            target, array, photometric=photometric, planarconfig=planar, **resolution
        )
    if suffix == ".png" or suffix in JPEG_SUFFIXES:
        image = _to_pillow(array, palette, path)
        image_format = "PNG" if suffix == ".png" else "JPEG"
        dpi = {} if pixel_size is None else {"dpi": (25400 / pixel_size.x, 25400 / pixel_size.y)}
        return lambda target: image.save(target, format=image_format, **dpi)
    raise ValueError(
        f"unsupported image suffix {path.suffix!r} for {path}; use .png, .tif/.tiff or .jpg"
    )


def write_image(
    path: StrPath, array: np.ndarray, *, palette: Any = None, pixel_size: PixelSize | None = None
) -> None:
    """Write an image atomically: readers see the old file or the new one, never half of it.

    Written through :func:`pixelwise.atomic.atomic_path`: a temporary file beside ``path`` is
    renamed over it, deleted on any error; the file gets ``0o666 & ~umask`` (0644 under umask
    022). Missing parent folders are created. The array is checked before anything is written.

    Args:
        path: destination; ``.png`` (8/16-bit grey, 8-bit RGB/RGBA, or palette), ``.jpg`` /
            ``.jpeg`` (8-bit) or ``.tif`` / ``.tiff`` (any dtype, via tifffile).
        array: (H, W) or (H, W, C) with C in 1, 3, 4. Integer arrays of other dtypes are stored
            as uint8 / uint16 when their values fit.
        palette: (n, 3) uint8 colours; writes a palette ('P' mode) PNG of the (H, W) class map,
            which :func:`read_image` reads back as the indices.
        pixel_size: physical pixel size (:class:`pixelwise.data.lazy.PixelSize`, µm) to
            record: TIFF resolution tags (pixels per cm), PNG / JPEG dpi.

    Raises:
        ValueError: unsupported suffix, shape, dtype or palette (message says which).
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]  # (H, W, 1) -> (H, W)
    if array.size == 0 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] > 4):
        raise ValueError(
            f"array must be a non-empty (H, W) or (H, W, C) image with C in 1, 3, 4, got shape "
            f"{array.shape} for {path}; transpose (C, H, W) data with numpy.moveaxis(a, 0, -1)"
        )
    encode = _encoder(array, palette, path, pixel_size)
    with atomic_path(path) as temporary:
        encode(temporary)
