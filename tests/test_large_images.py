"""Large images: compressed / tiled / strip TIFF, OME-TIFF pyramids and OME-Zarr read region by
region, outputs written region by region (tiled compressed TIFF, OME-Zarr), in bounded memory.

Every lazy run is compared with the in-memory run of the same pixels (bit-identical class
maps); memory is bounded by a wrapper counting the largest region read and by tracemalloc.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import tifffile
import torch
import zarr
from PIL import Image
from scipy import ndimage
from torch import nn

import pixelwise
from conftest import LogitsAsInput
from pixelwise import cli
from pixelwise.data import DataError
from pixelwise.data.lazy import PixelSize, describe, open_lazy
from pixelwise.inference import inputs as inputs_module
from pixelwise.inference import predict_files
from pixelwise.inference import run as run_module
from pixelwise.inference.bands import BandWriter
from pixelwise.inference.ome_zarr import LabelInfo, level_shapes, write_ngff
from pixelwise.inference.outputs import Outputs
from pixelwise.instances import PostProcessing
from pixelwise.models import UNet
from pixelwise.tiling import PredictOptions

NORM = {"mean": [0.45], "std": [0.1], "scale": 1 / 255}
CLASSES = ["background", "membrane", "cell"]
TILE = 92  # valid for the base-4, depth-3 U-Net (margin 20): 52-pixel output tiles


def _model() -> UNet:
    torch.manual_seed(0)
    return UNet(1, 3, base_channels=4, depth=3).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    pixelwise.save(_model(), path, normalization=NORM, class_names=CLASSES)
    return path


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 blobs, so the tiny network predicts several classes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    img = 110 + 40 * np.sin(x / 4.0) * np.cos(y / 5.0) + rng.normal(0, 12, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def _predict(checkpoint: Path, image: Path, out: Path, **kwargs: Any) -> Any:
    """predict_files with small tiles on the CPU; streamed unless stream_pixels is given."""
    kwargs.setdefault("stream_pixels", 100)
    options = PredictOptions(tile_size=TILE, batch_size=4, device="cpu")
    summary = predict_files(checkpoint, [image], out, options=options, log=None, **kwargs)
    assert summary.ok, [f.message for f in summary.failures]
    return summary


def _reference(checkpoint: Path, pixels: np.ndarray, tmp_path: Path, name: str) -> np.ndarray:
    """The class map of the in-memory path (whole image decoded from a PNG)."""
    folder = tmp_path / f"reference_{name}"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / f"{name}.png")
    _predict(checkpoint, folder / f"{name}.png", folder / "out", stream_pixels=10**9)
    return np.array(Image.open(folder / "out" / f"{name}.png"))


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return _smooth(120, 136)


@pytest.fixture(scope="module")
def reference(checkpoint: Path, pixels: np.ndarray, tmp_path_factory) -> np.ndarray:
    return _reference(checkpoint, pixels, tmp_path_factory.mktemp("ref"), "x")


# --------------------------------------------------------------------------------------------
# Lazy TIFF in, tiled compressed TIFF out
# --------------------------------------------------------------------------------------------

LAYOUTS = {
    "zlib_tiled": dict(tile=(32, 32), compression="zlib"),
    "lzw_tiled": dict(tile=(48, 64), compression="lzw"),
    "zlib_strips": dict(compression="zlib", rowsperstrip=8),
    "uncompressed_strips": dict(rowsperstrip=16),
    "bigtiff_tiled": dict(tile=(16, 16), compression="zlib", bigtiff=True),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_lazy_tiff_equals_whole_image(
    checkpoint: Path, pixels: np.ndarray, reference: np.ndarray, tmp_path: Path, layout: str
) -> None:
    """Streamed from a compressed / tiled / strip TIFF, the class map is bit-identical to the
    in-memory run's, and it is written as a tiled, zlib-compressed TIFF."""
    source = tmp_path / f"{layout}.tif"
    tifffile.imwrite(source, pixels, photometric="minisblack", **LAYOUTS[layout])
    image = open_lazy(source)
    assert type(image._array).__name__ == ("memmap" if layout.startswith("unc") else "Array")
    _predict(checkpoint, source, tmp_path / "out", output_format="tif")
    with tifffile.TiffFile(tmp_path / "out" / f"{layout}.tif") as tif:
        page = tif.pages.first
        assert page.is_tiled and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        np.testing.assert_array_equal(tif.asarray(), reference)


