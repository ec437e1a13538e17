"""Tests for pixelwise.synthetic: touching-cell images, their labels, contacts and files."""

from __future__ import annotations

import itertools
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from pixelwise import synthetic
from pixelwise.data import decode_mask, open_dataset, read_image, survey_dataset
from pixelwise.instances import separate_touching
from pixelwise.synthetic import (
    count_touching_pairs,
    to_uint8,
    touching_cells,
    touching_cells_dataset,
    write_dataset,
)

SHAPE = (128, 160)


def brute_force_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of distinct objects with 4-adjacent pixels, by looping over every pixel."""
    pairs = set()
    height, width = instances.shape
    for y, x in itertools.product(range(height), range(width)):
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            ny, nx = y + dy, x + dx
            if 0 <= ny < height and 0 <= nx < width:
                a, b = int(instances[y, x]), int(instances[ny, nx])
                if a and b and a != b:
                    pairs.add((min(a, b), max(a, b)))
    return pairs


def contact_and_interior(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels touching another object, and object pixels >= 4 px from any object edge."""
    contact = np.zeros(instances.shape, dtype=bool)
    for a, b in (
        (np.s_[:, :-1], np.s_[:, 1:]),
        (np.s_[:-1, :], np.s_[1:, :]),
    ):
        differ = (instances[a] != instances[b]) & (instances[a] > 0) & (instances[b] > 0)
        contact[a] |= differ
        contact[b] |= differ
    edge = np.zeros(instances.shape, dtype=bool)
    edge[:, :-1] |= instances[:, :-1] != instances[:, 1:]
    edge[:, 1:] |= instances[:, :-1] != instances[:, 1:]
    edge[:-1, :] |= instances[:-1, :] != instances[1:, :]
    edge[1:, :] |= instances[:-1, :] != instances[1:, :]
    interior = (instances > 0) & (ndimage.distance_transform_edt(~edge) >= 4)
    return contact, interior


# --------------------------------------------------------------------------------------------
# touching_cells
# --------------------------------------------------------------------------------------------


def test_shapes_dtypes_and_ranges() -> None:
    image, instances = touching_cells(SHAPE, rng=3)
    assert image.shape == SHAPE and image.dtype == np.float32
    assert instances.shape == SHAPE and instances.dtype == np.int32
    assert image.min() >= 0 and image.max() <= 1
    assert image[instances > 0].mean() > image[instances == 0].mean() + 0.2


def test_deterministic_given_seed() -> None:
    first = touching_cells(SHAPE, rng=7)
    again = touching_cells(SHAPE, rng=7)
    from_generator = touching_cells(SHAPE, rng=np.random.default_rng(7))
    other = touching_cells(SHAPE, rng=8)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, from_generator, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


# Seed 286 rasterises a stray fragment (a cell's pixel cut off by its neighbours) that
# _drop_fragments must remove.
@pytest.mark.parametrize("seed", [0, 1, 2, 286])
def test_ids_contiguous_and_each_object_one_component(seed: int) -> None:
    _, instances = touching_cells(SHAPE, rng=seed)
    k = int(instances.max())
    assert k > 10
    np.testing.assert_array_equal(np.unique(instances), np.arange(k + 1))
    for index in range(1, k + 1):
        assert ndimage.label(instances == index)[1] == 1, f"object {index} is split"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_touching_cells_merge_under_connected_components(seed: int) -> None:
    _, instances = touching_cells(SHAPE, rng=seed)
    k = int(instances.max())
    n_components = ndimage.label(instances > 0)[1]
    assert count_touching_pairs(instances) >= k // 4
    assert n_components < k - k // 4  # at least a quarter of the cells lost to merging


def test_touching_zero_gives_separated_cells_and_one_gives_clusters() -> None:
    _, apart = touching_cells(SHAPE, touching=0.0, rng=4)
    assert count_touching_pairs(apart) == 0
    # Separated by background even diagonally: 8-connected components are the objects.
    assert ndimage.label(apart > 0, structure=np.ones((3, 3)))[1] == apart.max()
    _, clustered = touching_cells(SHAPE, touching=1.0, rng=4)
    assert ndimage.label(clustered > 0)[1] < clustered.max() // 2


