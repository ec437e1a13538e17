"""Reading, checking and serving segmentation data.

Four parts, each usable on its own:

* **Image I/O** — :func:`read_image`, :func:`iter_pages`, :func:`read_stack` and
  :func:`write_image_atomic` for PNG, JPEG and (multi-page) TIFF. Arrays keep their original dtype:
  ``(H, W)`` or ``(H, W, C)``; stacks are ``(Z, H, W[, C])``.
* **Normalisation** — :func:`to_chw_float` turns an image into a ``(C, H, W)`` float32 array scaled
  by its dtype (uint8 / 255, uint16 / 65535) and optionally standardised with a per-channel
  ``{"mean", "std", "scale"}`` record from :func:`infer_normalization`.
* **Datasets** — :func:`open_dataset` lists image/mask pairs (:class:`Sample`) from folder pairs,
  PASCAL VOC, TIFF stacks or instance-label folders; :func:`decode_mask` turns a stored mask into
  class indices; :class:`SegmentationDataset` serves ``(C, H, W)`` images and ``(H, W)`` masks.
* **Validation** — :func:`validate` reads every file once and collects *every* problem (size
  mismatches, labels outside the classes, lossy masks, unknown colours, unreadable or unpaired
  files, NaNs) into a :class:`ValidationReport`; :func:`load_and_validate` refuses to build a
  dataset from bad data and :func:`check_dataset` renders the report for ``pixelwise data check``.

Mask encodings understood by :func:`decode_mask`:

* single-channel integer labels (PNG ``L``/``I;16``, TIFF), palette (``P`` mode) PNGs read as their
  palette indices;
* binary masks stored as 0/255 — read as 0/1 when ``num_classes`` is 2 or not given and 255 is not
  the ``ignore_index`` (reported as a notice);
* RGB masks whose colours are rows of a palette (``palette=`` or the PASCAL VOC colour map), RGB
  masks with equal channels are read as grey labels;
* instance labels (``instances=True``: 0 = background, 1..K = objects; class mask = ids > 0).
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tifffile
import torch
from PIL import Image
from torch.utils.data import Dataset

StrPath = str | os.PathLike[str]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
JPEG_SUFFIXES = (".jpg", ".jpeg")
LAYOUTS = ("auto", "folder", "voc", "tiff-stack")
# Folder names recognised as the image / mask halves of a pair (first match wins).
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "inputs", "input", "raw")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "gt", "annotations", "annot", "targets")
# Multi-page TIFF pairs such as ISBI 2012's train-volume.tif + train-labels.tif.
_STACK_NAME = re.compile(
    r"^(?P<prefix>.*?)[-_]?(?P<role>volume|images?|raw|labels?|masks?|gt)$", re.IGNORECASE
)
_MASK_ROLES = ("label", "mask", "gt")

_READ_FIX = "check the file is a valid PNG/TIFF/JPEG"
_LOSSY_FIX = "save masks as PNG (lossless) with one integer value per class"
_NAN_FIX = "replace NaNs (e.g. numpy.nan_to_num) or drop the file"
_LAYOUT_FIX = (
    "expected images/ + masks/ folders (also image/label, img/gt, <split>/ + <split>annot/, "
    "<split>/images + <split>/masks), a PASCAL VOC folder (JPEGImages/, SegmentationClass/) or "
    "TIFF stacks (<name>-volume.tif + <name>-labels.tif); or pass images_dir= and masks_dir="
)
# A mask "looks lossy" when it has more than this many distinct values, at least half of them
# each covering less than _RARE_SHARE of the pixels (JPEG ringing around label edges).
_LOSSY_MIN_VALUES = 16
_RARE_SHARE = 0.005
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


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class Problem(NamedTuple):
    """One thing wrong with a dataset: the file (or folder), what is wrong, how to fix it."""

    path: str
    message: str
    fix: str


class DataError(ValueError):
    """Bad input data. ``str(error)`` names the file(s) and the fix; ``.problems`` lists them."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def _error(path: object, message: str, fix: str) -> DataError:
    return DataError(f"{path}: {message}; {fix}", [Problem(str(path), message, fix)])


def _where(path: StrPath, page: int | None) -> str:
    return str(path) if page is None else f"{path} [page {page}]"


# --------------------------------------------------------------------------------------------
# Palettes
# --------------------------------------------------------------------------------------------


