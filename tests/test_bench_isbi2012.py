"""The ISBI 2012 recipe's --quick mode runs end to end on the real data and gives sane numbers."""

import json
import math

import numpy as np
import pytest
import tifffile
from PIL import Image

import isbi2012 as recipe  # benchmarks/ is on sys.path (tests/conftest.py)


def test_edge_band_counts_pixels_within_the_width():
    band = recipe.edge_band((10, 8), 2)
    # inner rectangle not in the band: (10 − 4) × (8 − 4) = 24 of 80 pixels
    assert band.sum() == 80 - 24
    assert band[0].all() and band[:, -1].all() and not band[2:8, 2:6].any()


def test_quick_run_writes_its_table(tmp_path, capsys, shared_data):
    data = shared_data("isbi2012")
    assert recipe.main([str(data), "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| U-Net + d4 TTA |" in printed and "| reflect |" in printed
    assert (tmp_path / "results.md").read_text() in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["isbi"]) == {"U-Net", "U-Net + d4 TTA"}
    for row in results["isbi"].values():
        assert all(0 <= v <= 1 and math.isfinite(v) for v in row.values())
    assert set(results["padding"]) == {"reflect", "constant", "replicate"}
    # the split is slices 0-24 for training and 25-29 held out, as symlinks (no data copied)
    held = sorted(p.name for p in (tmp_path / "data" / "heldout" / "images").iterdir())
    assert held == [f"{i}.png" for i in range(25, 30)]
    assert len(list((tmp_path / "data" / "train" / "masks").iterdir())) == 25
    assert all(p.is_symlink() for p in (tmp_path / "data" / "train" / "images").iterdir())
    assert np.isfinite(results["train"]["minutes"])
    for row in results["isbi"].values():  # the sweep's minimum is at most the 0.5 decision's
        assert row["pixel_error"] <= row["pixel_error_at_0.5"]
        assert set(row) >= {"rand_error", "warping_error", "v_rand_thin", "v_info_thin"}
    # --evaluate-only re-scores the same checkpoint without training: the same numbers
    assert recipe.main([str(data), "--quick", "--out", str(tmp_path), "--evaluate-only"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["isbi"] == results["isbi"] and again["train"] == results["train"]


def test_evaluate_only_without_a_run_says_what_to_do(tmp_path, shared_data):
    data = shared_data("isbi2012")
    with pytest.raises(SystemExit, match=r"best.safetensors not found; train first"):
        recipe.main([str(data), "--quick", "--out", str(tmp_path), "--evaluate-only"])


def test_submission_is_a_float32_stack_of_interior_probabilities(tmp_path, monkeypatch, tiny_unet):
    images = tmp_path / "test" / "image"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in (1, 0, 2):  # numbered like the challenge's test slices, written out of order
        Image.fromarray(rng.integers(0, 255, (60, 52), dtype=np.uint8)).save(images / f"{i}.png")
    monkeypatch.setattr(recipe, "TEST_SLICES", range(3))  # the real recipe writes 30 pages
    model = tiny_unet(num_classes=2)
    out = recipe.write_submission(model, {"mean": [0.5], "std": [0.2]}, images, tmp_path / "s.tif")
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == 3 and tif.is_imagej
        stack = tif.asarray()
    assert stack.shape == (3, 60, 52) and stack.dtype == np.float32
    assert stack.min() >= 0 and stack.max() <= 1
    monkeypatch.setattr(recipe, "TEST_SLICES", range(4))
    with pytest.raises(SystemExit, match=r"3.png not found; --submission needs the 30 test"):
        recipe.write_submission(model, {"mean": [0.5], "std": [0.2]}, images, tmp_path / "t.tif")
