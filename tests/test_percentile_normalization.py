"""Per-image percentile normalisation (`--normalize percentile`, the instance default), the
object-size rescaling of `Segmenter(diameter=...)` and `PostProcessing.rescaled`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixelwise import tiling
from pixelwise.data import PERCENTILE_NORMALIZATION, percentile_levels, to_chw_float
from pixelwise.data import normalization as norm_module
from pixelwise.inference.inputs import NormalizedImage
from pixelwise.instances import PostProcessing
from pixelwise.segmenter import Segmentation, Segmenter, resize
from pixelwise.train import TrainConfig

SYMMETRIC = {"method": "percentile", "low": 1.0, "high": 99.0, "invert": "auto"}


def _percentile_by_hand(values: np.ndarray, q: float) -> float:
    """numpy's default ("linear") percentile: position q/100 · (n − 1) in the sorted values."""
    v = np.sort(values.ravel().astype(np.float64))
    pos = q / 100 * (v.size - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, v.size - 1)
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def test_levels_and_values_by_hand() -> None:
    # 0..100 on a 1 × 101 row: the 1st percentile is 1, the 99.8th 99.8 → x' = (x − 1) / 98.8.
    image = np.arange(101, dtype=np.uint16).reshape(1, 101)
    x = to_chw_float(image, normalization=PERCENTILE_NORMALIZATION)
    scale = 1 / 65535
    assert x.shape == (1, 1, 101)
    np.testing.assert_allclose(x[0, 0], (np.arange(101) - 1.0) / 98.8, atol=1e-5)
    levels = percentile_levels(image, PERCENTILE_NORMALIZATION)
    assert levels.low[0] == pytest.approx(1.0 * scale)
    assert levels.high[0] == pytest.approx(99.8 * scale)
    assert levels.invert is False  # the median 50 is 0.5 of the range → not above it


def test_random_image_matches_the_hand_percentiles() -> None:
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 300.0, (37, 53)).astype(np.float32)
    x = to_chw_float(image, normalization=PERCENTILE_NORMALIZATION)[0]
    lo, hi = _percentile_by_hand(image, 1.0), _percentile_by_hand(image, 99.8)
    np.testing.assert_allclose(x, (image - lo) / (hi - lo), rtol=1e-5, atol=1e-5)


def test_any_bit_depth_and_brightness_give_the_same_input() -> None:
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 60, (40, 40), dtype=np.uint8)
    u8[10:20, 10:20] += 150  # a bright nucleus on a dark background
    u16 = u8.astype(np.uint16) * 257 + 1000  # 16 bits, with an offset (as HeLa's frames)
    f32 = u8.astype(np.float32) * 0.37
    ref = to_chw_float(u8, normalization=PERCENTILE_NORMALIZATION)
    for other in (u16, f32):
        np.testing.assert_allclose(
            to_chw_float(other, normalization=PERCENTILE_NORMALIZATION), ref, atol=1e-5
        )


def test_dark_on_bright_images_are_inverted() -> None:
    rng = np.random.default_rng(2)
    dark = rng.integers(0, 40, (48, 48)).astype(np.uint8)
    dark[5:25, 5:25] = rng.integers(180, 255, (20, 20))  # nuclei: 17 % of the pixels
    bright = (255 - dark).astype(np.uint8)  # the same scene as bright field
    assert not percentile_levels(dark, SYMMETRIC).invert
    assert percentile_levels(bright, SYMMETRIC).invert
    # Symmetric percentiles: the inverted bright image is exactly the dark one's input.
    np.testing.assert_allclose(
        to_chw_float(bright, normalization=SYMMETRIC),
        to_chw_float(dark, normalization=SYMMETRIC),
        atol=1e-6,
    )
    never = {**SYMMETRIC, "invert": False}
    assert not percentile_levels(bright, never).invert


def test_flat_image_and_bad_records() -> None:
    flat = np.full((8, 8), 7, np.uint8)
    assert np.all(to_chw_float(flat, normalization=PERCENTILE_NORMALIZATION) == 0)
    with pytest.raises(ValueError, match=r"0 <= low < high <= 100, got low=50.*high=10"):
        to_chw_float(flat, normalization={"method": "percentile", "low": 50, "high": 10})
    with pytest.raises(ValueError, match="'invert' must be true, false or \"auto\", got 'yes'"):
        to_chw_float(flat, normalization={"method": "percentile", "invert": "yes"})