def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC colour map: class ``i`` gets the colour built from the bits of ``i``.

    Bits 0, 1, 2 of ``i`` set the top bit of R, G, B; bits 3, 4, 5 the next bit, and so on.
    Worked example: ``i = 255`` → R = G = 128+64+32 = 224, B = 128+64 = 192 → (224, 224, 192),
    the VOC "void/boundary" colour.

    Args:
        n: number of entries, 1..256.

    Returns:
        (n, 3) uint8 array, row ``i`` = RGB colour of class ``i``.
    """
    if not 1 <= n <= 256:
        raise ValueError(f"n must be in 1..256, got {n}; a PNG palette has at most 256 colours")
    index = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


VOC_PALETTE = voc_palette()


def as_palette(palette: Any) -> np.ndarray:
    """Check a palette and return it as an (n, 3) uint8 array (row i = RGB colour of class i)."""
    array = np.asarray(palette)
    if (
        array.ndim != 2
        or array.shape[1] != 3
        or not 1 <= array.shape[0] <= 256
        or array.dtype.kind not in "iu"
        or array.min() < 0
        or array.max() > 255
    ):
        raise ValueError(
            f"palette must be an (n, 3) integer array of RGB values 0..255 with 1 <= n <= 256, "
            f"got shape {array.shape} dtype {array.dtype}; pass one RGB row per class"
        )
    return array.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Image I/O
# --------------------------------------------------------------------------------------------


def _native(array: np.ndarray) -> np.ndarray:
    """Native byte order (16-bit TIFF/PNG data may come back big-endian)."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _resolve_page(path: Path, page: int | None, n_pages: int) -> int:
    if page is None:
        if n_pages > 1:
            raise _error(
                path,
                f"file has {n_pages} pages, expected a single image",
                "use read_stack() or iter_pages() for multi-page TIFFs, or pass page=",
            )
        return 0
    if not 0 <= page < n_pages:
        raise _error(
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
    where = _where(path, page)
    if not path.is_file():
        raise _error(where, "cannot read image (file not found)", "check the path")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _read_tiff(path, page)
        return _read_pillow(path, page)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise _error(where, f"cannot read image ({exc})", _READ_FIX) from exc


def page_count(path: StrPath) -> int:
    """Number of pages (TIFF) or frames (other formats) in an image file, without decoding."""
    path = Path(path)
    if not path.is_file():
        raise _error(path, "cannot read image (file not found)", "check the path")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                return len(tif.pages)
        with Image.open(path) as image:
            return int(getattr(image, "n_frames", 1))
    except _READ_ERRORS as exc:
        raise _error(path, f"cannot read image ({exc})", _READ_FIX) from exc


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
        raise _error(
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


def write_image_atomic(path: StrPath, array: np.ndarray, *, palette: Any = None) -> None:
    """Write an image so that readers never see a half-written file.

    The data go to a temporary file in the destination folder, which then replaces ``path`` with
    ``os.replace`` (atomic on one filesystem). Missing parent folders are created.

    Args:
        path: destination; ``.png`` (8/16-bit grey, 8-bit RGB/RGBA, or palette), ``.jpg`` /
            ``.jpeg`` (8-bit) or ``.tif`` / ``.tiff`` (any dtype, via tifffile).
        array: (H, W) or (H, W, C) with C in 1, 3, 4. Integer arrays of other dtypes are stored
            as uint8 / uint16 when their values fit.
        palette: (n, 3) uint8 colours; writes a palette ('P' mode) PNG of the (H, W) class map,
            which :func:`read_image` reads back as the indices.

    Raises:
        ValueError: unsupported suffix, shape, dtype or palette (message says which).
    """
    path = Path(path)
    array = np.asarray(array)
    suffix = path.suffix.lower()
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.size == 0 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] > 4):
        raise ValueError(
            f"array must be a non-empty (H, W) or (H, W, C) image with C in 1, 3, 4, got shape "
            f"{array.shape} for {path}; transpose (C, H, W) data with numpy.moveaxis(a, 0, -1)"
        )
    if suffix in TIFF_SUFFIXES:
        if palette is not None:
            raise ValueError(f"palette is only supported for PNG, got {path}; use a .png path")

        photometric = "rgb" if array.ndim == 3 and array.shape[2] in (3, 4) else "minisblack"
        planar = "contig" if array.ndim == 3 else None

        def write(target: str) -> None:
            tifffile.imwrite(target, array, photometric=photometric, planarconfig=planar)

    elif suffix == ".png" or suffix in JPEG_SUFFIXES:
        image = _to_pillow(array, palette, path)
        image_format = "PNG" if suffix == ".png" else "JPEG"

        def write(target: str) -> None:
            image.save(target, format=image_format)

    else:
        raise ValueError(
            f"unsupported image suffix {path.suffix!r} for {path}; use .png, .tif/.tiff or .jpg"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


def dtype_scale(dtype: Any) -> float:
    """Factor mapping an integer dtype's full range onto [0, 1]: uint8 → 1/255, uint16 → 1/65535.

    Signed integers use their positive maximum; float and bool data are not scaled (1.0).
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return 1.0 / float(np.iinfo(dtype).max)
    return 1.0


def _check_normalization(
    normalization: dict[str, Any], channels: int, scale: float, source: str
) -> tuple[np.ndarray, np.ndarray]:
    try:
        mean = np.asarray(normalization["mean"], dtype=np.float32).reshape(-1)
        std = np.asarray(normalization["std"], dtype=np.float32).reshape(-1)
    except KeyError as exc:
        raise ValueError(
            f"normalization needs 'mean' and 'std' lists, got keys {sorted(normalization)}; "
            "build it with infer_normalization()"
        ) from exc
    if len(mean) != channels or len(std) != channels:
        raise _error(
            source,
            f"image has {channels} channel(s) but normalization has {len(mean)} mean / "
            f"{len(std)} std values",
            "use a normalization computed on images with the same channels",
        )
    if np.any(std <= 0):
        raise ValueError(f"normalization std must be > 0, got {std.tolist()}; recompute it")
    recorded = normalization.get("scale")
    if recorded is not None and not np.isclose(float(recorded), scale, rtol=1e-6, atol=0.0):
        raise _error(
            source,
            f"image dtype scale {scale:.6g} does not match the normalization scale "
            f"{float(recorded):.6g}",
            "convert images to the dtype used for training, or recompute the normalization",
        )
    return mean, std


def _checked_chw(image: np.ndarray, name: str) -> np.ndarray:
    """(C, H, W) view of an (H, W) or (H, W, C) image; DataError for bad shapes or NaN/inf."""
    if image.ndim not in (2, 3):
        raise _error(
            name,
            f"expected an (H, W) or (H, W, C) image, got shape {image.shape}",
            "pass one 2-D image at a time (use iter_pages() for stacks)",
        )
    if image.dtype.kind == "f":
        n_bad = int(np.count_nonzero(~np.isfinite(image)))
        if n_bad:
            raise _error(name, f"image has {n_bad} NaN or infinite values", _NAN_FIX)
    return image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)


def to_chw_float(
    image: np.ndarray,
    *,
    normalization: dict[str, Any] | None = None,
    source: StrPath | None = None,
) -> np.ndarray:
    """Convert an image to a (C, H, W) float32 network input.

    Values are multiplied by :func:`dtype_scale` (uint8 200 → 200/255 ≈ 0.784), then, when
    ``normalization`` is given, standardised per channel: ``(x - mean[c]) / std[c]``.

    Args:
        image: (H, W) or (H, W, C) array.
        normalization: ``{"mean": [C floats], "std": [C floats], "scale": float}`` as returned by
            :func:`infer_normalization`; ``scale`` must match the image dtype's scale.
        source: file name used in error messages.

    Returns:
        (C, H, W) float32 array (C = 1 for (H, W) input).

    Raises:
        DataError: NaN/inf values, wrong shape, or channel count / dtype not matching
            ``normalization``.
    """
    image = np.asarray(image)
    name = str(source) if source is not None else "image"
    chw = _checked_chw(image, name)
    scale = dtype_scale(image.dtype)
    x = chw.astype(np.float32)
    if scale != 1.0:
        x *= np.float32(scale)
    if normalization is not None:
        mean, std = _check_normalization(normalization, x.shape[0], scale, name)
        x -= mean[:, None, None]
        x /= std[:, None, None]
    return np.ascontiguousarray(x)


class _Moments:
    """Per-channel pixel mean and variance over many images, merged exactly in float64.

    Merging two groups (Chan et al.): with counts n_a, n_b, means m_a, m_b and summed squared
    deviations M_a, M_b: ``m = m_a + d n_b / n``, ``M = M_a + M_b + d² n_a n_b / n`` where
    ``d = m_b - m_a`` and ``n = n_a + n_b``. Population variance = ``M / n`` (numpy's ``np.std``).
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = np.zeros(0)
        self.m2 = np.zeros(0)

    def add(self, chw: np.ndarray, scale: float) -> None:
        """Add a (C, H, W) image whose values are multiplied by ``scale`` first."""
        x = chw.reshape(chw.shape[0], -1).astype(np.float64) * scale
        n_b = x.shape[1]
        mean_b = x.mean(axis=1)
        m2_b = np.square(x - mean_b[:, None]).sum(axis=1)
        if self.count == 0:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + np.square(delta) * self.count * n_b / n
        self.count = n

    def normalization(self, scale: float) -> dict[str, Any]:
        std = np.sqrt(self.m2 / self.count)
        std[std == 0] = 1.0  # constant channel: keep values instead of dividing by zero
        return {"mean": self.mean.tolist(), "std": std.tolist(), "scale": scale}


def infer_normalization(images: Iterable[np.ndarray]) -> dict[str, Any]:
    """Per-channel mean and standard deviation over a dataset, after dtype scaling.

    Every pixel counts once (large images weigh more), i.e. the result equals ``np.mean`` /
    ``np.std`` of all scaled pixels of a channel concatenated.

    Args:
        images: iterable of (H, W) or (H, W, C) arrays, all with the same C and dtype.

    Returns:
        ``{"mean": [C floats], "std": [C floats], "scale": dtype scale}``; a zero std is stored
        as 1.0 so that standardising never divides by zero.

    Raises:
        DataError: no images, NaN values, or mixed channel counts / dtypes.
    """
    moments = _Moments()
    first: tuple[int, str] | None = None
    for number, image in enumerate(images):
        array = np.asarray(image)
        chw = _checked_chw(array, f"image #{number}")
        key = (chw.shape[0], array.dtype.name)
        if first is None:
            first = key
        elif key != first:
            raise _error(
                f"image #{number}",
                f"has {key[0]} channel(s) of {key[1]} but earlier images have {first[0]} of "
                f"{first[1]}",
                "convert all images to the same channels and dtype",
            )
        moments.add(chw, dtype_scale(array.dtype))
    if first is None:
        raise DataError("infer_normalization got no images; pass at least one image")
    return moments.normalization(dtype_scale(first[1]))


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MaskEncoding:
    """How stored masks map to class indices.

    Attributes:
        num_classes: number of classes; ``None`` = infer from the data (max label + 1).
        ignore_index: label value excluded from training/metrics (e.g. 255 for VOC, 11 for the
            CamVid void class); kept as-is in decoded masks.
        palette: (n, 3) uint8 colours for RGB masks (row i = class i); ``None`` = VOC colours.
        instances: masks hold instance ids (0 = background, 1..K = objects); the class mask is
            ``ids > 0`` and the ids are kept for border weights.
    """

    num_classes: int | None = None
    ignore_index: int | None = None
    palette: np.ndarray | None = None
    instances: bool = False

    def __post_init__(self) -> None:
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int | np.integer)
            or self.num_classes < 1
        ):
            raise ValueError(
                f"num_classes must be an integer >= 1, got {self.num_classes!r}; pass the "
                "number of classes or None to infer it"
            )
        if self.ignore_index is not None and not isinstance(self.ignore_index, int | np.integer):
            raise ValueError(
                f"ignore_index must be an integer or None, got {self.ignore_index!r}; e.g. 255"
            )
        if self.palette is not None:
            object.__setattr__(self, "palette", as_palette(self.palette))


