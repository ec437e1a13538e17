"""The napari plugin, headless (Qt offscreen): manifest, widget == `pixelwise predict`, progress,
cancellation, sample data, writer, screenshot, user errors.

Needs the extra `pixelwise[napari]` (napari, npe2, magicgui, a Qt binding, pytest-qt); the module
is skipped with the reason when napari or Qt cannot be imported.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

napari = pytest.importorskip("napari", reason="the napari extra is not installed")
pytest.importorskip("pytestqt", reason="pytest-qt (the napari extra) is not installed")
try:
    from qtpy.QtCore import QPoint, Qt
except ImportError as e:  # no Qt binding, or Qt cannot load its libraries
    pytest.skip(f"Qt cannot be imported: {e}", allow_module_level=True)

import npe2  # noqa: E402
from napari.components import ViewerModel  # noqa: E402

import pixelwise  # noqa: E402
from pixelwise.cli import main  # noqa: E402
from pixelwise.data import read_image, write_image  # noqa: E402
from pixelwise.napari.job import SegmentationJob  # noqa: E402
from pixelwise.napari.sample_data import touching_cells_sample  # noqa: E402
from pixelwise.napari.widget import PROGRESS_STEPS, SegmentWidget  # noqa: E402
from pixelwise.segmenter import Segmenter  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:System theme detection requires:UserWarning")

needs_opengl = pytest.mark.skipif(
    sys.platform.startswith("linux") and not os.environ.get("DISPLAY"),
    reason="napari's canvas needs OpenGL, which Qt's offscreen platform only has through an X "
    "display: install Xvfb (apt install xvfb; pytest-xvfb, in the napari extra, starts it)",
)

TILE = 92  # a valid input size of conftest's instance U-Net: 52 px of output per tile
SIZE = 160  # the sample's side in these tests (the demo's is 512): 4 × 4 tiles of TILE


@pytest.fixture(scope="module", autouse=True)
def plugins() -> None:
    """Find the installed plugins (napari does when its Qt window starts; a ViewerModel not)."""
    npe2.PluginManager.instance().discover(include_npe1=False)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    """(SIZE, SIZE) uint8: the top-left corner of the plugin's sample image."""
    return touching_cells_sample()[0][0][:SIZE, :SIZE]


@pytest.fixture(scope="module")
def predicted(instance_checkpoint: Path, sample: np.ndarray, tmp_path_factory) -> Path:
    """`pixelwise predict --instances` of `sample` (as cells.png) with TILE: the out folder."""
    folder = tmp_path_factory.mktemp("napari-predict")
    write_image(folder / "cells.png", sample)
    argv = [str(instance_checkpoint), str(folder / "cells.png"), "--out", str(folder / "out")]
    assert main(["predict", *argv, "--instances", "--tile-size", str(TILE), "--no-progress"]) == 0
    return folder / "out"


@pytest.fixture
def widget(qapp, sample: np.ndarray, instance_checkpoint: Path) -> SegmentWidget:
    """The widget on a viewer model (layers without a canvas, so no OpenGL) holding `sample`
    as the image layer "cells", set to the checkpoint and TILE."""
    model = ViewerModel()
    model.add_image(sample, name="cells")
    widget = SegmentWidget(model)
    widget.checkpoint.value = instance_checkpoint
    widget.tile_size.value = TILE
    return widget


def _run(qtbot, widget: SegmentWidget, on_progress=None, connection=Qt.AutoConnection) -> list:
    """Run the widget's job to its end; returns the Progress values it yielded."""
    seen: list = []
    worker = widget.segment(start=False)
    assert worker is not None, widget.status.value
    worker.yielded.connect(seen.append, Qt.DirectConnection)
    if on_progress is not None:
        worker.yielded.connect(on_progress, connection)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        worker.start()
    return seen


def test_manifest_is_valid_and_registered():
    manifest = npe2.PluginManifest.from_file(files("pixelwise.napari") / "napari.yaml")
    assert manifest.name == "pixelwise"
    installed = npe2.PluginManifest.from_distribution("pixelwise")  # the entry point
    assert installed.model_dump() == manifest.model_dump()
    installed.validate_imports()  # every python_name imports
    contributions = installed.contributions
    assert [w.display_name for w in contributions.widgets] == ["Segment (overlap-tile)"]
    assert [s.key for s in contributions.sample_data] == ["touching_cells"]
    assert contributions.writers[0].layer_types == ["labels"]