def test_streamed_blocks_use_the_whole_image_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    # Above LEVEL_PIXELS the levels come from a regular subsample, the same in memory and
    # streamed: a block of the streamed view equals the block of the whole-image input.
    monkeypatch.setattr(norm_module, "LEVEL_PIXELS", 500)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 4000, (60, 70, 2)).astype(np.uint16)
    whole = to_chw_float(image, normalization=PERCENTILE_NORMALIZATION)  # (2, 60, 70)
    view = NormalizedImage(image, PERCENTILE_NORMALIZATION, "slide")
    np.testing.assert_array_equal(view[:, 13:41, 7:50], whole[:, 13:41, 7:50])
    # step = ceil(sqrt(4200 / 500)) = 3: the levels are those of image[::3, ::3].
    sub = image[::3, ::3].astype(np.float32) / 65535
    levels = percentile_levels(image, PERCENTILE_NORMALIZATION)
    np.testing.assert_allclose(
        levels.low, np.percentile(sub.reshape(-1, 2), 1.0, axis=0), rtol=1e-6
    )


def test_objects_default_to_percentiles_classes_to_moments() -> None:
    assert TrainConfig(data="d", instances=True).normalize == "percentile"
    assert TrainConfig(data="d").normalize == "dataset"
    assert TrainConfig(data="d", instances=True, normalize="dataset").normalize == "dataset"
    with pytest.raises(ValueError, match="normalize must be one of 'dataset', 'percentile'"):
        TrainConfig(data="d", normalize="minmax").check()


def test_postprocessing_rescaled_worked_example() -> None:
    pp = PostProcessing(min_size=25, seed_distance=4, seed_threshold=0.6)
    half = pp.rescaled(0.5)
    assert (half.min_size, half.seed_distance, half.seed_threshold) == (6, 2, 0.6)
    assert pp.rescaled(2.0).min_size == 100
    with pytest.raises(ValueError, match="factor must be a finite number > 0, got 0"):
        pp.rescaled(0)


def test_diameter_resizes_to_the_training_object_size(tiny_unet) -> None:
    model = tiny_unet(1, 3, padding="same")
    meta = {
        "normalization": PERCENTILE_NORMALIZATION,
        "target": "three-class",
        "postprocessing": PostProcessing(min_size=40, seed_distance=4).to_dict(),
        "object_diameter": 20.0,
    }
    image = np.random.default_rng(4).integers(0, 255, (30, 44)).astype(np.uint8)
    seg = Segmenter(model, meta=meta, diameter=10.0, device="cpu", progress=False)
    assert seg.scale == 2.0
    assert seg.postprocessing.min_size == 10  # 40 / 2²: objects of half the size
    result = seg.predict(image)
    # By hand: normalise, upsample 2×, the exact engine, back to 30 × 44 by bilinear resizing.
    x = to_chw_float(image, normalization=PERCENTILE_NORMALIZATION)
    up = resize(x, (60, 88))
    probs = tiling.predict(model, up, options=seg.options, output="probs")
    back = resize(probs, (30, 44))
    assert result.probabilities.shape == (3, 30, 44)
    np.testing.assert_allclose(result.probabilities, back, atol=1e-6)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    same = Segmenter(model, meta=meta, device="cpu", progress=False)
    assert same.scale == 1.0 and same.postprocessing.min_size == 40


def test_diameter_is_checked(tiny_unet) -> None:
    model = tiny_unet(1, 3, padding="same")
    meta = {"target": "three-class", "object_diameter": 20.0}
    with pytest.raises(
        ValueError,
        match=r"diameter must be .* \(a number > 0\), \"auto\", \"default\" or None, got -3",
    ):
        Segmenter(model, meta=meta, diameter=-3, device="cpu")
    with pytest.raises(ValueError, match="records its training objects' diameter"):
        Segmenter(model, meta={"target": "three-class"}, diameter=12, device="cpu")