class DecodedMask(NamedTuple):
    """Result of :func:`decode_mask`.

    Attributes:
        mask: (H, W) int64 class indices (``ignore_index`` kept).
        instances: (H, W) int64 instance ids for instance masks, else ``None``.
        binary_255: the stored mask was 0/255 and was read as 0/1.
        values: distinct values of ``mask`` (sorted).
        counts: pixel count of each value in ``values``.
        n_objects: number of distinct non-zero instance ids (0 for class masks).
    """

    mask: np.ndarray
    instances: np.ndarray | None
    binary_255: bool
    values: np.ndarray
    counts: np.ndarray
    n_objects: int = 0


def _value_counts(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts; bincount for small unsigned types (fast)."""
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
        counts = np.bincount(array.ravel())
        values = np.flatnonzero(counts)
        return values.astype(np.int64), counts[values].astype(np.int64)
    values, counts = np.unique(array, return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)


def _short_list(values: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit].tolist())
    more = f", ... (+{len(values) - limit} more)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def _rgb_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _distinct_count(raw: np.ndarray) -> int:
    if raw.ndim == 3:
        return len(np.unique(_rgb_codes(raw[..., :3])))
    return len(_value_counts(raw)[0]) if raw.dtype.kind in "iu" else len(np.unique(raw))


def _looks_lossy(
    dtype: np.dtype, values: np.ndarray, counts: np.ndarray, encoding: MaskEncoding
) -> bool:
    """JPEG ringing signature: many distinct 8-bit values, most of them on very few pixels."""
    if encoding.num_classes is not None and not _invalid_values(values, encoding).size:
        return False
    if dtype != np.uint8 or len(values) <= _LOSSY_MIN_VALUES:
        return False
    rare = counts < _RARE_SHARE * counts.sum()
    return 2 * int(rare.sum()) >= len(values)


def _invalid_values(values: np.ndarray, encoding: MaskEncoding) -> np.ndarray:
    labels = values if encoding.ignore_index is None else values[values != encoding.ignore_index]
    upper = encoding.num_classes if encoding.num_classes is not None else np.iinfo(np.int64).max
    return labels[(labels < 0) | (labels >= upper)]


def _check_class_values(values: np.ndarray, encoding: MaskEncoding, path: str) -> None:
    bad = _invalid_values(values, encoding)
    if not bad.size:
        return
    if encoding.num_classes is None:
        raise _error(
            path,
            f"mask has negative values {_short_list(bad)}",
            "class ids must be >= 0; pass ignore_index= for unlabelled pixels",
        )
    n = encoding.num_classes
    raise _error(
        path,
        f"mask has values outside classes 0..{n - 1}: {_short_list(bad)} "
        f"(num_classes={n}, ignore_index={encoding.ignore_index})",
        "relabel the mask, or pass the right num_classes / ignore_index",
    )


def _rgb_to_index(rgb: np.ndarray, palette: np.ndarray, palette_name: str, path: str) -> np.ndarray:
    codes = _rgb_codes(rgb)
    colours, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    lookup: dict[int, int] = {}
    for index, code in enumerate(_rgb_codes(palette).tolist()):
        lookup.setdefault(code, index)  # repeated colours map to their first class
    indices = np.array([lookup.get(code, -1) for code in colours.tolist()], dtype=np.int64)
    missing = np.flatnonzero(indices < 0)
    if missing.size:
        missing = missing[np.argsort(-counts[missing], kind="stable")]
        shown = ", ".join(
            f"({code >> 16}, {(code >> 8) & 255}, {code & 255}) on {counts[i]} px"
            for i, code in zip(missing[:5], colours[missing[:5]].tolist(), strict=True)
        )
        more = f" and {missing.size - 5} more" if missing.size > 5 else ""
        raise _error(
            path,
            f"RGB mask has {missing.size} colour(s) not in the {palette_name}: {shown}{more}",
            "pass palette= with one RGB row per class (row i = class i) covering these colours, "
            "or save masks as single-channel integer labels",
        )
    return indices[inverse].reshape(codes.shape)


def _integer_labels(raw: np.ndarray, path: str) -> np.ndarray:
    if raw.dtype == np.bool_:
        return raw.astype(np.uint8)
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.array_equal(raw, np.round(raw)):
            raise _error(
                path,
                f"mask has non-integer values (dtype {raw.dtype})",
                "save masks as integer class ids (uint8/uint16 PNG or TIFF)",
            )
        return raw.astype(np.int64)
    if raw.dtype.kind not in "iu":
        raise _error(
            path, f"mask has unsupported dtype {raw.dtype}", "save masks as integer class ids"
        )
    return raw


def _decode_rgb(raw: np.ndarray, encoding: MaskEncoding, path: str) -> DecodedMask:
    channels = raw.shape[2]
    if encoding.instances:
        raise _error(
            path,
            f"instance mask has {channels} channels",
            "save instance labels as single-channel integer PNG/TIFF (0 = background, "
            "1..K = objects)",
        )
    if channels not in (3, 4) or raw.dtype != np.uint8:
        raise _error(
            path,
            f"mask has {channels} channels of {raw.dtype}",
            "save masks as single-channel integer labels or 8-bit RGB palette colours",
        )
    rgb = raw[..., :3]
    grey = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    if encoding.palette is None and grey:  # grey labels saved as RGB
        return _decode(rgb[..., 0], encoding, path)
    palette, name = (
        (encoding.palette, "palette")
        if encoding.palette is not None
        else (VOC_PALETTE, "VOC palette")
    )
    index = _rgb_to_index(rgb, palette, name, path)
    values, counts = _value_counts(index)
    _check_class_values(values, encoding, path)
    return DecodedMask(index, None, False, values, counts)


def _is_binary_255(values: np.ndarray, encoding: MaskEncoding) -> bool:
    return (
        encoding.num_classes in (None, 2)
        and encoding.ignore_index != 255
        and 255 in values
        and set(values.tolist()) <= {0, 255}
    )


def decode_mask(
    raw: np.ndarray,
    encoding: MaskEncoding | None = None,
    *,
    path: StrPath = "mask",
    page: int | None = None,
) -> DecodedMask:
    """Turn a stored mask into class indices (see the module docstring for the encodings).

    Args:
        raw: (H, W) labels or (H, W, 3|4) colours, as returned by :func:`read_image`.
        encoding: classes, ignore value, palette and instance flag; default: infer.
        path: file name for messages; a ``.jpg``/``.jpeg`` name marks the mask as lossy.
        page: page of a multi-page file, for messages.

    Returns:
        :class:`DecodedMask` with the (H, W) int64 class mask.

    Raises:
        DataError: lossy-looking mask, colours not in the palette, values outside the classes,
            non-integer or negative labels.
    """
    encoding = encoding if encoding is not None else MaskEncoding()
    raw = np.asarray(raw)
    name = _where(path, page)
    if Path(path).suffix.lower() in JPEG_SUFFIXES:
        raise _error(
            name,
            f"mask looks lossy-compressed (JPEG?): {_distinct_count(raw)} distinct values",
            _LOSSY_FIX,
        )
    return _decode(raw, encoding, name)


def _decode(raw: np.ndarray, encoding: MaskEncoding, name: str) -> DecodedMask:
    if raw.ndim == 3:
        return _decode_rgb(raw, encoding, name)
    if raw.ndim != 2:
        raise _error(
            name,
            f"mask must be (H, W) or (H, W, 3), got shape {raw.shape}",
            "save one 2-D label image per sample",
        )
    raw = _integer_labels(raw, name)
    values, counts = _value_counts(raw)
    if encoding.instances:
        if values.size and values[0] < 0:
            raise _error(
                name,
                f"instance mask has negative ids {_short_list(values[values < 0])}",
                "use 0 for background and 1..K for objects",
            )
        instances = raw.astype(np.int64)
        background = int(counts[0]) if values.size and values[0] == 0 else 0
        n_objects = int(np.count_nonzero(values))
        semantic = np.array([0, 1], dtype=np.int64)
        pixel_counts = np.array([background, int(counts.sum()) - background], dtype=np.int64)
        present = pixel_counts > 0
        return DecodedMask(
            (instances > 0).astype(np.int64),
            instances,
            False,
            semantic[present],
            pixel_counts[present],
            n_objects,
        )
    if _looks_lossy(raw.dtype, values, counts, encoding):
        raise _error(
            name, f"mask looks lossy-compressed (JPEG?): {len(values)} distinct values", _LOSSY_FIX
        )
    binary = _is_binary_255(values, encoding)
    if binary:
        mask = (raw == 255).astype(np.int64)
        values = (values == 255).astype(np.int64)  # [0, 255] → [0, 1], [255] → [1]
    else:
        mask = raw.astype(np.int64)
    _check_class_values(values, encoding, name)
    return DecodedMask(mask, None, binary, values, counts)


# --------------------------------------------------------------------------------------------
# Dataset indexing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One image/mask pair.

    Attributes:
        image_path: image file.
        mask_path: mask file, ``None`` when no mask exists (unlabelled image).
        name: unique display name (``stem``, or ``split/stem``, or ``stack/page``).
        page: page of a multi-page TIFF (same page in image and mask), else ``None``.
    """

    image_path: Path
    mask_path: Path | None
    name: str
    page: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_path", Path(self.image_path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))


@dataclass
class DatasetIndex:
    """What :func:`open_dataset` found: samples, mask encoding and listing problems.

    Attributes:
        root: dataset folder.
        layout: ``"folder"``, ``"voc"`` or ``"tiff-stack"``.
        samples: image/mask pairs in natural-sort order.
        encoding: mask encoding to decode them with.
        problems: listing problems (unpaired or duplicate stems, empty folders, page mismatch).
        notices: remarks that do not block training (e.g. pairing by trailing number).
    """

    root: Path
    layout: str
    samples: list[Sample]
    encoding: MaskEncoding
    problems: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _natural_key(text: str) -> tuple[Any, ...]:
    """Sort key putting "2" before "10": alternating (text, number) parts."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(part) if i % 2 else part.lower() for i, part in enumerate(parts))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: _natural_key(p.name),
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        ),
        key=lambda p: _natural_key(p.name),
    )


def _files_by_stem(folder: Path, problems: list[Problem]) -> dict[str, Path]:
    """Image files of a folder keyed by stem; empty folders and duplicate stems are problems.

    For a duplicated stem the first file (natural order) stays in the index so that its pair is
    still checked; the duplicate itself is reported.
    """
    groups: dict[str, list[Path]] = {}
    for path in _image_files(folder):
        groups.setdefault(path.stem, []).append(path)
    if not groups:
        problems.append(
            Problem(
                str(folder),
                f"folder has no image files ({', '.join(IMAGE_SUFFIXES)})",
                "put the files there, or point images_dir= / masks_dir= at the right folders",
            )
        )
    for stem, paths in groups.items():
        if len(paths) == 1:
            continue
        problems.append(
            Problem(
                str(paths[0]),
                f"duplicate stem {stem!r}: {', '.join(p.name for p in paths)}",
                "keep one file per stem (remove or rename the others)",
            )
        )
    return {stem: paths[0] for stem, paths in groups.items()}


def _trailing_number(stem: str) -> int | None:
    match = re.search(r"(\d+)\D*$", stem)
    return int(match.group(1)) if match else None


def _pairing_keys(
    images: dict[str, Path], masks: dict[str, Path]
) -> tuple[dict[Any, str], dict[Any, str], bool]:
    """Keys to pair stems by: the stem itself, or, when no stems match, the trailing number.

    Worked example (Cell Tracking Challenge): ``t01.tif`` and ``man_seg01.tif`` share no stem but
    both end in 1, so they pair by number. Numbers are used only when they are unique per side.
    """
    if set(images) & set(masks) or not images or not masks:
        return {s: s for s in images}, {s: s for s in masks}, False
    by_number = []
    for stems in (images, masks):
        numbers = {stem: _trailing_number(stem) for stem in stems}
        if None in numbers.values() or len(set(numbers.values())) != len(numbers):
            return {s: s for s in images}, {s: s for s in masks}, False
        by_number.append({number: stem for stem, number in numbers.items()})
    if not set(by_number[0]) & set(by_number[1]):
        return {s: s for s in images}, {s: s for s in masks}, False
    return by_number[0], by_number[1], True


def _index_folder_pair(image_dir: Path, mask_dir: Path, prefix: str, index: DatasetIndex) -> None:
    for folder, what in ((image_dir, "images_dir"), (mask_dir, "masks_dir")):
        if not folder.is_dir():
            raise _error(folder, "folder does not exist", f"check {what}")
    images = _files_by_stem(image_dir, index.problems)
    masks = _files_by_stem(mask_dir, index.problems)
    image_keys, mask_keys, by_number = _pairing_keys(images, masks)
    if by_number:
        example = min(set(image_keys) & set(mask_keys))
        index.notices.append(
            f"{image_dir.parent}: no file stems match between {image_dir.name}/ and "
            f"{mask_dir.name}/, paired files by trailing number (e.g. "
            f"{images[image_keys[example]].name} <-> {masks[mask_keys[example]].name})"
        )
    keys = sorted(
        set(image_keys) | set(mask_keys),
        key=lambda k: k if isinstance(k, int) else _natural_key(k),
    )
    for key in keys:
        image_stem, mask_stem = image_keys.get(key), mask_keys.get(key)
        if image_stem is None:
            index.problems.append(
                Problem(
                    str(masks[mask_stem]),
                    f"no image with stem {mask_stem!r} in {image_dir}",
                    "add the image or remove the mask",
                )
            )
        elif mask_stem is None:
            index.problems.append(
                Problem(
                    str(images[image_stem]),
                    f"no mask with stem {image_stem!r} in {mask_dir}",
                    "add the mask or remove the image",
                )
            )
        else:
            name = f"{prefix}/{image_stem}" if prefix else image_stem
            index.samples.append(Sample(images[image_stem], masks[mask_stem], name))


def _pair_in(folder: Path) -> tuple[Path, Path] | None:
    children = {p.name.lower(): p for p in _subdirs(folder)}
    image_dir = next((children[n] for n in IMAGE_DIR_NAMES if n in children), None)
    mask_dir = next((children[n] for n in MASK_DIR_NAMES if n in children), None)
    return (image_dir, mask_dir) if image_dir and mask_dir else None


def _find_folder_pairs(root: Path) -> list[tuple[Path, Path, str]]:
    """(image_dir, mask_dir, split) triples: root-level pair, else one per split subfolder."""
    direct = _pair_in(root)
    if direct:
        return [(*direct, "")]
    pairs = []
    for sub in _subdirs(root):
        annot = root / f"{sub.name}annot"  # SegNet CamVid: train/ + trainannot/
        if annot.is_dir():
            pairs.append((sub, annot, sub.name))
        elif inner := _pair_in(sub):
            pairs.append((*inner, sub.name))
    return pairs


def _find_voc_root(root: Path) -> Path | None:
    candidates = [root, *sorted(root.glob("VOC*")), *sorted(root.glob("VOCdevkit/VOC*"))]
    for candidate in candidates:
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    return None


def _find_stack_pairs(root: Path) -> list[tuple[Path, Path, str]]:
    roles: dict[str, dict[str, Path]] = {}
    for path in sorted(root.iterdir()):
        match = _STACK_NAME.match(path.stem)
        if path.is_file() and path.suffix.lower() in TIFF_SUFFIXES and match:
            role = "mask" if match["role"].lower().startswith(_MASK_ROLES) else "image"
            roles.setdefault(match["prefix"], {})[role] = path
    return [
        (found["image"], found["mask"], prefix)
        for prefix, found in sorted(roles.items())
        if len(found) == 2
    ]


def _select_split(
    pairs: list[tuple[Path, Path, str]], split: str | None, root: Path, index: DatasetIndex
) -> list[tuple[Path, Path, str]]:
    names = [prefix for _, _, prefix in pairs]
    if split is not None:
        chosen = [pair for pair in pairs if pair[2] == split]
        if not chosen:
            available = ", ".join(repr(n) for n in names if n) or "none"
            raise _error(
                root,
                f"split {split!r} not found (available: {available})",
                "pass one of the available splits, or split=None to use all",
            )
        return chosen
    if len(pairs) > 1:
        index.notices.append(f"using all splits: {', '.join(names)} (pass split= to choose one)")
    return pairs


def _index_voc(voc: Path, split: str | None, index: DatasetIndex) -> None:
    image_dir, mask_dir = voc / "JPEGImages", voc / "SegmentationClass"
    if split is None:
        stems = [p.stem for p in _image_files(mask_dir)]
        source = f"{mask_dir.name}/"
    else:
        split_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            available = sorted(p.stem for p in split_file.parent.glob("*.txt"))
            raise _error(
                split_file,
                f"split file not found (available splits: {', '.join(available) or 'none'})",
                "pass one of the available splits, or split=None for every mask",
            )
        stems = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        source = split_file.name
    for stem in stems:
        image = next(
            (
                image_dir / f"{stem}{s}"
                for s in IMAGE_SUFFIXES
                if (image_dir / f"{stem}{s}").is_file()
            ),
            image_dir / f"{stem}.jpg",
        )
        mask = mask_dir / f"{stem}.png"
        missing = [p for p in (image, mask) if not p.is_file()]
        for path in missing:
            index.problems.append(
                Problem(
                    str(path),
                    f"listed in {source} but the file is missing",
                    f"restore the file or remove {stem!r} from {source}",
                )
            )
        if not missing:
            index.samples.append(Sample(image, mask, stem))


def _index_stacks(pairs: list[tuple[Path, Path, str]], index: DatasetIndex) -> None:
    for image_path, mask_path, _ in pairs:
        try:
            n_images, n_masks = page_count(image_path), page_count(mask_path)
        except DataError as exc:
            index.problems.extend(exc.problems)
            continue
        if n_images != n_masks:
            index.problems.append(
                Problem(
                    str(mask_path),
                    f"label stack has {n_masks} pages but image stack {image_path.name} has "
                    f"{n_images}",
                    "use stacks with exactly one label page per image page",
                )
            )
        for page in range(min(n_images, n_masks)):
            index.samples.append(Sample(image_path, mask_path, f"{image_path.stem}/{page}", page))


def open_dataset(
    path: StrPath,
    *,
    layout: str = "auto",
    split: str | None = None,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    palette: Any = None,
    instances: bool = False,
    images_dir: StrPath | None = None,
    masks_dir: StrPath | None = None,
) -> DatasetIndex:
    """Find the image/mask pairs of a dataset folder.

    Layouts (``layout="auto"`` tries them in this order):

    * ``"voc"``: ``JPEGImages/`` + ``SegmentationClass/`` (palette PNGs) in ``path``,
      ``path/VOC*`` or ``path/VOCdevkit/VOC*``; ``split`` reads
      ``ImageSets/Segmentation/{split}.txt`` (``None``: every mask). Defaults: 21 classes,
      ``ignore_index=255``.
    * ``"tiff-stack"``: ``<name>-volume.tif`` + ``<name>-labels.tif`` (ISBI 2012 style, also
      ``-images``/``-masks``); every page is a sample; ``split`` selects ``<name>``.
    * ``"folder"``: image and mask folders matched by file stem — ``images/`` + ``masks/`` (also
      ``image``/``label``, ``img``/``gt``, ...) in ``path``; else per split subfolder:
      ``<split>/`` + ``<split>annot/`` (SegNet CamVid) or ``<split>/images`` + ``<split>/masks``.
      ``split=None`` uses every split found. When no stems match at all, files pair by their
      trailing number (``t01.tif`` ↔ ``man_seg01.tif``).

    ``images_dir`` / ``masks_dir`` (relative to ``path`` or absolute) name the pair explicitly:
    two folders (folder layout) or two multi-page TIFF files (stack layout).

    Args:
        path: dataset folder.
        layout: one of ``"auto"``, ``"folder"``, ``"voc"``, ``"tiff-stack"``.
        split: split name (see above).
        num_classes: number of classes; ``None`` infers it during :func:`validate`.
        ignore_index: label value to ignore (kept in masks).
        palette: (n, 3) colours for RGB masks; ``None`` = VOC colours.
        instances: masks are instance labels (0 = background, 1..K = objects).
        images_dir: explicit image folder or stack file.
        masks_dir: explicit mask folder or stack file.

    Returns:
        :class:`DatasetIndex`; unpaired/duplicate/missing files are in ``.problems`` (not raised).

    Raises:
        DataError: path missing, no recognisable layout, or unknown split.
        ValueError: invalid arguments.
    """
    root = Path(path)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if (images_dir is None) != (masks_dir is None):
        raise ValueError(
            f"pass both images_dir and masks_dir or neither, got images_dir={images_dir!r}, "
            f"masks_dir={masks_dir!r}"
        )
    if not root.is_dir():
        raise _error(root, "dataset folder does not exist", "check the path")
    encoding = MaskEncoding(num_classes, ignore_index, palette, instances)
    index = DatasetIndex(root, layout, [], encoding)
    voc = _find_voc_root(root) if layout in ("auto", "voc") and images_dir is None else None
    if images_dir is not None and masks_dir is not None:
        image_path, mask_path = root / images_dir, root / masks_dir
        if image_path.is_file() and mask_path.is_file():
            index.layout = "tiff-stack"
            _index_stacks([(image_path, mask_path, "")], index)
        else:
            index.layout = "folder"
            _index_folder_pair(image_path, mask_path, "", index)
    elif voc is not None:
        index.layout = "voc"
        index.encoding = MaskEncoding(
            21 if num_classes is None else num_classes,
            255 if ignore_index is None else ignore_index,
            palette,
            instances,
        )
        _index_voc(voc, split, index)
    elif layout in ("auto", "tiff-stack") and (stacks := _find_stack_pairs(root)):
        index.layout = "tiff-stack"
        _index_stacks(_select_split(stacks, split, root, index), index)
    elif layout in ("auto", "folder") and (pairs := _find_folder_pairs(root)):
        index.layout = "folder"
        for image_dir, mask_dir, prefix in _select_split(pairs, split, root, index):
            _index_folder_pair(image_dir, mask_dir, prefix, index)
    else:
        kind = "" if layout == "auto" else f"{layout} "
        raise _error(root, f"no {kind}dataset layout found", _LAYOUT_FIX)
    return index


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@dataclass
class ValidationReport:
    """Everything :func:`validate` found.

    Attributes:
        problems: every blocking problem as (path, message, fix).
        notices: non-blocking remarks (0/255 masks read as 0/1, inferred class count, ...).
        encoding: the mask encoding with ``num_classes`` resolved (inferred when not given).
        n_samples: number of samples checked.
        sizes: image (H, W) → count.
        channels: image channel count → count.
        dtypes: image dtype name → count.
        class_pixels: (num_classes,) int64 pixel count per class over all readable masks.
        ignore_pixels: pixels equal to ``ignore_index``.
        normalization: per-channel mean/std of the images (see :func:`infer_normalization`).
    """

    problems: list[Problem]
    notices: list[str]
    encoding: MaskEncoding
    n_samples: int = 0
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    channels: Counter[int] = field(default_factory=Counter)
    dtypes: Counter[str] = field(default_factory=Counter)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ignore_pixels: int = 0
    normalization: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when there is no problem."""
        return not self.problems

    def format(self) -> str:
        """Problems grouped by file, each with its fix; notices after them."""
        if not self.problems:
            lines = ["no problems found"]
        else:
            by_path: dict[str, list[Problem]] = {}
            for problem in self.problems:
                by_path.setdefault(problem.path, []).append(problem)
            lines = [f"{len(self.problems)} problem(s) in {len(by_path)} file(s):"]
            for path, problems in by_path.items():
                lines.append(f"  {path}")
                for problem in problems:
                    lines.append(f"    - {problem.message}")
                    lines.append(f"      fix: {problem.fix}")
        lines += [f"notice: {notice}" for notice in self.notices]
        return "\n".join(lines)


@dataclass
class _Checked:
    """What reading one sample produced (fields stay None when a file could not be read)."""

    problems: list[Problem]
    size: tuple[int, int] | None = None
    channels: int | None = None
    dtype: str | None = None
    chw: np.ndarray | None = None  # (C, H, W) view of the raw image
    mask: DecodedMask | None = None
    mask_dtype: str | None = None


def _check_sample(sample: Sample, encoding: MaskEncoding) -> _Checked:
    checked = _Checked([])
    problems = checked.problems
    image_where = _where(sample.image_path, sample.page)
    try:
        image = read_image(sample.image_path, page=sample.page)
        checked.size = (image.shape[0], image.shape[1])
        checked.channels = 1 if image.ndim == 2 else image.shape[2]
        checked.dtype = image.dtype.name
        checked.chw = _checked_chw(image, image_where)
    except DataError as exc:
        problems.extend(exc.problems)
    if sample.mask_path is None:
        problems.append(
            Problem(image_where, "image has no mask", "add a mask with the same stem or remove it")
        )
        return checked
    mask_where = _where(sample.mask_path, sample.page)
    try:
        raw = read_image(sample.mask_path, page=sample.page)
        checked.mask_dtype = raw.dtype.name
        checked.mask = decode_mask(raw, encoding, path=sample.mask_path, page=sample.page)
    except DataError as exc:
        problems.extend(exc.problems)
        return checked
    mask_size = checked.mask.mask.shape
    if checked.size is not None and mask_size != checked.size:
        problems.append(
            Problem(
                mask_where,
                f"size mismatch: mask is {mask_size[0]}x{mask_size[1]} (HxW) but image "
                f"{sample.image_path.name} is {checked.size[0]}x{checked.size[1]}",
                "save the mask at its image's size (same height and width)",
            )
        )
    return checked


def _consistency_problems(
    files: list[tuple[str, tuple[int, str]]],
) -> tuple[list[Problem], tuple[int, str] | None]:
    """Images whose (channels, dtype) differ from the most common one."""
    counts = Counter(key for _, key in files)
    if not counts:
        return [], None
    common, n_common = counts.most_common(1)[0]
    problems = [
        Problem(
            where,
            f"image has {key[0]} channel(s) of {key[1]} but most images ({n_common}) have "
            f"{common[0]} of {common[1]}",
            "convert all images to the same number of channels and dtype",
        )
        for where, key in files
        if key != common
    ]
    return problems, common


def validate(
    samples: DatasetIndex | Sequence[Sample],
    *,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    palette: Any = None,
    instances: bool | None = None,
) -> ValidationReport:
    """Read every image and mask once and collect every problem.

    Checks: unreadable files, NaN/inf images, image/mask size mismatch, mask values outside
    ``0..num_classes-1`` (``ignore_index`` allowed), lossy (JPEG) masks, RGB colours not in the
    palette, masks mixing 0/255 binary and multi-class encodings, images with differing channel
    count or dtype, no samples at all — plus, for a :class:`DatasetIndex`, its listing problems
    (unpaired/duplicate stems, empty folders). Also gathers the statistics shown by
    :func:`check_dataset` and the per-channel image normalisation.

    Args:
        samples: a :class:`DatasetIndex` (its encoding and listing problems are used) or samples.
        num_classes: overrides the index's value; ``None`` keeps it (or infers max label + 1).
        ignore_index: overrides the index's value when given.
        palette: overrides the index's palette when given.
        instances: overrides the index's instance flag when given.

    Returns:
        :class:`ValidationReport` (``.ok`` false when any problem was found).
    """
    if isinstance(samples, DatasetIndex):
        base, items = samples.encoding, list(samples.samples)
        problems, notices = list(samples.problems), list(samples.notices)
        where = str(samples.root)
    else:
        base, items, problems, notices, where = MaskEncoding(), list(samples), [], [], "dataset"
    encoding = MaskEncoding(
        base.num_classes if num_classes is None else num_classes,
        base.ignore_index if ignore_index is None else ignore_index,
        base.palette if palette is None else palette,
        base.instances if instances is None else instances,
    )
    report = ValidationReport(problems, notices, encoding, n_samples=len(items))
    image_keys: list[tuple[str, tuple[int, str]]] = []
    moments: dict[tuple[int, str], _Moments] = {}
    pixels: Counter[int] = Counter()
    binary_files, multi_class_files, objects = 0, [], []
    max_label_dtype: tuple[int, str] = (-1, "")
    for sample in items:
        checked = _check_sample(sample, encoding)
        problems.extend(checked.problems)
        if checked.size is not None and checked.channels is not None and checked.dtype:
            key = (checked.channels, checked.dtype)
            image_keys.append((_where(sample.image_path, sample.page), key))
            report.sizes[checked.size] += 1
            report.channels[checked.channels] += 1
            report.dtypes[checked.dtype] += 1
            if checked.chw is not None:
                moments.setdefault(key, _Moments()).add(checked.chw, dtype_scale(checked.dtype))
        decoded = checked.mask
        if decoded is None:
            continue
        pixels.update(dict(zip(decoded.values.tolist(), decoded.counts.tolist(), strict=True)))
        labels = decoded.values
        if encoding.ignore_index is not None:
            labels = labels[labels != encoding.ignore_index]
        top = int(labels.max()) if labels.size else -1
        max_label_dtype = max(max_label_dtype, (top, checked.mask_dtype or ""))
        binary_files += decoded.binary_255
        if not decoded.binary_255 and top >= 2 and sample.mask_path is not None:
            multi_class_files.append((_where(sample.mask_path, sample.page), top))
        if encoding.instances:
            objects.append(decoded.n_objects)
    mixed, common = _consistency_problems(image_keys)
    problems.extend(mixed)
    if common is not None:
        report.normalization = moments[common].normalization(dtype_scale(common[1]))
    if binary_files and multi_class_files:
        problems.extend(
            Problem(
                where_mask,
                f"mask has labels up to {top} while {binary_files} other mask(s) are 0/255 binary",
                "use one label encoding for all masks (pass num_classes= to stop reading 0/255 "
                "as 0/1)",
            )
            for where_mask, top in multi_class_files
        )
    if binary_files:
        notices.append(
            f"{binary_files} of {len(items)} mask(s) stored as 0/255 were read as 0/1 "
            "(255 -> class 1)"
        )
    if objects:
        notices.append(f"instance masks: {min(objects)}-{max(objects)} objects per mask")
    resolved = encoding.num_classes
    if resolved is None and max_label_dtype[0] >= 0:
        resolved = 2 if encoding.instances or binary_files else max(2, max_label_dtype[0] + 1)
        notices.append(
            f"num_classes not given: using {resolved} (from the mask values; pass "
            "num_classes= to set it)"
        )
        if not encoding.instances and resolved > 2 and max_label_dtype[1] in ("uint16", "int32"):
            notices.append(
                f"masks are {max_label_dtype[1]} with labels up to {max_label_dtype[0]}; if they "
                "are instance labels (0 = background, 1..K = objects) pass instances=True"
            )
    report.encoding = MaskEncoding(
        resolved, encoding.ignore_index, encoding.palette, encoding.instances
    )
    if resolved is not None:
        report.class_pixels = np.array(
            [pixels.get(label, 0) for label in range(resolved)], dtype=np.int64
        )
    if encoding.ignore_index is not None:
        report.ignore_pixels = int(pixels.get(encoding.ignore_index, 0))
    if not items and not problems:
        problems.append(
            Problem(where, "no image/mask pairs found", "check the dataset layout and file names")
        )
    return report


# --------------------------------------------------------------------------------------------
# Torch dataset
# --------------------------------------------------------------------------------------------

# transform(image (C, H, W) float32, mask (H, W) int64, weight (H, W) float32 | None, rng)
#   -> (image, mask, weight), same conventions.
Transform = Callable[
    [np.ndarray, np.ndarray, np.ndarray | None, np.random.Generator],
    tuple[np.ndarray, np.ndarray, np.ndarray | None],
]
# weight_fn(mask (H, W) int64, instances (H, W) int64 | None) -> (H, W) float32 weight map.
WeightFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


class LoadedSample(NamedTuple):
    """Untransformed sample from :meth:`SegmentationDataset.load`.

    Attributes:
        image: (C, H, W) float32, scaled and normalised.
        mask: (H, W) int64 class indices.
        instances: (H, W) int64 instance ids, or ``None``.
        weight: (H, W) float32 from ``weight_fn``, or ``None``.
    """

    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray | None
    weight: np.ndarray | None


class SegmentationDataset(Dataset):
    """Map-style dataset of (image, mask[, weight]) for training and evaluation.

    Item ``i`` is a dict: ``"image"`` (C, H, W) float32 tensor, ``"mask"`` (H, W) int64 tensor,
    ``"name"`` str, ``"index"`` int, plus ``"weight"`` (H, W) float32 when ``weight_fn`` is given
    and ``"instances"`` (H, W) int64 for instance masks when no ``transform`` is set (a transform
    would move pixels the ids do not follow).

    Randomness: the transform gets ``np.random.default_rng([seed, epoch, index])``, so an item is
    the same whichever worker loads it and changes with :meth:`set_epoch`. Call ``set_epoch``
    before each epoch's ``DataLoader`` iterator is created (workers copy the dataset then; with
    ``persistent_workers=True`` they keep the epoch they started with).

    Args:
        samples: image/mask pairs (every sample needs a mask).
        encoding: how to decode masks (use the report's resolved encoding).
        normalization: per-channel ``{"mean", "std", "scale"}``; ``None`` = dtype scaling only.
        transform: augmentation hook ``transform(image, mask, weight, rng)``.
        weight_fn: per-pixel loss weights from ``(mask, instances)``, computed before the
            transform so it moves with the pixels.
        seed: base seed (>= 0).
        cache_weights: keep computed weight maps in memory (they are deterministic).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        encoding: MaskEncoding | None = None,
        normalization: dict[str, Any] | None = None,
        transform: Transform | None = None,
        weight_fn: WeightFn | None = None,
        seed: int = 0,
        cache_weights: bool = True,
    ) -> None:
        unlabelled = [s.name for s in samples if s.mask_path is None]
        if unlabelled:
            raise ValueError(
                f"every sample needs a mask, got {len(unlabelled)} without (first: "
                f"{unlabelled[0]!r}); pair or drop those images"
            )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}; pass a non-negative integer")
        self.samples = list(samples)
        self.encoding = encoding if encoding is not None else MaskEncoding()
        self.normalization = normalization
        self.transform = transform
        self.weight_fn = weight_fn
        self.seed = seed
        self.epoch = 0
        self.cache_weights = cache_weights
        self.report: ValidationReport | None = None
        self._weights: dict[int, np.ndarray] = {}

    @property
    def num_classes(self) -> int | None:
        """Number of classes of the mask encoding."""
        return self.encoding.num_classes

    @property
    def ignore_index(self) -> int | None:
        """Mask value to ignore in the loss, or ``None``."""
        return self.encoding.ignore_index

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (>= 0)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def rng(self, index: int) -> np.random.Generator:
        """Generator for item ``index`` in the current epoch: seeded by (seed, epoch, index)."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def load(self, index: int) -> LoadedSample:
        """Read, decode and normalise sample ``index`` (no transform)."""
        sample = self.samples[index]
        assert sample.mask_path is not None  # checked in __init__
        image_where = _where(sample.image_path, sample.page)
        mask_where = _where(sample.mask_path, sample.page)
        image = to_chw_float(
            read_image(sample.image_path, page=sample.page),
            normalization=self.normalization,
            source=image_where,
        )
        decoded = decode_mask(
            read_image(sample.mask_path, page=sample.page),
            self.encoding,
            path=sample.mask_path,
            page=sample.page,
        )
        if decoded.mask.shape != image.shape[1:]:
            raise _error(
                mask_where,
                f"size mismatch: mask is {decoded.mask.shape} but image is {image.shape[1:]}",
                "save the mask at its image's size (same height and width)",
            )
        weight = None
        if self.weight_fn is not None:
            weight = self._weights.get(index)
            if weight is None:
                weight = np.asarray(self.weight_fn(decoded.mask, decoded.instances), np.float32)
                if self.cache_weights:
                    self._weights[index] = weight
        return LoadedSample(image, decoded.mask, decoded.instances, weight)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, instances, weight = self.load(index)
        if self.transform is not None:
            image, mask, weight = self.transform(image, mask, weight, self.rng(index))
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "name": self.samples[index].name,
            "index": index,
        }
        if weight is not None:
            item["weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        if instances is not None and self.transform is None:
            item["instances"] = torch.from_numpy(instances)
        return item


def load_and_validate(
    path: StrPath,
    *,
    normalization: dict[str, Any] | None = None,
    transform: Transform | None = None,
    weight_fn: WeightFn | None = None,
    seed: int = 0,
    **open_kwargs: Any,
) -> SegmentationDataset:
    """Open, validate and wrap a dataset; refuse to train on data with problems.

    Args:
        path: dataset folder (see :func:`open_dataset`; ``open_kwargs`` go there).
        normalization: image normalisation; ``None`` = the one measured on this dataset
            (pass the training set's record for validation/test sets).
        transform: augmentation hook (see :class:`SegmentationDataset`).
        weight_fn: weight-map function (see :class:`SegmentationDataset`).
        seed: augmentation seed.

    Returns:
        :class:`SegmentationDataset` with the resolved encoding; its ``.report`` holds the
        :class:`ValidationReport` (statistics and notices).

    Raises:
        DataError: the formatted report when any problem was found.
    """
    index = open_dataset(path, **open_kwargs)
    report = validate(index)
    if not report.ok:
        raise DataError(f"{index.root}: dataset has problems\n{report.format()}", report.problems)
    dataset = SegmentationDataset(
        index.samples,
        encoding=report.encoding,
        normalization=normalization if normalization is not None else report.normalization,
        transform=transform,
        weight_fn=weight_fn,
        seed=seed,
    )
    dataset.report = report
    return dataset


# --------------------------------------------------------------------------------------------
# Summary for `pixelwise data check`
# --------------------------------------------------------------------------------------------


def _counted(counter: Counter[Any], show: Callable[[Any], str] = str) -> str:
    return ", ".join(f"{show(k)} ({n})" for k, n in counter.most_common())


def _summary_lines(index: DatasetIndex, report: ValidationReport, split: str | None) -> list[str]:
    lines = [
        f"Dataset: {index.root} (layout: {index.layout}, split: {split or 'all'})",
        f"Samples: {report.n_samples} image/mask pair(s)",
        f"Image sizes (HxW): {_counted(report.sizes, lambda s: f'{s[0]}x{s[1]}') or '-'}",
        f"Channels: {_counted(report.channels) or '-'}",
        f"Dtype: {_counted(report.dtypes) or '-'}",
    ]
    if report.normalization is not None:
        norm = report.normalization
        scale = norm["scale"]
        shown_scale = f"1/{round(1 / scale)}" if scale < 1 else f"{scale:g}"
        lines.append(
            f"Normalization: mean {[round(m, 4) for m in norm['mean']]}, std "
            f"{[round(s, 4) for s in norm['std']]} (scale {shown_scale})"
        )
    encoding = report.encoding
    lines.append(f"Classes: {encoding.num_classes or '-'} (ignore_index: {encoding.ignore_index})")
    total = int(report.class_pixels.sum()) + report.ignore_pixels
    if total:
        lines.append(f"  {'class':>6} {'pixels':>14} {'share':>7}")
        rows = [(str(label), int(n)) for label, n in enumerate(report.class_pixels)]
        if encoding.ignore_index is not None:
            rows.append(("ignore", report.ignore_pixels))
        lines += [f"  {label:>6} {n:>14,} {100 * n / total:>6.1f}%" for label, n in rows]
    return lines


def check_dataset(path: StrPath, **kwargs: Any) -> tuple[str, list[Problem]]:
    """Validate a dataset folder and describe it (``pixelwise data check DIR``).

    Args:
        path: dataset folder.
        **kwargs: :func:`open_dataset` keyword arguments (layout, split, num_classes, ...).

    Returns:
        (printable report, problems): image count, sizes, channels, dtype, normalisation, class
        pixel shares, notices and every problem with its fix; the data are fine when
        ``problems`` is empty.
    """
    try:
        index = open_dataset(path, **kwargs)
    except DataError as exc:
        report = ValidationReport(exc.problems, [], MaskEncoding())
        return f"Dataset: {path}\n{report.format()}", exc.problems
    report = validate(index)
    lines = _summary_lines(index, report, kwargs.get("split"))
    lines.append(f"Problems: {report.format()}" if report.ok else report.format())
    lines.append("Status: OK" if report.ok else f"Status: FAILED ({len(report.problems)} problems)")
    return "\n".join(lines), report.problems


def dataset_summary(path: StrPath, **kwargs: Any) -> str:
    """Printable report of :func:`check_dataset` (without the problems list)."""
    return check_dataset(path, **kwargs)[0]