def test_default_n_cells_from_area_and_radius() -> None:
    # 0.3 · 128 · 160 / (π · 12²) = 13.6 → 14 cells requested; sparse enough that all fit.
    _, instances = touching_cells(SHAPE, rng=0)
    assert instances.max() == 14
    _, small = touching_cells(SHAPE, radius=(4, 6), rng=0)  # 0.3 · 20480 / (π · 25) = 78.2
    assert 70 <= small.max() <= 78


def test_explicit_n_cells_and_empty_image() -> None:
    _, instances = touching_cells(SHAPE, n_cells=9, rng=5)
    assert instances.max() == 9
    image, none = touching_cells(SHAPE, n_cells=0, noise=0, illumination=0, rng=5)
    assert none.max() == 0
    np.testing.assert_allclose(image, synthetic._BACKGROUND, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 2), (9, 1)])
def test_tiny_images_are_valid_without_warnings(shape: tuple[int, int]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, instances = touching_cells(shape, rng=0)
    assert image.shape == instances.shape == shape
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


def test_crowded_request_places_fewer_cells() -> None:
    _, instances = touching_cells((32, 32), n_cells=200, radius=(8, 10), rng=0)
    assert 1 <= instances.max() < 200


def test_radius_controls_cell_size() -> None:
    _, instances = touching_cells((256, 256), n_cells=30, radius=(10, 10), touching=0, rng=2)
    areas = np.bincount(instances.ravel())[1:]
    # Cut cells at the image edge are smaller; whole ones have area ≈ π · 10² = 314.
    assert np.median(areas) == pytest.approx(np.pi * 100, rel=0.1)


def test_contacts_are_darker_but_well_above_background() -> None:
    image, instances = touching_cells((256, 256), noise=0, illumination=0, rng=3)
    contact, interior = contact_and_interior(instances)
    background = image[instances == 0].mean()
    inside, at_contact = image[interior].mean(), image[contact].mean()
    assert at_contact < inside - 0.08  # the fall-off alone gives ~0.065, the dimming ~0.11
    assert at_contact > background + 0.6 * (inside - background)


def test_geometry_does_not_depend_on_image_settings() -> None:
    _, reference = touching_cells(SHAPE, rng=9)
    _, plain = touching_cells(SHAPE, noise=0, blur=0, illumination=0, rng=9)
    np.testing.assert_array_equal(reference, plain)


def test_illumination_is_a_smooth_field_spanning_the_requested_range() -> None:
    flat, _ = touching_cells(SHAPE, noise=0, blur=0, illumination=0, rng=6)
    lit, _ = touching_cells(SHAPE, noise=0, blur=0, illumination=0.4, rng=6)
    ratio = lit / flat  # the image is > 0 everywhere without noise (background 0.08)
    assert ratio.min() == pytest.approx(0.6, abs=1e-5)
    assert ratio.max() == pytest.approx(1.0, abs=1e-5)
    assert np.abs(np.diff(ratio, axis=1)).max() < 0.05  # smooth: < 0.05 change per pixel


def test_noise_matches_shot_plus_read_model() -> None:
    clean, _ = touching_cells((256, 256), noise=0, rng=1)
    noisy, _ = touching_cells((256, 256), noise=0.08, rng=1)
    # Away from the clipping limits, var = noise² · v (shot) + (noise / 2)² (read noise).
    keep = (clean > 0.2) & (clean < 0.7)
    expected = np.sqrt(0.08**2 * clean[keep].mean() + 0.04**2)
    difference = noisy[keep] - clean[keep]
    assert abs(difference.mean()) < 0.005
    assert difference.std() == pytest.approx(expected, rel=0.05)


def test_blur_smooths_the_image() -> None:
    sharp, _ = touching_cells(SHAPE, noise=0, blur=0, rng=2)
    blurred, _ = touching_cells(SHAPE, noise=0, blur=2.0, rng=2)
    step = np.abs(np.diff(sharp, axis=1)).max()
    assert np.abs(np.diff(blurred, axis=1)).max() < step / 2


def test_cell_covering_no_pixel_centre_is_dropped_and_ids_stay_contiguous() -> None:
    (dot,) = synthetic._random_outlines(np.random.default_rng(0), 1, (0.2, 0.2))
    (cell,) = synthetic._random_outlines(np.random.default_rng(1), 1, (3.0, 3.0))
    cells = [(np.array([0.5, 0.5]), dot), (np.array([6.0, 6.0]), cell)]
    labels, rho = synthetic._rasterize((12, 12), cells)
    np.testing.assert_array_equal(np.unique(labels), [0, 1])
    assert labels[6, 6] == 1 and rho[6, 6] == 0
    assert np.isinf(rho[labels == 0]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"shape": (0, 10)},
            "shape must be two positive integers (H, W), got (0, 10); e.g. shape=(256, 256)",
        ),
        (
            {"radius": (10, 5)},
            "radius must be (min, max) with 1 <= min <= max, got (10, 5); pass cell radii in "
            "pixels, e.g. radius=(8, 16)",
        ),
        (
            {"touching": 1.5},
            "touching must be in [0, 1], got 1.5; pass the share of cells placed in contact, "
            "e.g. 0.6",
        ),
        (
            {"noise": -0.1},
            "noise must be >= 0, got -0.1; pass the shot-noise std at full brightness, e.g. 0.08",
        ),
        (
            {"blur": -1.0},
            "blur must be >= 0, got -1.0; pass a Gaussian sigma in pixels, e.g. 1.5",
        ),
        (
            {"illumination": 1.0},
            "illumination must be in [0, 1), got 1.0; pass the strength of the uneven "
            "illumination, e.g. 0.4",
        ),
        ({"n_cells": -1}, "n_cells must be an integer >= 0, got -1; pass a count"),
        (
            {"rng": "seed"},
            "rng must be a numpy Generator or an integer seed >= 0, got 'seed'; e.g. rng=0 or "
            "rng=np.random.default_rng(0)",
        ),
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        touching_cells(**kwargs)


