"""The nuclei instance recipe (benchmarks/nuclei_instances.py): its fixed split and its one
scorer on hand-made arrays, and the whole pipeline in --quick mode on the real data."""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import nuclei_instances as recipe  # benchmarks/ is on sys.path (tests/conftest.py)
from pixelwise.checkpoint import read_metadata
from pixelwise.data.normalization import is_percentile
from pixelwise.metrics import match_instances, pool_matches

IDS = [f"{i:04x}{'ab' * 8}" for i in range(0, 133 * 37, 37)]  # 133 made-up image ids


def test_split_is_fixed_disjoint_and_covers_every_id() -> None:
    split = recipe.split_ids(IDS)
    train, test = split["train"], split["test"]
    assert len(test) == round(0.2 * 133) == 27 and len(train) == 106
    assert not set(train) & set(test) and set(train) | set(test) == set(IDS)
    assert train == sorted(train) and test == sorted(test)
    shuffled = IDS.copy()
    random.Random(1).shuffle(shuffled)
    assert recipe.split_ids(shuffled) == split  # the ids decide, not their order
    assert recipe.split_ids(IDS) == split  # and again the same
    # not simply the first or last ids in sorted order
    assert test != sorted(IDS)[:27] and test != sorted(IDS)[-27:]


def test_split_holds_out_at_least_one_and_keeps_at_least_one() -> None:
    assert [len(v) for v in recipe.split_ids(["a", "b"]).values()] == [1, 1]
    assert len(recipe.split_ids(["a", "b", "c"], 0.01)["test"]) == 1
    assert len(recipe.split_ids(["a", "b", "c"], 0.99)["train"]) == 1
    with pytest.raises(ValueError, match="need at least 2 distinct ids to split, got 3"):
        recipe.split_ids(["a", "a", "b"])
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        recipe.split_ids(IDS, 1.0)


def _truth() -> np.ndarray:
    gt = np.zeros((12, 12), np.uint16)
    gt[1:5, 1:5], gt[1:5, 7:11], gt[7:11, 4:8] = 1, 2, 3  # three 4×4 nuclei
    return gt


def test_cellpose_masks_are_scored_by_the_same_function_as_pixelwise_objects() -> None:
    gt = _truth()
    # cellpose-like output: uint16 masks whose ids follow its own order (here 7, 3); one
    # nucleus missed, one false object.
    cellpose = np.zeros_like(gt)
    cellpose[1:5, 1:5], cellpose[1:5, 7:11], cellpose[10:12, 0:2] = 7, 3, 9
    # pixelwise-like output of the same objects: int32, ids 1..N in raster order
    pixelwise = np.zeros(gt.shape, np.int32)
    pixelwise[1:5, 1:5], pixelwise[1:5, 7:11], pixelwise[10:12, 0:2] = 1, 2, 3
    a = recipe.score_objects([cellpose, gt], [gt, gt])
    b = recipe.score_objects([pixelwise, gt], [gt, gt])
    assert a == b  # ids and dtype do not matter, only the objects
    assert a == pool_matches([match_instances(cellpose, gt), match_instances(gt, gt)])
    # pooled: TP 2 + 3, FP 1 + 0, FN 1 + 0 at every threshold (the matches are exact)
    assert (a["tp@0.5"], a["fp@0.5"], a["fn@0.5"]) == (5, 1, 1)
    for key in ("accuracy@0.5", "accuracy@0.75", "accuracy@0.9", "dsb_score"):
        assert a[key] == pytest.approx(5 / 7)
    assert a["f1@0.5"] == pytest.approx(10 / 12)
    with pytest.raises(ValueError):  # one predicted map per ground truth
        recipe.score_objects([gt], [gt, gt])


def test_table_rows_pool_each_group_and_all() -> None:
    gt = _truth()
    image = np.zeros((12, 12), np.uint8)  # 144 px each
    test = [("GOWT1_t72.tif", image, gt), ("HeLa_t79.tif", image, gt)]
    maps = {"GOWT1_t72.tif": gt.astype(np.int32), "HeLa_t79.tif": np.zeros_like(gt)}
    groups = {"GOWT1_t72.tif": "GOWT1", "HeLa_t79.tif": "HeLa"}
    rows = recipe.table_rows(maps, test, groups, minutes=2.5, seconds=0.288)
    assert list(rows) == ["GOWT1", "HeLa", "all"]
    assert rows["GOWT1"]["accuracy@0.5"] == 1.0 and rows["HeLa"]["accuracy@0.5"] == 0.0
    assert rows["all"]["accuracy@0.5"] == pytest.approx(3 / 6)
    assert (rows["all"]["n_pred"], rows["all"]["n_gt"], rows["all"]["images"]) == (3, 6, 2)
    assert rows["all"]["train_minutes"] == 2.5
    assert rows["all"]["predict_s_per_mp"] == pytest.approx(0.288 / 288e-6)
    table = recipe.results_table({"three-class": rows})
    assert "| three-class | HeLa (1) | 0.000 |" in table and table.count("\n") == 4


def test_forbid_downloads_makes_a_cellpose_download_raise() -> None:
    cellpose_utils = pytest.importorskip("cellpose.utils")
    original = cellpose_utils.download_url_to_file
    try:
        recipe.forbid_downloads()
        with pytest.raises(RuntimeError, match="cellpose tried to download http://x"):
            cellpose_utils.download_url_to_file("http://x", "/nonexistent")
    finally:
        cellpose_utils.download_url_to_file = original


