"""Tests for pixelwise.instances: labelling, watershed, border classes, tables, COCO RLE and
contacts (against brute-force references)."""

from __future__ import annotations

import csv
import itertools
import json
import re

import numpy as np
import pytest
import torch

from pixelwise.instances import (
    CSV_COLUMNS,
    contact_pixels,
    count_touching_pairs,
    instances_from_border_class,
    label,
    object_table,
    rle_decode,
    rle_encode,
    separate_touching,
    to_coco,
    touching_pairs,
    touching_pairs_separated,
    write_coco_json,
    write_object_csv,
)
from pixelwise.instances.labelling import _priority_flood
from pixelwise.synthetic import touching_cells


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def test_label_connected_components_and_input_kinds():
    shape = (40, 60)
    mask = disc(shape, 20, 15, 8) | disc(shape, 20, 45, 8)
    for x in (mask, mask.astype(np.uint8), torch.from_numpy(mask), np.where(mask, 0.8, 0.1)):
        lab = label(x)
        assert lab.dtype == np.int32 and lab.max() == 2
        # ids in raster order of first pixel; each object is exactly one disc
        assert np.array_equal(lab == 1, disc(shape, 20, 15, 8))
    probs2 = np.stack([np.where(mask, 0.3, 0.9), np.where(mask, 0.7, 0.1)])
    assert label(probs2).max() == 2
    assert label(probs2, threshold=0.75).max() == 0


def test_label_per_class_foreground_min_size_connectivity():
    classes = np.zeros((10, 12), dtype=np.int64)
    classes[2:6, 2:5] = 1
    classes[2:6, 5:8] = 2  # touches class 1: still a separate object
    classes[8, 10] = 1  # a single pixel
    lab = label(classes)
    assert lab.max() == 3
    assert len(np.unique(lab[2:6, 2:8])) == 2
    assert label(classes, min_size=2).max() == 2
    assert label(classes, foreground=[2]).max() == 1
    probs = np.stack([classes == c for c in range(3)]).astype(np.float32)
    np.testing.assert_array_equal(label(probs), lab)
    diagonal = np.zeros((4, 4), dtype=bool)
    diagonal[0, 0] = diagonal[1, 1] = True
    assert label(diagonal).max() == 2
    assert label(diagonal, connectivity=8).max() == 1
    with pytest.raises(ValueError, match="connectivity must be 4 or 8, got 6"):
        label(diagonal, connectivity=6)
    with pytest.raises(ValueError, match=r"\(C, H, W\) probabilities, got shape \(1, 1, 4, 4\)"):
        label(diagonal[None, None])


def test_watershed_splits_touching_discs():
    shape = (60, 90)
    left, right = disc(shape, 30, 30, 15), disc(shape, 30, 56, 15)
    mask = left | right  # centres 26 px apart, radius 15: the discs overlap
    assert label(mask).max() == 1
    split = label(mask, watershed=True)
    assert split.max() == 2
    np.testing.assert_array_equal(split > 0, mask)  # basins never leave the mask
    for k, (cx, truth) in enumerate(((30, left), (56, right)), start=1):
        assert split[30, cx] == k  # each seed sits at a disc centre
        region = split == k
        assert abs(int(region.sum()) - int(truth.sum())) < 0.05 * truth.sum()
        # The cut follows the neck: the region lies on its own side of x = 43.
        xs = np.nonzero(region)[1]
        assert (xs <= 43).all() if k == 1 else (xs >= 43).all()
    # Two separate discs keep one seed each even with a large min_distance.
    apart = disc(shape, 30, 20, 10) | disc(shape, 30, 70, 6)
    assert label(apart, watershed=True, min_distance=40).max() == 2


def test_priority_flood_splits_at_the_ridge():
    # scipy's watershed_ift puts this boundary at index 10; a correct flood puts it at the ridge.
    profile = np.array([[4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4]], dtype=float)
    seeds = np.zeros(profile.shape, dtype=np.int64)
    seeds[0, 4], seeds[0, 12] = 1, 2
    mask = np.ones(profile.shape, dtype=bool)
    mask[0, 15] = False  # outside the mask: stays 0, and the flood does not cross it
    out = _priority_flood(profile, seeds, mask, np.ones((3, 3), dtype=bool))[0]
    assert (out[:8] == 1).all() and (out[9:15] == 2).all() and out[15] == 0 and out[16] == 0


def test_instances_from_border_class_recovers_touching_cells():
    truth = np.zeros((14, 24), dtype=np.int32)
    truth[2:12, 2:12] = 1
    truth[2:12, 12:22] = 2  # touches cell 1 along columns 11 | 12
    classes = np.zeros_like(truth)
    for k in (1, 2):
        cell = truth == k
        inner = np.zeros_like(cell)
        inner[1:-1, 1:-1] = cell[1:-1, 1:-1] & cell[:-2, 1:-1] & cell[2:, 1:-1]
        inner[1:-1, 1:-1] &= cell[1:-1, :-2] & cell[1:-1, 2:]
        classes[cell] = 2  # border class ...
        classes[inner] = 1  # ... around the interior
    assert label(classes > 0).max() == 1  # plain components merge the two cells
    np.testing.assert_array_equal(instances_from_border_class(classes), truth)