# --------------------------------------------------------------------------------------------
# count_touching_pairs
# --------------------------------------------------------------------------------------------


def test_count_touching_pairs_hand_made_example() -> None:
    # 1 | 2 share a vertical edge, 2 sits on 3, 1 and 3 meet only at a corner, 4 is alone.
    instances = np.array(
        [
            [1, 1, 2, 2, 0, 0],
            [1, 1, 2, 2, 0, 4],
            [0, 0, 3, 3, 0, 4],
            [0, 0, 3, 3, 0, 0],
        ],
        dtype=np.int32,
    )
    assert brute_force_pairs(instances) == {(1, 2), (2, 3)}
    assert count_touching_pairs(instances) == 2
    assert count_touching_pairs(np.where(instances == 2, 0, instances)) == 0
    assert count_touching_pairs(np.zeros((3, 3), dtype=np.uint16)) == 0


@pytest.mark.parametrize("seed", [0, 5])
def test_count_touching_pairs_matches_brute_force(seed: int) -> None:
    _, instances = touching_cells((64, 64), radius=(5, 8), rng=seed)
    assert count_touching_pairs(instances) == len(brute_force_pairs(instances)) > 0


def test_count_touching_pairs_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=re.escape("instances must be an (H, W) integer array")):
        count_touching_pairs(np.zeros((2, 2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match=re.escape("got shape (2, 2) dtype float64")):
        count_touching_pairs(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=re.escape("instances must be >= 0, got minimum -1")):
        count_touching_pairs(np.array([[0, -1]]))


# --------------------------------------------------------------------------------------------
# Datasets and files
# --------------------------------------------------------------------------------------------


def test_dataset_items_independent_of_n_and_kwargs_forwarded() -> None:
    small = touching_cells_dataset(2, (64, 64), seed=3, n_cells=5)
    large = touching_cells_dataset(3, (64, 64), seed=3, n_cells=5)
    assert len(small) == 2 and len(large) == 3
    for (image_a, inst_a), (image_b, inst_b) in zip(small, large, strict=False):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(inst_a, inst_b)
    assert not np.array_equal(large[0][1], large[1][1])
    assert all(instances.max() == 5 for _, instances in large)
    other_seed = touching_cells_dataset(1, (64, 64), seed=4, n_cells=5)
    assert not np.array_equal(other_seed[0][1], large[0][1])


def test_dataset_rejects_rng() -> None:
    with pytest.raises(ValueError, match=re.escape("rng cannot be passed here; pass seed=")):
        touching_cells_dataset(1, (32, 32), rng=0)


def test_write_dataset_layout_and_round_trip(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "cells", 3, (48, 64), seed=2, n_cells=6)
    assert root == tmp_path / "cells"
    assert sorted(p.name for p in (root / "images").iterdir()) == [
        "cell_000.png",
        "cell_001.png",
        "cell_002.png",
    ]
    assert sorted(p.name for p in (root / "masks").iterdir()) == [
        "cell_000.tif",
        "cell_001.tif",
        "cell_002.tif",
    ]
    expected = touching_cells_dataset(3, (48, 64), seed=2, n_cells=6)
    for index, (image, instances) in enumerate(expected):
        with Image.open(root / "images" / f"cell_{index:03d}.png") as stored:
            assert stored.mode == "L"
            np.testing.assert_array_equal(np.array(stored), np.round(image * 255).astype(np.uint8))
        mask = tifffile.imread(root / "masks" / f"cell_{index:03d}.tif")
        assert mask.dtype == np.uint16
        np.testing.assert_array_equal(mask, instances)

    index = open_dataset(root, instances=True)
    assert index.problems == []
    assert [s.name for s in index.samples] == ["cell_000", "cell_001", "cell_002"]
    for sample, (_, instances) in zip(index.samples, expected, strict=True):
        decoded = decode_mask(read_image(sample.mask_path), index.encoding)
        assert decoded.instances is not None
        np.testing.assert_array_equal(decoded.instances, instances)
        np.testing.assert_array_equal(decoded.mask, instances > 0)
    report = survey_dataset(index)
    assert report.ok, report.format()
    assert report.encoding.num_classes == 2


def test_write_dataset_separate_draws_background_lines(tmp_path: Path) -> None:
    plain = write_dataset(tmp_path / "plain", 2, (64, 64), seed=1)
    lined = write_dataset(tmp_path / "lined", 2, (64, 64), seed=1, separate=True)
    for index, (image, instances) in enumerate(touching_cells_dataset(2, (64, 64), seed=1)):
        name = f"cell_{index:03d}"
        mask = tifffile.imread(lined / "masks" / f"{name}.tif")
        np.testing.assert_array_equal(mask, separate_touching(instances))
        assert count_touching_pairs(instances) > 0 and count_touching_pairs(mask) == 0
        np.testing.assert_array_equal(read_image(lined / "images" / f"{name}.png"), to_uint8(image))
        np.testing.assert_array_equal(
            read_image(lined / "images" / f"{name}.png"),
            read_image(plain / "images" / f"{name}.png"),
        )


def test_write_dataset_rerun_overwrites_and_refuses_foreign_files(tmp_path: Path) -> None:
    write_dataset(tmp_path, 2, (32, 32), seed=0)
    write_dataset(tmp_path, 2, (32, 32), seed=1)  # same names: overwritten
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "masks" / "cell_001.tif"),
        touching_cells_dataset(2, (32, 32), seed=1)[1][1],
    )
    with pytest.raises(
        FileExistsError,
        match=re.escape(
            f"{tmp_path / 'images'} already holds 1 other file(s) (first: 'cell_001.png') that "
            "would join the dataset; write into an empty folder or delete them"
        ),
    ):
        write_dataset(tmp_path, 1, (32, 32))
    assert (tmp_path / "masks" / "cell_001.tif").is_file()  # nothing deleted


def test_write_dataset_leaves_no_file_on_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="touching must be in"):
        write_dataset(tmp_path / "bad", 2, (32, 32), touching=2.0)
    assert not (tmp_path / "bad").exists()