def _drain(steps) -> tuple[list, object]:
    """Run a `SegmentationJob.steps()` generator to its end: (Progress values, return value)."""
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as stop:
            return seen, stop.value


def test_widget_layers_equal_predict_and_progress_reaches_the_total(qtbot, widget, predicted):
    seen = _run(qtbot, widget)
    classes, objects = widget.viewer.layers["cells classes"], widget.viewer.layers["cells objects"]
    np.testing.assert_array_equal(classes.data, read_image(predicted / "cells.png"))
    np.testing.assert_array_equal(objects.data, read_image(predicted / "instances" / "cells.tif"))
    assert objects.data.max() > 10  # the checkpoint makes tens of objects of this image
    assert list(classes.features["class"]) == ["background", "interior", "boundary"]
    assert len(objects.features["score"]) == objects.data.max()

    # progress: one value per tile batch, tiles and pixels rising to the image's
    tiles, pixels = [p.tiles for p in seen], [p.pixels for p in seen]
    assert tiles == sorted(set(tiles)) and tiles[-1] == seen[-1].total_tiles == 16
    assert pixels == sorted(set(pixels)) and pixels[-1] == seen[-1].total_pixels == SIZE * SIZE
    assert widget.progress.value == widget.progress.max == PROGRESS_STEPS
    assert widget.status.value.startswith("done") and widget.run_button.enabled


@needs_opengl
def test_docked_in_a_viewer_and_screenshot_not_blank(
    qtbot, make_napari_viewer, sample, instance_checkpoint, tmp_path
):
    viewer = make_napari_viewer()
    viewer.window.resize(1200, 800)  # room for the canvas beside the dock widget
    viewer.add_image(sample, name="cells")
    _, docked = viewer.window.add_plugin_dock_widget("pixelwise", "Segment (overlap-tile)")
    docked.checkpoint.value = instance_checkpoint
    docked.tile_size.value = TILE
    _run(qtbot, docked)
    assert [layer.name for layer in viewer.layers] == ["cells", "cells classes", "cells objects"]

    # The window's screenshot: under Qt offscreen, canvas_only=True screenshots come out black
    path = tmp_path / "viewer.png"
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    canvas = viewer.window._qt_viewer.canvas.native  # where the canvas is in the window
    corner = canvas.mapTo(viewer.window._qt_window, QPoint(0, 0))
    shot = np.asarray(Image.open(path).convert("RGB"))  # (h, w, 3) the window
    rows = slice(corner.y(), corner.y() + canvas.height())
    region = shot[rows, corner.x() : corner.x() + canvas.width()]  # the canvas
    assert region.shape[0] > 100 and region.shape[1] > 100
    assert len(np.unique(region.reshape(-1, 3), axis=0)) > 50 and region.std() > 10


def test_cancel_stops_the_computation_between_tile_batches(qtbot, widget):
    widget.batch_size.value = 2  # 16 tiles, 8 batches
    model = widget.segmenter().model
    forwards: list = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        # cancelled in the worker's thread at the first tile, so before the next batch runs
        seen = _run(qtbot, widget, lambda _: widget.cancel(), Qt.DirectConnection)
    finally:
        hook.remove()
    assert len(forwards) == 1 and len(seen) == 1 and seen[0].pixels < seen[0].total_pixels
    assert "cells classes" not in widget.viewer.layers
    assert widget.status.value.startswith("cancelled")
    assert widget.progress.value < PROGRESS_STEPS and widget.run_button.enabled


def test_job_equals_segmenter_and_stops_when_closed(instance_checkpoint, sample):
    segmenter = Segmenter.from_checkpoint(instance_checkpoint, tile_size=TILE, batch_size=4)
    progress, result = _drain(SegmentationJob(segmenter, sample).steps())
    assert [p.tiles for p in progress] == [4, 8, 12, 16]  # batches of 4 tiles
    expected = segmenter.predict(sample)
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.instances, expected.instances)

    forwards: list = []
    hook = segmenter.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        steps = SegmentationJob(segmenter, sample).steps()
        assert next(steps).tiles == 4  # the first batch
        steps.close()  # what a napari worker's quit() leaves to the garbage collector
    finally:
        hook.remove()
    assert len(forwards) == 1  # the second batch never ran

    job = SegmentationJob(segmenter, sample)
    job.cancel()  # before it starts
    assert _drain(job.steps()) == ([], None)


