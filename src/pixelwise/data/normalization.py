"""Turning images into network inputs: dtype scaling, then one of two normalisations.

:func:`to_chw_float` turns an ``(H, W)`` or ``(H, W, C)`` image into a ``(C, H, W)`` float32
array scaled by its dtype (:func:`dtype_scale`: uint8 / 255, uint16 / 65535) and optionally
normalised with a record of one of two kinds:

* dataset moments, ``{"mean": [C floats], "std": [C floats], "scale": float}``: the same
  standardisation for every image, measured over the training set (:class:`ChannelMoments`,
  used by the dataset survey, :func:`pixelwise.data.survey_dataset`); the images must have the
  training images' dtype;
* per-image percentiles, ``{"method": "percentile", "low": 1.0, "high": 99.8, "invert":
  "auto"}`` (:data:`PERCENTILE_NORMALIZATION`, as StarDist's and Cellpose's ``normalize``): each
  channel of each image maps its low and high percentiles onto 0 and 1, so images of any bit
  depth and brightness come to the same range; ``"invert": "auto"`` turns dark-on-bright images
  (the median above the middle of that range: bright background) into bright-on-dark ones.
  :func:`percentile_levels` measures an image's levels once (on a regular subsample of at most
  :data:`LEVEL_PIXELS` pixels), so a streamed image and the same image in memory get the same.

Reading files lives in :mod:`pixelwise.data.io`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from pixelwise.data.errors import StrPath, data_error

_NAN_FIX = "replace NaNs (e.g. numpy.nan_to_num) or drop the file"

PERCENTILE_NORMALIZATION: dict[str, Any] = {
    "method": "percentile",
    "low": 1.0,
    "high": 99.8,
    "invert": "auto",
}
"""The per-image percentile record (StarDist's `normalize(x, 1, 99.8)`), dark-on-bright images
inverted; `pixelwise train --normalize percentile` records it (the shipped models use it)."""

LEVEL_PIXELS = 4_000_000
"""Most pixels `percentile_levels` reads: larger images are subsampled on a regular grid."""

NORMALIZE_METHODS = ("dataset", "percentile")
"""`--normalize` values: dataset moments (mean/std over the training set) or per-image
percentiles (`PERCENTILE_NORMALIZATION`)."""


@dataclasses.dataclass(frozen=True)
class Levels:
    """One image's percentile levels: channel c maps `low[c]` → 0 and `high[c]` → 1, then
    `invert` (dark-on-bright image) maps x → 1 − x."""

    low: np.ndarray  # (C,) float32
    high: np.ndarray  # (C,) float32
    invert: bool


def is_percentile(normalization: dict[str, Any] | None) -> bool:
    """Whether `normalization` is a per-image percentile record (else moments or None)."""
    return normalization is not None and normalization.get("method") == "percentile"


def _check_percentile(normalization: dict[str, Any]) -> tuple[float, float, str | bool]:
    low, high = normalization.get("low", 1.0), normalization.get("high", 99.8)
    invert = normalization.get("invert", False)
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if not ok or not 0.0 <= low < high <= 100.0:
        raise ValueError(
            f"percentile normalization needs 0 <= low < high <= 100, got low={low!r}, "
            f"high={high!r}; use pixelwise.data.PERCENTILE_NORMALIZATION (1, 99.8)"
        )
    if invert not in (True, False, "auto"):
        raise ValueError(
            f"percentile normalization 'invert' must be true, false or \"auto\", got {invert!r}"
        )
    return float(low), float(high), invert


def percentile_levels(
    image: Any, normalization: dict[str, Any], *, source: str | None = None
) -> Levels:
    """The `Levels` of one (H, W) or (H, W, C) image under a percentile record.

    The percentiles are taken over a regular subsample `image[::s, ::s]` with the smallest
    step s that leaves at most `LEVEL_PIXELS` pixels (s = 1 up to 2000 × 2000), read through
    slicing so that a lazy TIFF or zarr image is never loaded whole. Worked example: a
    16384 × 16384 slide has 268 M pixels; s = ceil(sqrt(268 M / 4 M)) = 9 reads 1821 × 1821.

    With `"invert": "auto"`, the image counts as dark-on-bright when the median of its
    normalised values (mean over channels) is above 0.5: nuclei cover less than half of an image,
    so the median is background, near 0 for fluorescence and near 1 for bright field.

    Raises:
        DataError: NaN/inf values or a bad shape (named by `source`).
        ValueError: a malformed record.
    """
    low_q, high_q, invert = _check_percentile(normalization)
    name = source or "image"
    height, width = image.shape[:2]
    step = max(1, math.ceil(math.sqrt(height * width / LEVEL_PIXELS)))
    sample = np.asarray(image[::step, ::step] if step > 1 else image[:])
    chw = checked_chw(sample, name)  # (C, h, w)
    flat = chw.reshape(chw.shape[0], -1).astype(np.float32) * np.float32(dtype_scale(sample.dtype))
    low, high = np.percentile(flat, [low_q, high_q], axis=1).astype(np.float32)  # (C,) each
    if invert == "auto":
        span = np.maximum(high - low, np.float32(1e-12))
        invert = np.mean((np.median(flat, axis=1) - low) / span) > 0.5
    return Levels(low=low, high=high, invert=bool(invert))


def apply_levels(x: np.ndarray, levels: Levels) -> np.ndarray:
    """(C, H, W) dtype-scaled float32 → (x − low) / (high − low) per channel, in place, then
    1 − x where `levels.invert`. A flat channel (high = low) becomes x − low (0 for its pixels)."""
    span = levels.high - levels.low
    span = np.where(span > 0, span, np.float32(1.0)).astype(np.float32)
    x -= levels.low[:, None, None]
    x /= span[:, None, None]
    if levels.invert:
        np.subtract(np.float32(1.0), x, out=x)
    return x


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
    """The (C,) float32 mean and std of a normalisation record checked against an image."""
    try:
        mean = np.asarray(normalization["mean"], dtype=np.float32).reshape(-1)
        std = np.asarray(normalization["std"], dtype=np.float32).reshape(-1)
    except KeyError as exc:
        raise ValueError(
            f"normalization needs 'mean' and 'std' lists, got keys {sorted(normalization)}; "
            "use the record a dataset survey measured (survey_dataset(...).normalization)"
        ) from exc
    if len(mean) != channels or len(std) != channels:
        raise data_error(
            source,
            f"image has {channels} channel(s) but normalization has {len(mean)} mean / "
            f"{len(std)} std values",
            "use a normalization computed on images with the same channels",
        )
    if np.any(std <= 0):
        raise ValueError(f"normalization std must be > 0, got {std.tolist()}; recompute it")
    recorded = normalization.get("scale")
    if recorded is not None and not np.isclose(float(recorded), scale, rtol=1e-6, atol=0.0):
        raise data_error(
            source,
            f"image dtype scale {scale:.6g} does not match the normalization scale "
            f"{float(recorded):.6g}",
            "convert images to the dtype used for training, or recompute the normalization",
        )
    return mean, std


def checked_chw(image: np.ndarray, name: str) -> np.ndarray:
    """(C, H, W) view of an (H, W) or (H, W, C) image; DataError for bad shapes or NaN/inf."""
    if image.ndim not in (2, 3):
        raise data_error(
            name,
            f"expected an (H, W) or (H, W, C) image, got shape {image.shape}",
            "pass one 2-D image at a time (use iter_pages() for stacks)",
        )
    if image.dtype.kind == "f":
        n_bad = int(np.count_nonzero(~np.isfinite(image)))
        if n_bad:
            raise data_error(name, f"image has {n_bad} NaN or infinite values", _NAN_FIX)
    return image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)


def to_chw_float(
    image: np.ndarray,
    *,
    normalization: dict[str, Any] | None = None,
    source: StrPath | None = None,
    levels: Levels | None = None,
) -> np.ndarray:
    """Convert an image to a (C, H, W) float32 network input.

    Values are multiplied by :func:`dtype_scale` (uint8 200 → 200/255 ≈ 0.784), then, when
    ``normalization`` is given, standardised per channel: ``(x - mean[c]) / std[c]`` for a
    moments record, ``(x - low[c]) / (high[c] - low[c])`` (then ``1 - x`` for a dark-on-bright
    image) for a percentile record.

    Args:
        image: (H, W) or (H, W, C) array.
        normalization: ``{"mean": [C floats], "std": [C floats], "scale": float}`` as measured by
            :func:`pixelwise.data.survey_dataset` (its ``.normalization``) or stored in a
            checkpoint; ``scale``, when present, must match the image dtype's scale. Or a
            percentile record (:data:`PERCENTILE_NORMALIZATION`): any dtype.
        source: file name used in error messages.
        levels: a percentile record's levels measured on the whole image
            (:func:`percentile_levels`), for a block of it; None = measure them on ``image``.

    Returns:
        (C, H, W) float32 array (C = 1 for (H, W) input).

    Raises:
        DataError: NaN/inf values, wrong shape, or channel count / dtype not matching
            ``normalization``.
    """
    image = np.asarray(image)
    name = str(source) if source is not None else "image"
    chw = checked_chw(image, name)
    scale = dtype_scale(image.dtype)
    x = chw.astype(np.float32)
    if scale != 1.0:
        x *= np.float32(scale)
    if is_percentile(normalization):
        if levels is None:
            levels = percentile_levels(image, normalization, source=name)
        return np.ascontiguousarray(apply_levels(x, levels))
    if normalization is not None:
        mean, std = _check_normalization(normalization, x.shape[0], scale, name)
        x -= mean[:, None, None]
        x /= std[:, None, None]
    return np.ascontiguousarray(x)


class ChannelMoments:
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
        """The record ``{"mean", "std", "scale"}``; a zero std is stored as 1.0."""
        std = np.sqrt(self.m2 / self.count)
        std[std == 0] = 1.0  # constant channel: keep values instead of dividing by zero
        return {"mean": self.mean.tolist(), "std": std.tolist(), "scale": scale}
