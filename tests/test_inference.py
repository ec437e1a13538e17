"""pixelwise.inference: predict_files end to end, bad inputs, streaming, rank split."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage
from skimage.segmentation import find_boundaries

import pixelwise
from conftest import LogitsAsInput
from pixelwise import cli, instances, report, tiling
from pixelwise.data import read_image, to_chw_float, voc_palette
from pixelwise.distributed import distributed_context, select_device
from pixelwise.inference import (
    NormalizedImage,
    expand_inputs,
    instance_dtype,
    objects_in_blocks,
    output_names,
    predict_files,
)
from pixelwise.inference.blocks import object_rles, object_rows
from pixelwise.inference.outputs import Outputs
from pixelwise.instances import PostProcessing, object_scores, objects_from_probabilities
from pixelwise.models import UNet
from pixelwise.synthetic import touching_cells
from pixelwise.tiling import PredictOptions

NORM = {"mean": [0.45], "std": [0.1], "scale": 1 / 255}
PALETTE = [[0, 0, 0], [255, 255, 0]]  # shorter than the 3 classes: class 2 gets VOC green


def _model(in_channels: int = 1, padding: str = "valid") -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels, 3, base_channels=4, depth=3, padding=padding).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    pixelwise.save(
        _model(), path, normalization=NORM, class_names=["bg", "a", "b"], palette=PALETTE
    )
    return path


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 image with blobs, so the tiny network predicts several classes."""
    y, x = np.mgrid[:h, :w]
    img = 110 + 40 * np.sin(x / 4.0) * np.cos(y / 5.0) + rng.normal(0, 12, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a.png (40×52), b.tif (37×45), c.jpg (33×41), stack.tif (3 pages of 30×36)."""
    folder = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    Image.fromarray(_smooth(rng, 40, 52)).save(folder / "a.png")
    tifffile.imwrite(folder / "b.tif", _smooth(rng, 37, 45))
    Image.fromarray(_smooth(rng, 33, 41)).save(folder / "c.jpg", quality=95)
    stack = np.stack([_smooth(rng, 30, 36) for _ in range(3)])
    tifffile.imwrite(folder / "stack.tif", stack, photometric="minisblack")
    (folder / "notes.txt").write_text("not an image")
    return folder


GOOD = {
    "a": ("a.png", None),
    "b": ("b.tif", None),
    "c": ("c.jpg", None),
    "stack_p0000": ("stack.tif", 0),
    "stack_p0001": ("stack.tif", 1),
    "stack_p0002": ("stack.tif", 2),
}


def _reference_probs(folder: Path, file: str, page: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(raw image, (K, H, W) probabilities) computed directly with tiling.predict."""
    raw = read_image(folder / file, page=page)
    x = to_chw_float(raw, normalization=NORM)
    return raw, tiling.predict(_model(), x, output="probs")


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.fixture(scope="module")
def full_run(checkpoint: Path, good_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    lines: list[str] = []
    summary = predict_files(
        checkpoint,
        [good_folder],
        out,
        probs=True,
        overlay=True,
        objects=True,
        progress=False,
        device="cpu",  # the references below run on the CPU: bitwise comparable
        log=lines.append,
    )
    return out, summary, lines


def test_every_image_and_page_gets_its_outputs(full_run) -> None:
    out, summary, lines = full_run
    assert summary.ok and summary.exit_status == 0
    assert summary.images == 6
    expected = set()
    for name in GOOD:
        expected |= {
            out / f"{name}.png",
            out / "probs" / f"{name}.tif",
            out / "overlays" / f"{name}.png",
            out / "objects" / f"{name}.csv",
            out / "objects" / f"{name}.json",
        }
    assert set(summary.written) == expected
    assert all(p.is_file() for p in expected)
    assert len(lines) == 6  # one line per image, naming its outputs
    assert lines[0].startswith("[1/4] ") and "a.png → a.png, probs/a.tif" in lines[0]
    assert _temp_files(out) == []


@pytest.mark.parametrize("name", sorted(GOOD))
def test_outputs_match_tiling_predict_on_normalised_image(full_run, good_folder, name) -> None:
    out, _, _ = full_run
    raw, probs = _reference_probs(good_folder, *GOOD[name])
    labels = probs.argmax(axis=0)
    assert len(np.unique(labels)) >= 2  # the check below is not vacuous

    class_map = Image.open(out / f"{name}.png")
    assert class_map.mode == "P"  # palette PNG whose indices are the class ids
    np.testing.assert_array_equal(np.array(class_map), labels)
    colours = np.array(class_map.getpalette()[:9]).reshape(3, 3)
    np.testing.assert_array_equal(colours, [[0, 0, 0], [255, 255, 0], [0, 128, 0]])

    stored = tifffile.imread(out / "probs" / f"{name}.tif")
    assert stored.dtype == np.float32 and stored.shape == probs.shape
    np.testing.assert_allclose(stored, probs, atol=1e-6)

    rgb = read_image(out / "overlays" / f"{name}.png")
    colours = np.array([[0, 0, 0], [255, 255, 0], [0, 128, 0]], np.uint8)
    np.testing.assert_array_equal(rgb, report.overlay(raw, labels, alpha=0.4, palette=colours))

    with open(out / "objects" / f"{name}.csv") as f:
        rows = list(csv.DictReader(f))
    objects = instances.label(labels)
    assert len(rows) == objects.max()
    table = instances.object_table(objects, class_map=labels, probs=probs)
    assert [int(r["area"]) for r in rows] == [t["area"] for t in table]
    assert [int(r["class"]) for r in rows] == [t["class"] for t in table]

    coco = json.loads((out / "objects" / f"{name}.json").read_text())
    file, page = GOOD[name]
    assert coco["images"][0]["file_name"] == file and coco["images"][0].get("page") == page
    assert coco["categories"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    annotations = coco["annotations"]
    assert [a["category_id"] for a in annotations] == [t["class"] for t in table]
    for a in annotations:  # every RLE mask is its object
        np.testing.assert_array_equal(_rle_mask(a["segmentation"]), objects == a["id"])


def _rle_mask(rle: dict) -> np.ndarray:
    """Decode COCO's uncompressed RLE: column-major run lengths, starting with background."""
    h, w = rle["size"]
    flat = np.zeros(h * w, bool)
    starts = np.cumsum([0, *rle["counts"]])
    for start, stop in zip(starts[1::2], starts[2::2], strict=False):
        flat[start:stop] = True
    return flat.reshape(w, h).T


def test_without_probs_the_class_map_is_tiling_labels_and_tif_format(
    checkpoint: Path, good_folder: Path, tmp_path: Path
) -> None:
    summary = predict_files(
        checkpoint, [good_folder / "b.tif"], tmp_path, output_format="tif", device="cpu", log=None
    )
    assert summary.written == [tmp_path / "b.tif"]
    x = to_chw_float(read_image(good_folder / "b.tif"), normalization=NORM)
    expected = tiling.predict(_model(), x, output="labels")
    stored = tifffile.imread(tmp_path / "b.tif")
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, expected)


@pytest.mark.filterwarnings("ignore:.*zero-size array:UserWarning")
def test_bad_inputs_get_one_line_each_and_good_files_are_still_written(
    checkpoint: Path, good_folder: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    Image.fromarray(np.full((20, 24, 3), 100, np.uint8)).save(bad / "rgb.png")
    tifffile.imwrite(bad / "empty.tif", np.zeros((0, 0), np.uint8))
    nan = np.full((20, 24), 0.5, np.float32)
    nan[3, 4] = np.nan
    tifffile.imwrite(bad / "nan.tif", nan)
    out = tmp_path / "out"
    lines: list[str] = []
    summary = predict_files(
        checkpoint,
        [bad, good_folder / "a.png", tmp_path / "missing.png"],
        out,
        progress=False,
        log=lines.append,
    )
    assert summary.exit_status == 1 and summary.images == 1
    assert summary.written == [out / "a.png"] and (out / "a.png").is_file()
    failed = {f.source: f.message for f in summary.failures}
    assert set(failed) == {
        str(tmp_path / "missing.png"),
        str(bad / "corrupt.png"),
        str(bad / "empty.tif"),
        str(bad / "nan.tif"),
        str(bad / "rgb.png"),
    }
    assert failed[str(tmp_path / "missing.png")] == (
        f"{tmp_path / 'missing.png'}: no such file or folder; check the path"
    )
    assert failed[str(bad / "rgb.png")] == (
        f"{bad / 'rgb.png'}: image is RGB, 3 channels but the model takes 1 channel(s); "
        "convert it to grayscale (e.g. PIL's Image.convert('L')) or use a model trained on "
        "3-channel images"
    )
    assert failed[str(bad / "empty.tif")] == (
        f"{bad / 'empty.tif'}: image is empty (0, 0 pixels); remove the file or replace it "
        "with a real image"
    )
    assert failed[str(bad / "nan.tif")].startswith(
        f"{bad / 'nan.tif'}: image has 1 NaN or infinite values; replace NaNs"
    )
    assert failed[str(bad / "corrupt.png")].startswith(f"{bad / 'corrupt.png'}: cannot read image")
    failed_lines = [line for line in lines if line.startswith("failed: ")]
    assert sorted(failed_lines) == sorted(f"failed: {m}" for m in failed.values())
    assert all("\n" not in line and "Traceback" not in line for line in lines)
    assert "5 input(s) failed" in summary.report()
    assert _temp_files(out) == []


def test_wrong_channels_message_for_a_three_channel_model(tmp_path: Path) -> None:
    model = _model(in_channels=3, padding="same")
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.full((16, 16, 3), 9, np.uint8)).save(tmp_path / "rgb.png")
    summary = predict_files(model, [tmp_path], tmp_path / "out", log=None)
    assert summary.written == [tmp_path / "out" / "rgb.png"]
    assert [f.message for f in summary.failures] == [
        f"{tmp_path / 'gray.png'}: image is grayscale, 1 channel but the model takes 3 "
        "channel(s); convert it to RGB or use a model trained on 1-channel images"
    ]


def test_streamed_prediction_equals_in_memory(
    checkpoint: Path, good_folder: Path, full_run, tmp_path: Path
) -> None:
    """Above stream_pixels the input is memory-mapped, normalised per tile and the outputs are
    memory-mapped TIFFs; the numbers are those of the in-memory path."""
    full_out = full_run[0]
    lines: list[str] = []
    summary = predict_files(
        checkpoint,
        [good_folder / "b.tif", good_folder / "a.png"],
        tmp_path,
        probs=True,
        overlay=True,
        stream_pixels=100,
        device="cpu",
        log=lines.append,
    )
    assert summary.ok and summary.images == 2
    for name in ("a", "b"):
        labels = tifffile.imread(tmp_path / f"{name}.tif")
        np.testing.assert_array_equal(labels, np.array(Image.open(full_out / f"{name}.png")))
        probs = tifffile.imread(tmp_path / "probs" / f"{name}.tif")
        np.testing.assert_allclose(probs, tifffile.imread(full_out / "probs" / f"{name}.tif"))
        assert not (tmp_path / "overlays" / f"{name}.png").exists()
    assert len(summary.notes) == 2 and "overlay skipped" in summary.notes[0]
    assert sum(line.startswith("note: ") for line in lines) == 2
    assert _temp_files(tmp_path) == []


def test_interrupted_streamed_write_leaves_no_file(
    checkpoint: Path, good_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    def crash(model, image, *, out, **kwargs):
        out[:5] = 1  # half-written map
        raise KeyboardInterrupt

    monkeypatch.setattr(tiling, "predict", crash)
    with pytest.raises(KeyboardInterrupt):
        predict_files(checkpoint, [good_folder / "b.tif"], tmp_path, stream_pixels=1, log=None)
    assert list(tmp_path.rglob("*")) == []


def test_normalized_image_reads_regions_normalised() -> None:
    raw = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    view = NormalizedImage(raw, NORM, "x")
    assert view.shape == (1, 5, 7) and view.ndim == 3 and view.dtype == np.float32
    full = to_chw_float(raw, normalization=NORM)
    np.testing.assert_array_equal(view[:, 1:4, 2:6], full[:, 1:4, 2:6])
    np.testing.assert_allclose(view[0, 0:1, 0:1], [[-4.5]], rtol=1e-6)


def test_rank_split_is_disjoint_and_covers_all(
    checkpoint: Path, good_folder: Path, tmp_path: Path
) -> None:
    written = []
    for rank in (0, 1):
        summary = predict_files(
            checkpoint, [good_folder], tmp_path, rank=rank, world_size=2, log=None
        )
        assert summary.ok
        written.append({p.name for p in summary.written})
    assert written[0] == {"a.png", "c.png"}  # files[0::2] of a.png, b.tif, c.jpg, stack.tif
    assert written[1] == {"b.png", "stack_p0000.png", "stack_p0001.png", "stack_p0002.png"}
    assert {p.name for p in tmp_path.iterdir()} == written[0] | written[1]


def test_distributed_context_reads_torchrun_variables() -> None:
    assert distributed_context({}) == (0, 1, 0)
    assert distributed_context({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(ValueError, match="RANK must be an integer, got 'x'"):
        distributed_context({"RANK": "x"})
    with pytest.raises(ValueError, match=r"got rank 4 and world_size 4"):
        distributed_context({"RANK": "4", "WORLD_SIZE": "4"})


def test_select_device() -> None:
    assert select_device("cpu", 5) == torch.device("cpu")
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert select_device(None, 0) == expected


def test_expand_inputs_and_output_names(good_folder: Path, tmp_path: Path) -> None:
    files, failures = expand_inputs([good_folder, good_folder / "a.png", tmp_path])
    assert [f.name for f in files] == ["a.png", "b.tif", "c.jpg", "stack.tif"]  # a.png once
    assert [f.message for f in failures] == [
        f"{tmp_path}: folder has no image files (.png, .jpg, .jpeg, .tif, .tiff); point at the "
        "folder holding the images"
    ]
    paths = [Path("x/a.png"), Path("x/a.tif"), Path("x/b.png"), Path("y/b.png"), Path("c.tif")]
    assert output_names(paths) == ["a_png", "a_tif", "x_b_png", "y_b_png", "c"]


def test_options_that_would_fail_every_file_raise_first(
    checkpoint: Path, good_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"tile_size 50 is not a valid input size.*48, 52"):
        predict_files(checkpoint, [good_folder], tmp_path, tile_size=50, log=None)
    formats = "output_format must be one of 'png', 'tif', 'ome-zarr'; got 'jpg'"
    with pytest.raises(ValueError, match=formats):
        predict_files(checkpoint, [good_folder], tmp_path, output_format="jpg", log=None)
    with pytest.raises(ValueError, match="autocast must be one of None, 'bf16', 'fp16'; got"):
        predict_files(checkpoint, [good_folder], tmp_path, autocast="int8", log=None)
    with pytest.raises(ValueError, match="would overwrite the input"):
        predict_files(checkpoint, [good_folder], good_folder, log=None)
    assert list(tmp_path.iterdir()) == []


def test_one_wording_for_options_from_predict_and_predict_files(
    checkpoint: Path, good_folder: Path, tmp_path: Path
) -> None:
    """An option is checked in one place: predict(), predict_files() and PredictOptions raise
    the same message, and predict_files raises it before any file is read."""
    model = pixelwise.load(checkpoint)
    image = np.zeros((1, 20, 20), np.float32)
    for bad in ({"tile_size": 50}, {"halo": 8}, {"tta": "rot"}, {"memory_budget_mb": -1}):
        messages = []
        for call in (
            lambda bad=bad: tiling.predict(model, image, **bad),
            lambda bad=bad: tiling.predict(model, image, PredictOptions(**bad)),
            lambda bad=bad: predict_files(checkpoint, [good_folder], tmp_path, log=None, **bad),
            lambda bad=bad: predict_files(
                checkpoint, [good_folder], tmp_path, options=PredictOptions(**bad), log=None
            ),
        ):
            with pytest.raises(ValueError) as info:
                call()
            messages.append(str(info.value))
        assert len(set(messages)) == 1, messages
    assert list(tmp_path.iterdir()) == []


def test_options_object_equals_keywords(checkpoint: Path, good_folder: Path, tmp_path: Path):
    options = PredictOptions(tile_size=52, batch_size=2, tta="flips", device="cpu")
    by_object = predict_files(
        checkpoint, [good_folder / "a.png"], tmp_path / "o", options=options, log=None
    )
    by_keywords = predict_files(
        checkpoint,
        [good_folder / "a.png"],
        tmp_path / "k",
        tile_size=52,
        batch_size=2,
        tta="flips",
        device="cpu",
        log=None,
    )
    assert by_object.ok and by_keywords.ok
    np.testing.assert_array_equal(
        np.array(Image.open(tmp_path / "o" / "a.png")),
        np.array(Image.open(tmp_path / "k" / "a.png")),
    )
    with pytest.raises(TypeError, match="unknown prediction option"):
        predict_files(checkpoint, [good_folder], tmp_path, tile=52, log=None)


@pytest.mark.parametrize("stream_pixels", [None, 100])
def test_every_output_is_0644_under_umask_022(
    checkpoint: Path, good_folder: Path, tmp_path: Path, stream_pixels: int | None
) -> None:
    """Class maps, overlays, probabilities and object files are readable by other users of a
    shared server: 0o666 minus the umask, in memory and streamed."""
    extra = {} if stream_pixels is None else {"stream_pixels": stream_pixels}
    previous = os.umask(0o022)
    try:
        summary = predict_files(
            checkpoint,
            [good_folder / "a.png"],
            tmp_path,
            probs=True,
            overlay=True,
            objects=True,
            device="cpu",
            log=None,
            **extra,
        )
    finally:
        os.umask(previous)
    assert summary.ok
    expected = {"a.tif", "probs/a.tif"} if stream_pixels else {
        "a.png", "probs/a.tif", "overlays/a.png", "objects/a.csv", "objects/a.json"
    }  # fmt: skip
    assert {p.relative_to(tmp_path).as_posix() for p in summary.written} == expected
    for path in summary.written:
        assert path.stat().st_mode & 0o777 == 0o644, path


# --------------------------------------------------------------------------------------------
# Instance models: predict_files(instances=True), `pixelwise predict --instances`
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instance_run(instance_checkpoint: Path, good_folder: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("instances")
    previous = os.umask(0o022)
    try:
        summary = predict_files(
            instance_checkpoint, [good_folder], out, instances=True, device="cpu", log=None
        )
    finally:
        os.umask(previous)
    return out, summary


def _segment(checkpoint: Path, folder: Path, name: str, **kwargs) -> pixelwise.Segmentation:
    file, page = GOOD[name]
    segmenter = pixelwise.Segmenter.from_checkpoint(checkpoint, device="cpu", **kwargs)
    return segmenter.predict(read_image(folder / file, page=page))


def test_instances_files_are_the_segmenter_objects(
    instance_run, instance_checkpoint: Path, good_folder: Path
) -> None:
    out, summary = instance_run
    assert summary.ok and summary.images == len(GOOD)
    expected_files = set()
    for name in GOOD:
        expected_files |= {
            out / f"{name}.png",
            out / "instances" / f"{name}.tif",
            out / "objects" / f"{name}.csv",
            out / "objects" / f"{name}.json",
        }
    assert set(summary.written) == expected_files
    for path in summary.written:
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert _temp_files(out) == []
    total = 0
    for name in GOOD:
        result = _segment(instance_checkpoint, good_folder, name)
        stored = tifffile.imread(out / "instances" / f"{name}.tif")
        assert stored.dtype == np.uint16
        np.testing.assert_array_equal(stored, result.instances)
        total += int(stored.max())
        with open(out / "objects" / f"{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == stored.max()
        assert [int(r["id"]) for r in rows] == list(range(1, len(rows) + 1))
        assert {r["class"] for r in rows} <= {"1"}
        np.testing.assert_allclose([float(r["mean_probability"]) for r in rows], result.scores)
        coco = json.loads((out / "objects" / f"{name}.json").read_text())
        assert coco["categories"] == [{"id": 1, "name": "object"}]
        scores = np.array([a["score"] for a in coco["annotations"]])
        assert ((scores >= 0) & (scores <= 1)).all()
        np.testing.assert_allclose(scores, object_scores(result.probabilities, stored), rtol=1e-12)
        for a in coco["annotations"]:
            np.testing.assert_array_equal(_rle_mask(a["segmentation"]), stored == a["id"])
    assert total >= 50  # the checks above are not vacuous


def _shipped_like(path: Path) -> Path:
    """The instance checkpoint of conftest, saved as a shipped model is: with the objects'
    recorded diameter and a model card ("pretrained"), so its default diameter is "auto"."""
    from conftest import save_instance_unet

    return save_instance_unet(path, object_diameter=12.0, pretrained={"name": "made-up"})


def test_a_shipped_model_defaults_to_diameter_auto_and_streams_as_is(
    instance_checkpoint: Path, good_folder: Path, tmp_path: Path
) -> None:
    """diameter="default": "auto" for a checkpoint with a model card, as is for any other; a
    streamed image with "auto" is predicted as is with a note, one with a fixed diameter fails
    with a message naming the fix, and the batch goes on."""
    shipped = _shipped_like(tmp_path / "shipped.safetensors")
    assert pixelwise.Segmenter.from_checkpoint(shipped, device="cpu").diameter == "auto"
    assert pixelwise.Segmenter.from_checkpoint(shipped, device="cpu").auto_diameter
    as_is = pixelwise.Segmenter.from_checkpoint(shipped, device="cpu", diameter=None)
    assert as_is.diameter is None and not as_is.auto_diameter and as_is.scale == 1.0
    own = pixelwise.Segmenter.from_checkpoint(instance_checkpoint, device="cpu")
    assert own.diameter is None and not own.auto_diameter
    streamed = dict(instances=True, stream_pixels=100, device="cpu", log=None)
    inputs = [good_folder / "a.png", good_folder / "b.tif"]
    default = predict_files(shipped, inputs, tmp_path / "default", **streamed)
    plain = predict_files(shipped, inputs, tmp_path / "plain", diameter=None, **streamed)
    assert default.ok and plain.ok and plain.notes == []
    assert len(default.notes) == 2 and "predicted as is" in default.notes[0]
    assert "diameter auto measures the objects of a whole image" in default.notes[0]
    for name in ("a", "b"):
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "default" / "instances" / f"{name}.tif"),
            tifffile.imread(tmp_path / "plain" / "instances" / f"{name}.tif"),
        )
    fixed = predict_files(shipped, inputs, tmp_path / "fixed", diameter=24.0, **streamed)
    assert not fixed.ok and len(fixed.failures) == 2 and fixed.images == 0
    message = fixed.failures[0].message
    assert "a streamed image cannot be resized for --diameter" in message
    assert "(scale 0.5), or leave --diameter out" in message


def test_objects_of_an_instance_model_are_its_instances(
    instance_run, instance_checkpoint: Path, good_folder: Path, tmp_path: Path
) -> None:
    """--objects alone lists the same objects as --instances, without the label images."""
    summary = predict_files(
        instance_checkpoint, [good_folder / "a.png"], tmp_path, objects=True, log=None
    )
    assert summary.ok and not (tmp_path / "instances").exists()
    for suffix in ("csv", "json"):
        written = (tmp_path / "objects" / f"a.{suffix}").read_text()
        assert written == (instance_run[0] / "objects" / f"a.{suffix}").read_text()


def test_instances_of_a_semantic_model_fail_before_any_work(
    checkpoint: Path, good_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError) as info:
        predict_files(checkpoint, [good_folder], tmp_path, instances=True, log=None)
    assert str(info.value) == (
        f"checkpoint {checkpoint} is not an instance model (no target in its metadata); train "
        "with --instances, or use --objects for connected components"
    )
    with pytest.raises(ValueError, match="pass postprocessing=PostProcessing"):
        predict_files(_model(), [good_folder], tmp_path, instances=True, log=None)
    assert list(tmp_path.iterdir()) == []


def test_postprocessing_override_changes_the_objects(
    instance_run, instance_checkpoint: Path, good_folder: Path, tmp_path: Path
) -> None:
    larger = PostProcessing(min_size=40)
    summary = predict_files(
        instance_checkpoint,
        [good_folder / "a.png"],
        tmp_path,
        instances=True,
        postprocessing=larger,
        device="cpu",
        log=None,
    )
    assert summary.ok
    stored = tifffile.imread(tmp_path / "instances" / "a.tif")
    default = tifffile.imread(instance_run[0] / "instances" / "a.tif")
    assert 0 < stored.max() < default.max()
    result = _segment(instance_checkpoint, good_folder, "a", postprocessing=larger)
    np.testing.assert_array_equal(stored, result.instances)


def test_cli_predict_instances_flags(
    instance_checkpoint: Path,
    checkpoint: Path,
    good_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    argv = ["predict", str(instance_checkpoint), str(good_folder / "a.png"), "--out", str(out)]
    flags = ["--instances", "--device", "cpu", "--no-progress"]
    assert cli.main([*argv, *flags, "--min-size", "40", "--mask-threshold", "0.4"]) == 0
    expected = PostProcessing(min_size=40, mask_threshold=0.4)
    result = _segment(instance_checkpoint, good_folder, "a", postprocessing=expected)
    np.testing.assert_array_equal(tifffile.imread(out / "instances" / "a.tif"), result.instances)
    capsys.readouterr()

    semantic = ["predict", str(checkpoint), str(good_folder / "a.png"), "--out", str(out / "s")]
    assert cli.main([*semantic, "--instances"]) == 2
    assert capsys.readouterr().err == (
        f"error: checkpoint {checkpoint} is not an instance model (no target in its metadata); "
        "train with --instances, or use --objects for connected components\n"
    )
    assert cli.main([*semantic, "--objects", "--seed-threshold", "0.6"]) == 2
    assert "--seed-threshold: checkpoint" in capsys.readouterr().err
    assert cli.main([*argv, "--instances", "--mask-threshold", "1.5"]) == 2
    assert "mask_threshold must be a probability in [0, 1), got 1.5" in capsys.readouterr().err
    assert not (out / "s").exists()


def test_instance_maps_above_65535_objects_are_uint32(tmp_path: Path) -> None:
    assert instance_dtype(65535) is np.uint16 and instance_dtype(65536) is np.uint32
    outputs = Outputs(
        out_dir=tmp_path,
        num_classes=3,
        palette=voc_palette(3),
        instances=True,
        postprocessing=PostProcessing(),
    )
    objects = np.arange(1, 280 * 250 + 1, dtype=np.int32).reshape(280, 250)  # 70,000 objects
    labels = np.ones(objects.shape, np.uint8)
    probs = np.zeros((3, *objects.shape), np.float32)
    scores = np.full(objects.max(), 0.5)
    outputs.write(
        "many", labels, labels, probs, file_name="many.png", objects=objects, scores=scores
    )
    stored = tifffile.imread(tmp_path / "instances" / "many.tif")
    assert stored.dtype == np.uint32
    np.testing.assert_array_equal(stored, objects)


# --------------------------------------------------------------------------------------------
# Streamed instances: post-processing in overlapping blocks
# --------------------------------------------------------------------------------------------


def _cell_probabilities(shape: tuple[int, int], n_cells: int, seed: int) -> np.ndarray:
    """(3, H, W) float32 three-class probabilities (background, interior, boundary) of a dense
    sheet of touching synthetic cells (radius 6-14 px), blurred and noisy."""
    rng = np.random.default_rng(seed)
    _, cells = touching_cells(shape, radius=(6, 14), touching=0.9, n_cells=n_cells, rng=seed)
    boundary = find_boundaries(cells, mode="inner") & (cells > 0)
    onehot = np.stack([cells == 0, (cells > 0) & ~boundary, boundary]).astype(np.float64)
    logits = 4 * ndimage.gaussian_filter(onehot, (0, 1, 1)) + rng.normal(0, 0.15, onehot.shape)
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


def _in_blocks(probs: np.ndarray, params: PostProcessing, block_size: int, overlap: int):
    held: list[np.ndarray] = []

    def out(count: int) -> np.ndarray:
        held.append(np.zeros(probs.shape[1:], instance_dtype(count)))
        return held[0]

    scratch = np.zeros(probs.shape[1:], np.uint32)
    made = objects_in_blocks(
        probs, params, scratch=scratch, out=out, block_size=block_size, overlap=overlap
    )
    return held[0], made


def _crossing_seams(objects: np.ndarray, block_size: int) -> int:
    """Objects whose box spans a boundary between core blocks."""
    count = 0
    for box in ndimage.find_objects(objects):
        rows, cols = box
        count += (rows.start // block_size != (rows.stop - 1) // block_size) or (
            cols.start // block_size != (cols.stop - 1) // block_size
        )
    return count


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("block_size", "overlap"), [(64, 40), (50, 60)])
@pytest.mark.parametrize("exclude_border", [False, True])
def test_objects_in_blocks_equal_the_whole_image_objects(
    seed: int, block_size: int, overlap: int, exclude_border: bool
) -> None:
    """A dense sheet of ~280 touching cells (up to ~50 px across, in one or two connected
    foreground regions) cut into 20-30 blocks: the objects equal the whole-image ones, ids
    included (objects up to overlap / 2 across suffice; these are larger, and still exact)."""
    probs = _cell_probabilities((300, 260), 300, seed)
    params = PostProcessing(fill_holes=False, min_size=10, exclude_border=exclude_border)
    whole = objects_from_probabilities(probs, params)
    assert whole.max() >= 200 and _crossing_seams(whole, block_size) >= 50  # not vacuous
    streamed, made = _in_blocks(probs, params, block_size, overlap)
    assert (made.count, made.cut, made.conflicts) == (whole.max(), 0, 0)
    np.testing.assert_array_equal(streamed, whole)


def test_objects_in_blocks_with_holes_filled_per_object() -> None:
    probs = _cell_probabilities((300, 260), 300, 0)
    params = PostProcessing(min_size=10)  # fill_holes=True
    streamed, _ = _in_blocks(probs, params, 50, 60)
    np.testing.assert_array_equal(streamed, objects_from_probabilities(probs, params))


def test_objects_larger_than_the_overlap_are_counted_as_cut() -> None:
    probs = _cell_probabilities((300, 260), 300, 0)
    params = PostProcessing(fill_holes=False, min_size=10)
    _, made = _in_blocks(probs, params, 37, 16)
    assert made.cut > 0


def test_streamed_tables_equal_the_whole_map_tables() -> None:
    probs = _cell_probabilities((192, 176), 150, 3)
    params = PostProcessing(fill_holes=False, min_size=10)
    objects, made = _in_blocks(probs, params, 48, 40)
    assert made.count >= 50
    rows = object_rows(objects, probs, made.count)
    table = instances.object_table(objects)
    assert [(r["id"], r["area"], r["bbox"], r["centroid"]) for r in rows] == [
        (t["id"], t["area"], t["bbox"], t["centroid"]) for t in table
    ]
    assert {r["class"] for r in rows} == {1}
    np.testing.assert_allclose(
        [r["mean_probability"] for r in rows], object_scores(probs, objects), rtol=1e-12
    )
    coco = instances.to_coco(objects, image_id=1, file_name="x")
    assert object_rles(objects, rows) == [a["segmentation"] for a in coco["annotations"]]


@pytest.mark.parametrize("probs", [True, False])
def test_streamed_instances_equal_the_whole_image_instances(tmp_path: Path, probs: bool) -> None:
    """predict_files above stream_pixels (48² px blocks with 40 px of context): the instance
    map is objects_from_probabilities of the whole probability map, and the tables are those
    of the in-memory run."""
    cells = _cell_probabilities((192, 176), 150, 3)  # (3, H, W)
    log_probs = np.log(np.moveaxis(cells, 0, -1))  # (H, W, 3)
    tifffile.imwrite(tmp_path / "cells.tif", log_probs, photometric="rgb")
    params = PostProcessing(fill_holes=False, min_size=10)
    common = dict(
        instances=True,
        postprocessing=params,
        options=PredictOptions(tile_size=64, device="cpu"),
        log=None,
    )
    whole = predict_files(LogitsAsInput(), [tmp_path / "cells.tif"], tmp_path / "w", **common)
    previous = os.umask(0o022)
    try:
        streamed = predict_files(
            LogitsAsInput(),
            [tmp_path / "cells.tif"],
            tmp_path / "s",
            probs=probs,
            stream_pixels=48 * 48,
            block_overlap=40,
            **common,
        )
    finally:
        os.umask(previous)
    assert whole.ok and streamed.ok and streamed.notes == []
    expected = {"cells.tif", "instances/cells.tif", "objects/cells.csv", "objects/cells.json"}
    expected |= {"probs/cells.tif"} if probs else set()
    assert {p.relative_to(tmp_path / "s").as_posix() for p in streamed.written} == expected
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in streamed.written)
    assert _temp_files(tmp_path / "s") == []  # the scratch files are gone
    objects = tifffile.imread(tmp_path / "s" / "instances" / "cells.tif")
    assert objects.dtype == np.uint16 and objects.max() >= 50
    if probs:
        stored = tifffile.imread(tmp_path / "s" / "probs" / "cells.tif")
        np.testing.assert_array_equal(objects, objects_from_probabilities(stored, params))
    np.testing.assert_array_equal(objects, tifffile.imread(tmp_path / "w/instances/cells.tif"))
    with open(tmp_path / "s/objects/cells.csv") as a, open(tmp_path / "w/objects/cells.csv") as b:
        rows, reference = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert len(rows) == objects.max()
    for row, ref in zip(rows, reference, strict=True):
        assert {k: v for k, v in row.items() if k != "mean_probability"} == {
            k: v for k, v in ref.items() if k != "mean_probability"
        }
        assert float(row["mean_probability"]) == pytest.approx(float(ref["mean_probability"]))
    coco = json.loads((tmp_path / "s/objects/cells.json").read_text())
    coco_whole = json.loads((tmp_path / "w/objects/cells.json").read_text())
    assert [a["segmentation"] for a in coco["annotations"]] == [
        a["segmentation"] for a in coco_whole["annotations"]
    ]
    assert coco["images"] == coco_whole["images"] and coco["categories"] == coco_whole["categories"]
    np.testing.assert_allclose(
        [a["score"] for a in coco["annotations"]], [a["score"] for a in coco_whole["annotations"]]
    )
