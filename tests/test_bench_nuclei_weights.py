"""The nuclei border-weight recipe (benchmarks/nuclei_weights.py): its helpers on hand-made
arrays, and the whole pipeline in --quick mode on the real Cell Tracking Challenge data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import nuclei_weights as recipe  # benchmarks/ is on sys.path (tests/conftest.py)
from pixelwise.data import Sample, read_image
from pixelwise.instances import count_touching_pairs


def test_normalize_percentile_maps_percentiles_to_0_and_1_whatever_the_offset() -> None:
    ramp = np.arange(101, dtype=np.uint16).reshape(1, 101)  # percentile p of 0..100 is p
    x = recipe.normalize_percentile(ramp)
    assert x.dtype == np.float32 and x.shape == (1, 101)
    expected = (np.arange(101) - 1.0) / (99.8 - 1.0)
    np.testing.assert_allclose(x[0], expected, rtol=1e-6)
    # HeLa's camera offset does not matter, nor does the dtype
    np.testing.assert_allclose(recipe.normalize_percentile(ramp + 33000), x, atol=1e-6)
    np.testing.assert_allclose(recipe.normalize_percentile(ramp.astype(np.uint8)), x)


def test_normalize_percentile_rejects_flat_images_and_bad_percentiles() -> None:
    with pytest.raises(ValueError, match="image is constant between its 1.0 and 99.8 percentiles"):
        recipe.normalize_percentile(np.full((4, 4), 7, np.uint8))
    with pytest.raises(ValueError, match="percentiles must satisfy 0 <= low < high <= 100"):
        recipe.normalize_percentile(np.arange(4.0), low=50, high=50)


def test_center_crop_takes_the_middle_window() -> None:
    a = np.arange(35).reshape(5, 7)
    np.testing.assert_array_equal(recipe.center_crop(a, 3), a[1:4, 2:5])
    assert recipe.center_crop(a, None) is a
    np.testing.assert_array_equal(recipe.center_crop(a, 6), a[:, :6])  # taller than the image


def test_contact_pairs_counts_4_neighbour_contacts_once_per_pair() -> None:
    assert count_touching_pairs(np.array([[1, 2, 0, 3]])) == 1  # 3 is one pixel away
    assert count_touching_pairs(np.array([[1, 1], [2, 2]])) == 1  # two contacts, one pair
    assert count_touching_pairs(np.array([[1, 0], [0, 2]])) == 0  # diagonal only
    three = np.array([[1, 2], [3, 3]])  # 1-2, 1-3, 2-3
    assert count_touching_pairs(three) == 3
    assert count_touching_pairs(np.zeros((3, 3), int)) == 0


def test_split_frames_holds_out_the_last_frame() -> None:
    samples = [Sample(Path(f"t{i}.tif"), Path(f"man_seg{i}.tif"), f"t{i}") for i in (1, 21, 72)]
    train, held_out = recipe.split_frames(samples)
    assert [s.name for s in train] == ["t1", "t21"] and held_out.name == "t72"
    with pytest.raises(ValueError, match="need at least 2 image/mask pairs to hold one out, got 1"):
        recipe.split_frames(samples[:1])


def test_score_objects_counts_a_merge_of_two_touching_nuclei() -> None:
    gt = np.zeros((6, 8), np.int64)
    gt[1:4, 1:4], gt[1:4, 4:7] = 1, 2  # two 3×3 nuclei in contact
    merged = (gt > 0).astype(np.int64)  # one predicted object over both
    s = recipe.score_objects(merged, gt)
    # IoU of the merged object with each nucleus = 9 / 18 = 0.5: one match at 0.5, none above.
    assert s["counts"][0] == [1, 0, 1] and s["counts"][1] == [0, 1, 2]
    assert (s["merges"], s["splits"], s["pairs_kept"], s["pairs"]) == (1, 0, 0, 1)
    apart = recipe.score_objects(gt, gt)
    assert (apart["merges"], apart["pairs_kept"], apart["pairs"]) == (0, 1, 1)
    assert apart["counts"][0] == [2, 0, 0]


def test_summarize_pools_counts_over_images() -> None:
    # Docstring example split over two images: TP, FP, FN = 8, 2, 2 at 0.5 and 4, 6, 6 at 0.55.
    a = {"counts": [[5, 1, 0], [3, 3, 2]], "merges": 2, "splits": 0, "pairs_kept": 1,
         "pairs": 4, "n_pred": 6, "n_gt": 5, "intersection": 30, "union": 40}  # fmt: skip
    b = {"counts": [[3, 1, 2], [1, 3, 4]], "merges": 1, "splits": 1, "pairs_kept": 2,
         "pairs": 2, "n_pred": 4, "n_gt": 5, "intersection": 10, "union": 40}  # fmt: skip
    s = recipe.summarize([a, b])
    assert s["f1_50"] == pytest.approx(16 / 20)
    assert s["ap_50_95"] == pytest.approx((8 / 12 + 4 / 16) / 2)
    assert (s["merges"], s["splits"], s["pairs_kept"], s["pairs"]) == (3, 1, 3, 6)
    assert (s["n_pred"], s["n_gt"]) == (10, 10)
    assert s["foreground_iou"] == pytest.approx(40 / 80)


def test_table_rows_group_by_dataset_and_verdict_needs_strictly_fewer_merges() -> None:
    def record(merges: int) -> dict:
        return {"counts": [[1, 0, 0]], "merges": merges, "splits": 0, "pairs_kept": 0,
                "pairs": 0, "n_pred": 1, "n_gt": 1, "intersection": 1, "union": 1}  # fmt: skip

    def per_image(m_gowt1: int, m_hela: int) -> dict:
        return {
            "GOWT1_t72.tif": {h: record(m_gowt1) for h in recipe.LABELLINGS},
            "HeLa_t79.tif": {h: record(m_hela) for h in recipe.LABELLINGS},
        }

    rows = recipe.table_rows({"weighted": per_image(0, 2), "unweighted": per_image(1, 2)})
    assert set(rows["weighted"]["components"]) == {"GOWT1", "HeLa", "all"}
    assert rows["weighted"]["watershed"]["HeLa"]["merges"] == 2
    assert rows["unweighted"]["components"]["all"]["merges"] == 3
    assert recipe.merge_verdict(rows) == {"weighted": 2, "unweighted": 3, "target_met": True}
    rows = recipe.table_rows({"weighted": per_image(1, 2), "unweighted": per_image(1, 2)})
    assert recipe.merge_verdict(rows)["target_met"] is False  # a tie is not a reduction


def test_quick_run_writes_sane_results(
    tmp_path: Path, capsys: pytest.CaptureFixture, shared_data
) -> None:
    out = tmp_path / "out"
    data = shared_data("nuclei")
    assert recipe.main([str(data), "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| model | objects from | test set | F1@0.5 |" in printed
    assert "Target (weighted merges fewer touching nuclei" in printed
    assert (out / "results.md").read_text().strip() in printed
    results = json.loads((out / "results.json").read_text())
    split = results["split"]
    assert split["test"] == ["GOWT1_t72.tif", "HeLa_t79.tif"]
    assert len(split["train"]) == 8 and not set(split["train"]) & set(split["test"])
    # Same budget: both models trained the same steps.
    assert results["training"]["weighted"]["steps"] == results["training"]["unweighted"]["steps"]
    # The copies: float32 images normalised per image, training masks without contacts.
    crop = recipe.QUICK.crop
    image = read_image(out / "data/train/images/HeLa_t75.tif")
    assert image.dtype == np.float32 and image.shape == (crop, crop)
    assert np.percentile(image, [1, 99.8]) == pytest.approx([0, 1], abs=1e-5)
    gt = recipe.center_crop(read_image(data / "N2DL-HeLa/gt/man_seg75.tif"), crop)
    separated = read_image(out / "data/train/masks/HeLa_t75.tif")
    assert count_touching_pairs(gt) > 0 and count_touching_pairs(separated) == 0
    assert np.all((separated == 0) | (separated == gt))  # only background lines were added
    held_out = recipe.center_crop(read_image(data / "N2DL-HeLa/gt/man_seg79.tif"), crop)
    np.testing.assert_array_equal(read_image(out / "data/test/masks/HeLa_t79.tif"), held_out)
    for model in recipe.MODELS:
        for how in recipe.LABELLINGS:
            groups = results["rows"][model][how]
            assert set(groups) == {"GOWT1", "HeLa", "all"}
            for group, s in groups.items():
                for key in ("f1_50", "ap_50_95", "foreground_iou"):
                    assert math.isfinite(s[key]) and 0.0 <= s[key] <= 1.0, (model, how, group)
                assert s["ap_50_95"] <= s["f1_50"] + 1e-12  # AP ≤ AP at 0.5 ≤ F1 at 0.5
                assert 0 <= s["pairs_kept"] <= s["pairs"] and s["merges"] <= s["n_pred"]
            assert groups["all"]["merges"] == groups["GOWT1"]["merges"] + groups["HeLa"]["merges"]
            assert groups["all"]["n_gt"] == int(np.unique(held_out[held_out > 0]).size) + int(
                results["split"]["ground_truth"]["GOWT1_t72.tif"]["objects"]
            )
    assert results["verdict"]["target_met"] == (
        results["verdict"]["weighted"] < results["verdict"]["unweighted"]
    )