def test_auto_diameter_tries_the_scales_in_order_until_the_objects_fit(
    tiny_unet, monkeypatch
) -> None:
    """diameter="auto": passes at AUTO_SCALES in order (1, 1/√2, √2, 1/2, 2, 1/2√2) until the
    objects' median diameter at the network's scale lies in AUTO_RANGE × the recorded 20 px
    (18-40 px); the pass that fits is exactly `diameter=20 / scale`; none fits: the least
    missing, the earliest of equals; no pass with 3 objects: as is."""
    import pixelwise.segmenter as segmenter_module
    from pixelwise.segmenter import AUTO_RANGE, AUTO_SCALES

    assert pytest.approx((1, 2**-0.5, 2**0.5, 0.5, 2, 2**-1.5)) == AUTO_SCALES
    assert AUTO_RANGE == (0.9, 2)
    model = tiny_unet(1, 3, padding="same")
    meta = {"target": "three-class", "object_diameter": 20.0}
    image = np.random.default_rng(5).integers(0, 255, (64, 64)).astype(np.uint8)

    def squares(side: int, count: int = 3) -> np.ndarray:  # `count` objects of side² pixels
        labels = np.zeros((64, 64), np.int32)
        for i, (y, x) in enumerate(((0, 0), (0, 32), (32, 0))[:count], 1):
            labels[y : y + side, x : x + side] = i
        return labels

    # 9×9 squares: √(4·81/π) = 10.16 px; 2×2: 2.26 px; 20×20: 22.57 px
    assert segmenter_module.median_diameter(squares(9)) == pytest.approx(10.155, abs=1e-3)
    assert segmenter_module.median_diameter(squares(4), min_objects=4) is None
    cases = [
        ([20], 1.0),  # 22.6 px as is: in range, one pass
        ([4, 4, 4, 4, 9], 2.0),  # 10.2 px × 2 = 20.3 px only at the fifth scale
        ([4, 9, 9, 2, 2, 9], 2**0.5),  # none fits; 10.2 × √2 = 14.4 px misses least
        ([2] * 6, 2.0),  # never in range: the least missing (2.26 × 2 px)
        ([(9, 2)] * 6, 1.0),  # never 3 objects: as is
        ([4, 4, 4, 4, 4, 30], 2**-1.5),  # 30×30: 33.9 px / 2√2 = 12.0 px misses least
    ]
    for sides, kept in cases:
        calls: list[PostProcessing] = []

        def by_hand(probs, params, sides=sides, calls=calls) -> np.ndarray:
            calls.append(params)
            side = sides[len(calls) - 1]
            return squares(*side) if isinstance(side, tuple) else squares(side)

        monkeypatch.setattr(segmenter_module, "objects_from_probabilities", by_hand)
        auto = Segmenter(model, meta=meta, diameter="auto", device="cpu", progress=False)
        assert auto.scale == 1.0 and auto.auto_diameter and auto.pass_scales() == AUTO_SCALES
        result = auto.predict(image)
        assert len(calls) == len(sides), sides
        assert calls == [calls[0].rescaled(1 / f) for f in AUTO_SCALES[: len(sides)]]
        monkeypatch.undo()
        expected = Segmenter(model, meta=meta, diameter=20.0 / kept, device="cpu", progress=False)
        np.testing.assert_array_equal(
            result.probabilities, expected.predict(image).probabilities, err_msg=str(sides)
        )
    # size_miss: |log| to the range's nearer end, 0 inside; a fixed diameter never misses
    auto = Segmenter(model, meta=meta, diameter="auto", device="cpu", progress=False)
    plain = Segmenter(model, meta=meta, device="cpu", progress=False).predict(image)
    nine = Segmentation(plain.probabilities, plain.labels, squares(9))
    assert auto.size_miss(nine, 1.0) == pytest.approx(math.log(18 / 10.155), abs=1e-4)
    assert auto.size_miss(nine, 2.0) == 0.0
    assert auto.size_miss(nine, 8.0) == pytest.approx(math.log(8 * 10.155 / 40), abs=1e-4)
    fixed = Segmenter(model, meta=meta, diameter=10.0, device="cpu", progress=False)
    assert fixed.pass_scales() == (2.0,) and fixed.size_miss(nine, 1.0) == 0.0


def test_auto_diameter_needs_an_instance_model_with_a_recorded_size(tiny_unet) -> None:
    model = tiny_unet(1, 3, padding="same")
    with pytest.raises(ValueError, match='diameter="auto" measures the objects'):
        Segmenter(model, meta={"target": "three-class"}, diameter="auto", device="cpu")
    with pytest.raises(ValueError, match='diameter="auto" measures the objects'):
        Segmenter(model, meta={"object_diameter": 20.0}, diameter="auto", device="cpu")
    with pytest.raises(ValueError, match=r"\"default\" or None, got 'big'"):
        Segmenter(model, meta={"target": "three-class", "object_diameter": 20.0}, diameter="big")
