"""The command line, driven in-process: train → predict → evaluate → export, and user errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pixelwise
from conftest import write_disc_dataset
from pixelwise.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_disc_dataset(tmp_path_factory.mktemp("cli") / "data")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    code = main(
        [
            "train", str(dataset), "--out", str(out), "--steps", "4", "--batch-size", "2",
            "--patch-size", "16", "--val-every", "2", "--model-arg", "base_channels=4",
            "--model-arg", "depth=3", "--optimizer", "adam", "--lr", "0.01", "--weighted",
            "--class-names", "background", "blob", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    return out / "best.safetensors"


def test_train_writes_a_loadable_checkpoint(trained):
    model = pixelwise.load(trained)
    assert model.hparams["base_channels"] == 4 and model.hparams["depth"] == 3
    assert pixelwise.read_metadata(trained)["class_names"] == ["background", "blob"]


def test_predict_then_evaluate_then_export(trained, dataset, tmp_path, capsys):
    assert main(["predict", str(trained), str(dataset / "images"), "--out", str(tmp_path / "p"),
                 "--overlay", "--no-progress"]) == 0  # fmt: skip
    written = sorted(
        p.relative_to(tmp_path / "p").as_posix() for p in (tmp_path / "p").rglob("*.png")
    )
    assert "im0.png" in written and any(w.startswith("overlays/") for w in written)
    mask = np.asarray(Image.open(tmp_path / "p" / "im0.png"))
    assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 1}

    assert main(["evaluate", str(trained), str(dataset), "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "mean_iou" in out and "report.html" in out
    for name in ("metrics.json", "per_image.csv", "confusion_matrix.png", "report.html"):
        assert (tmp_path / "e" / name).stat().st_size > 0

    pytest.importorskip("onnxruntime")
    assert main(["export", str(trained), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, dataset):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"garbage")
    assert main(["predict", str(junk), str(dataset / "images"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "junk.safetensors: not a pixelwise checkpoint" in err
    assert "Traceback" not in err

    assert main(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "dataset folder does not exist" in capsys.readouterr().err

    assert main(["train", str(dataset), "--optimizer", "lbfgs"]) == 2
    assert "optimizer must be one of" in capsys.readouterr().err

    assert main(["train", str(dataset), "--out", str(tmp_path / "r"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_option_the_model_cannot_use_is_a_user_error(trained, dataset, tmp_path, capsys):
    # base 4, depth 3 valid U-Net: 50 is not a valid input size (pooling would meet an odd size)
    argv = ["predict", str(trained), str(dataset / "images"), "--out", str(tmp_path), "--tile"]
    assert main([*argv, "50", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "50" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.png"))


def test_data_check_exit_codes(dataset, tmp_path, capsys):
    assert main(["data", "check", str(dataset)]) == 0
    assert "3" in capsys.readouterr().out
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / "images" / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(bad / "masks" / "a.png")
    assert main(["data", "check", str(bad)]) == 1
    assert "size mismatch" in capsys.readouterr().out


def test_info_prints_the_paper_numbers(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "31,030,658" in out and "572 → 388" in out


def test_predict_and_export_flags_keep_their_old_spellings():
    from pixelwise.cli import build_parser

    parser = build_parser()
    base = ["predict", "m.safetensors", "in", "--out", "o"]
    new = ["--tile-size", "60", "--batch-size", "2", "--memory-budget-mb", "64", "--autocast"]
    old = ["--tile", "60", "--batch", "2", "--memory-budget", "64", "--amp"]
    canonical = parser.parse_args([*base, *new, "bf16"])
    assert vars(canonical) == vars(parser.parse_args([*base, *old, "bf16"]))
    assert (canonical.tile_size, canonical.batch_size) == (60, 2)
    assert (canonical.memory_budget_mb, canonical.autocast) == (64.0, "bf16")
    export = ["export", "m.safetensors", "--onnx", "m.onnx"]
    assert parser.parse_args([*export, "--size", "64"]).example_size == 64
    assert parser.parse_args([*export, "--example-size", "64"]).example_size == 64


def test_predict_objects_writes_csv_and_coco_json(trained, dataset, tmp_path):
    out = tmp_path / "p"
    argv = ["predict", str(trained), str(dataset / "images" / "im0.png"), "--out", str(out)]
    assert main([*argv, "--objects", "--no-progress"]) == 0
    assert (out / "objects" / "im0.csv").is_file()
    coco = json.loads((out / "objects" / "im0.json").read_text())
    assert coco["images"][0]["file_name"] == "im0.png"
    assert coco["categories"] == [{"id": 1, "name": "blob"}]


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    for name in ("overlay.png", "weight_map.png", "curves.png", "metrics.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert "touching_pairs_separated" in capsys.readouterr().out
    for name in ("overlay_two_class.png", "overlay_three_class.png"):  # a colour per object
        assert (tmp_path / "demo" / name).stat().st_size > 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    for pipeline in ("two-class", "three-class"):
        assert {"accuracy@0.5", "f1@0.5", "accuracy@0.75", "dsb_score", "merges"} <= set(
            metrics[pipeline]
        )
        assert metrics[pipeline]["postprocessing"]["target"] == pipeline
