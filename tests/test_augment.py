"""Tests for pixelwise.augment: elastic field, composed transforms, aligned image/mask/weight."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from pixelwise.augment import Augment, SpatialTransform, adjust_gray, elastic_field, warp


def blocks(shape=(96, 112), size=16, seed=0, n_labels=6) -> np.ndarray:
    """Label image of size × size blocks with random labels 0..n_labels-1 (int32)."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, n_labels, (shape[0] // size + 1, shape[1] // size + 1))
    grid = grid.astype(np.int32)
    return np.kron(grid, np.ones((size, size), np.int32))[: shape[0], : shape[1]]


def smooth_image(shape=(64, 64), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape), 2).astype(np.float32)


def interior(mask: np.ndarray, size: int = 5) -> np.ndarray:
    """Pixels whose size × size neighbourhood lies in the image and holds a single label."""
    inside = ndi.minimum_filter(mask, size, mode="constant", cval=-1) >= 0
    return inside & (ndi.minimum_filter(mask, size) == ndi.maximum_filter(mask, size))


# --------------------------------------------------------------------------------------------
# Elastic field
# --------------------------------------------------------------------------------------------


def test_elastic_field_equals_scipy_zoom_of_the_coarse_grid():
    coarse = np.random.default_rng(5).normal(0.0, 10.0, (2, 3, 3))
    field = elastic_field((40, 56), grid=3, sigma=10.0, rng=np.random.default_rng(5))
    assert field.shape == (2, 40, 56)
    assert field.dtype == np.float32
    for axis in range(2):
        expected = ndi.zoom(coarse[axis], (40 / 3, 56 / 3), order=3, mode="mirror")
        np.testing.assert_allclose(field[axis], expected, atol=1e-4)


def test_elastic_field_passes_through_the_coarse_vectors():
    # On 9 × 9 pixels the 3 × 3 grid points sit on pixels 0, 4 and 8.
    coarse = np.random.default_rng(1).normal(0.0, 10.0, (2, 3, 3))
    field = elastic_field((9, 9), rng=np.random.default_rng(1))
    np.testing.assert_allclose(field[:, ::4, ::4], coarse, atol=1e-4)


# --------------------------------------------------------------------------------------------
# SpatialTransform and warp
# --------------------------------------------------------------------------------------------


def test_warp_matches_scipy_map_coordinates():
    image = smooth_image((64, 72))
    mask = blocks((64, 72), size=8)
    field = elastic_field((64, 72), rng=np.random.default_rng(2))
    transform = SpatialTransform(
        angle=33.0, shift=(4.5, -7.25), flip=(True, False), displacement=field
    )
    coords = transform.coordinates((64, 72))
    out_image, out_mask, out_weight = warp(transform, image, mask, image * 2)
    expected = ndi.map_coordinates(image, coords, order=1, mode="mirror")
    np.testing.assert_allclose(out_image, expected, atol=1e-4)
    np.testing.assert_allclose(out_weight, 2 * expected, atol=2e-4)
    expected_mask = ndi.map_coordinates(mask, coords, order=0, mode="mirror")
    assert (out_mask == expected_mask).mean() >= 0.999


def test_rotation_by_90_degrees_equals_rot90():
    image = smooth_image((48, 48))
    mask = blocks((48, 48), size=6)
    weight = image + 1.0
    out_image, out_mask, out_weight = warp(SpatialTransform(angle=90.0), image, mask, weight)
    np.testing.assert_array_equal(out_mask, np.rot90(mask))
    np.testing.assert_allclose(out_image, np.rot90(image), atol=1e-5)
    np.testing.assert_allclose(out_weight, np.rot90(weight), atol=1e-5)
    flipped = warp(SpatialTransform(angle=-90.0, flip=(False, True)), image, mask)[1]
    np.testing.assert_array_equal(flipped, np.fliplr(np.rot90(mask, -1)))


