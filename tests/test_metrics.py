"""Tests for pixelwise.metrics: numbers against brute force, skimage and hand computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from pixelwise import metrics
from pixelwise.metrics import (
    ConfusionMatrix,
    adapted_rand_error,
    adapted_rand_scores,
    classic_warping_error,
    classic_warping_scores,
    confusion_matrix,
    match_instances,
    pixel_disagreement,
    pool_matches,
    segmentation_scores,
)
from pixelwise.metrics.isbi_topology import simple_point_table
from pixelwise.metrics.objects import matched_pairs, panoptic_quality

FOUR = ndimage.generate_binary_structure(2, 1)
EIGHT = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------- confusion matrix


def brute_force_cm(pred, target, k, ignore=None):
    cm = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(np.ravel(target), np.ravel(pred), strict=True):
        if ignore is not None and t == ignore:
            continue
        cm[t, p] += 1
    return cm


@pytest.mark.parametrize("k", [1, 3, 21, 300])
def test_confusion_matrix_matches_brute_force(k):
    rng = np.random.default_rng(k)
    target = rng.integers(0, k, size=(3, 17, 11))
    pred = rng.integers(0, k, size=(3, 17, 11))
    np.testing.assert_array_equal(
        confusion_matrix(pred, target, k), brute_force_cm(pred, target, k)
    )


def test_confusion_matrix_ignore_index_and_torch():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(40, 30)).astype(np.uint8)
    target[rng.random(target.shape) < 0.2] = 255
    pred = rng.integers(0, 5, size=(40, 30)).astype(np.uint8)
    pred[target == 255] = 200  # anything goes where the target is void
    expected = brute_force_cm(pred, target, 5, ignore=255)
    got = confusion_matrix(pred, target, 5, ignore_index=255)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64 and got.sum() == np.count_nonzero(target != 255)
    got_torch = confusion_matrix(
        torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target), 5, ignore_index=255
    )
    np.testing.assert_array_equal(got_torch, expected)


def test_confusion_matrix_chunk_boundaries(monkeypatch):
    monkeypatch.setattr(metrics.semantic, "_CHUNK", 7)  # many chunks, the last one partial
    rng = np.random.default_rng(2)
    target = rng.integers(0, 4, size=(9, 10))
    target[rng.random(target.shape) < 0.3] = 9
    pred = rng.integers(0, 4, size=(9, 10))
    expected = brute_force_cm(pred, target, 4, ignore=9)
    np.testing.assert_array_equal(confusion_matrix(pred, target, 4, ignore_index=9), expected)
    target[8, 9] = 5  # a bad value in the very last chunk is still found
    with pytest.raises(ValueError, match="found 5"):
        confusion_matrix(pred, target, 4, ignore_index=9)


def test_confusion_matrix_negative_ignore_index():
    target = np.array([[0, -1], [1, 1]])
    pred = np.array([[1, 0], [1, 0]])
    np.testing.assert_array_equal(
        confusion_matrix(pred, target, 2, ignore_index=-1), [[0, 1], [1, 1]]
    )


def test_confusion_matrix_sums_over_images_and_accumulator():
    rng = np.random.default_rng(1)
    images = [(rng.integers(0, 4, (9, 9)), rng.integers(0, 4, (9, 9))) for _ in range(3)]
    acc = ConfusionMatrix(4)
    for p, t in images:
        acc.update(p, t)
    whole = confusion_matrix(np.stack([p for p, _ in images]), np.stack([t for _, t in images]), 4)
    np.testing.assert_array_equal(acc.matrix, whole)
    assert acc.scores() == segmentation_scores(whole)


def test_confusion_matrix_errors():
    a = np.zeros((4, 5), dtype=np.int64)
    with pytest.raises(ValueError, match=r"pred \(4, 5\) and target \(5, 4\)"):
        confusion_matrix(a, a.T, 3)
    bad_target = a.copy()
    bad_target[1, 2] = 7
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 3\), found 7"):
        confusion_matrix(a, bad_target, 3)
    with pytest.raises(ValueError, match=r"other than ignore_index=255, found 7"):
        confusion_matrix(a, bad_target, 3, ignore_index=255)
    with pytest.raises(ValueError, match=r"pred values must lie in \[0, 3\), found -2"):
        confusion_matrix(a - 2, a, 3)
    with pytest.raises(TypeError, match="integer class indices, got dtype float32"):
        confusion_matrix(a.astype(np.float32), a, 3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        confusion_matrix(a, a, 0)


# ---------------------------------------------------------------- FCN scores


def direct_scores(n):
    """The four FCN formulas written out with loops, absent classes skipped as documented."""
    k = n.shape[0]
    t = [sum(n[i, j] for j in range(k)) for i in range(k)]
    col = [sum(n[j, i] for j in range(k)) for i in range(k)]
    present = [i for i in range(k) if t[i] + col[i] > 0]
    with_gt = [i for i in range(k) if t[i] > 0]
    iou = {i: n[i, i] / (t[i] + col[i] - n[i, i]) for i in present}
    total = sum(t)
    return {
        "pixel_accuracy": sum(n[i, i] for i in range(k)) / total,
        "mean_accuracy": sum(n[i, i] / t[i] for i in with_gt) / len(with_gt),
        "mean_iou": sum(iou.values()) / len(present),
        "fw_iou": sum(t[i] * iou[i] for i in present) / total,
        "iou": [iou.get(i, math.nan) for i in range(k)],
        "dice": [2 * n[i, i] / (t[i] + col[i]) if i in iou else math.nan for i in range(k)],
    }


@pytest.mark.parametrize("seed", range(6))
def test_segmentation_scores_match_direct_formulas(seed):
    rng = np.random.default_rng(seed)
    k = 6
    n = rng.integers(0, 50, size=(k, k))
    n[1, :] = 0  # class 1 never in the ground truth ...
    n[:, 1] = 0  # ... nor predicted: absent, must not count
    n[3, :] = 0  # class 3 predicted but absent from the ground truth: IoU 0, counted
    n[0, 3] = 7
    expected = direct_scores(n)
    got = segmentation_scores(n)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12)
    np.testing.assert_allclose(got["per_class_iou"], expected["iou"], rtol=1e-12)
    np.testing.assert_allclose(got["per_class_dice"], expected["dice"], rtol=1e-12)
    assert math.isnan(got["per_class_iou"][1]) and got["per_class_iou"][3] == 0.0
    assert got["num_pixels"] == int(n.sum())
    json.dumps(got)  # plain Python types only


def test_segmentation_scores_hand_example():
    got = segmentation_scores(np.array([[3, 1], [0, 0]]))
    assert got["per_class_iou"] == [0.75, 0.0]
    assert got["mean_iou"] == 0.375  # prediction-only class counts with IoU 0
    assert got["mean_accuracy"] == 0.75  # ... but not in mean accuracy (t_1 = 0)
    assert got["pixel_accuracy"] == 0.75
    assert got["fw_iou"] == 0.75
    assert got["per_class_dice"] == [6 / 7, 0.0]


def test_ignored_class_inside_the_range_is_left_out_of_every_mean():
    # issue 14: class 0 is ignored; pixels predicted as 0 are still errors of classes 1 and 2
    target = np.array([[0, 0, 1, 1, 2, 2]])
    pred = np.array([[1, 2, 0, 1, 2, 2]])
    cm = confusion_matrix(pred, target, 3, ignore_index=0)
    assert segmentation_scores(cm)["mean_iou"] == 0.5  # without being told, class 0 scores 0
    got = segmentation_scores(cm, ignore_index=0)
    assert got["mean_iou"] == 0.75  # (1/2 + 1) / 2
    assert math.isnan(got["per_class_iou"][0]) and got["per_class_iou"][1:] == [0.5, 1.0]
    assert math.isnan(got["per_class_dice"][0]) and math.isnan(got["per_class_accuracy"][0])
    assert got["mean_accuracy"] == 0.75 and got["pixel_accuracy"] == 0.75
    assert got["fw_iou"] == 0.75 and got["num_pixels"] == 4
    acc = ConfusionMatrix(3, ignore_index=0)
    acc.update(pred, target)
    np.testing.assert_equal(acc.scores(), got)  # NaN-aware
    # an ignore_index outside [0, K) changes nothing
    np.testing.assert_equal(segmentation_scores(cm, ignore_index=255), segmentation_scores(cm))


def test_segmentation_scores_empty_and_invalid():
    got = segmentation_scores(np.zeros((3, 3), dtype=np.int64))
    assert all(math.isnan(got[k]) for k in ("pixel_accuracy", "mean_iou", "fw_iou"))
    with pytest.raises(ValueError, match=r"square \(K, K\) matrix, got shape \(2, 3\)"):
        segmentation_scores(np.zeros((2, 3)))


# ---------------------------------------------------------------- ISBI: pixel and Rand error


def cell_image():
    """10 x 10 image: one cell (8 x 8 interior) inside a 1-pixel membrane frame."""
    img = np.zeros((10, 10), dtype=bool)
    img[1:9, 1:9] = True
    return img


def test_pixel_disagreement_hand_and_conventions():
    gt = cell_image()
    pred = gt.copy()
    pred[1, 1:5] = False  # four interior pixels called membrane
    assert pixel_disagreement(pred, gt) == 4 / 100
    gt_isbi = np.where(gt, 255, 0).astype(np.uint8)  # ISBI label file convention
    assert pixel_disagreement(pred, gt_isbi) == 4 / 100
    probs = np.where(pred, 0.9, 0.2)
    assert pixel_disagreement(probs, gt) == 4 / 100
    assert pixel_disagreement(probs, gt, thresholds=(0.95,)) == 64 / 100
    # probabilities: the minimum over the 0.1..0.9 sweep, as the challenge's evaluation
    timid = np.where(gt, 0.4, 0.05)  # right ranking, but below 0.5 everywhere
    assert pixel_disagreement(timid, gt, thresholds=(0.5,)) == 64 / 100  # 1 - pixel accuracy at 0.5
    assert pixel_disagreement(timid, gt) == 0.0  # t = 0.1 .. 0.3 separate the classes
    assert pixel_disagreement(probs, gt) == 4 / 100  # t = 0.1 would cost 36; 0.2 .. 0.8 cost 4
    with pytest.raises(ValueError, match="thresholds must not be empty"):
        pixel_disagreement(probs, gt, thresholds=())
    with pytest.raises(ValueError, match=r"found range \[0.0, 1.5\]; apply a sigmoid"):
        pixel_disagreement(np.where(pred, 1.5, 0.0), gt)
    with pytest.raises(ValueError, match=r"same shape, got pred \(10, 9\) and gt \(10, 10\)"):
        pixel_disagreement(pred[:, :9], gt)
    with pytest.raises(ValueError, match=r"2-D \(H, W\) map, got shape \(1, 10, 10\)"):
        pixel_disagreement(pred[None], gt)


def random_blobs(rng, shape=(48, 48), sigma=1.5):
    return ndimage.gaussian_filter(rng.random(shape), sigma) > 0.5


@pytest.mark.parametrize("seed", range(4))
def test_adapted_rand_error_matches_skimage(seed):
    skimage_adapted_rand_error = pytest.importorskip("skimage.metrics").adapted_rand_error
    rng = np.random.default_rng(seed)
    gt, pred = random_blobs(rng), random_blobs(rng)
    gt_seg, _ = ndimage.label(gt, FOUR)
    pred_seg, _ = ndimage.label(pred, FOUR)
    # "segment": predicted membrane is one segment, exactly skimage on the two label maps.
    expected = skimage_adapted_rand_error(gt_seg, pred_seg)[0]
    assert adapted_rand_error(pred, gt, pred_background="segment") == pytest.approx(
        expected, abs=1e-12
    )
    # default "singletons": skimage with every predicted membrane pixel given its own label.
    singles = pred_seg.copy()
    background = singles == 0
    singles[background] = pred_seg.max() + 1 + np.arange(np.count_nonzero(background))
    expected = skimage_adapted_rand_error(gt_seg, singles)[0]
    assert adapted_rand_error(pred, gt) == pytest.approx(expected, abs=1e-12)


def test_adapted_rand_error_hand_cases():
    gt = cell_image()
    assert adapted_rand_error(gt, gt) == 0.0
    # Worked example of the docstring: a 1x5 cell cut in the middle -> 2/3.
    assert adapted_rand_error(np.array([[1, 1, 0, 1, 1]]), np.ones((1, 5), bool)) == pytest.approx(
        2 / 3
    )
    # Cut the 8 x 8 cell with a membrane column: segments of 24 and 32 pixels + 8 singletons.
    cut = gt.copy()
    cut[:, 4] = False
    pairs_gt, pairs_pred = 64 * 63, 24 * 23 + 32 * 31
    expected = 1 - 2 * pairs_pred / (pairs_gt + pairs_pred)
    scores = adapted_rand_scores(cut, gt)
    assert scores["rand_error"] == pytest.approx(expected, abs=1e-12)
    assert scores["v_rand_merge"] == 1.0  # a split, no merge
    assert scores["v_rand_split"] == pytest.approx(pairs_pred / pairs_gt)


def test_adapted_rand_error_sweeps_probability_thresholds():
    gt = np.zeros((10, 21), dtype=bool)
    gt[1:9, 1:10] = gt[1:9, 11:20] = True  # two cells separated by membrane column 10
    probs = np.where(gt, 0.9, 0.05)
    probs[:, 10] = 0.6  # a faint membrane: merges the cells at thresholds below 0.6
    probs[0, :] = probs[-1, :] = probs[:, 0] = probs[:, -1] = 0.05
    # At 0.5 both cells (8 x 9 = 72 px each) form one predicted segment of 144 gt pixels.
    pairs_gt, pairs_pred = 2 * 72 * 71, 144 * 143
    merged = adapted_rand_error(probs, gt, thresholds=(0.5,))
    assert merged == pytest.approx(1 - 2 * pairs_gt / (pairs_gt + pairs_pred), abs=1e-12)
    scores = adapted_rand_scores(probs, gt)
    assert scores["rand_error"] == 0.0 and scores["threshold"] == 0.6
    assert adapted_rand_error(probs, gt) == 0.0


# ---------------------------------------------------------------- ISBI: warping error


def yokoi_simple(code):
    """Independent test: Yokoi's 4-connectivity number N_c4 == 1 (neighbours from the east,
    counter-clockwise)."""
    ring = [(code >> bit) & 1 for bit in range(8)]  # isbi_topology.RING order: NW N NE E SE S SW W
    x = [ring[i] for i in (3, 2, 1, 0, 7, 6, 5, 4)]  # E NE N NW W SW S SE
    return sum(x[k] - x[k] * x[(k + 1) % 8] * x[(k + 2) % 8] for k in (0, 2, 4, 6)) == 1


def test_simple_point_table_matches_yokoi():
    lut = simple_point_table()
    assert lut.shape == (256,)
    assert [bool(v) for v in lut] == [yokoi_simple(c) for c in range(256)]
    assert not lut[0]  # isolated pixel
    assert not lut[255]  # interior pixel (removal would punch a hole)
    assert lut[0b00001000]  # end of a line (one east neighbour)
    assert not lut[0b10001000]  # middle of a horizontal line (E and W)


def components(mask):
    padded = np.pad(mask, 1)  # outside = background, as the warp assumes
    return ndimage.label(padded, FOUR)[1], ndimage.label(~padded, EIGHT)[1]


@pytest.mark.parametrize("seed", range(8))
def test_warp_preserves_topology(seed):
    rng = np.random.default_rng(seed)
    gt, pred = random_blobs(rng), random_blobs(rng)
    result = classic_warping_scores(pred, gt)
    warped = result["warped_gt"]
    assert components(warped) == components(gt)
    assert np.array_equal(result["error_mask"], warped != pred)
    assert result["warping_error"] == np.count_nonzero(warped != pred) / gt.size
    assert result["warping_error"] < pixel_disagreement(pred, gt)


def test_classic_warping_error_hand_cases():
    gt = cell_image()
    assert classic_warping_error(gt, gt) == 0.0
    # Boundary moved by one pixel (cell one pixel wider): no topological change.
    wider = gt.copy()
    wider[1:9, 9] = True
    assert pixel_disagreement(wider, gt) == 8 / 100
    assert classic_warping_error(wider, gt) == 0.0
    # Cell cut in two: all of the cut but its last pixel can be warped; that one cannot.
    cut = gt.copy()
    cut[:, 4] = False
    assert classic_warping_error(cut, gt) == 1 / 100
    assert adapted_rand_error(cut, gt) > 0.0
    # Two cells merged by deleting the 1-pixel membrane between them: filling any pixel of it
    # would join the cells, so none is simple and all 8 stay errors.
    two = np.zeros((10, 21), dtype=bool)
    two[1:9, 1:10] = two[1:9, 11:20] = True
    merged = two.copy()
    merged[1:9, 10] = True
    assert classic_warping_error(merged, two) == 8 / two.size
    assert adapted_rand_error(merged, two) > 0.0


ISBI_LABEL = Path(__file__).resolve().parents[1].parent / "shared/data/isbi2012/train/label/0.png"


@pytest.mark.skipif(not ISBI_LABEL.exists(), reason=f"ISBI 2012 data not found at {ISBI_LABEL}")
def test_isbi_label_conventions_on_real_data():
    label = np.array(Image.open(ISBI_LABEL))  # 255 = interior, 0 = membrane
    assert set(np.unique(label)) == {0, 255}
    assert (
        pixel_disagreement(label, label)
        == adapted_rand_error(label, label)
        == classic_warping_error(label, label)
        == 0
    )
    # Membranes one pixel thicker: many pixel errors, but almost no topological ones.
    interior = label == 255
    thinner = ndimage.binary_erosion(interior, FOUR, border_value=1)
    assert pixel_disagreement(thinner, label) == np.count_nonzero(thinner != interior) / label.size
    assert pixel_disagreement(thinner, label) > 0.03
    assert classic_warping_error(thinner, label) < pixel_disagreement(thinner, label) / 50
    assert 0 < adapted_rand_error(thinner, label) < 0.2


# ---------------------------------------------------------------- instances


def square(img, y, x, side, value):
    img[y : y + side, x : x + side] = value


def hand_example() -> tuple[np.ndarray, np.ndarray]:
    """(pred, gt): at IoU 0.5, TP 2 (IoU 1 and 2/3), FP 1, FN 1."""
    gt = np.zeros((100, 100), dtype=np.int32)
    pred = np.zeros_like(gt)
    square(gt, 5, 5, 20, 1)
    square(gt, 5, 50, 20, 2)
    square(gt, 60, 5, 20, 3)  # never predicted: a false negative at every threshold
    square(pred, 5, 5, 20, 7)  # perfect match, IoU 1
    square(pred, 5, 54, 20, 9)  # shifted 4 px: IoU = 16*20 / (24*20) = 2/3
    square(pred, 60, 60, 10, 4)  # false positive
    return pred, gt


def test_match_instances_hand_built_ap():
    pred, gt = hand_example()
    result = match_instances(pred, gt)
    json.dumps(result)
    assert result["n_pred"] == 3 and result["n_gt"] == 3
    rows = result["per_threshold"]
    assert [r["threshold"] for r in rows] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    for r in rows:
        tp = 2 if r["threshold"] <= 2 / 3 else 1
        assert (r["tp"], r["fp"], r["fn"]) == (tp, 3 - tp, 3 - tp)
        assert r["ap"] == pytest.approx(tp / (tp + 2 * (3 - tp)))
        assert r["precision"] == r["recall"] == pytest.approx(tp / 3)
    assert rows[0]["mean_matched_iou"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["ap_50_95"] == pytest.approx((4 * 0.5 + 6 * 0.2) / 10)
    assert result["f1_50"] == pytest.approx(2 / 3)
    assert result["merges"] == result["splits"] == 0


def test_match_instances_maximises_matches_below_half():
    # 1-D objects: greedy best-IoU pairing (P1-B) would leave P2 unmatched at threshold 0.1.
    gt = np.zeros((1, 40), dtype=np.int64)
    gt[0, 0:10], gt[0, 10:20] = 1, 2
    pred = np.zeros_like(gt)
    pred[0, 6:16], pred[0, 16:40] = 1, 2  # IoU(P1, A) = 4/16, (P1, B) = 6/14, (P2, B) = 4/30
    row = match_instances(pred, gt, thresholds=[0.1])["per_threshold"][0]
    assert row["tp"] == 2
    assert row["mean_matched_iou"] == pytest.approx((4 / 16 + 4 / 30) / 2)


def test_match_instances_merge_and_split_counts():
    gt = np.zeros((30, 60), dtype=np.int64)
    square(gt, 0, 0, 10, 1)
    square(gt, 0, 10, 10, 2)  # touches gt 1
    square(gt, 15, 0, 10, 3)
    square(gt, 15, 40, 10, 4)
    pred = np.zeros_like(gt)
    pred[0:10, 0:20] = 5  # covers all of gt 1 and gt 2: a merge of 2
    pred[15:25, 0:6] = 6  # gt 3 cut in two pieces: a split
    pred[15:25, 6:10] = 8
    pred[15:25, 40:44] = 9  # 40 % of gt 4 only: neither
    result = match_instances(pred, gt)
    assert (result["merges"], result["merged_gt"]) == (1, 2)
    assert (result["splits"], result["split_pred"]) == (1, 2)
    # IoU 1/2 of the merged object with gt 1 and gt 2 (one match at 0.5); piece 6 has IoU 0.6
    # with gt 3; piece 8 (0.4) and object 9 (0.4) never match.
    assert [r["tp"] for r in result["per_threshold"][:4]] == [2, 1, 1, 0]


def test_match_instances_empty_and_errors():
    gt = np.zeros((8, 8), dtype=np.int64)
    gt[1:3, 1:3], gt[5:7, 5:7] = 1, 2
    result = match_instances(np.zeros_like(gt), gt)
    row = result["per_threshold"][0]
    assert (row["tp"], row["fp"], row["fn"], row["ap"], row["recall"]) == (0, 0, 2, 0.0, 0.0)
    assert math.isnan(row["precision"])
    with pytest.raises(TypeError, match="integer label map"):
        match_instances(gt.astype(float), gt)
    with pytest.raises(ValueError, match=r"IoU values in \(0, 1\]"):
        match_instances(gt, gt, thresholds=[0.0])


def test_panoptic_quality_hand_computation():
    pred, gt = hand_example()
    match = match_instances(pred, gt)
    pq = panoptic_quality(match)
    # SQ = (1 + 2/3) / 2, RQ = 2 / (2 + 1/2 + 1/2), PQ = (5/3) / 3
    assert pq["sq@0.5"] == pytest.approx(5 / 6)
    assert pq["rq@0.5"] == pytest.approx(2 / 3)
    assert pq["pq@0.5"] == pytest.approx(5 / 9)
    # at 0.75 only the perfect pair matches: (1) / (1 + 1 + 1)
    assert panoptic_quality(match, threshold=0.75)["pq@0.75"] == pytest.approx(1 / 3)
    # pooled over two images: sums of IoUs and counts, not the mean of the two PQs
    empty = match_instances(np.zeros_like(gt), gt)  # 3 misses
    pooled = panoptic_quality([match, empty])
    assert pooled["pq@0.5"] == pytest.approx((5 / 3) / (2 + 1 / 2 + 4 / 2))
    assert math.isnan(panoptic_quality(match_instances(gt * 0, gt * 0))["pq@0.5"])
    with pytest.raises(ValueError, match="was not matched"):
        panoptic_quality(match_instances(pred, gt, thresholds=[0.6]))


def test_matched_pairs_name_the_true_positives():
    pred, gt = hand_example()
    pairs = matched_pairs(pred, gt)
    assert sorted(zip(pairs["gt_ids"].tolist(), pairs["pred_ids"].tolist(), strict=True)) == [
        (1, 7),
        (2, 9),
    ]
    assert sorted(pairs["iou"].tolist()) == pytest.approx([2 / 3, 1.0])
    strict = matched_pairs(pred, gt, threshold=0.9)
    assert strict["pred_ids"].tolist() == [7] and strict["gt_ids"].tolist() == [1]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        matched_pairs(pred, gt, threshold=1.5)


# ---------------------------------------------------------------- StarDist's matching.py

STARDIST_THRESHOLDS = (0.1, 0.3, 0.45, *metrics.DEFAULT_IOU_THRESHOLDS, 1.0)


def _random_objects(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """Rectangles and discs with random (sparse) ids, later ones painted over earlier ones."""
    labels = np.zeros(shape, np.int64)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        value = int(rng.integers(1, 1000))
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        if rng.random() < 0.5:
            h, w = rng.integers(1, shape[0] // 2 + 2), rng.integers(1, shape[1] // 2 + 2)
            labels[cy : cy + h, cx : cx + w] = value
        else:
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(1, 40)] = value
    return labels


def _prediction_like(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """A prediction of `gt`: shifted, some objects eroded or merged, specks added, renumbered."""
    pred = np.roll(gt, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    ids = np.unique(pred)[1:]
    for i in ids[rng.random(ids.size) < 0.3]:
        eroded = ndimage.binary_erosion(pred == i)
        pred[(pred == i) & ~eroded] = 0
    if ids.size >= 2 and rng.random() < 0.3:
        pred[pred == ids[1]] = ids[0]
    speck = rng.random(pred.shape) < 0.01
    pred[speck & (pred == 0)] = 999
    return np.where(pred > 0, pred * 7 + 3, 0)


def _stardist_cases(n: int):
    for seed in range(n):
        rng = np.random.default_rng(seed)
        shape = (int(rng.integers(3, 40)), int(rng.integers(3, 40)))
        gt = _random_objects(rng, shape, int(rng.integers(0, 12)))
        if rng.random() < 0.3:
            pred = _random_objects(rng, shape, int(rng.integers(0, 12)))
        else:
            pred = _prediction_like(rng, gt)
        yield seed, pred, gt


def _stardist_ratio(value: float) -> float:
    """pixelwise's NaN for 0/0 is StarDist's 0."""
    return 0.0 if math.isnan(value) else value


def test_match_instances_agrees_with_stardist_matching():
    stardist = pytest.importorskip("stardist_matching")  # tests/stardist_matching.py
    for seed, pred, gt in _stardist_cases(600):
        ours = match_instances(pred, gt, thresholds=STARDIST_THRESHOLDS)
        theirs = stardist.matching(gt, pred, thresh=STARDIST_THRESHOLDS)
        for o, t in zip(ours["per_threshold"], theirs, strict=True):
            where = f"seed {seed}, IoU {t.thresh}"
            assert (o["tp"], o["fp"], o["fn"]) == (t.tp, t.fp, t.fn), where
            assert (ours["n_gt"], ours["n_pred"]) == (t.n_true, t.n_pred), where
            for mine, key in (("precision", "precision"), ("recall", "recall"),
                              ("ap", "accuracy"), ("f1", "f1")):  # fmt: skip
                assert _stardist_ratio(o[mine]) == getattr(t, key), (where, key)
            # StarDist's IoUs are float32
            mean = _stardist_ratio(o["mean_matched_iou"])
            assert mean == pytest.approx(float(t.mean_matched_score), rel=1e-6), where
            pq = panoptic_quality(ours, threshold=o["threshold"])[f"pq@{o['threshold']:g}"]
            assert _stardist_ratio(pq) == pytest.approx(float(t.panoptic_quality), rel=1e-6)


def test_pooled_scores_agree_with_stardist_matching_dataset():
    stardist = pytest.importorskip("stardist_matching")
    cases = list(_stardist_cases(120))
    for start in range(0, len(cases), 12):  # datasets of 12 images
        chunk = cases[start : start + 12]
        matches = [match_instances(p, g) for _, p, g in chunk]
        pooled = pool_matches(matches)
        theirs = stardist.matching_dataset(
            [g for _, _, g in chunk],
            [p for _, p, _ in chunk],
            thresh=metrics.DEFAULT_IOU_THRESHOLDS,
        )
        for t in theirs:
            key = f"{t.thresh:g}"
            assert (pooled[f"tp@{key}"], pooled[f"fp@{key}"], pooled[f"fn@{key}"]) == (
                t.tp, t.fp, t.fn
            )  # fmt: skip
            assert pooled[f"accuracy@{key}"] == pytest.approx(t.accuracy, abs=1e-12)
            assert pooled[f"f1@{key}"] == pytest.approx(t.f1, abs=1e-12)
            pq = panoptic_quality(matches, threshold=t.thresh)[f"pq@{key}"]
            assert pq == pytest.approx(float(t.panoptic_quality), rel=1e-6)
        assert pooled["dsb_score"] == pytest.approx(np.mean([t.accuracy for t in theirs]))


def test_matched_pairs_are_the_counted_matches():
    for _, pred, gt in _stardist_cases(200):
        match = match_instances(pred, gt, thresholds=STARDIST_THRESHOLDS)
        for row in match["per_threshold"]:
            pairs = matched_pairs(pred, gt, threshold=row["threshold"])
            assert pairs["pred_ids"].size == row["tp"]
            assert set(pairs["pred_ids"].tolist()) <= set(np.unique(pred).tolist()) - {0}
            assert set(pairs["gt_ids"].tolist()) <= set(np.unique(gt).tolist()) - {0}
            assert len(set(pairs["pred_ids"].tolist())) == row["tp"]
            for p, g, iou in zip(pairs["pred_ids"], pairs["gt_ids"], pairs["iou"], strict=True):
                a, b = pred == p, gt == g
                assert iou == pytest.approx((a & b).sum() / (a | b).sum())
                assert iou >= row["threshold"]