def test_streamed_probabilities_equal_the_in_memory_ones(
    checkpoint: Path, pixels: np.ndarray, tmp_path: Path
) -> None:
    source = tmp_path / "x.tif"
    tifffile.imwrite(source, pixels, tile=(32, 32), compression="zlib")
    _predict(checkpoint, source, tmp_path / "s", probs=True)
    _predict(checkpoint, source, tmp_path / "m", probs=True, stream_pixels=10**9)
    streamed = tifffile.imread(tmp_path / "s" / "probs" / "x.tif")
    assert streamed.shape == (3, 120, 136)
    np.testing.assert_array_equal(streamed, tifffile.imread(tmp_path / "m" / "probs" / "x.tif"))


def test_channel_picks_one_channel_of_rgb_and_ome_channel_stacks(
    checkpoint: Path, tmp_path: Path
) -> None:
    """--channel: a channel of an RGB tiled TIFF and of an OME-TIFF (C, Y, X) stack is
    predicted as the 1-channel image it is (same class map as that plane alone)."""
    planes = np.stack([_smooth(120, 136, seed) for seed in (1, 2, 3)])  # (3, H, W)
    expected = _reference(checkpoint, planes[1], tmp_path, "plane")
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.moveaxis(planes, 0, -1), photometric="rgb", tile=(32, 32),
                     compression="zlib")  # fmt: skip
    ome = tmp_path / "stack.ome.tif"
    tifffile.imwrite(ome, planes, tile=(32, 32), compression="zlib", metadata={"axes": "CYX"})
    assert describe(ome).channels == 3 and describe(ome).images == 1
    for source in (rgb, ome):
        summary = _predict(checkpoint, source, tmp_path / source.stem, channel=1,
                           output_format="tif")  # fmt: skip
        assert len(summary.written) == 1
        np.testing.assert_array_equal(tifffile.imread(summary.written[0]), expected)


def _pyramid(path: Path, levels: list[np.ndarray], pixel_um: float) -> None:
    """A pyramidal OME-TIFF: level 0 with sub-resolutions in SubIFDs, zlib tiles."""
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        meta = {"axes": "YX", "PhysicalSizeX": pixel_um, "PhysicalSizeY": pixel_um}
        options = dict(tile=(32, 32), compression="zlib", photometric="minisblack")
        tif.write(levels[0], subifds=len(levels) - 1, metadata=meta, **options)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **options)


def test_level_reads_a_pyramid_level_and_the_pixel_size_follows(
    checkpoint: Path, tmp_path: Path
) -> None:
    """--level 1 of an OME-TIFF pyramid equals predicting that level alone; the class map
    records the level's pixel size (twice level 0's): TIFF resolution and NGFF scale."""
    full = _smooth(240, 272, 4)
    half = full[::2, ::2].copy()
    source = tmp_path / "slide.ome.tif"
    _pyramid(source, [full, half], pixel_um=0.25)
    assert describe(source).levels == 2
    assert open_lazy(source).pixel_size == PixelSize(0.25, 0.25)
    expected = _reference(checkpoint, half, tmp_path, "half")
    summary = _predict(checkpoint, source, tmp_path / "t", level=1, output_format="tif")
    with tifffile.TiffFile(summary.written[0]) as tif:
        np.testing.assert_array_equal(tif.asarray(), expected)
        page = tif.pages.first
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert page.resolution == pytest.approx((1e4 / 0.5, 1e4 / 0.5))
    summary = _predict(checkpoint, source, tmp_path / "z", level=1, output_format="ome-zarr")
    group = zarr.open_group(str(summary.written[0]), mode="r")
    multiscale = group.attrs["multiscales"][0]
    assert multiscale["axes"][0] == {"name": "y", "type": "space", "unit": "micrometer"}
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([0.5, 0.5])
    np.testing.assert_array_equal(group["0"][:], expected)