@pytest.mark.parametrize("flip", [(True, False), (False, True), (True, True)])
def test_flips_are_exact(flip):
    image = np.random.default_rng(0).random((3, 20, 30)).astype(np.float32)
    mask = blocks((20, 30), size=4)
    out_image, out_mask, out_weight = warp(SpatialTransform(flip=flip), image, mask, image[0])
    axes = tuple(axis for axis, f in zip((-2, -1), flip, strict=True) if f)
    np.testing.assert_array_equal(out_image, np.flip(image, axes))
    np.testing.assert_array_equal(out_mask, np.flip(mask, axes))
    np.testing.assert_array_equal(out_weight, np.flip(image[0], axes))
    assert out_image.flags.c_contiguous
    assert not np.shares_memory(out_image, image)


def test_crop_window_equals_slice_of_full_transform():
    field = elastic_field((50, 60), rng=np.random.default_rng(3))
    full = SpatialTransform(angle=20.0, shift=(2.0, 3.0), flip=(True, True), displacement=field)
    window = SpatialTransform(
        angle=20.0, shift=(2.0, 3.0), flip=(True, True), displacement=field, origin=(7, 11),
        size=(30, 40),
    )  # fmt: skip
    # Flips reverse the output window, so the window is cut from the unflipped full map.
    unflipped = SpatialTransform(angle=20.0, shift=(2.0, 3.0), displacement=field).coordinates(
        (50, 60)
    )
    expected = unflipped[:, 7:37, 11:51][:, ::-1, ::-1]
    np.testing.assert_allclose(window.coordinates((50, 60)), expected, atol=1e-4)
    assert full.coordinates((50, 60)).shape == (2, 50, 60)


def test_zoom_scales_about_the_window_centre_by_hand():
    # The module's worked example: a 4-pixel window of a 4-pixel image at zoom 2 samples the
    # middle half, 0.75 ... 2.25; a 3-pixel window at origin 5 of a 12-pixel axis keeps its
    # centre pixel 6 and steps by 1/2 around it (zoom 0.5: by 2).
    np.testing.assert_allclose(
        SpatialTransform(zoom=2.0).coordinates((4, 4))[0, :, 0], [0.75, 1.25, 1.75, 2.25]
    )
    window = SpatialTransform(zoom=2.0, origin=(5, 0), size=(3, 12)).coordinates((12, 12))
    np.testing.assert_allclose(window[0, :, 0], [5.5, 6.0, 6.5])
    window = SpatialTransform(zoom=0.5, origin=(5, 0), size=(3, 12)).coordinates((12, 12))
    np.testing.assert_allclose(window[0, :, 0], [4.0, 6.0, 8.0])
    # Across the full width the window centre is the image centre 5.5: 5.5 + 2 (j − 5.5).
    np.testing.assert_allclose(window[1, 0], np.arange(-5.5, 17, 2))


@pytest.mark.parametrize("zoom", [0.6, 1.5])
def test_zoom_scales_an_objects_area_by_its_square(zoom):
    rows, cols = np.ogrid[:128, :128]
    disc = ((rows - 63.5) ** 2 + (cols - 63.5) ** 2 <= 20**2).astype(np.int32)  # area π·400
    image = disc.astype(np.float32)
    transform = SpatialTransform(zoom=zoom, angle=30.0)
    out_image, out_mask, _ = warp(transform, image, disc)
    # Shrunk and turned, the corners reach the disc's mirror images: count the centre's object.
    components = ndi.label(out_mask)[0]
    centre_object = components == components[64, 64]
    expected = np.pi * (20 * zoom) ** 2
    assert abs(centre_object.sum() - expected) < 0.02 * expected
    assert abs(out_image[centre_object].sum() - expected) < 0.03 * expected
    coords = transform.coordinates((128, 128))
    expected_image = ndi.map_coordinates(image, coords, order=1, mode="mirror")
    np.testing.assert_allclose(out_image, expected_image, atol=1e-4)