def test_object_table_known_discs():
    shape = (64, 80)
    discs = [disc(shape, 20, 20, 9), disc(shape, 40, 55, 12.5)]
    inst = np.zeros(shape, dtype=np.int32)
    classes = np.zeros(shape, dtype=np.int64)
    for k, d in enumerate(discs, start=1):
        inst[d] = 10 * k
        classes[d] = k
    classes[20, 20] = 2  # one stray pixel does not change the majority
    probs = np.zeros((3, *shape))
    probs[1][discs[0]] = 0.8
    probs[2][discs[1]] = 0.6
    probs[1, 20, 20] = 0.3
    rows = object_table(inst, class_map=classes, probs=probs)
    assert [r["id"] for r in rows] == [10, 20]
    for row, d, cls in zip(rows, discs, (1, 2), strict=True):
        ys, xs = np.nonzero(d)
        assert row["area"] == int(d.sum())
        assert row["class"] == cls
        assert row["bbox"] == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        assert row["centroid"] == pytest.approx((ys.mean(), xs.mean()), abs=1e-12)
    assert rows[0]["centroid"] == (20.0, 20.0)
    n0 = discs[0].sum()
    assert rows[0]["mean_probability"] == pytest.approx((0.8 * (n0 - 1) + 0.3) / n0)
    assert rows[1]["mean_probability"] == pytest.approx(0.6)
    bare = object_table(inst)
    assert bare[0]["class"] is None and bare[0]["mean_probability"] is None
    assert object_table(np.zeros((3, 3), dtype=np.int32)) == []
    with pytest.raises(ValueError, match="probs has only 2 channels"):
        object_table(inst, class_map=classes, probs=probs[:2])


def test_write_object_csv(tmp_path):
    inst = np.zeros((6, 6), dtype=np.int32)
    inst[1:3, 2:5] = 1
    rows = object_table(inst)
    path = write_object_csv(rows, tmp_path / "sub" / "objects.csv")
    with path.open() as handle:
        table = list(csv.reader(handle))
    assert tuple(table[0]) == CSV_COLUMNS
    assert table[1] == ["1", "", "6", "1", "2", "3", "5", "1.5", "3.0", ""]
    assert [p.name for p in path.parent.iterdir()] == ["objects.csv"]  # no temp file left


def test_rle_hand_examples_and_round_trip():
    assert rle_encode(np.array([[0, 1], [0, 1]])) == {"size": [2, 2], "counts": [2, 2]}
    assert rle_encode(np.array([[1, 0], [1, 1]])) == {"size": [2, 2], "counts": [0, 2, 1, 1]}
    assert rle_encode(np.zeros((2, 3)))["counts"] == [6]
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((7, 11)) < 0.4
        rle = rle_encode(mask)
        assert sum(rle["counts"]) == mask.size
        np.testing.assert_array_equal(rle_decode(rle), mask)
    with pytest.raises(ValueError, match="counts sum to 5 but size 2x3 needs 6"):
        rle_decode({"size": [2, 3], "counts": [2, 3]})


def test_to_coco_round_trip(tmp_path):
    inst = np.zeros((20, 30), dtype=np.int32)
    inst[2:6, 3:10] = 4
    inst[10:19, 20:29] = 7
    inst[0, 29] = 9  # corner pixel: last run reaches the end of the image
    classes = np.where(inst == 7, 2, 1)
    coco = to_coco(inst, image_id=5, file_name="a.png", class_map=classes, first_annotation_id=11)
    assert coco["images"] == [{"id": 5, "file_name": "a.png", "height": 20, "width": 30}]
    assert coco["categories"] == [{"id": 1, "name": "class_1"}, {"id": 2, "name": "class_2"}]
    anns = coco["annotations"]
    assert [a["id"] for a in anns] == [11, 12, 13]
    assert [a["category_id"] for a in anns] == [1, 2, 1]
    assert anns[0]["bbox"] == [3, 2, 7, 4] and anns[0]["area"] == 28
    for ann, obj in zip(anns, (4, 7, 9), strict=True):
        np.testing.assert_array_equal(rle_decode(ann["segmentation"]), inst == obj)
        assert ann["segmentation"] == rle_encode(inst == obj)
    path = write_coco_json(coco, tmp_path / "coco.json")
    assert json.loads(path.read_text()) == coco


# ---------------------------------------------------------------- contacts


def brute_force_touching_pairs(instances, gap=0):
    """Walk right and down from every object pixel through at most `gap` background pixels."""
    pairs = set()
    height, width = instances.shape
    for y, x in itertools.product(range(height), range(width)):
        a = int(instances[y, x])
        if not a:
            continue
        for dy, dx in ((0, 1), (1, 0)):
            for k in range(1, gap + 2):
                ny, nx = y + k * dy, x + k * dx
                if ny >= height or nx >= width:
                    break
                b = int(instances[ny, nx])
                if b:
                    if b != a:
                        pairs.add((min(a, b), max(a, b)))
                    break
    return sorted(pairs)