def test_quick_run_writes_one_table_per_data_set(
    shared_data: Callable[[str], Path], tmp_path: Path
) -> None:
    root = shared_data("dsb2018-dev").parent
    shared_data("nuclei")
    out = tmp_path / "out"
    assert recipe.main([str(root), "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    text = (out / "results.md").read_text()
    methods = [*recipe.TARGETS, "cellpose"] if results["cellpose"] else list(recipe.TARGETS)
    if not results["cellpose"]:
        assert "cellpose is not installed" in text
    assert list(results["data_sets"]) == ["dsb2018-dev", "nuclei"]
    for name, groups in (("dsb2018-dev", ["all"]), ("nuclei", ["GOWT1", "HeLa", "all"])):
        data = results["data_sets"][name]
        assert f"### {name}" in text
        assert list(data["rows"]) == methods and list(data["training"]) == methods
        assert not set(data["train"]) & set(data["test"])
        for method in methods:
            assert list(data["rows"][method]) == groups
            for row in data["rows"][method].values():
                for key, _ in recipe.SCORES:
                    assert 0.0 <= row[key] <= 1.0, (name, method, key, row[key])
                assert row["n_gt"] > 0 and row["train_minutes"] > 0
                assert math.isfinite(row["predict_s_per_mp"]) and row["predict_s_per_mp"] > 0
            assert f"| {method} | all (" in text
    assert results["data_sets"]["nuclei"]["test"] == ["GOWT1_t72.tif", "HeLa_t79.tif"]


def test_normalisations_side_by_side_and_a_step_budget(
    shared_data: Callable[[str], Path], tmp_path: Path
) -> None:
    root = shared_data("dsb2018-dev").parent
    out = tmp_path / "out"
    argv = [str(root), "--quick", "--out", str(out), "--data-sets", "dsb2018-dev", "--targets",
            "three-class", "--normalize", "dataset", "percentile", "--no-cellpose"]  # fmt: skip
    assert recipe.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["data_sets"]["dsb2018-dev"]["rows"]
    assert list(rows) == ["three-class, normalize dataset", "three-class, normalize percentile"]
    assert results["normalize"] == ["dataset", "percentile"] and not results["cellpose"]
    assert "--no-cellpose: no cellpose rows" in (out / "results.md").read_text()
    for method, folder in (
        ("dataset", "three-class-dataset"),
        ("percentile", "three-class-percentile"),
    ):
        meta = read_metadata(out / "dsb2018-dev" / folder / "best.safetensors")
        assert is_percentile(meta["normalization"]) is (method == "percentile")
    # a step budget replaces the time budget; the quick run's own settings win
    assert recipe.FULL.pixelwise_options(30.0, 500) == {"steps": 500, "max_minutes": None}
    assert recipe.FULL.pixelwise_options(30.0) == {"max_minutes": 30.0}
    assert recipe.QUICK.pixelwise_options(30.0, 500)["steps"] == 4


def test_split_by_groups_tests_on_whole_groups_only() -> None:
    groups = {"a": "696x520", "b": "640x512", "c": "696x520", "d": "347x260", "e": "640x512"}
    split = recipe.split_groups(groups, ["640x512", "347x260"])
    assert split == {"train": ["a", "c"], "test": ["b", "d", "e"]}
    with pytest.raises(ValueError, match=r"no image of group\(s\) \['256x256'\]; the groups are"):
        recipe.split_groups(groups, ["256x256"])


def test_quick_run_split_by_groups_tests_on_unseen_groups(
    shared_data: Callable[[str], Path], tmp_path: Path
) -> None:
    source = shared_data("dsb2018-dev")
    groups = recipe.image_groups(source)
    assert set(recipe.UNSEEN_GROUPS) <= set(groups.values())
    out = tmp_path / "out"
    argv = [str(source.parent), "--quick", "--out", str(out), "--data-sets", "dsb2018-dev",
            "--targets", "three-class", "--no-cellpose", "--split", "groups",
            "--set", "zoom=1.5", "--set", "blur=0"]  # fmt: skip
    assert recipe.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    data = results["data_sets"]["dsb2018-dev"]
    assert results["split"] == "groups" and results["set"] == {"zoom": 1.5, "blur": 0}
    config = data["training"]["three-class"]["config"]
    assert config["zoom"] == 1.5 and config["blur"] == 0 and config["noise"] == 0.05
    assert "zoom=1.5, blur=0" in (out / "results.md").read_text()
    assert {groups[Path(n).stem] for n in data["test"]} <= set(recipe.UNSEEN_GROUPS)
    assert not {groups[Path(n).stem] for n in data["train"]} & set(recipe.UNSEEN_GROUPS)
    rows = data["rows"]["three-class"]
    assert list(rows)[-1] == "all" and set(rows) - {"all"} <= set(recipe.UNSEEN_GROUPS)
    assert "never trained on" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("zoom", "--set expects FIELD=VALUE, got 'zoom' (e.g. --set zoom=1.5)"),
        ("=1", "--set expects FIELD=VALUE, got '=1'"),
        ("zoom_max=2", "--set zoom_max=2: TrainConfig has no field 'zoom_max'"),
        ("seed=3", "--set seed=3: the recipe sets 'seed' itself; use its own option"),
    ],
)
def test_set_rejects_malformed_unknown_and_recipe_fields(
    pair: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["/nonexistent", "--set", "blur=2", "--set", pair])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_set_reads_yaml_values_and_accepts_dashes() -> None:
    parser = argparse.ArgumentParser()
    extra = recipe.train_fields(["zoom=1.5", "elastic-sigma=5", "flip=false", "blur=0"], parser)
    assert extra == {"zoom": 1.5, "elastic_sigma": 5, "flip": False, "blur": 0}
