"""Turning images into network inputs: dtype scaling and per-channel standardisation.

:func:`to_chw_float` turns an ``(H, W)`` or ``(H, W, C)`` image into a ``(C, H, W)`` float32
array scaled by its dtype (:func:`dtype_scale`: uint8 / 255, uint16 / 65535) and optionally
standardised with a normalisation record ``{"mean": [C floats], "std": [C floats], "scale":
float}``. :class:`ChannelMoments` measures such a record over a dataset, one image at a time (the
dataset survey, :func:`pixelwise.data.survey_dataset`, uses it). Reading files lives in
:mod:`pixelwise.data.io`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pixelwise.data.errors import StrPath, data_error

_NAN_FIX = "replace NaNs (e.g. numpy.nan_to_num) or drop the file"


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
) -> np.ndarray:
    """Convert an image to a (C, H, W) float32 network input.

    Values are multiplied by :func:`dtype_scale` (uint8 200 → 200/255 ≈ 0.784), then, when
    ``normalization`` is given, standardised per channel: ``(x - mean[c]) / std[c]``.

    Args:
        image: (H, W) or (H, W, C) array.
        normalization: ``{"mean": [C floats], "std": [C floats], "scale": float}`` as measured by
            :func:`pixelwise.data.survey_dataset` (its ``.normalization``) or stored in a
            checkpoint; ``scale``, when present, must match the image dtype's scale.
        source: file name used in error messages.

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