def test_augment_zoom_is_log_uniform_and_leaves_the_other_draws_alone():
    plain, zoomed = Augment(out_size=(32, 32)), Augment(zoom=1.5, out_size=(32, 32))
    factors = []
    for seed in range(400):
        a = plain.sample_transform((64, 64), np.random.default_rng(seed))
        b = zoomed.sample_transform((64, 64), np.random.default_rng(seed))
        assert (a.angle, a.flip, a.origin, a.zoom) == (b.angle, b.flip, b.origin, 1.0)
        np.testing.assert_array_equal(a.displacement, b.displacement)
        factors.append(b.zoom)
    logs = np.log(factors)
    assert np.abs(logs).max() <= np.log(1.5)
    assert abs(logs.mean()) < 0.03  # as often smaller as larger: E[log z] = 0, std 0.23/√400
    assert (np.asarray(factors) < 1).mean() == pytest.approx(0.5, abs=0.08)


def test_dim_above_minimum_by_hand():
    from pixelwise.augment import dim_above_minimum

    np.testing.assert_array_equal(dim_above_minimum(np.array([0.0, 2.0, 10.0]), 0.5), [0, 1, 5])
    np.testing.assert_array_equal(dim_above_minimum(np.array([-1.0, 1.0]), 0.5), [-1, 0])


