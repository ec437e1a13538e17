"""Training targets derived from instance labels, and the dataset that serves them."""

import numpy as np
import pytest

from pixelwise.data import load_dataset
from pixelwise.data.targets import (
    DISTANCE_BANDS,
    TARGET_CLASS_NAMES,
    derive_target,
    distance_target,
    normalized_distance,
    three_class_target,
    two_class_target,
)
from pixelwise.instances import TARGETS
from pixelwise.synthetic import write_dataset


def test_two_touching_squares_are_separated_by_their_inner_outlines():
    instances = np.zeros((6, 8), np.int32)
    instances[1:4, 1:4] = 1
    instances[1:4, 4:7] = 2  # touches object 1 along columns 3 | 4
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 2, 2, 2, 2, 2, 2, 0],
            [0, 2, 1, 2, 2, 1, 2, 0],
            [0, 2, 2, 2, 2, 2, 2, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    target = three_class_target(instances)
    assert target.dtype == np.uint8
    np.testing.assert_array_equal(target, expected)
    # no interior pixel of one object touches the other: the boundary band separates them
    np.testing.assert_array_equal(two_class_target(instances), (instances > 0).astype(np.uint8))


def test_a_single_pixel_object_is_all_boundary():
    instances = np.zeros((3, 3), np.uint16)
    instances[1, 1] = 7
    expected = np.zeros((3, 3), np.uint8)
    expected[1, 1] = 2
    np.testing.assert_array_equal(three_class_target(instances), expected)
    np.testing.assert_array_equal(two_class_target(instances), expected // 2)


def test_the_image_edge_is_no_boundary():
    instances = np.zeros((5, 5), np.int64)
    instances[0:3, 0:3] = 1  # cut by the top and left edges
    expected = np.array(
        [
            [1, 1, 2, 0, 0],
            [1, 1, 2, 0, 0],
            [2, 2, 2, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(three_class_target(instances), expected)
    np.testing.assert_array_equal(derive_target(instances, "three-class"), expected)


def test_no_objects_and_bad_input():
    assert not three_class_target(np.zeros((4, 4), np.int32)).any()
    with pytest.raises(ValueError, match="instances must be an \\(H, W\\) integer label map"):
        three_class_target(np.zeros((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match="target must be one of 'two-class', 'three-class'"):
        derive_target(np.zeros((4, 4), np.int32), "edges")
    assert not distance_target(np.zeros((4, 4), np.int32)).any()


def test_the_targets_are_the_post_processing_targets():
    assert set(TARGET_CLASS_NAMES) == set(TARGETS)
    counts = [len(TARGET_CLASS_NAMES[t]) for t in ("two-class", "three-class", "distance")]
    assert counts == [2, 3, DISTANCE_BANDS + 1]


def _brute_force_distance(instances: np.ndarray) -> np.ndarray:
    """Each object pixel's distance to the nearest image pixel of another label, over its
    object's largest: every pair of pixels compared."""
    ys, xs = np.indices(instances.shape)
    out = np.zeros(instances.shape)
    for i in np.unique(instances[instances > 0]):
        inside = instances == i
        outside = np.stack([ys[~inside], xs[~inside]], 1)  # (M, 2)
        pixels = np.stack([ys[inside], xs[inside]], 1)  # (P, 2)
        nearest = np.sqrt(((pixels[:, None] - outside[None]) ** 2).sum(-1)).min(1)  # (P,)
        out[inside] = nearest / nearest.max()
    return out


def test_normalized_distance_equals_the_brute_force_distance():
    rng = np.random.default_rng(3)
    from scipy import ndimage

    # Touching irregular objects: the nearest-seed regions of random points, inside blobs.
    seeds = rng.integers(0, 40, (12, 2))
    ys, xs = np.indices((40, 40))
    nearest = ((ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2).argmin(-1)
    blobs = ndimage.binary_opening(rng.random((40, 40)) < 0.8, iterations=1)
    instances = np.where(blobs, nearest + 1, 0).astype(np.int32)
    instances[0, 0], instances[-1, -1] = 0, 0  # at least one outside pixel per object
    np.testing.assert_allclose(normalized_distance(instances), _brute_force_distance(instances))
    bands = distance_target(instances)
    expected = np.ceil(_brute_force_distance(instances) * DISTANCE_BANDS).astype(np.uint8)
    np.testing.assert_array_equal(bands, expected)
    assert bands.dtype == np.uint8 and set(np.unique(bands[instances > 0])) <= {1, 2, 3, 4}


def test_distance_bands_of_a_square_and_of_an_object_cut_by_the_edge():
    square = np.zeros((9, 9), np.int32)
    square[2:7, 2:7] = 1  # distances 1, 2, 3 from the rim in: 1/3, 2/3, 1 → bands 2, 3, 4
    assert distance_target(square)[4, 2:7].tolist() == [2, 3, 4, 3, 2]
    stripe = np.zeros((8, 8), np.int32)
    stripe[:4] = 1  # cut by the top edge: rows 3..0 are 1..4 from the outside (row 4)
    np.testing.assert_allclose(normalized_distance(stripe)[:4, 4], [1.0, 0.75, 0.5, 0.25])
    assert distance_target(stripe)[:4, 4].tolist() == [4, 3, 2, 1]
    whole = np.ones((5, 5), np.int32)  # fills the image: no outside in view, all centre
    assert (distance_target(whole) == DISTANCE_BANDS).all()


def test_the_dataset_serves_the_target_and_keeps_the_instances(tmp_path):
    folder = write_dataset(tmp_path / "cells", 2, (64, 64), seed=0)
    plain = load_dataset(folder, instances=True)
    three = load_dataset(folder, instances=True, target="three-class")
    assert plain.num_classes == 2 and three.num_classes == 3
    sample = three.load(0)
    assert sample.instances is not None
    np.testing.assert_array_equal(sample.mask, three_class_target(sample.instances))
    assert sample.mask.dtype == np.int64 and set(np.unique(sample.mask)) == {0, 1, 2}
    np.testing.assert_array_equal(plain.load(0).mask, sample.mask > 0)
    # border weights still come from the instances, the class balance from the served mask
    seen = []

    def weight_fn(mask, instances):
        seen.append((mask.copy(), instances))
        return np.ones(mask.shape, np.float32)

    weighted = load_dataset(folder, instances=True, target="three-class", weight_fn=weight_fn)
    assert weighted.load(1).weight is not None
    np.testing.assert_array_equal(seen[0][0], three_class_target(seen[0][1]))
    item = three[0]
    assert item["mask"].max() == 2 and "instances" in item


def test_the_dataset_refuses_a_target_without_instance_masks(tmp_path):
    folder = write_dataset(tmp_path / "cells", 1, (32, 32), seed=0)
    with pytest.raises(ValueError, match="open the dataset with instances=True \\(--instances\\)"):
        load_dataset(folder, target="three-class")
    with pytest.raises(ValueError, match="target must be one of None, 'two-class'"):
        load_dataset(folder, instances=True, target="3-class")
