"""Decoding stored masks into class indices: :class:`MaskEncoding`, :func:`decode_mask`.

Mask encodings understood by :func:`decode_mask`:

* single-channel integer labels (PNG ``L``/``I;16``, TIFF), palette (``P`` mode) PNGs read as their
  palette indices;
* binary masks stored as 0/255 — read as 0/1 when ``num_classes`` is 2 or not given and 255 is not
  the ``ignore_index`` (reported as a notice);
* RGB masks whose colours are rows of a palette (``palette=`` or the PASCAL VOC colour map), RGB
  masks with equal channels are read as grey labels;
* instance labels (``instances=True``: 0 = background, 1..K = objects; class mask = ids > 0).

Lossy (JPEG) masks, colours outside the palette and values outside the classes raise a
:class:`~pixelwise.data.DataError` naming the file and the fix. Reading the files lives in
:mod:`pixelwise.data.io`; counting classes over a dataset in :mod:`pixelwise.data.survey`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pixelwise.data.errors import StrPath, data_error, location
from pixelwise.data.io import JPEG_SUFFIXES
from pixelwise.data.palette import VOC_PALETTE, as_palette

_LOSSY_FIX = "save masks as PNG (lossless) with one integer value per class"
# A mask "looks lossy" when it has more than this many distinct values, at least half of them
# each covering less than _RARE_SHARE of the pixels (JPEG ringing around label edges).
_LOSSY_MIN_VALUES = 16
_RARE_SHARE = 0.005


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
                f"num_classes must be an integer >= 1, got {self.num_classes!r}; pass "
                "--num-classes N with N >= 1, or leave it out to infer it from the masks "
                "(num_classes=None in Python)"
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
        object_sizes: (N,) int64 pixels of each non-zero instance id, in id order (instance
            masks; empty for class masks).
    """

    mask: np.ndarray
    instances: np.ndarray | None
    binary_255: bool
    values: np.ndarray
    counts: np.ndarray
    object_sizes: np.ndarray = np.zeros(0, dtype=np.int64)

    @property
    def n_objects(self) -> int:
        """Number of distinct non-zero instance ids (0 for class masks)."""
        return int(self.object_sizes.size)


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
        raise data_error(
            path,
            f"mask has negative values {_short_list(bad)}",
            "class ids must be >= 0; pass ignore_index= / --ignore-index for unlabelled pixels",
        )
    n = encoding.num_classes
    raise data_error(
        path,
        f"mask has values outside classes 0..{n - 1}: {_short_list(bad)} "
        f"(num_classes={n}, ignore_index={encoding.ignore_index})",
        CLASS_VALUES_FIX,
    )


CLASS_VALUES_FIX = (
    "relabel the mask, or pass the right --num-classes / --ignore-index (num_classes= / "
    "ignore_index= in Python)"
)
"""The fix of labels outside the classes where the caller chose the class count (`pixelwise
evaluate`, whose classes are the model's, words its own)."""


# Unknown colours: a palette given (only Python callers can give one) misses them; the VOC
# default (reached from the command line too) needs either re-saved masks or a palette.
_GIVEN_PALETTE_FIX = (
    "add these colours to palette= (one RGB row per class, row i = class i), or save masks as "
    "single-channel integer labels"
)
_VOC_PALETTE_FIX = (
    "save masks as single-channel integer labels (one value per class), or, from Python, pass "
    "palette= with one RGB row per class (row i = class i) covering these colours"
)


def _rgb_to_index(rgb: np.ndarray, palette: np.ndarray | None, path: str) -> np.ndarray:
    """(H, W) int64 class indices of (H, W, 3) colours, row i of `palette` (None: VOC) = class i."""
    palette_name, fix = (
        ("VOC palette", _VOC_PALETTE_FIX) if palette is None else ("palette", _GIVEN_PALETTE_FIX)
    )
    palette = VOC_PALETTE if palette is None else palette
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
        raise data_error(
            path,
            f"RGB mask has {missing.size} colour(s) not in the {palette_name}: {shown}{more}",
            fix,
        )
    return indices[inverse].reshape(codes.shape)


def _integer_labels(raw: np.ndarray, path: str) -> np.ndarray:
    if raw.dtype == np.bool_:
        return raw.astype(np.uint8)
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.array_equal(raw, np.round(raw)):
            raise data_error(
                path,
                f"mask has non-integer values (dtype {raw.dtype})",
                "save masks as integer class ids (uint8/uint16 PNG or TIFF)",
            )
        return raw.astype(np.int64)
    if raw.dtype.kind not in "iu":
        raise data_error(
            path, f"mask has unsupported dtype {raw.dtype}", "save masks as integer class ids"
        )
    return raw


def _decode_rgb(raw: np.ndarray, encoding: MaskEncoding, path: str) -> DecodedMask:
    channels = raw.shape[2]
    if encoding.instances:
        raise data_error(
            path,
            f"instance mask has {channels} channels",
            "save instance labels as single-channel integer PNG/TIFF (0 = background, "
            "1..K = objects)",
        )
    if channels not in (3, 4) or raw.dtype != np.uint8:
        raise data_error(
            path,
            f"mask has {channels} channels of {raw.dtype}",
            "save masks as single-channel integer labels or 8-bit RGB palette colours",
        )
    rgb = raw[..., :3]
    grey = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    if encoding.palette is None and grey:  # grey labels saved as RGB
        return _decode(rgb[..., 0], encoding, path)
    index = _rgb_to_index(rgb, encoding.palette, path)
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
    name = location(path, page)
    if Path(path).suffix.lower() in JPEG_SUFFIXES:
        raise data_error(
            name,
            f"mask looks lossy-compressed (JPEG?): {_distinct_count(raw)} distinct values",
            _LOSSY_FIX,
        )
    return _decode(raw, encoding, name)


def _decode(raw: np.ndarray, encoding: MaskEncoding, name: str) -> DecodedMask:
    if raw.ndim == 3:
        return _decode_rgb(raw, encoding, name)
    if raw.ndim != 2:
        raise data_error(
            name,
            f"mask must be (H, W) or (H, W, 3), got shape {raw.shape}",
            "save one 2-D label image per sample",
        )
    raw = _integer_labels(raw, name)
    values, counts = _value_counts(raw)
    if encoding.instances:
        if values.size and values[0] < 0:
            raise data_error(
                name,
                f"instance mask has negative ids {_short_list(values[values < 0])}",
                "use 0 for background and 1..K for objects",
            )
        instances = raw.astype(np.int64)
        background = int(counts[0]) if values.size and values[0] == 0 else 0
        semantic = np.array([0, 1], dtype=np.int64)
        pixel_counts = np.array([background, int(counts.sum()) - background], dtype=np.int64)
        present = pixel_counts > 0
        return DecodedMask(
            (instances > 0).astype(np.int64),
            instances,
            False,
            semantic[present],
            pixel_counts[present],
            counts[values > 0].astype(np.int64),
        )
    if _looks_lossy(raw.dtype, values, counts, encoding):
        raise data_error(
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
