"""Tests for pixelwise.data.masks: stored masks (0/255, palette, RGB, instances) to classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.data import VOC_PALETTE, DataError, MaskEncoding, decode_mask, read_image


def _jpeg_like_mask() -> np.ndarray:
    """A 0/255 disc that went through JPEG: ringing adds dozens of grey values."""
    yy, xx = np.mgrid[:64, :64]
    disc = (((yy - 30) ** 2 + (xx - 34) ** 2) < 400).astype(np.uint8) * 255
    return disc


# ------------------------------------------------------------------------------------------
# Mask decoding
# ------------------------------------------------------------------------------------------


def test_binary_255_mask_read_as_0_1() -> None:
    raw = np.array([[0, 255], [255, 255]], np.uint8)
    decoded = decode_mask(raw)
    np.testing.assert_array_equal(decoded.mask, [[0, 1], [1, 1]])
    assert decoded.binary_255
    assert decoded.values.tolist() == [0, 1]
    assert decoded.counts.tolist() == [1, 3]
    # 255 is the ignore value (VOC) or more classes are declared: kept as is.
    assert not decode_mask(raw, MaskEncoding(ignore_index=255)).binary_255
    with pytest.raises(DataError, match=r"outside classes 0\.\.2: \[255\]"):
        decode_mask(raw, MaskEncoding(num_classes=3))


def test_rgb_masks_map_through_palette() -> None:
    index = np.array([[0, 1], [15, 255]])
    rgb = VOC_PALETTE[index]
    decoded = decode_mask(rgb, MaskEncoding(ignore_index=255))
    np.testing.assert_array_equal(decoded.mask, index)
    custom = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
    np.testing.assert_array_equal(
        decode_mask(custom[np.array([[1, 0]])], MaskEncoding(palette=custom)).mask, [[1, 0]]
    )
    grey_as_rgb = np.repeat(np.array([[0, 2]], np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(decode_mask(grey_as_rgb).mask, [[0, 2]])


def test_rgb_mask_unknown_colours_are_named() -> None:
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[0, :] = (1, 2, 3)
    rgb[1, 0] = (9, 9, 8)
    with pytest.raises(DataError) as info:
        decode_mask(rgb, path="m.png")
    assert str(info.value) == (
        "m.png: RGB mask has 2 colour(s) not in the VOC palette: (1, 2, 3) on 3 px, "
        "(9, 9, 8) on 1 px; save masks as single-channel integer labels (one value per class), "
        "or, from Python, pass palette= with one RGB row per class (row i = class i) covering "
        "these colours"
    )
    # A palette was given (Python only): the fix is to complete it.
    with pytest.raises(DataError) as info:
        decode_mask(rgb, MaskEncoding(palette=[[0, 0, 0], [1, 2, 3]]), path="m.png")
    assert str(info.value) == (
        "m.png: RGB mask has 1 colour(s) not in the palette: (9, 9, 8) on 1 px; add these "
        "colours to palette= (one RGB row per class, row i = class i), or save masks as "
        "single-channel integer labels"
    )


def test_lossy_mask_detected_from_values_and_suffix(tmp_path: Path) -> None:
    Image.fromarray(_jpeg_like_mask()).save(tmp_path / "m.jpg", quality=75)
    decoded_jpeg = read_image(tmp_path / "m.jpg")
    n_values = len(np.unique(decoded_jpeg))
    assert n_values > 16
    # Same pixels stored as PNG: caught by the value pattern alone.
    with pytest.raises(DataError, match=f"mask looks lossy-compressed \\(JPEG\\?\\): {n_values}"):
        decode_mask(decoded_jpeg, path="m.png")
    with pytest.raises(DataError, match="save masks as PNG"):
        decode_mask(np.zeros((4, 4), np.uint8), path="clean.jpg")


def test_instance_masks_give_ids_and_foreground() -> None:
    ids = np.array([[0, 3, 3], [7, 0, 0]], np.uint16)
    decoded = decode_mask(ids, MaskEncoding(instances=True))
    np.testing.assert_array_equal(decoded.mask, [[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(decoded.instances, ids)
    assert decoded.n_objects == 2
    assert decoded.counts.tolist() == [3, 3]


def test_float_mask_must_be_integral() -> None:
    with pytest.raises(DataError, match="mask has non-integer values \\(dtype float32\\)"):
        decode_mask(np.array([[0.5, 1.0]], np.float32))
    np.testing.assert_array_equal(decode_mask(np.array([[2.0, 1.0]])).mask, [[2, 1]])
