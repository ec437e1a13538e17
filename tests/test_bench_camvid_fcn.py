"""The CamVid FCN recipe (benchmarks/camvid_fcn.py) end to end in --quick mode, on the real data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import camvid_fcn as recipe  # benchmarks/ is on sys.path (tests/conftest.py)


def test_scaled_size_rounds_and_keeps_at_least_one_pixel() -> None:
    assert recipe.scaled_size(480, 360, 0.5) == (240, 180)
    assert recipe.scaled_size(480, 360, 0.25) == (120, 90)
    assert recipe.scaled_size(3, 1, 0.1) == (1, 1)


def test_ordering_reports_both_gaps_and_the_verdict() -> None:
    rows = {"fcn32s": {"mean_iou": 0.30}, "fcn16s": {"mean_iou": 0.35}, "fcn8s": {"mean_iou": 0.34}}
    order = recipe.ordering(rows)
    assert order["16s_minus_32s"] == pytest.approx(0.05)
    assert order["8s_minus_16s"] == pytest.approx(-0.01)
    assert order["target_met"] is False
    rows["fcn8s"]["mean_iou"] = 0.35  # ties count as met (≥)
    assert recipe.ordering(rows)["target_met"] is True


def test_quick_run_writes_sane_results(
    tmp_path: Path, capsys: pytest.CaptureFixture, shared_data
) -> None:
    out = tmp_path / "out"
    assert recipe.main([str(shared_data("camvid")), "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| model (CamVid test) |" in printed
    assert "Target mean IU 8s ≥ 16s ≥ 32s:" in printed
    table = (out / "results.md").read_text()
    assert table.strip() in printed
    results = json.loads(
        (out / "results.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"results.json holds {c}, not strict JSON"),
    )
    assert set(results["models"]) == {"fcn32s", "fcn16s", "fcn8s", "unet"}
    assert results["images"] == {"train": 4, "val": 2, "test": 2}
    # Downscaled copies in the CamVid layout, a quarter of 480×360.
    from PIL import Image

    with Image.open(next((out / "data" / "test").iterdir())) as small:
        assert small.size == (120, 90)
    for name, row in results["models"].items():
        for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
            assert math.isfinite(row[key]) and 0.0 <= row[key] <= 1.0, (name, key, row[key])
        assert row["mean_iou"] <= row["mean_accuracy"] + 1e-12  # IU ≤ recall per class
        cm = np.array(row["confusion_matrix"])
        assert cm.shape == (11, 11)
        # Two full-size test images, void pixels excluded: the matrix counts the rest.
        assert 0 < cm.sum() <= 2 * 480 * 360
        assert row["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        assert row["steps"] == 2 and len(row["per_class_iou"]) == 11
        assert all(v is None or 0.0 <= v <= 1.0 for v in row["per_class_iou"])
    # Staged training: 16s starts from 32s's best checkpoint, 8s from 16s's.
    assert results["models"]["fcn32s"]["init"] is None
    assert results["models"]["fcn16s"]["init"] == results["models"]["fcn32s"]["checkpoint"]
    assert results["models"]["fcn8s"]["init"] == results["models"]["fcn16s"]["checkpoint"]
    gaps = results["ordering"]
    assert gaps["16s_minus_32s"] == pytest.approx(
        results["models"]["fcn16s"]["mean_iou"] - results["models"]["fcn32s"]["mean_iou"]
    )
