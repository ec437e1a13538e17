"""Tests for pixelwise.data.io, .palette and .normalization: image files, colours, inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pixelwise import atomic
from pixelwise.data import (
    DataError,
    iter_pages,
    read_image,
    read_stack,
    to_chw_float,
    voc_palette,
    write_image,
)
from pixelwise.data.normalization import ChannelMoments, checked_chw, dtype_scale


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _image(h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _labels(h: int = 16, w: int = 16, n: int = 3, seed: int = 1) -> np.ndarray:
    return _rng(seed).integers(0, n, (h, w), dtype=np.uint8)


# ------------------------------------------------------------------------------------------
# Image I/O
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("grey.png", _image(9, 7)),
        ("deep.png", _rng(2).integers(0, 65536, (5, 6), dtype=np.uint16)),
        ("rgb.png", _rng(3).integers(0, 256, (4, 5, 3), dtype=np.uint8)),
        ("float.tif", _rng(4).random((6, 4)).astype(np.float32)),
        ("rgb16.tiff", _rng(5).integers(0, 65536, (3, 4, 3), dtype=np.uint16)),
    ],
)
def test_write_read_round_trip_leaves_no_temp_file(
    tmp_path: Path, name: str, array: np.ndarray
) -> None:
    target = tmp_path / "out" / name
    write_image(target, array)
    back = read_image(target)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    assert sorted(p.name for p in target.parent.iterdir()) == [name]


def test_palette_png_round_trip_reads_indices(tmp_path: Path) -> None:
    classes = _labels(8, 10, n=5)
    palette = voc_palette(5)
    target = tmp_path / "classes.png"
    write_image(target, classes.astype(np.int64), palette=palette)
    with Image.open(target) as image:
        assert image.mode == "P"
        assert image.getpalette()[:15] == palette.reshape(-1).tolist()
    np.testing.assert_array_equal(read_image(target), classes)
    assert [p.name for p in tmp_path.iterdir()] == ["classes.png"]


def test_failed_atomic_write_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.png"
    write_image(target, np.zeros((4, 4), np.uint8))

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_image(target, np.full((4, 4), 7, np.uint8))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert read_image(target).max() == 0


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"class map values must be in 0\.\.2"):
        write_image(tmp_path / "a.png", np.array([[0, 3]]), palette=voc_palette(3))
    with pytest.raises(ValueError, match="float arrays cannot be saved as PNG"):
        write_image(tmp_path / "a.png", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="unsupported image suffix '.bmp'"):
        write_image(tmp_path / "a.bmp", np.zeros((2, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_unreadable_file_error_names_file_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"this is not a png at all")
    with pytest.raises(DataError) as info:
        read_image(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: cannot read image (")
    assert message.endswith("); check the file is a valid PNG/TIFF/JPEG")
    with pytest.raises(DataError, match="cannot read image \\(file not found\\); check the path"):
        read_image(tmp_path / "missing.png")


def test_tiff_stack_pages(tmp_path: Path) -> None:
    stack = _rng().integers(0, 256, (3, 5, 6), dtype=np.uint8)
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    np.testing.assert_array_equal(read_stack(path), stack)
    pages = list(iter_pages(path))
    assert len(pages) == 3
    np.testing.assert_array_equal(pages[2], stack[2])
    np.testing.assert_array_equal(read_image(path, page=1), stack[1])
    with pytest.raises(
        DataError, match="file has 3 pages, expected a single image; use read_stack"
    ):
        read_image(path)
    with pytest.raises(DataError, match=r"page 3 out of range \(file has 3 pages\)"):
        read_image(path, page=3)


@pytest.mark.parametrize("name", ["classes.png", "classes.tif", "overlay.png", "labels.tiff"])
def test_written_images_get_mode_0644_under_umask_022(tmp_path: Path, name: str) -> None:
    palette = voc_palette(3) if name == "classes.png" else None
    array = _labels(6, 7) if name != "overlay.png" else _rng().integers(0, 256, (6, 7, 3), np.uint8)
    previous = os.umask(0o022)
    try:
        write_image(tmp_path / name, array, palette=palette)
    finally:
        os.umask(previous)
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_voc_palette_colours_and_range() -> None:
    colours = voc_palette(256)
    assert colours[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert colours[255].tolist() == [224, 224, 192]
    np.testing.assert_array_equal(voc_palette(21), colours[:21])
    with pytest.raises(ValueError, match="n must be in 1..256, got 257"):
        voc_palette(257)


# ------------------------------------------------------------------------------------------
# Normalisation
# ------------------------------------------------------------------------------------------


def test_to_chw_float_scales_by_dtype_and_normalises() -> None:
    rgb = _rng().integers(0, 256, (4, 5, 3), dtype=np.uint8)
    x = to_chw_float(rgb)
    assert x.shape == (3, 4, 5)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, np.moveaxis(rgb, -1, 0) / 255.0, rtol=1e-6)
    deep = np.array([[0, 65535]], dtype=np.uint16)
    np.testing.assert_allclose(to_chw_float(deep), [[[0.0, 1.0]]])
    norm = {"mean": [0.5, 0.25, 0.0], "std": [2.0, 0.5, 1.0], "scale": 1 / 255}
    y = to_chw_float(rgb, normalization=norm)
    expected = (np.moveaxis(rgb, -1, 0) / 255.0 - np.array([0.5, 0.25, 0.0])[:, None, None]) / (
        np.array([2.0, 0.5, 1.0])[:, None, None]
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_to_chw_float_errors() -> None:
    image = np.ones((2, 2), np.float32)
    image[0, 1] = np.nan
    with pytest.raises(DataError, match=r"^scan\.tif: image has 1 NaN or infinite values; replace"):
        to_chw_float(image, source="scan.tif")
    grey = np.zeros((2, 2), np.uint8)
    with pytest.raises(DataError, match="image has 1 channel\\(s\\) but normalization has 3"):
        to_chw_float(grey, normalization={"mean": [0, 0, 0], "std": [1, 1, 1]})
    with pytest.raises(DataError, match="does not match the normalization scale"):
        to_chw_float(
            grey.astype(np.uint16), normalization={"mean": [0], "std": [1], "scale": 1 / 255}
        )


def test_channel_moments_match_numpy_over_all_pixels() -> None:
    images = [
        _rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8),
        _rng(2).integers(0, 100, (3, 11, 3), dtype=np.uint8),
        np.full((2, 2, 3), 250, np.uint8),
    ]
    moments = ChannelMoments()
    for image in images:
        moments.add(checked_chw(image, "image"), dtype_scale(image.dtype))
    norm = moments.normalization(dtype_scale(np.uint8))
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255
    np.testing.assert_allclose(norm["mean"], pixels.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(norm["std"], pixels.std(axis=0), rtol=1e-10)
    assert norm["scale"] == pytest.approx(1 / 255)
    constant = ChannelMoments()
    constant.add(checked_chw(np.full((3, 3), 65535, np.uint16), "image"), 1 / 65535)
    assert constant.normalization(1 / 65535) == {
        "mean": [1.0],
        "std": [1.0],
        "scale": pytest.approx(1 / 65535),
    }
