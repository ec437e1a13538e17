"""Training targets derived from instance labels, and the dataset that serves them."""

import numpy as np
import pytest

from pixelwise.data import load_dataset
from pixelwise.data.targets import (
    TARGET_CLASS_NAMES,
    derive_target,
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
        derive_target(np.zeros((4, 4), np.int32), "distance")


def test_the_targets_are_the_post_processing_targets():
    assert set(TARGET_CLASS_NAMES) == set(TARGETS)
    assert [len(TARGET_CLASS_NAMES[t]) for t in ("two-class", "three-class")] == [2, 3]


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