def brute_force_separate(instances):
    out = instances.copy()
    height, width = instances.shape
    for y, x in itertools.product(range(height), range(width)):
        a = instances[y, x]
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < height and 0 <= nx < width and a and instances[ny, nx] not in (0, a):
                out[y, x] = 0
    return out


def brute_force_kept_apart(gt, pred, gap):
    owner = {}
    for obj in np.unique(gt[gt > 0]):
        ids, counts = np.unique(pred[gt == obj], return_counts=True)
        best = ids[np.argmax(counts)]
        owner[int(obj)] = int(best) if best > 0 and counts.max() * 2 > counts.sum() else 0
    pairs = brute_force_touching_pairs(gt, gap)
    kept = sum(1 for a, b in pairs if owner[a] and owner[b] and owner[a] != owner[b])
    return kept, len(pairs)


def random_instances(seed, shape=(9, 11), k=6, fill=0.6):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, k + 1, shape)
    return np.where(rng.random(shape) < fill, ids, 0).astype(np.int32)


def test_touching_pairs_hand_examples():
    row = np.array([[1, 2, 0, 3]])
    assert touching_pairs(row).tolist() == [[1, 2]]  # 3 is one pixel away
    assert touching_pairs(row, gap=1).tolist() == [[1, 2], [2, 3]]
    assert touching_pairs(np.array([[1, 0, 2, 0, 0, 1]]), gap=5).tolist() == [[1, 2]]  # blocked
    assert count_touching_pairs(np.array([[1, 1], [2, 2]])) == 1  # two contacts, one pair
    assert count_touching_pairs(np.array([[1, 0], [0, 2]])) == 0  # a corner is not contact
    assert count_touching_pairs(np.array([[1, 2], [3, 3]])) == 3
    assert count_touching_pairs(np.array([[1, 0], [0, 2]]), gap=3) == 0  # rows/columns only
    assert touching_pairs(np.zeros((3, 3), int)).shape == (0, 2)
    assert touching_pairs(np.zeros((0, 4), int), gap=2).shape == (0, 2)
    assert touching_pairs(torch.tensor([[4, 9]])).tolist() == [[4, 9]]
    with pytest.raises(ValueError, match=re.escape("gap must be an integer >= 0, got -1")):
        touching_pairs(row, gap=-1)
    with pytest.raises(ValueError, match=re.escape("got shape (2, 2) dtype float64")):
        touching_pairs(np.zeros((2, 2)))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("gap", [0, 1, 2, 4])
def test_touching_pairs_match_brute_force(seed, gap):
    instances = random_instances(seed, fill=[0.3, 0.6, 0.9][seed % 3])
    assert touching_pairs(instances, gap=gap).tolist() == [
        list(p) for p in brute_force_touching_pairs(instances, gap)
    ]
    assert count_touching_pairs(instances, gap=gap) == len(
        brute_force_touching_pairs(instances, gap)
    )


@pytest.mark.parametrize("seed", range(4))
def test_separate_touching_matches_brute_force(seed):
    instances = random_instances(seed, shape=(12, 10), fill=0.8)
    separated = separate_touching(instances)
    np.testing.assert_array_equal(separated, brute_force_separate(instances))
    assert separated.dtype == instances.dtype and separated is not instances
    np.testing.assert_array_equal(contact_pixels(instances), (instances > 0) & (separated == 0))
    assert count_touching_pairs(separated) == 0


@pytest.mark.parametrize("seed", range(3))
def test_separated_cells_are_found_again_two_pixels_apart(seed):
    _, cells = touching_cells((96, 96), radius=(6, 10), rng=seed)
    touching = {tuple(p) for p in touching_pairs(cells).tolist()}
    assert touching  # the generator makes touching cells
    found = {tuple(p) for p in touching_pairs(separate_touching(cells), gap=2).tolist()}
    assert touching <= found
    kept, pairs = touching_pairs_separated(separate_touching(cells), cells)
    assert kept == pairs == len(found)  # the unseparated labels keep every pair apart


@pytest.mark.parametrize("seed", range(6))
def test_touching_pairs_separated_matches_brute_force(seed):
    gt = random_instances(seed, shape=(14, 13), k=8, fill=0.85)
    pred = np.where(gt > 0, gt % 3 + (seed % 2), 0)  # merges objects with equal id mod 3
    pred[np.random.default_rng(seed).random(gt.shape) < 0.2] = 0
    for gap in (0, 2):
        got = touching_pairs_separated(gt, pred, gap=gap)
        assert got == brute_force_kept_apart(gt, pred, gap)
    assert touching_pairs_separated(gt, gt) == (len(touching_pairs(gt, gap=2)),) * 2
    assert touching_pairs_separated(gt, np.zeros_like(gt))[0] == 0
    with pytest.raises(ValueError, match=re.escape("gt and pred must have the same shape")):
        touching_pairs_separated(gt, gt[:-1])
