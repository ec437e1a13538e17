"""`pixelwise evaluate` with objects: pooled and per-image scores, the report, the conventions."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import pixelwise
from pixelwise import evaluate as evaluate_module
from pixelwise.cli import main
from pixelwise.data import read_image, write_image
from pixelwise.evaluate import OBJECTS, evaluate
from pixelwise.instances import PostProcessing
from pixelwise.metrics import match_instances, pool_matches
from pixelwise.report import OUTCOME_COLOURS
from pixelwise.synthetic import write_dataset

THRESHOLDS = ("0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95")
NORMALIZATION = {"mean": [0.3], "std": [0.2], "scale": 1 / 255}


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    """Three 48 × 48 synthetic images of touching cells with instance masks."""
    return write_dataset(tmp_path_factory.mktemp("eval") / "cells", 3, (48, 48), seed=3)


def _checkpoint(folder: Path, name: str, num_classes: int, **meta) -> Path:
    import torch

    from pixelwise.models import UNet

    torch.manual_seed(0)
    model = UNet(1, num_classes, base_channels=4, depth=2).eval()
    path = folder / f"{name}.safetensors"
    pixelwise.save(model, path, normalization=NORMALIZATION, **meta)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny U-Nets: a three-class and a two-class instance model, a semantic one."""
    folder = tmp_path_factory.mktemp("models")
    instance = {"config": {"instances": True}}
    return {
        "three-class": _checkpoint(
            folder, "three", 3, target="three-class", **instance,
            class_names=["background", "interior", "boundary"],
            postprocessing=PostProcessing(target="three-class", min_size=0).to_dict(),
        ),
        "two-class": _checkpoint(folder, "two", 2, target="two-class", **instance),
        "semantic": _checkpoint(folder, "plain", 2, config={"instances": False}),
    }  # fmt: skip


def _truths(folder: Path) -> list[np.ndarray]:
    return [read_image(p).astype(np.int64) for p in sorted((folder / "masks").iterdir())]