def test_augment_dim_keeps_the_background_and_dims_by_at_most_its_factor():
    image = smooth_image((48, 48)) * 4 - 1  # values in about [-1, 3]
    mask = blocks((48, 48), size=6)
    plain = Augment(gray=0.0, dim=1.0)
    dimmed = Augment(gray=0.0, dim=0.25)
    factors = []
    for seed in range(200):
        a_image, a_mask, _ = plain(image, mask, rng=np.random.default_rng(seed))
        b_image, b_mask, _ = dimmed(image, mask, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(a_mask, b_mask)  # the geometry is the same draw
        low = a_image.min()
        assert b_image.min() == pytest.approx(low, abs=1e-6)
        factors.append((b_image.max() - low) / (a_image.max() - low))
        np.testing.assert_allclose(b_image, low + factors[-1] * (a_image - low), atol=1e-5)
    assert min(factors) >= 0.25 - 1e-6 and max(factors) <= 1 + 1e-6
    assert np.mean(np.log(factors)) == pytest.approx(np.log(0.25) / 2, abs=0.07)


def test_blur_is_scipys_gaussian_per_channel():
    from scipy import ndimage

    from pixelwise.augment import blur

    image = np.stack([smooth_image((32, 32), seed=s) for s in range(2)])
    np.testing.assert_array_equal(blur(image, 0.0), image)
    for channel in range(2):
        np.testing.assert_allclose(
            blur(image, 1.5)[channel],
            ndimage.gaussian_filter(image[channel], 1.5, mode="mirror"),
            atol=1e-6,
        )
    # The blur keeps the mean of a mirrored image and lowers its variance.
    assert blur(image, 1.5).mean() == pytest.approx(image.mean(), abs=1e-3)
    assert blur(image, 1.5).std() < image.std()


def test_add_noise_has_the_asked_std_in_units_of_the_value_range():
    from pixelwise.augment import add_noise

    image = np.zeros((512, 512), np.float32)
    image[0, 0] = 2.0  # value range 2
    noisy = add_noise(image, 0.05, np.random.default_rng(0))
    assert noisy.dtype == np.float32
    assert (noisy - image).std() == pytest.approx(0.1, rel=0.01)  # 0.05 × 2, 262,144 draws
    flat = np.full((8, 8), 3.0, np.float32)
    np.testing.assert_array_equal(add_noise(flat, 0.05, np.random.default_rng(0)), flat)


def test_augment_blur_and_noise_keep_the_geometry_and_off_change_nothing():
    image = smooth_image((48, 48))
    mask = blocks((48, 48), size=6)
    plain = Augment()
    off = Augment(blur=0.0, noise=0.0)
    both = Augment(blur=2.0, noise=0.1)
    for seed in range(20):
        a_image, a_mask, _ = plain(image, mask, rng=np.random.default_rng(seed))
        o_image, _, _ = off(image, mask, rng=np.random.default_rng(seed))
        b_image, b_mask, _ = both(image, mask, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(o_image, a_image)  # off: the same draws, the same image
        np.testing.assert_array_equal(b_mask, a_mask)  # the geometry is the same draw
        assert not np.array_equal(b_image, a_image)
        again, _, _ = both(image, mask, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(again, b_image)  # seeded
    with pytest.raises(ValueError, match=r"blur must be in \[0.0, 10.0\], got -1"):
        Augment(blur=-1)
    with pytest.raises(ValueError, match=r"noise must be in \[0.0, 1.0\], got 2"):
        Augment(noise=2)


def test_multichannel_image_warps_each_channel_alike():
    image = np.stack([smooth_image((40, 40), seed=s) for s in range(3)])
    transform = SpatialTransform(
        angle=15.0, displacement=elastic_field((40, 40), rng=np.random.default_rng(0))
    )
    out = warp(transform, image)[0]
    assert out.shape == (3, 40, 40)
    for channel in range(3):
        np.testing.assert_array_equal(out[channel], warp(transform, image[channel])[0])


# --------------------------------------------------------------------------------------------
# Augment
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "image_order"), [(0, 1), (1, 1), (2, 3), (3, 1)])
def test_augment_keeps_image_mask_and_weight_aligned(seed, image_order):
    augment = Augment(shift=10.0, gray=0.0, image_order=image_order)
    # Binary labels: interpolating between 0 and 1 rounds to the nearest label, so the rounded
    # image equals the nearest-neighbour mask except at block corners.
    mask = blocks(seed=seed, n_labels=2)
    image = mask.astype(np.float32)
    out_image, out_mask, out_weight = augment(image, mask, image, rng=np.random.default_rng(seed))
    assert out_image.shape == out_mask.shape == out_weight.shape == mask.shape
    assert (np.rint(out_image) == out_mask).mean() >= 0.99
    assert (np.rint(out_weight) == out_mask).mean() >= 0.99
    # Labels 0..5: interpolated values round to other labels at edges, but away from the edges
    # image, weight and mask agree exactly.
    mask = blocks(seed=seed)
    image = mask.astype(np.float32)
    out_image, out_mask, out_weight = augment(image, mask, image, rng=np.random.default_rng(seed))
    core = interior(out_mask, 5 if image_order == 1 else 7)  # bicubic reaches 2 px
    assert core.mean() > 0.2  # not vacuous
    np.testing.assert_array_equal(np.rint(out_image)[core], out_mask[core])
    np.testing.assert_array_equal(np.rint(out_weight)[core], out_mask[core])
    if image_order == 1:  # the weight map is sampled exactly like a bilinear image
        np.testing.assert_array_equal(out_weight, out_image)


def test_augment_misaligned_mask_would_be_detected():
    # The alignment criterion above is meaningful: an independent transform of the mask fails it.
    mask = blocks(n_labels=2)
    augment = Augment(gray=0.0)
    out_image = augment(mask.astype(np.float32), mask, rng=np.random.default_rng(0))[0]
    other_mask = augment(mask.astype(np.float32), mask, rng=np.random.default_rng(1))[1]
    assert (np.rint(out_image) == other_mask).mean() < 0.9


def test_augment_is_reproducible_per_seed():
    image, mask = smooth_image((64, 64)), blocks((64, 64))
    weight = image + 1
    augment = Augment(shift=5.0, out_size=(48, 40))
    first = augment(image, mask, weight, rng=np.random.default_rng(7))
    again = augment(image, mask, weight, rng=np.random.default_rng(7))
    other = augment(image, mask, weight, rng=np.random.default_rng(8))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[0].shape == first[1].shape == first[2].shape == (48, 40)
    assert not np.allclose(first[0], other[0])
    assert not np.allclose(first[2], other[2])


def test_flip_only_augment_gives_exact_flips():
    image, mask = smooth_image((30, 30)), blocks((30, 30), size=5)
    augment = Augment(rotation=0.0, p_elastic=0.0, gray=0.0)
    candidates = [np.flip(image, axes) for axes in [(), (0,), (1,), (0, 1)]]
    seen = set()
    for seed in range(12):
        out_image, out_mask, _ = augment(image, mask, rng=np.random.default_rng(seed))
        matches = [i for i, c in enumerate(candidates) if np.array_equal(out_image, c)]
        assert len(matches) == 1
        axes = [(), (0,), (1,), (0, 1)][matches[0]]
        np.testing.assert_array_equal(out_mask, np.flip(mask, axes))
        seen.add(matches[0])
    assert len(seen) >= 3


def test_gray_variation_changes_only_the_image():
    image, mask = smooth_image((64, 64)), blocks((64, 64))
    weight = image + 1
    plain = Augment(gray=0.0)(image, mask, weight, rng=np.random.default_rng(4))
    gray = Augment(gray=0.3)(image, mask, weight, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(gray[1], plain[1])
    np.testing.assert_array_equal(gray[2], plain[2])
    assert np.abs(gray[0] - plain[0]).max() > 1e-3


def test_mask_keeps_dtype_and_only_existing_labels():
    mask = (blocks() * 3).astype(np.uint16)  # labels 0, 3, ..., 15
    out_mask = Augment()(mask.astype(np.float32), mask, rng=np.random.default_rng(0))[1]
    assert out_mask.dtype == np.uint16
    assert set(np.unique(out_mask)) <= set(np.unique(mask))


def test_adjust_gray_by_hand():
    image = np.array([[10.0, 15.0, 20.0]], np.float32)  # range 10..20 → x = 0, 0.5, 1
    # gamma 2: 0, 0.25, 1 (mean 5/12); contrast 2 around the mean: -5/12, 1/12, 19/12;
    # brightness 0.1: -0.3167, 0.1833, 1.6833; back to 10..20: 6.833, 11.833, 26.833.
    out = adjust_gray(image, gamma=2.0, contrast=2.0, brightness=0.1)
    np.testing.assert_allclose(out, [[6.8333, 11.8333, 26.8333]], atol=1e-3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(adjust_gray(np.full((2, 2), 3.0)), np.full((2, 2), 3.0))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rotation": 200.0}, r"rotation must be in \[0.0, 180.0\], got 200.0"),
        ({"p_elastic": 1.5}, r"p_elastic must be in \[0.0, 1.0\], got 1.5; pass a probability"),
        ({"elastic_grid": 1}, "elastic grid must be an int >= 2, got 1"),
        ({"elastic_sigma": -1.0}, "elastic sigma must be finite and >= 0, got -1.0"),
        ({"image_order": 2}, r"image_order must be one of \(1, 3\), got 2"),
        ({"dim": 0.0}, r"dim must be in \[0.01, 1.0\], got 0.0; pass a smallest intensity"),
        ({"zoom": 0.5}, r"zoom must be in \[1.0, 4.0\], got 0.5; pass a largest zoom factor"),
        ({"out_size": (0, 5)}, r"out_size must be None or \(h, w\) with ints >= 2, got \(0, 5\)"),
    ],
)
def test_augment_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Augment(**kwargs)


def test_augment_rejects_bad_arrays():
    image, mask = np.zeros((8, 8), np.float32), np.zeros((8, 8), np.int32)
    rng = np.random.default_rng(0)
    augment = Augment()
    with pytest.raises(ValueError, match=r"image must be a floating-point \(C, H, W\) or \(H, W\)"):
        augment(mask, mask, rng=rng)
    with pytest.raises(ValueError, match=r"mask must be an integer \(H, W\) = \(8, 8\) array"):
        augment(image, mask[:4], rng=rng)
    with pytest.raises(ValueError, match=r"weight must have the image's \(H, W\) = \(8, 8\)"):
        augment(image, mask, np.zeros((4, 4), np.float32), rng=rng)
    with pytest.raises(ValueError, match="mask labels must be smaller than 2\\*\\*24"):
        augment(image, np.full((8, 8), 2**25, np.int64), rng=rng)
    with pytest.raises(ValueError, match=r"out_size \(16, 16\) must fit in the image"):
        Augment(out_size=(16, 16))(image, mask, rng=rng)
    with pytest.raises(ValueError, match=r"the output window at origin \(4, 0\) of size \(6, 6\)"):
        warp(SpatialTransform(origin=(4, 0), size=(6, 6)), image)
