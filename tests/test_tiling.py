"""Overlap-tile inference: tiled == whole-image, tile plans, mirror index maps, outputs, errors."""

import dataclasses
import functools
import itertools

import numpy as np
import pytest
import tifffile
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from pixelwise.models import FCN, Geometry, UNet
from pixelwise.tiling import (
    PAD_MODES,
    PredictOptions,
    activation_bytes_per_pixel,
    choose_tile_size,
    iter_predict,
    plan_axis,
    plan_tiles,
    predict,
    source_index,
)

NP_MODES = {"reflect": "reflect", "replicate": "edge", "constant": "constant"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine every intra-op
    parallel region of a few microseconds can wait a whole scheduler slice."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# Helpers: tiny models and whole-image references
# --------------------------------------------------------------------------------------------


@functools.cache
def _unet(depth: int, padding: str = "valid", classes: int = 3, base: int = 2) -> UNet:
    torch.manual_seed(depth)
    return UNet(1, classes, base_channels=base, depth=depth, padding=padding).eval()


def _smallest_valid(model: nn.Module, lo: int) -> int:
    return model.valid_input_sizes(lo, lo + 64 * model.stride + 8 * model.margin)[0]


def _whole(model: nn.Module, image: np.ndarray, mode: str = "reflect") -> np.ndarray:
    """Model on the whole image, mirror-extended by margin (left/top) and right/bottom up to a
    valid size, cropped to (K, H, W) probabilities. Padding by np.pad, independent of tiling."""
    h, w = image.shape[-2:]
    m = model.margin
    nh, nw = _smallest_valid(model, h + 2 * m), _smallest_valid(model, w + 2 * m)
    pads = ((0, 0),) * (image.ndim - 2) + ((m, nh - h - m), (m, nw - w - m))
    ext = np.pad(image.astype(np.float32), pads, mode=NP_MODES[mode])
    x = torch.from_numpy(ext).reshape(1, -1, nh, nw)
    with torch.no_grad():
        return model(x).softmax(1)[0, :, :h, :w].numpy()


class _StrideOneGeometry(nn.Module):
    """The geometry API of a toy network without pooling: stride 1, every size > 2·margin."""

    stride = 1
    margin = receptive_radius = 0

    def output_size(self, n: int) -> int:
        return n - 2 * self.margin

    def input_size(self, m: int) -> int:
        return m + 2 * self.margin

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
        return list(range(max(lo, 2 * self.margin + 1), hi + 1))


class BoxFilter(_StrideOneGeometry):
    """Valid-padding toy: the mean of each (2k+1)² window; margin k, stride 1, one class."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.margin = self.receptive_radius = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2 * self.margin + 1, stride=1)


class SymmetricNet(_StrideOneGeometry):
    """D4-equivariant toy: two 3×3 convolutions whose kernels are symmetric under flips and
    transposition ([[a, b, a], [b, c, b], [a, b, a]]); "same" (zero padding, margin 0) or
    "valid" (margin 2). Stride 1."""

    def __init__(self, padding: str) -> None:
        super().__init__()
        self.pad = 1 if padding == "same" else 0
        self.margin = self.receptive_radius = 0 if padding == "same" else 2
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(self._symmetric(torch.randn(3, 4, 1, generator=g)))
        self.w2 = nn.Parameter(self._symmetric(torch.randn(3, 3, 4, generator=g)))

    @staticmethod
    def _symmetric(abc: torch.Tensor) -> torch.Tensor:
        """(3 values a, b, c, O, I) → (O, I, 3, 3) kernels [[a, b, a], [b, c, b], [a, b, a]]."""
        a, b, c = abc
        return torch.stack([a, b, a, b, c, b, a, b, a], dim=-1).reshape(*a.shape, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(F.conv2d(x, self.w1, padding=self.pad))
        return F.conv2d(x, self.w2, padding=self.pad)


def _image(h: int, w: int, seed: int = 0, channels: int | None = None) -> np.ndarray:
    shape = (h, w) if channels is None else (channels, h, w)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Mirror index map
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", PAD_MODES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_source_index_matches_np_pad(mode, n):
    pad = 3 * n + 7  # several reflections when the padding exceeds the axis
    extra = {"constant_values": -1} if mode == "constant" else {}
    expected = np.pad(np.arange(n), pad, mode=NP_MODES[mode], **extra)
    assert np.array_equal(source_index(np.arange(-pad, n + pad), n, mode), expected)


def test_source_index_worked_example():
    assert source_index(np.arange(-5, 9), 4).tolist() == [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]


# --------------------------------------------------------------------------------------------
# Tile plans
# --------------------------------------------------------------------------------------------


def test_plan_axis_worked_example():
    # Paper U-Net (margin 92, stride 16), 1000 pixels, 572-pixel tiles: see plan_axis docstring.
    plan = plan_axis(1000, 572, margin=92, stride=16)
    assert plan == [(0, 0, 346), (304, 346, 658), (624, 658, 1000)]


def test_plan_axis_one_tile_when_it_covers():
    assert plan_axis(300, 572, margin=92, stride=16) == [(0, 0, 300)]
    assert plan_axis(100, 128, margin=0, stride=32, halo=32, extent=128) == [(0, 0, 100)]


def _coverage(shape, tiles):
    count = np.zeros(shape, int)
    for t in tiles:
        count[t.output_window] += 1
    return count


@pytest.mark.parametrize(
    ("model", "shape", "tile"),
    [
        (_unet(5, base=1), (1000, 777), 572),
        (_unet(5, base=1), (1, 3000), (188 + 16, 1004)),
        (_unet(3), (97, 64), 44),
        (_unet(4, "same"), (200, 131), 128),
        (_unet(5, "same"), (1000, 999), (256, 320)),
    ],
)
def test_plan_tiles_cover_every_pixel_once(model, shape, tile):
    tiles = plan_tiles(shape, model, tile)
    assert (_coverage(shape, tiles) == 1).all()
    margin, stride = model.margin, model.stride
    for t in tiles:
        assert t.top % stride == 0 and t.left % stride == 0
        assert model.valid_input_sizes(t.height, t.height) == [t.height]
        rows, cols = t.crop  # inside the tile's output map
        assert 0 <= rows.start < rows.stop <= t.height - 2 * margin
        assert 0 <= cols.start < cols.stop <= t.width - 2 * margin
        if margin == 0:  # same padding: tiles stay inside the image padded to a valid size
            assert t.top + t.height <= _smallest_valid(model, shape[0])
            assert t.left + t.width <= _smallest_valid(model, shape[1])


def test_plan_tiles_same_padding_keeps_halo_from_tile_edges():
    model = _unet(4, "same")  # stride 8
    tiles = plan_tiles((300, 300), model, 96, halo=24)
    for t in tiles:
        rows, cols = t.crop
        if t.row_start > 0:
            assert rows.start >= 24
        if t.row_stop < 300:
            assert t.height - rows.stop >= 24
        if t.col_start > 0:
            assert cols.start >= 24


def test_plan_tiles_fcn_tiles_start_on_its_grid_and_end_at_the_border():
    fcn = FCN("32s", num_classes=2, width=1 / 16)
    tiles = plan_tiles((1000, 700), fcn, 500, halo=64)
    assert {t.height for t in tiles} == {520}  # raised so that 1000 − 520 is a multiple of 32
    assert all(t.top % 32 == 0 and t.left % 32 == 0 for t in tiles)
    assert max(t.top + t.height for t in tiles) == 1000
    assert (_coverage((1000, 700), tiles) == 1).all()


# --------------------------------------------------------------------------------------------
# Tiled == whole image for valid networks
# --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    depth=st.integers(2, 4),
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    tile_h=st.integers(0, 5),
    tile_w=st.integers(0, 5),
    batch=st.integers(1, 3),
    mode=st.sampled_from(PAD_MODES),
)
def test_tiled_equals_whole_image_valid(depth, h, w, tile_h, tile_w, batch, mode):
    model = _unet(depth)
    usable = [n for n in model.valid_input_sizes(1, 400) if model.output_size(n) >= 12]
    image = _image(h, w, seed=h * 100 + w)
    tiled = predict(
        model, image, tile_size=(usable[tile_h], usable[tile_w]), batch_size=batch, pad_mode=mode
    )
    assert tiled.shape == (3, h, w) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, _whole(model, image, mode), rtol=0, atol=1e-5)


@pytest.mark.parametrize("tile_size", [None, 100, (100, 124)])
def test_margin_larger_than_image(tile_size):
    model = _unet(4)  # margin 44 on a 5 × 7 image: the mirror folds many times
    assert model.margin == 44
    image = _image(5, 7)
    tiled = predict(model, image, tile_size=tile_size)
    np.testing.assert_allclose(tiled, _whole(model, image), rtol=0, atol=1e-5)


def test_multichannel_tensor_and_integer_inputs():
    torch.manual_seed(0)
    model = UNet(3, 2, base_channels=2, depth=3).eval()
    image = np.random.default_rng(1).integers(0, 5, (3, 50, 61)).astype(np.uint8)
    expected = _whole(model, image.astype(np.float32))
    with pytest.warns(UserWarning, match="dtype uint8 .* expects the network's normalised float"):
        result = predict(model, image, tile_size=60)  # cast as it is, with a warning
    np.testing.assert_allclose(result, expected, atol=1e-5)
    tensor = torch.from_numpy(image.astype(np.float32))
    np.testing.assert_allclose(predict(model, tensor, tile_size=60), expected, atol=1e-5)


def test_logits_output_and_model_state_restored():
    torch.manual_seed(0)
    model = UNet(1, 2, base_channels=2, depth=3, dropout=0.5, batch_norm=True)  # training mode
    image = _image(40, 33)
    logits = predict(model, image, tile_size=60, output="logits", channels_last=True)
    assert model.training
    assert all(p.is_contiguous() for p in model.parameters())  # memory format restored
    model.eval()
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(0), _whole(model, image), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Outputs: labels, memmap, zarr, TIFF
# --------------------------------------------------------------------------------------------


def test_labels_output_dtype_and_values():
    model = _unet(3)
    image = _image(30, 41)
    labels = predict(model, image, tile_size=60, output="labels")
    assert labels.shape == (30, 41) and labels.dtype == np.uint8
    assert np.array_equal(labels, _whole(model, image).argmax(0))
    many = _unet(2, classes=300)
    labels = predict(many, image, output="labels")
    assert labels.dtype == np.uint16
    assert np.array_equal(labels, _whole(many, image).argmax(0))


def test_streaming_to_memmap_equals_in_memory(tmp_path):
    model = _unet(3)
    data = _image(70, 90)
    image = np.memmap(tmp_path / "image.raw", np.float32, "w+", shape=data.shape)
    image[:] = data
    in_memory = predict(model, data, tile_size=60, batch_size=2)
    probs = np.memmap(tmp_path / "probs.raw", np.float32, "w+", shape=(3, 70, 90))
    result = predict(model, image, tile_size=60, batch_size=2, out=probs)
    assert result is probs
    assert np.array_equal(np.asarray(probs), in_memory)
    labels = np.memmap(tmp_path / "labels.raw", np.uint8, "w+", shape=(70, 90))
    predict(model, image, tile_size=60, output="labels", out=labels)
    assert np.array_equal(np.asarray(labels), in_memory.argmax(0))


def test_zarr_input_and_output(tmp_path):
    model = _unet(3)
    data = _image(70, 90)
    source = zarr.open_array(tmp_path / "in.zarr", mode="w", shape=data.shape, chunks=(32, 32))
    source[:] = data
    sink = zarr.open_array(
        tmp_path / "out.zarr", mode="w", shape=(3, 70, 90), chunks=(3, 32, 32), dtype="float32"
    )
    predict(model, source, tile_size=60, out=sink)
    np.testing.assert_allclose(sink[:], _whole(model, data), atol=1e-5)


def test_tiff_region_reads_to_tiff_memmap(tmp_path):
    model = _unet(3)
    data = np.random.default_rng(0).integers(0, 255, (100, 70), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", data, tile=(32, 32))
    source = zarr.open(tifffile.imread(tmp_path / "in.tif", aszarr=True), mode="r")
    sink = tifffile.memmap(tmp_path / "out.tif", shape=(100, 70), dtype=np.uint8)
    with pytest.warns(UserWarning, match="Segmenter.from_checkpoint"):  # raw uint8 pixels
        predict(model, source, tile_size=60, output="labels", out=sink)
    sink.flush()
    expected = _whole(model, data.astype(np.float32)).argmax(0)
    assert np.array_equal(tifffile.imread(tmp_path / "out.tif"), expected)


# --------------------------------------------------------------------------------------------
# Test-time augmentation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_tta_of_equivariant_model_equals_plain(padding, tta):
    model = SymmetricNet(padding)
    image = _image(37, 23, channels=1)
    plain = predict(model, image, tile_size=(16, 12))
    np.testing.assert_allclose(predict(model, image, tile_size=(16, 12), tta=tta), plain, atol=1e-5)


def test_tta_averages_transformed_predictions():
    model = _unet(2, "same")  # not flip-equivariant; one 16 × 12 tile covers the image
    image = _image(16, 12)
    x = torch.from_numpy(image)[None, None]
    expected = torch.zeros(3, 16, 12)
    with torch.no_grad():
        for k in range(4):
            for dims in ((), (3,)):
                y = model(torch.rot90(x.flip(dims), k, (2, 3))).softmax(1)
                expected += torch.rot90(y, -k, (2, 3)).flip(dims)[0] / 8
    result = predict(model, image, tta="d4")
    np.testing.assert_allclose(result, expected.numpy(), atol=1e-5)
    assert np.abs(result - predict(model, image)).max() > 1e-3  # the augmentation did something


# --------------------------------------------------------------------------------------------
# Pad modes
# --------------------------------------------------------------------------------------------


def test_pad_modes_hand_computed_corner():
    # 3 × 3 window mean at the corner of [[1 2 3] [4 5 6] [7 8 9]]:
    # reflect: rows/cols (1, 0, 1) → (5+4+5 + 2+1+2 + 5+4+5)/9 = 33/9
    # replicate: rows/cols (0, 0, 1) → (1+1+2 + 1+1+2 + 4+4+5)/9 = 21/9
    # constant: only (0..1) × (0..1) → (1+2+4+5)/9 = 12/9
    image = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    corners = {
        mode: predict(BoxFilter(1), image, pad_mode=mode, output="logits")[0, 0, 0]
        for mode in PAD_MODES
    }
    assert corners == pytest.approx({"reflect": 33 / 9, "replicate": 21 / 9, "constant": 12 / 9})


@pytest.mark.parametrize(
    ("mode", "scipy_mode"),
    [("reflect", "mirror"), ("replicate", "nearest"), ("constant", "constant")],
)
def test_pad_modes_match_scipy_box_filter(mode, scipy_mode):
    image = _image(20, 9)
    result = predict(BoxFilter(3), image, pad_mode=mode, output="logits", tile_size=11)[0]
    expected = ndimage.uniform_filter(image.astype(np.float64), 7, mode=scipy_mode)
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_pad_modes_differ_only_at_the_border():
    image = _image(20, 20)
    results = [predict(BoxFilter(2), image, pad_mode=m, output="logits")[0] for m in PAD_MODES]
    for a, b in itertools.combinations(results, 2):
        np.testing.assert_allclose(a[2:-2, 2:-2], b[2:-2, 2:-2], atol=1e-6)
        assert np.abs(a - b).max() > 1e-2


# --------------------------------------------------------------------------------------------
# Same-padding networks
# --------------------------------------------------------------------------------------------


def _whole_same(model: nn.Module, image: np.ndarray) -> np.ndarray:
    return _whole(model, image)  # margin 0: pads right/bottom to a valid size only


def test_same_padding_exact_with_one_tile():
    model = _unet(4, "same")
    image = _image(75, 50)
    whole = _whole_same(model, image)
    # same memory format as the reference: the same arithmetic, equal to float rounding
    np.testing.assert_allclose(predict(model, image, channels_last=False), whole, atol=1e-6)
    np.testing.assert_allclose(
        predict(model, image, tile_size=512, channels_last=False), whole, atol=1e-6
    )
    # the CPU default runs channels_last: other summation order, still ~1e-6
    np.testing.assert_allclose(predict(model, image), whole, atol=1e-5)


def test_same_padding_tiled_close_with_halo():
    model = _unet(3, "same", base=4)  # receptive radius 20, stride 4
    image = _image(150, 131)
    whole = _whole_same(model, image)

    def deviation(halo: int) -> float:
        tiled = predict(model, image, tile_size=2 * halo + 8, halo=halo)
        return float(np.abs(tiled - whole).max())

    # The seams of a halo-free tiling are far off; a halo of the receptive radius brings them
    # close; twice that covers the pooling windows' extra reach as well and is exact.
    no_halo, radius, wide = deviation(0), deviation(20), deviation(40)
    assert no_halo > 0.1
    assert radius < 0.1 * no_halo
    assert wide < 1e-5


def test_fcn_single_tile_equals_forward():
    torch.manual_seed(0)
    fcn = FCN("8s", num_classes=3, in_channels=1, width=1 / 16).eval()
    for module in (fcn.score_fr, fcn.score_pool4, fcn.score_pool3):
        nn.init.normal_(module.weight, std=0.1)  # zero-initialised scores would be trivial
    image = _image(45, 38)
    with torch.no_grad():
        expected = fcn(torch.from_numpy(image)[None, None]).softmax(1)[0].numpy()
    np.testing.assert_allclose(predict(fcn, image), expected, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Automatic tile size and memory estimate
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_activation_bytes_per_pixel_hand_count(padding):
    # UNet(1, 2, base 2, depth 2): full-resolution conv outputs 2+2 (encoder), 2 (up-conv),
    # 2+2 (decoder), 2 (head) = 12 channels; half resolution 4+4 channels = 8/4 = 2; input 1.
    model = UNet(1, 2, base_channels=2, depth=2, padding=padding)
    assert activation_bytes_per_pixel(model, 1) == (12 + 2 + 1) * 4
    assert activation_bytes_per_pixel(model, 1, element_size=2) == (12 + 2 + 1) * 2


@pytest.mark.parametrize(("batch_size", "row_bytes"), [(1, 0.0), (2, 0.0), (1, 150.0)])
def test_choose_tile_size_is_optimal_within_budget(batch_size, row_bytes):
    """Brute force over every tile pair: the choice fits the budget (the batch's tiles plus,
    with row_bytes, the rows held by row bands of 16: output rows + 2 · 16) and computes the
    fewest pixels among those that do."""
    model = _unet(3)  # margin 20, stride 4
    shape, per_pixel, budget = (150, 97), 10.0, 10.0 * 80 * 80
    chosen = choose_tile_size(shape, model, bytes_per_pixel=per_pixel, budget_bytes=budget,
                              batch_size=batch_size, row_bytes=row_bytes, band_rows=16)  # fmt: skip

    def work(pair):
        tiles = plan_tiles(shape, model, pair)
        return len(tiles) * tiles[0].height * tiles[0].width

    def memory(pair):
        rows = model.output_size(pair[0]) + 2 * 16
        return batch_size * pair[0] * pair[1] * per_pixel + (row_bytes * rows if row_bytes else 0)

    usable = [n for n in model.valid_input_sizes(1, 200) if model.output_size(n) >= 4]
    fitting = [p for p in itertools.product(usable, usable) if memory(p) <= budget]
    assert memory(chosen) <= budget
    assert work(chosen) == min(work(p) for p in fitting)
    if row_bytes:  # the rows cost: a shorter tile than without them
        free = choose_tile_size(shape, model, bytes_per_pixel=per_pixel, budget_bytes=budget)
        assert chosen[0] < free[0]


def test_choose_tile_size_not_larger_than_needed():
    model = _unet(5, base=1)  # margin 92
    chosen = choose_tile_size((100, 60), model, bytes_per_pixel=1.0, budget_bytes=1e12)
    assert chosen == (_smallest_valid(model, 284), _smallest_valid(model, 244))  # one tile


# --------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"pad_mode": "wrap"}, "pad_mode must be one of 'reflect', 'constant', 'replicate'; got"),
        ({"output": "mask"}, "output must be one of 'probs', 'logits', 'labels'; got 'mask'"),
        ({"tta": "rot"}, "tta must be one of None, 'flips', 'd4'; got 'rot'"),
        ({"autocast": "int8"}, "autocast must be one of None, 'bf16', 'fp16'; got 'int8'"),
        ({"tta": "flips", "output": "logits"}, "tta averages probabilities, so it cannot return"),
        ({"tile_size": 500}, "tile_size 500 is not a valid input size for this model (margin 92,"),
        ({"tile_size": 500}, "nearest valid sizes: 492, 508"),
        ({"tile_size": 188}, "tile size 188 is too small to tile an axis of 1000 pixels"),
        ({"tile_size": (572, 0)}, "tile_size must be a positive integer or a (height, width) pair"),
        ({"halo": 16}, "halo applies to same-padding models; this model has margin 92"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"memory_budget_mb": 0}, "memory_budget_mb must be a finite number > 0, got 0"),
        ({"out": np.zeros((2, 10, 10), np.float32)}, "out must be a floating (K, 1000, 30) array"),
        ({"out": np.zeros((1000, 30)), "output": "labels"}, "out must be an integer (1000, 30)"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    model = _unet(5, base=1)
    with pytest.raises(ValueError) as info:
        predict(model, np.zeros((1000, 30), np.float32), **kwargs)
    assert fragment in str(info.value)


def test_bad_images_and_out_classes():
    model = _unet(3)
    with pytest.raises(ValueError, match=r"image must have shape \(H, W\) or \(C, H, W\)"):
        predict(model, np.zeros((1, 1, 8, 8)))
    with pytest.raises(ValueError, match=r"image has 3 channel\(s\) .* the model expects 1"):
        predict(model, np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match=r"out must have shape \(3, 8, 8\) \(K, H, W\)"):
        predict(model, np.zeros((8, 8)), out=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="out has dtype uint8, too small for labels up to 299"):
        predict(
            _unet(2, classes=300), np.zeros((8, 8)), output="labels", out=np.zeros((8, 8), "u1")
        )


# --------------------------------------------------------------------------------------------
# The options object
# --------------------------------------------------------------------------------------------


def test_options_object_and_keywords_give_the_same_result():
    model = _unet(3)
    image = _image(50, 61)
    options = PredictOptions(tile_size=60, batch_size=2, pad_mode="replicate")
    by_keywords = predict(model, image, tile_size=60, batch_size=2, pad_mode="replicate")
    np.testing.assert_array_equal(predict(model, image, options), by_keywords)
    # keywords override the object's fields; the object itself is unchanged (frozen)
    overridden = predict(model, image, options, pad_mode="reflect", output="labels")
    reference = predict(model, image, tile_size=60, batch_size=2, output="labels")
    np.testing.assert_array_equal(overridden, reference)
    assert options.pad_mode == "replicate"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.tile_size = 44  # type: ignore[misc]


def test_options_are_keyword_only_and_normalised():
    with pytest.raises(TypeError):
        PredictOptions(60)  # type: ignore[misc]
    assert PredictOptions(tile_size=[60, np.int64(44)]).tile_size == (60, 44)
    assert PredictOptions.build(None, tile_size=60) == PredictOptions(tile_size=60)
    with pytest.raises(TypeError, match=r"unknown prediction option\(s\) 'tile'; the options are"):
        PredictOptions.build(None, tile=60)
    with pytest.raises(TypeError, match="unknown prediction option"):
        predict(_unet(3), _image(8, 8), batch=2)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"memory_budget_mb": float("inf")}, "memory_budget_mb must be a finite number > 0"),
        ({"memory_budget_mb": "1G"}, "memory_budget_mb must be a finite number > 0, got '1G'"),
        ({"halo": -1}, "halo must be an integer >= 0, got -1; or None for the default"),
        ({"channels_last": 1}, "channels_last must be True, False or None (on for CPUs"),
        ({"progress": None}, "progress must be True or False, got None"),
        ({"device": "gpu"}, "device must be None, a torch.device or a device string such as"),
        ({"batch_size": 1.5}, "batch_size must be a positive integer, got 1.5"),
    ],
)
def test_bad_options(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        PredictOptions(**kwargs)
    assert fragment in str(info.value)


def test_check_model_needs_the_geometry_api():
    options = PredictOptions()
    for model in (BoxFilter(1), SymmetricNet("same"), _unet(3), FCN("32s", width=1 / 16)):
        assert isinstance(model, Geometry)
        options.check_model(model)
    with pytest.raises(TypeError, match=r"Conv2d lacks the geometry API .*missing: margin"):
        options.check_model(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="tile_size 61 is not a valid input size"):
        PredictOptions(tile_size=(60, 61)).check_model(_unet(3))


# --------------------------------------------------------------------------------------------
# iter_predict: the engine as a generator of progress
# --------------------------------------------------------------------------------------------


def test_iter_predict_yields_each_batch_and_returns_what_predict_returns():
    model = _unet(2)
    image = _image(150, 130, seed=3)
    tile = _smallest_valid(model, 60)
    tiles = plan_tiles(image.shape, model, tile)
    steps = iter_predict(model, image, tile_size=tile, batch_size=2)
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as done:
            result = done.value
            break
    expected_tiles = [*range(2, len(tiles), 2), len(tiles)]
    assert [p.tiles for p in seen] == expected_tiles and len(tiles) > 4
    pixels = np.cumsum([t.output_pixels for t in tiles])[np.array(expected_tiles) - 1]
    assert [p.pixels for p in seen] == pixels.tolist() and seen[-1].fraction == 1.0
    assert {(p.total_tiles, p.total_pixels) for p in seen} == {(len(tiles), 150 * 130)}
    np.testing.assert_array_equal(result, predict(model, image, tile_size=tile, batch_size=2))


def test_closing_iter_predict_stops_it_and_restores_the_model():
    model = _unet(2).train()
    forwards = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    steps = iter_predict(
        model, _image(150, 130), tile_size=_smallest_valid(model, 60), batch_size=1
    )
    first = next(steps)
    assert not model.training and first.tiles == 1 and len(forwards) == 1
    steps.close()
    hook.remove()
    assert model.training and len(forwards) == 1  # no further tile ran


@pytest.mark.parametrize("training_format", [torch.contiguous_format, torch.channels_last])
def test_predict_leaves_the_model_in_its_memory_format(training_format):
    # a one-channel model's first weight, (K, 1, 3, 3), is contiguous in both layouts: predict
    # must not take a channels_last model for an NCHW one and convert it back to NCHW
    model = UNet(1, 2, base_channels=4, depth=2, padding="same").to(memory_format=training_format)
    image = np.random.default_rng(0).standard_normal((40, 40)).astype(np.float32)
    for channels_last in (None, True, False):
        predict(model, image, channels_last=channels_last)
        weights = [p for p in model.parameters() if p.dim() == 4]
        assert all(p.is_contiguous(memory_format=training_format) for p in weights)
        distinct = [p for p in weights if p.shape[1] > 1 and p[0, 0].numel() > 1]
        other = (
            torch.channels_last if training_format == torch.contiguous_format
            else torch.contiguous_format
        )  # fmt: skip
        assert distinct and not any(p.is_contiguous(memory_format=other) for p in distinct)