def test_instance_model_scores_objects_pooled_and_per_image(models, cells, tmp_path):
    out = tmp_path / "e"
    result = evaluate(models["three-class"], cells, out, log=lambda _: None)
    # every key names its metric and threshold; the conventions are recorded
    for t in THRESHOLDS:
        for name in ("tp", "fp", "fn", "precision", "recall", "f1", "accuracy"):
            assert f"{name}@{t}" in result
    for key in (*OBJECTS, "sq@0.5", "rq@0.5", "merges", "splits", "n_gt", "n_pred"):
        assert key in result
    assert result["objects"]["postprocessing"]["target"] == "three-class"
    assert result["objects"]["postprocessing"]["min_size"] == 0  # the checkpoint's record
    assert "mean_iou" in result and len(result["class_names"]) == 3  # semantic scores stay
    rows = result["per_image"]
    assert len(rows) == 3
    # pooled = counts summed over the images, then the ratios
    for t in THRESHOLDS:
        tp, fp, fn = (sum(r[f"{k}@{t}"] for r in rows) for k in ("tp", "fp", "fn"))
        assert (result[f"tp@{t}"], result[f"fp@{t}"], result[f"fn@{t}"]) == (tp, fp, fn)
        if tp + fp + fn:
            assert result[f"accuracy@{t}"] == pytest.approx(tp / (tp + fp + fn))
    assert result["n_gt"] == sum(int(m.max()) for m in _truths(cells))
    assert result["dsb_score"] == pytest.approx(
        np.mean([result[f"accuracy@{t}"] for t in THRESHOLDS])
    )
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["f1@0.5"] == result["f1@0.5"] and "pq@0.5" in on_disk
    with open(out / "per_image.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == [r["name"] for r in rows]
    assert {"accuracy@0.5", "f1@0.5", "tp@0.95", "dsb_score", "pq@0.5", "merges"} <= set(table[0])
    page = (out / "report.html").read_text()
    assert "lowest accuracy@0.5 first" in page and "objects per IoU threshold" in page
    assert all(name in page for name in OUTCOME_COLOURS)


def test_evaluate_scores_the_objects_the_segmenter_makes(models, cells, tmp_path):
    # predict --instances and pixelwise.Segmenter make objects the same way: so must evaluate
    for name in ("three-class", "two-class"):
        result = evaluate(models[name], cells, tmp_path / name, log=lambda _: None)
        segmenter = pixelwise.Segmenter.from_checkpoint(models[name], device="cpu")
        images = sorted((cells / "images").iterdir())
        for row, image, truth in zip(result["per_image"], images, _truths(cells), strict=True):
            objects = segmenter.predict(read_image(image)).instances
            expected = pool_matches([match_instances(objects, truth)])
            assert {k: row[k] for k in expected if k.startswith(("tp", "fp", "fn"))} == {
                k: v for k, v in expected.items() if k.startswith(("tp", "fp", "fn"))
            }


def test_evaluate_with_a_diameter_scores_the_objects_predict_writes(cells, tmp_path):
    """diameter: each raw image resized as `Segmenter(diameter=...)` does; "default" is "auto"
    for a shipped model (a model card in its metadata) and as is for any other."""
    from conftest import save_instance_unet

    def save(name: str, **card) -> Path:
        return save_instance_unet(
            tmp_path / f"{name}.safetensors", postprocessing=PostProcessing(min_size=0),
            config={"instances": True}, object_diameter=9.0, **card,
        )  # fmt: skip

    own, shipped = save("own"), save("shipped", pretrained={"name": "made-up"})
    images = sorted((cells / "images").iterdir())
    cases = [
        (own, "default", None),
        (own, 12.0, 12.0),
        (own, "auto", "auto"),
        (shipped, "default", "auto"),
        (shipped, None, None),
    ]
    predicted = 0
    for path, given, expected in cases:
        result = evaluate(path, cells, tmp_path / "e", diameter=given, log=lambda _: None)
        assert result["objects"]["diameter"] == expected
        segmenter = pixelwise.Segmenter.from_checkpoint(path, diameter=expected, device="cpu")
        for row, image, truth in zip(result["per_image"], images, _truths(cells), strict=True):
            objects = segmenter.predict(read_image(image)).instances
            counts = pool_matches([match_instances(objects, truth)])
            assert {k: row[k] for k in ("n_pred", "tp@0.5", "fp@0.5", "fn@0.5")} == {
                k: counts[k] for k in ("n_pred", "tp@0.5", "fp@0.5", "fn@0.5")
            }, (path.name, given)
            predicted += counts["n_pred"]
    assert predicted > 0  # the comparisons are not of empty maps
    # the command line: predict's --diameter
    for flag, expected in (
        ([], "auto"),
        (["--diameter", "none"], None),
        (["--diameter", "12"], 12.0),
    ):
        out = tmp_path / f"cli{len(flag)}{expected}"
        assert main(["evaluate", str(shipped), str(cells), "--out", str(out), *flag]) == 0
        assert json.loads((out / "metrics.json").read_text())["objects"]["diameter"] == expected
    with pytest.raises(ValueError, match="diameter must be the objects' typical diameter"):
        evaluate(own, cells, tmp_path / "x", diameter=-1, log=lambda _: None)


def _hand_dataset(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """One 40 × 60 image: ground truth 3 squares; a prediction with 1 hit, 1 false positive."""
    gt = np.zeros((40, 60), np.uint16)
    gt[2:12, 2:12], gt[2:12, 30:40], gt[25:35, 2:12] = 1, 2, 3
    pred = np.zeros_like(gt)
    pred[2:12, 3:12] = 1  # IoU 0.9 with gt 1
    pred[25:35, 40:50] = 1  # a false positive; gt 2 and 3 are missed
    write_image(folder / "images" / "a.png", (gt > 0).astype(np.uint8) * 200)
    write_image(folder / "masks" / "a.tif", gt)
    return folder, pred, gt


def test_hand_built_counts_and_panoptic_quality(models, tmp_path, monkeypatch):
    data, pred, _ = _hand_dataset(tmp_path / "hand")
    probs = np.stack([pred == 0, pred == 1]).astype(np.float32)  # (2, H, W), one-hot

    monkeypatch.setattr(evaluate_module, "predict", lambda model, image, **kw: probs)
    record = PostProcessing(target="two-class", seed_distance=0, min_size=0)
    result = evaluate(models["two-class"], data, tmp_path / "e", postprocessing=record,
                      log=lambda _: None)  # fmt: skip
    assert (result["tp@0.5"], result["fp@0.5"], result["fn@0.5"]) == (1, 1, 2)
    assert (result["tp@0.95"], result["fp@0.95"]) == (0, 2)
    assert result["accuracy@0.5"] == pytest.approx(1 / 4)
    assert result["f1@0.5"] == pytest.approx(2 / 5)
    # PQ = 0.9 / (1 + 1/2 + 2/2); SQ = 0.9; RQ = 1 / 2.5
    assert result["pq@0.5"] == pytest.approx(0.9 / 2.5)
    assert result["sq@0.5"] == pytest.approx(0.9)
    assert result["rq@0.5"] == pytest.approx(1 / 2.5)
    assert result["per_image"][0]["fn@0.5"] == 2


def test_perfect_objects_score_one(models, cells, tmp_path, monkeypatch):
    from skimage.segmentation import find_boundaries

    def one_hot(truth: np.ndarray) -> np.ndarray:
        boundary = find_boundaries(truth, mode="inner") & (truth > 0)
        interior = (truth > 0) & ~boundary
        return np.stack([truth == 0, interior, boundary]).astype(np.float32)  # (3, H, W)

    answers = iter([one_hot(t) for t in _truths(cells)])
    monkeypatch.setattr(evaluate_module, "predict", lambda model, image, **kw: next(answers))
    result = evaluate(models["three-class"], cells, tmp_path / "e", log=lambda _: None)
    assert result["dsb_score"] == pytest.approx(1.0)
    assert result["pq@0.5"] == pytest.approx(1.0) and result["merges"] == 0
    assert result["mean_iou"] == pytest.approx(1.0)  # against the derived three-class masks


def test_semantic_model_objects_are_connected_components(models, cells, tmp_path):
    result = evaluate(models["semantic"], cells, tmp_path / "e", instances=True,
                      log=lambda _: None)  # fmt: skip
    assert result["objects"]["postprocessing"] is None
    assert "connected components" in result["objects"]["method"]
    assert "connected components" in (tmp_path / "e" / "report.html").read_text()
    # class masks (no instances): nothing about objects
    binary = tmp_path / "binary"
    for mask, image in zip(_truths(cells), sorted((cells / "images").iterdir()), strict=True):
        write_image(binary / "images" / image.name, read_image(image))
        write_image(binary / "masks" / image.name, (mask > 0).astype(np.uint8))
    plain = evaluate(models["semantic"], binary, tmp_path / "p", log=lambda _: None)
    assert "objects" not in plain and "f1@0.5" not in plain
    with pytest.raises(ValueError, match="needs instance masks"):
        evaluate(models["three-class"], cells, tmp_path / "x", instances=False,
                 postprocessing=PostProcessing(target="three-class"))  # fmt: skip


def test_mismatched_record_is_refused(models, cells, tmp_path):
    with pytest.raises(ValueError, match="needs a model with 2 classes"):
        evaluate(models["three-class"], cells, tmp_path / "x",
                 postprocessing=PostProcessing(target="two-class"))  # fmt: skip


def test_cli_prints_the_object_scores_and_applies_overrides(models, cells, tmp_path, capsys):
    out = tmp_path / "e"
    argv = ["evaluate", str(models["three-class"]), str(cells), "--out", str(out)]
    assert main([*argv, "--instances", "--min-size", "5", "--seed-threshold", "0.6"]) == 0
    printed = capsys.readouterr().out
    for key in OBJECTS:
        assert key in printed
    record = json.loads((out / "metrics.json").read_text())["objects"]["postprocessing"]
    assert (record["min_size"], record["seed_threshold"]) == (5, 0.6)
    assert main([*argv, "--mask-threshold", "1.5"]) == 2
    assert "mask_threshold" in capsys.readouterr().err
    semantic = ["evaluate", str(models["semantic"]), str(cells), "--out", str(out), "--instances"]
    assert main([*semantic, "--min-size", "3"]) == 2
    assert "not an instance model" in capsys.readouterr().err


def test_images_without_objects_give_nan_not_errors(models, tmp_path, monkeypatch):
    folder = tmp_path / "empty"
    write_image(folder / "images" / "a.png", np.zeros((20, 20), np.uint8))
    write_image(folder / "masks" / "a.tif", np.zeros((20, 20), np.uint16))
    empty = np.stack([np.ones((20, 20)), np.zeros((20, 20))]).astype(np.float32)
    monkeypatch.setattr(evaluate_module, "predict", lambda model, image, **kw: empty)
    result = evaluate(models["two-class"], folder, tmp_path / "e", log=lambda _: None)
    assert result["tp@0.5"] == result["fp@0.5"] == result["fn@0.5"] == 0
    assert result["accuracy@0.5"] is None and result["pq@0.5"] is None  # NaN → JSON null
    assert math.isnan(result["per_image"][0]["f1@0.5"] or math.nan)
    assert "report.html" in {p.name for p in (tmp_path / "e").iterdir()}


def test_isbi_scores_the_dataset_as_one_stack_as_the_challenge(models, tmp_path):
    import torch

    from pixelwise.metrics import ISBI2012_SCORES, isbi2012
    from pixelwise.tiling import predict

    root = tmp_path / "em"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        mask = (rng.random((40, 40)) > 0.3).astype(np.uint8) * 255  # 255 = interior, 0 = membrane
        write_image(root / "images" / f"{name}.png", (rng.random((40, 40)) * 255).astype(np.uint8))
        write_image(root / "masks" / f"{name}.png", mask)
    result = evaluate(models["semantic"], root, tmp_path / "out", isbi=True, log=lambda _: None)
    model = pixelwise.load(models["semantic"])
    images = [read_image(p) for p in sorted((root / "images").iterdir())]
    truths = [read_image(p) == 255 for p in sorted((root / "masks").iterdir())]
    with torch.no_grad():
        interiors = [predict(model, (im.astype(np.float32) / 255 - 0.3) / 0.2)[1] for im in images]
    expected = isbi2012(np.stack(interiors), np.stack(truths))
    for key in ISBI2012_SCORES:
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key
        alone = isbi2012(interiors[0], truths[0])[key]
        assert result["per_image"][0][key] == pytest.approx(alone, abs=1e-9), key