def test_job_with_a_diameter_equals_the_segmenter(instance_checkpoint, sample):
    """A Segmenter that resizes for a diameter: the job resizes as `predict` does."""
    meta = {**pixelwise.read_metadata(instance_checkpoint), "object_diameter": 12.0}
    model = pixelwise.load(instance_checkpoint)
    segmenter = Segmenter(model, meta=meta, diameter=18.0, tile_size=TILE, device="cpu")
    _, result = _drain(SegmentationJob(segmenter, sample).steps())
    expected = segmenter.predict(sample)
    assert result.probabilities.shape[1:] == np.shape(sample)[:2]
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)
    np.testing.assert_array_equal(result.instances, expected.instances)


def test_job_with_an_auto_diameter_makes_the_passes_of_the_segmenter(
    instance_checkpoint, sample, monkeypatch
):
    """diameter="auto": the job segments at the scales `predict` does and keeps its choice,
    reporting the progress of every pass."""
    from pixelwise.segmenter import median_diameter

    meta = pixelwise.read_metadata(instance_checkpoint)
    model = pixelwise.load(instance_checkpoint)
    first = Segmenter(model, meta=meta, tile_size=TILE, device="cpu").predict(sample)
    measured = median_diameter(first.instances, min_objects=3)
    assert measured is not None
    meta["object_diameter"] = measured / 3  # as is, the objects measure 3× the training size
    segmenter = Segmenter(model, meta=meta, diameter="auto", tile_size=TILE, device="cpu")
    assert segmenter.size_miss(first, 1.0) > 0  # so the job makes more than one pass
    scales: list[float] = []
    at = Segmenter._predict_at
    monkeypatch.setattr(
        Segmenter, "_predict_at", lambda self, *a: scales.append(a[1]) or at(self, *a)
    )
    expected = segmenter.predict(sample)
    monkeypatch.undo()
    assert len(scales) >= 2
    progress, result = _drain(SegmentationJob(segmenter, sample).steps())
    np.testing.assert_array_equal(result.probabilities, expected.probabilities)
    np.testing.assert_array_equal(result.instances, expected.instances)
    fixed = [
        Segmenter(model, meta=meta, diameter=meta["object_diameter"] / f, tile_size=TILE,
                  device="cpu")
        for f in scales
    ]  # fmt: skip
    passes = [_drain(SegmentationJob(s, sample).steps())[0] for s in fixed]
    assert len(progress) == sum(len(p) for p in passes)  # every pass reports progress


def test_sample_data_is_the_demo_image():
    viewer = ViewerModel()
    viewer.open_sample("pixelwise", "touching_cells")
    image, truth = viewer.layers["touching cells"], viewer.layers["touching cells: true objects"]
    assert image.data.shape == truth.data.shape == (512, 512) and image.data.dtype == np.uint8
    assert 100 < truth.data.max() < 400  # the demo's held-out image: 174 cells


def test_writer_writes_what_predict_writes(qtbot, widget, predicted, tmp_path):
    _run(qtbot, widget)
    _run(qtbot, widget)  # a rerun updates the layers in place
    layers = widget.viewer.layers
    assert [layer.name for layer in layers] == ["cells", "cells classes", "cells objects"]
    layers["cells classes"].save(str(tmp_path / "classes.png"), plugin="pixelwise")
    layers["cells objects"].save(str(tmp_path / "objects.tif"), plugin="pixelwise")
    ours, theirs = Image.open(tmp_path / "classes.png"), Image.open(predicted / "cells.png")
    assert ours.mode == theirs.mode == "P" and ours.getpalette() == theirs.getpalette()
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    written = read_image(tmp_path / "objects.tif")
    expected = read_image(predicted / "instances" / "cells.tif")
    assert written.dtype == expected.dtype
    np.testing.assert_array_equal(written, expected)


@pytest.mark.parametrize(
    ("checkpoint", "tile", "words"),
    [
        ("missing.safetensors", 0, "missing.safetensors: no such checkpoint file"),
        (
            None,
            50,
            "tile_size 50 is not a valid input size for this model (margin 20, stride 4); "
            "nearest valid sizes: 48, 52",
        ),
    ],
)
def test_bad_input_is_one_line_in_the_widget(widget, tmp_path, checkpoint, tile, words):
    if checkpoint is not None:
        widget.checkpoint.value = tmp_path / checkpoint
    widget.tile_size.value = tile
    assert widget.segment() is None
    status = widget.status.value
    assert status.startswith("error: ") and words in status and "\n" not in status
    assert widget.run_button.enabled
