"""Post-processing (probabilities → objects), pooled object scores and validation tuning."""

from __future__ import annotations

import numpy as np
import pytest

from pixelwise.instances import (
    PostProcessing,
    object_scores,
    objects_from_probabilities,
    postprocessing_from_metadata,
)
from pixelwise.metrics import match_instances, pool_matches
from pixelwise.tuning import score_postprocessing, tune_postprocessing


def _three_class(instances: np.ndarray, boundary: np.ndarray | None = None) -> np.ndarray:
    """(3, H, W) one-hot probabilities: background, interior, boundary."""
    from skimage.segmentation import find_boundaries

    if boundary is None:
        boundary = find_boundaries(instances, mode="inner") & (instances > 0)
    probs = np.zeros((3, *instances.shape), np.float32)
    probs[0] = instances == 0
    probs[1] = (instances > 0) & ~boundary
    probs[2] = boundary
    return probs


def _two_touching_squares() -> np.ndarray:
    gt = np.zeros((20, 30), np.int32)
    gt[4:14, 3:13] = 1
    gt[4:14, 13:23] = 2  # shares the column edge 12 | 13 with object 1
    return gt


def _same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal label maps up to a renumbering."""
    pairs = {(int(x), int(y)) for x, y in zip(a.ravel(), b.ravel(), strict=True)}
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


def test_three_class_boundary_band_separates_touching_objects() -> None:
    gt = _two_touching_squares()
    labels = objects_from_probabilities(_three_class(gt), PostProcessing(min_size=0))
    assert labels.dtype == np.int32
    assert _same_objects(labels, gt)
    # Without the band (both objects one interior blob), they merge into one.
    merged = objects_from_probabilities(_three_class(gt > 0), PostProcessing(min_size=0))
    assert merged.max() == 1


def test_three_class_seed_threshold_decides_between_merge_and_split() -> None:
    gt = _two_touching_squares()
    probs = _three_class(gt)
    bridge = (slice(8, 10), slice(11, 15))  # interior-ish bridge across the boundary band
    probs[:, bridge[0], bridge[1]] = np.array([0.0, 0.6, 0.4])[:, None, None]
    low = objects_from_probabilities(probs, PostProcessing(seed_threshold=0.5, min_size=0))
    high = objects_from_probabilities(probs, PostProcessing(seed_threshold=0.7, min_size=0))
    assert low.max() == 1 and high.max() == 2


def _one_hot(classes: np.ndarray, k: int) -> np.ndarray:
    """(k, H, W) one-hot probabilities of an (H, W) class map."""
    return (np.arange(k)[:, None, None] == classes[None]).astype(np.float32)


def test_distance_bands_separate_touching_objects() -> None:
    from pixelwise.data.targets import distance_target

    gt = _two_touching_squares()
    probs = _one_hot(distance_target(gt), 5)
    params = PostProcessing(target="distance", min_size=0)
    assert params.num_classes == 5
    assert _same_objects(objects_from_probabilities(probs, params), gt)
    # One blob: the distance of the union has one centre, so one object.
    merged = objects_from_probabilities(_one_hot(distance_target(gt > 0), 5), params)
    assert merged.max() == 1


def test_distance_seeds_threshold_the_expected_band() -> None:
    # E = (0.1·1 + 0.2·2 + 0.3·3 + 0.3·4) / 4 = 0.65 (the module docstring's example).
    probs = np.zeros((5, 12, 12), np.float32)
    probs[0] = 1.0
    probs[:, 3:9, 3:9] = np.array([0.1, 0.1, 0.2, 0.3, 0.3])[:, None, None]
    low = objects_from_probabilities(probs, PostProcessing(target="distance", seed_threshold=0.6))
    high = objects_from_probabilities(probs, PostProcessing(target="distance", seed_threshold=0.7))
    assert low.max() == 1 and (low > 0).sum() == 36 and high.max() == 0
    with pytest.raises(ValueError, match=r"must be \(5, H, W\) for target 'distance'"):
        objects_from_probabilities(probs[:3], PostProcessing(target="distance"))


def test_two_class_distance_watershed_splits_touching_discs() -> None:
    yy, xx = np.mgrid[:40, :70]
    gt = np.zeros((40, 70), np.int32)
    gt[(yy - 20) ** 2 + (xx - 20) ** 2 <= 14**2] = 1
    gt[((yy - 20) ** 2 + (xx - 46) ** 2 <= 14**2) & (gt == 0)] = 2
    probs = np.stack([gt == 0, gt > 0]).astype(np.float32)
    split = objects_from_probabilities(probs, PostProcessing(target="two-class", seed_distance=4))
    assert split.max() == 2
    result = match_instances(split, gt, thresholds=(0.9,))
    assert result["per_threshold"][0]["tp"] == 2
    whole = objects_from_probabilities(probs, PostProcessing(target="two-class", seed_distance=0))
    assert whole.max() == 1


def test_min_size_holes_border_and_raster_order() -> None:
    gt = np.zeros((30, 30), np.int32)
    gt[2:4, 2:4] = 1  # 4 px
    gt[10:20, 10:20] = 2  # 100 px with a hole
    gt[14:16, 14:16] = 0
    gt[0:6, 24:30] = 3  # touches the border
    probs = np.stack([gt == 0, gt > 0]).astype(np.float32)
    base = PostProcessing(target="two-class", seed_distance=0, min_size=0, fill_holes=False)
    labels = objects_from_probabilities(probs, base)
    np.testing.assert_array_equal(np.unique(labels[gt > 0]), [1, 2, 3])
    assert labels[0, 24] == 1 and labels[2, 2] == 2 and labels[10, 10] == 3  # raster order
    assert labels[14, 14] == 0
    assert objects_from_probabilities(probs, base.replace(fill_holes=True))[14, 14] == 3
    assert objects_from_probabilities(probs, base.replace(min_size=5)).max() == 2
    no_edge = objects_from_probabilities(probs, base.replace(exclude_border=True))
    assert no_edge.max() == 2 and no_edge[0, 24] == 0


def test_object_scores_are_mean_foreground_probabilities() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(12, 12)).transpose(2, 0, 1).astype(np.float32)
    labels = np.zeros((12, 12), np.int32)
    labels[1:5, 1:5], labels[6:11, 3:9] = 1, 2
    expected = [float(np.mean(1 - probs[0][labels == k])) for k in (1, 2)]
    np.testing.assert_allclose(object_scores(probs, labels), expected, rtol=1e-6)
    assert object_scores(probs, np.zeros_like(labels)).shape == (0,)


def test_records_are_validated_and_round_trip() -> None:
    params = PostProcessing(target="two-class", mask_threshold=0.4, min_size=3)
    assert PostProcessing.from_dict(params.to_dict()) == params
    assert params.num_classes == 2 and PostProcessing().num_classes == 3
    with pytest.raises(ValueError, match="target must be one of 'two-class', 'three-class'"):
        PostProcessing(target="stardist")
    with pytest.raises(ValueError, match=r"mask_threshold must be a probability in \[0, 1\)"):
        PostProcessing(mask_threshold=1.5)
    with pytest.raises(ValueError, match="min_size must be an integer >= 0"):
        PostProcessing(min_size=-1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bogus'\]"):
        PostProcessing.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match=r"must be \(3, H, W\) for target 'three-class'"):
        objects_from_probabilities(np.zeros((2, 4, 4)), PostProcessing())


def test_postprocessing_from_metadata() -> None:
    tuned = PostProcessing(seed_threshold=0.8).to_dict()
    assert postprocessing_from_metadata({"postprocessing": tuned}).seed_threshold == 0.8
    assert postprocessing_from_metadata({"target": "two-class"}) == PostProcessing(
        target="two-class"
    )
    assert postprocessing_from_metadata({"class_names": ["a", "b"]}) is None


def test_pool_matches_sums_counts_over_images() -> None:
    gt_a = np.array([[1, 1, 0, 2, 2]])
    pred_a = np.array([[1, 1, 0, 0, 3]])  # 1 matches; 2 vs 3 has IoU 0.5
    gt_b = np.array([[0, 1, 1, 1, 0]])
    pred_b = np.array([[2, 0, 0, 0, 5]])  # two false positives, one miss
    matches = [match_instances(p, g) for p, g in ((pred_a, gt_a), (pred_b, gt_b))]
    pooled = pool_matches(matches)
    # IoU 0.5: image a has TP 2 (1-1 IoU 1, 2-3 IoU 0.5), image b TP 0, FP 2, FN 1.
    assert (pooled["tp@0.5"], pooled["fp@0.5"], pooled["fn@0.5"]) == (2, 2, 1)
    assert pooled["accuracy@0.5"] == pytest.approx(2 / 5)
    assert pooled["f1@0.5"] == pytest.approx(4 / 7)
    # IoU 0.55 ... 0.95: only 1-1 matches.
    assert (pooled["tp@0.95"], pooled["fp@0.95"], pooled["fn@0.95"]) == (1, 3, 2)
    expected = np.mean([2 / 5] + [1 / 6] * 9)
    assert pooled["dsb_score"] == pytest.approx(expected)
    assert (pooled["n_pred"], pooled["n_gt"]) == (4, 3)
    with pytest.raises(ValueError, match="at least one"):
        pool_matches([])


def test_tuning_finds_the_threshold_that_splits_and_never_scores_worse() -> None:
    gt = _two_touching_squares()
    probs = _three_class(gt)
    probs[:, 8:10, 11:15] = np.array([0.0, 0.6, 0.4])[:, None, None]
    start = PostProcessing(seed_threshold=0.5, min_size=0)
    before = score_postprocessing(start, [probs], [gt])
    best, scores = tune_postprocessing([probs], [gt], start=start)
    assert best.seed_threshold >= 0.6 and best.target == "three-class"
    assert scores["accuracy@0.5"] == 1.0 > before["accuracy@0.5"]
    assert scores["dsb_score"] >= before["dsb_score"]
    with pytest.raises(ValueError, match="one ground truth per probability map"):
        score_postprocessing(start, [probs], [])