def test_pixel_size_is_read_from_ome_xml_resolution_tags_and_imagej(tmp_path: Path) -> None:
    pixels = _smooth(16, 16)
    tifffile.imwrite(tmp_path / "cm.tif", pixels, resolution=(1e4 / 0.8, 1e4 / 0.4),
                     resolutionunit="CENTIMETER")  # fmt: skip
    tifffile.imwrite(tmp_path / "inch.tif", pixels, resolution=(254, 254), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "ij.tif", pixels, imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "um"})  # fmt: skip
    tifffile.imwrite(tmp_path / "none.tif", pixels)
    tifffile.imwrite(
        tmp_path / "nm.ome.tif",
        pixels,
        metadata={
            "PhysicalSizeX": 650,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 700,
            "PhysicalSizeYUnit": "nm",
        },
    )
    sizes = {p.name: open_lazy(p).pixel_size for p in sorted(tmp_path.iterdir())}
    micrometres = {k: None if v is None else (v.y, v.x) for k, v in sizes.items()}
    assert micrometres["cm.tif"] == pytest.approx((0.4, 0.8))
    assert micrometres["inch.tif"] == pytest.approx((100.0, 100.0))
    assert micrometres["ij.tif"] == pytest.approx((0.5, 0.5))
    assert micrometres["nm.ome.tif"] == pytest.approx((0.7, 0.65))
    assert sizes["none.tif"] is None


def test_in_memory_outputs_carry_the_pixel_size(checkpoint: Path, tmp_path: Path) -> None:
    source = tmp_path / "small.ome.tif"
    _pyramid(source, [_smooth(40, 44)], pixel_um=0.8)
    _predict(checkpoint, source, tmp_path / "t", output_format="tif", stream_pixels=10**9)
    with tifffile.TiffFile(tmp_path / "t" / "small.tif") as tif:  # ".ome" left out of names
        assert tif.pages.first.resolution == pytest.approx((1e4 / 0.8, 1e4 / 0.8))
    _predict(checkpoint, source, tmp_path / "p", stream_pixels=10**9)
    assert Image.open(tmp_path / "p" / "small.png").info["dpi"] == pytest.approx(
        (25400 / 0.8, 25400 / 0.8), rel=1e-3
    )


def test_bad_channel_and_level_name_the_flag_the_range_and_the_fix(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = tmp_path / "slide.ome.tif"
    _pyramid(source, [_smooth(64, 64), _smooth(32, 32)], pixel_um=0.5)
    base = ["predict", str(checkpoint), str(source), "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli.main([*base, "--channel", "2"]) == 1
    out = capsys.readouterr().out
    assert (
        f"failed: {source}: --channel 2 is out of range: the image has 1 channel(s), 0..0; "
        f"pass --channel between 0 and 0\n"
    ) in out
    assert cli.main([*base, "--level", "2"]) == 1
    assert (
        f"failed: {source}: --level 2 is out of range: the file has 2 pyramid level(s), 0..1; "
        f"pass --level between 0 and 1 (0 = full resolution)\n"
    ) in capsys.readouterr().out
    assert cli.main([*base, "--level", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --level must be an integer >= 0 (level= in Python), got -1; pass --level 0 "
        "for the full resolution\n"
    )
    png = tmp_path / "plain.png"
    Image.fromarray(_smooth(20, 20)).save(png)
    with pytest.raises(DataError, match=r"the file has no pyramid, so pass --level 0"):
        open_lazy(png, level=1)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# --------------------------------------------------------------------------------------------
# OME-Zarr in and out
# --------------------------------------------------------------------------------------------


def _ome_zarr_input(path: Path, planes: np.ndarray, pixel_um: float) -> None:
    """An NGFF 0.4 (c, y, x) image with two levels, written with plain zarr (not our writer)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    levels = [planes, planes[:, ::2, ::2]]
    for i, level in enumerate(levels):
        group.create_array(str(i), data=np.ascontiguousarray(level), chunks=(1, 32, 32))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": str(i),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, pixel_um * 2**i, pixel_um * 2**i]}
                    ],
                }
                for i in range(len(levels))
            ],
        }
    ]


def test_ome_zarr_in_and_out_equal_the_in_memory_run(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OME-Zarr input (channel 1, level 0) predicted to OME-Zarr: the class map is the
    in-memory one, with pyramid levels, axes, the input's scale, class colours and names;
    instances need an instance model, so probabilities are written too."""
    planes = np.stack([_smooth(120, 136, seed) for seed in (5, 6)])
    source = tmp_path / "cells.ome.zarr"
    _ome_zarr_input(source, planes, pixel_um=0.65)
    expected = _reference(checkpoint, planes[1], tmp_path, "plane")
    # small chunks, so that the maps span several bands and pyramid levels
    monkeypatch.setitem(Outputs.__init__.__kwdefaults__, "chunk_size", 32)
    summary = _predict(checkpoint, source, tmp_path / "out", channel=1, probs=True,
                       output_format="ome-zarr")  # fmt: skip
    out = tmp_path / "out"
    assert summary.written == [out / "cells.ome.zarr", out / "probs" / "cells.ome.zarr"]
    group = zarr.open_group(str(out / "cells.ome.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][:], expected)
    assert [group[str(i)].shape for i in range(4)] == [(120, 136), (60, 68), (30, 34), (15, 17)]
    np.testing.assert_array_equal(group["2"][:], expected[::4, ::4])
    multiscale = group.attrs["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]] == [
        pytest.approx([0.65 * 2**i] * 2) for i in range(4)
    ]
    label = group.attrs["image-label"]
    assert [p["class"] for p in label["properties"]] == CLASSES
    assert label["colors"][1] == {"label-value": 1, "rgba": [128, 0, 0, 255]}
    probs = zarr.open_group(str(out / "probs" / "cells.ome.zarr"), mode="r")
    assert probs["0"].shape == (3, 120, 136) and probs["0"].dtype == np.float32
    assert [c["label"] for c in probs.attrs["omero"]["channels"]] == CLASSES
    np.testing.assert_array_equal(probs["0"][:].argmax(axis=0), expected)
    assert sorted(p.name for p in out.iterdir()) == ["cells.ome.zarr", "probs"]  # no temporaries
    # the in-memory writer makes the same groups
    _predict(checkpoint, source, tmp_path / "m", channel=1, probs=True, stream_pixels=10**9,
             output_format="ome-zarr")  # fmt: skip
    in_memory = zarr.open_group(str(tmp_path / "m" / "cells.ome.zarr"), mode="r")
    assert in_memory.attrs.asdict() == group.attrs.asdict()
    for level in range(4):
        np.testing.assert_array_equal(in_memory[str(level)][:], group[str(level)][:])


def test_ome_zarr_outputs_open_with_ome_zarr_py_as_labels(tmp_path: Path) -> None:
    """ome-zarr-py's reader finds the multiscale label image: its levels, the label metadata;
    ome-zarr-models validates it as an NGFF 0.4 image and image-label; napari-ome-zarr (the
    napari extra) makes one labels layer of it: four levels, the pixel size as its scale."""
    reader_module = pytest.importorskip("ome_zarr.reader")
    io_module = pytest.importorskip("ome_zarr.io")
    labels = np.repeat(np.repeat(np.arange(12, dtype=np.uint8).reshape(3, 4), 30, 0), 25, 1)
    path = write_ngff(
        tmp_path / "a.ome.zarr",
        labels,
        name="a",
        pixel_size=PixelSize(0.5, 0.5),
        label=LabelInfo(colors=np.zeros((12, 3), np.uint8), names=[str(i) for i in range(12)]),
        chunk=16,
    )
    location = io_module.parse_url(str(path))
    nodes = list(reader_module.Reader(location)())
    node = nodes[0]
    assert node.load(reader_module.Label) is not None
    assert node.load(reader_module.Multiscales) is not None
    assert len(node.data) == len(level_shapes(labels.shape, 16)) == 4
    np.testing.assert_array_equal(np.asarray(node.data[0]), labels)
    np.testing.assert_array_equal(np.asarray(node.data[1]), labels[::2, ::2])
    assert node.metadata["axes"][0]["name"] == "y"
    models = pytest.importorskip("ome_zarr_models.v04")  # the NGFF 0.4 schema, as pydantic models
    group = zarr.open_group(str(path), mode="r")
    assert isinstance(models.Image.from_zarr(group), models.Image)
    models.image_label.ImageLabel.from_zarr(group)  # raises unless valid image-label metadata
    napari_ome_zarr = pytest.importorskip("napari_ome_zarr")  # in the napari extra
    ((data, meta, kind),) = napari_ome_zarr.napari_get_reader(str(path))(str(path))
    assert kind == "labels"
    assert len(data) == 4 and meta["scale"] == [0.5, 0.5]  # the pyramid, in micrometres
    np.testing.assert_array_equal(np.asarray(data[0]), labels)


def test_interrupted_ome_zarr_write_leaves_nothing(
    checkpoint: Path, pixels: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "x.tif"
    tifffile.imwrite(source, pixels, tile=(32, 32), compression="zlib")

    def crash(model, image, *, out, **kwargs):
        out[:, :10] = 1
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module.tiling, "predict", crash)
    with pytest.raises(KeyboardInterrupt):
        predict_files(checkpoint, [source], tmp_path / "o", output_format="ome-zarr",
                      stream_pixels=1, log=None)  # fmt: skip
    assert list((tmp_path / "o").rglob("*")) == []


# --------------------------------------------------------------------------------------------
# Memory: region reads and band buffers, not the whole image
# --------------------------------------------------------------------------------------------


class _CountingArray:
    """Wraps the array under a LazyImage; records the pixels of every region read."""

    def __init__(self, array: Any) -> None:
        self._array, self.shape, self.ndim, self.dtype = array, array.shape, array.ndim, array.dtype
        self.reads: list[int] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        block = np.asarray(self._array[key])
        self.reads.append(block.size)
        return block


class _Threshold(nn.Module):
    """A valid "network" that costs nothing, so the test times the I/O: 2 classes, x > 0.5 vs
    not, cropped by a margin of 8 pixels like a valid U-Net."""

    stride, margin, receptive_radius = 1, 8, 8
    hparams: ClassVar[dict[str, int]] = {"in_channels": 1, "num_classes": 2}

    def output_size(self, n: int) -> int:
        return n - 16

    def input_size(self, m: int) -> int:
        return m + 16

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
        return list(range(max(lo, 17), hi + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., 8:-8, 8:-8]
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def test_memory_is_bounded_by_tiles_and_bands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2048² zlib-tiled TIFF streamed to a TIFF class map: no region read is larger than
    one tile's input, and the Python-side peak (tracemalloc: numpy buffers, zarr and tifffile
    codecs, the band writers) stays under the decoded image's size, which any whole-image
    read (uint8, then float32) would exceed; the class map equals the in-memory one."""
    side = 2048
    source = tmp_path / "big.tif"
    tifffile.imwrite(source, _smooth(side, side, 7), tile=(128, 128), compression="zlib")
    counters: list[_CountingArray] = []
    real_open = inputs_module.open_lazy

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        image = real_open(*args, **kwargs)
        image._array = _CountingArray(image._array)
        counters.append(image._array)
        return image

    monkeypatch.setattr(inputs_module, "open_lazy", counting_open)
    monkeypatch.setitem(Outputs.__init__.__kwdefaults__, "chunk_size", 128)
    options = PredictOptions(tile_size=144, batch_size=2, device="cpu", progress=False)
    common = dict(options=options, output_format="tif", log=None)
    tracemalloc.start()
    try:
        summary = predict_files(_Threshold(), [source], tmp_path / "o", stream_pixels=100,
                                **common)  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.ok
    (counter,) = counters
    assert max(counter.reads) <= 144 * 144 < side * side // 200
    assert peak < side * side, f"peak {peak / 2**20:.1f} MB"
    whole = predict_files(_Threshold(), [source], tmp_path / "w", **common)  # in memory
    assert whole.ok
    labels = tifffile.imread(tmp_path / "o" / "big.tif")
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "w" / "big.tif"))
    assert 0.2 < labels.mean() < 0.8


def test_automatic_streamed_tiles_fit_the_budget_with_their_row_bands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a tile size, a streamed image gets the tile whose batch and held output rows fit
    the budget: the largest pending bands measured in the run stay within the rows counted for
    them (output rows + two partial bands), so a wider image gets shorter tiles; the class map
    still equals the in-memory one."""
    monkeypatch.setitem(Outputs.__init__.__kwdefaults__, "chunk_size", 32)
    model, budget_mb = _Threshold(), 0.5
    per_pixel = pixelwise.tiling.tile_bytes_per_pixel(model, 1)  # 4 + 2·4 + 2·4 + 8 = 28
    assert per_pixel == 28
    tiles: list[tuple[int, int]] = []
    pending: list[int] = []
    real_predict, real_setitem = pixelwise.tiling.predict, BandWriter.__setitem__

    def recording_predict(model: Any, image: Any, *, options: PredictOptions, **kw: Any) -> Any:
        tiles.append(options.tile_size)
        return real_predict(model, image, options=options, **kw)

    def recording_setitem(self: BandWriter, key: Any, values: Any) -> None:
        real_setitem(self, key, values)
        pending.append(self.pending_bytes)

    monkeypatch.setattr(pixelwise.tiling, "predict", recording_predict)
    monkeypatch.setattr(BandWriter, "__setitem__", recording_setitem)
    heights = {}
    for width in (1024, 4096):
        source = tmp_path / f"wide{width}.tif"
        tifffile.imwrite(source, _smooth(300, width, 5), tile=(64, 64), compression="zlib")
        tiles.clear(), pending.clear()
        options = PredictOptions(memory_budget_mb=budget_mb, device="cpu", progress=False)
        common = dict(options=options, output_format="tif", log=None)
        assert predict_files(model, [source], tmp_path / f"s{width}", stream_pixels=100,
                             **common).ok  # fmt: skip
        (height, tile_width), held = tiles[0], max(pending)
        rows = model.output_size(height) + 2 * 32
        assert held <= width * rows  # uint8 class map: width bytes per row
        assert per_pixel * height * tile_width + width * rows <= budget_mb * 2**20
        heights[width] = height
        assert predict_files(model, [source], tmp_path / f"m{width}", **common).ok
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / f"s{width}" / source.name),
            tifffile.imread(tmp_path / f"m{width}" / source.name),
        )
    assert heights[4096] < heights[1024]


def test_streamed_instances_to_ome_zarr_equal_the_in_memory_instances(tmp_path: Path) -> None:
    """An instance model streamed to OME-Zarr: instances/<name>.ome.zarr is a label image
    holding the in-memory run's objects (and the tables are written)."""
    rng = np.random.default_rng(0)
    discs = np.zeros((96, 112), np.int32)
    y, x = np.mgrid[:96, :112]
    for k, (cy, cx) in enumerate(rng.uniform(10, 86, (12, 2)), 1):
        discs[(y - cy) ** 2 + (x - cx * 1.1) ** 2 < 36] = k
    interior = ndimage.binary_erosion(discs > 0, iterations=1)
    onehot = np.stack([discs == 0, interior, (discs > 0) & ~interior]).astype(np.float32)
    logits = np.moveaxis(4 * onehot + rng.normal(0, 0.1, onehot.shape), 0, -1)
    tifffile.imwrite(tmp_path / "cells.tif", logits.astype(np.float32), photometric="rgb")
    model = LogitsAsInput()
    common = dict(instances=True, postprocessing=PostProcessing(min_size=5), log=None,
                  options=PredictOptions(tile_size=40, device="cpu"))  # fmt: skip
    whole = predict_files(model, [tmp_path / "cells.tif"], tmp_path / "w", **common)
    streamed = predict_files(model, [tmp_path / "cells.tif"], tmp_path / "s", stream_pixels=48**2,
                             block_overlap=40, output_format="ome-zarr", **common)  # fmt: skip
    assert whole.ok and streamed.ok
    assert {p.relative_to(tmp_path / "s").as_posix() for p in streamed.written} == {
        "cells.ome.zarr", "instances/cells.ome.zarr", "objects/cells.csv", "objects/cells.json"
    }  # fmt: skip
    group = zarr.open_group(str(tmp_path / "s" / "instances" / "cells.ome.zarr"), mode="r")
    assert "image-label" in group.attrs
    expected = tifffile.imread(tmp_path / "w" / "instances" / "cells.tif")
    assert expected.max() >= 8
    np.testing.assert_array_equal(group["0"][:], expected)
    csv = (tmp_path / "s" / "objects" / "cells.csv").read_text().splitlines()
    assert len(csv) == expected.max() + 1


# --------------------------------------------------------------------------------------------
# Band writer
# --------------------------------------------------------------------------------------------


def test_band_writer_writes_each_band_once_and_refuses_disorder() -> None:
    values = np.arange(3 * 70 * 50, dtype=np.float32).reshape(3, 70, 50)
    target = np.zeros_like(values)
    writes: list[int] = []

    class Recording:
        shape, dtype = target.shape, target.dtype

        def __setitem__(self, key: Any, band: np.ndarray) -> None:
            writes.append(key[-2].start)
            target[key] = band

        def __getitem__(self, key: Any) -> np.ndarray:
            return target[key]

    writer = BandWriter(Recording(), rows=16)
    for top, bottom in ((0, 30), (30, 52), (52, 70)):  # tile rows, two tiles each
        writer[:, top:bottom, :20] = values[:, top:bottom, :20]
        writer[:, top:bottom, 20:] = values[:, top:bottom, 20:]
    np.testing.assert_array_equal(writer[:, :, :], values)  # reading writes the last bands
    assert writes == [0, 16, 32, 48, 64]
    with pytest.raises(RuntimeError, match="incomplete"):
        gappy = BandWriter(np.zeros((40, 10)), rows=16)
        gappy[0:20, 0:5] = 1
        gappy[20:40, :] = 1  # rows 0..16 lack columns 5..10
    with pytest.raises(RuntimeError, match="write tiles in row order"):
        late = BandWriter(np.zeros((40, 10)), rows=16)
        late[0:20, :] = 1
        late[20:40, :] = 1
        late[0:5, :] = 2


def test_ngff_pyramid_shapes_and_the_mean_of_probabilities(tmp_path: Path) -> None:
    assert level_shapes((1000, 300), 256) == [(1000, 300), (500, 150), (250, 75)]
    probs = np.random.default_rng(0).random((2, 33, 40)).astype(np.float32)
    path = write_ngff(tmp_path / "p.ome.zarr", probs, name="p", chunk=16)
    group = zarr.open_group(str(path), mode="r")
    padded = np.pad(probs, ((0, 0), (0, 1), (0, 0)), mode="edge")  # 33 rows: last one repeated
    mean = padded.reshape(2, 17, 2, 20, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(group["1"][:], mean, rtol=1e-6)
    assert json.loads((path / ".zattrs").read_text())["multiscales"][0]["axes"][0] == {
        "name": "c",
        "type": "channel",
    }
