"""Tests for pixelwise.report: palette, overlay, PNGs, and the HTML page in headless Chromium."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pixelwise.data import voc_palette as palette
from pixelwise.report import (
    OUTCOME_COLOURS,
    _curves_figure,
    confusion_matrix_png,
    outcome_overlay,
    overlay,
    plot_curves,
    thumbnail_png,
    write_report,
)

DATA_PNG = "data:image/png;base64,"


def test_palette_is_the_voc_colour_map():
    colours = palette(256)
    assert colours.dtype == np.uint8 and colours.shape == (256, 3)
    expected = [
        (0, 0, 0),
        (128, 0, 0),
        (0, 128, 0),
        (128, 128, 0),
        (0, 0, 128),
        (128, 0, 128),
        (0, 128, 128),
        (128, 128, 128),
        (64, 0, 0),
        (192, 0, 0),
    ]
    assert [tuple(c) for c in colours[:10]] == expected
    assert tuple(colours[255]) == (224, 224, 192)  # VOC's "void" colour
    assert len({tuple(c) for c in colours}) == 256


def test_overlay_blends_and_draws_contours():
    image = np.full((8, 8), 100, dtype=np.uint8)
    labels = np.zeros((8, 8), dtype=np.int64)
    labels[2:7, 2:7] = 1
    out = overlay(image, labels, alpha=0.4)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out[0, 0] == 100).all()  # background untouched
    red = palette(2)[1]
    assert tuple(out[2, 2]) == tuple(red)  # contour pixel: opaque label colour
    blended = np.round(0.6 * 100 + 0.4 * red.astype(float)).astype(np.uint8)
    assert tuple(out[4, 4]) == tuple(blended)  # interior pixel: alpha blend
    # float images are min-max scaled: 0.25 .. 0.75 becomes 0 .. 255
    ramp = np.linspace(0.25, 0.75, 64).reshape(8, 8)
    scaled = overlay(ramp, np.zeros((8, 8), dtype=np.int64))
    assert scaled[0, 0, 0] == 0 and scaled[-1, -1, 0] == 255
    # instance ids beyond the palette wrap around but never to black
    wrapped = overlay(image, np.full((8, 8), 256), palette=palette(256))
    np.testing.assert_array_equal(wrapped, overlay(image, np.full((8, 8), 1)))
    with pytest.raises(ValueError, match=r"matching the image \(8, 8\), got shape \(4, 4\)"):
        overlay(image, labels[:4, :4])


def test_outcome_overlay_colours_hits_false_positives_and_misses():
    image = np.full((20, 30), 50, dtype=np.uint8)
    gt = np.zeros((20, 30), dtype=np.int64)
    gt[2:8, 2:8], gt[2:8, 20:26] = 1, 2  # gt 2 is missed
    pred = np.zeros_like(gt)
    pred[2:8, 2:8] = 5  # matches gt 1
    pred[12:18, 2:8] = 6  # false positive
    pred[12:18, 8:14] = 7  # touches 6: its own contour
    tp, fp, miss = (tuple(c) for c in OUTCOME_COLOURS.values())
    out = outcome_overlay(image, pred, gt, matched_pred=np.array([5]), matched_gt=np.array([1]))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert tuple(out[2, 2]) == tp and tuple(out[12, 2]) == fp  # contours, opaque
    assert tuple(out[2, 20]) == miss and tuple(out[4, 22]) == (50, 50, 50)  # miss: outline only
    assert tuple(out[15, 7]) == fp and tuple(out[15, 8]) == fp  # the line between 6 and 7
    inside = np.round(0.75 * 50 + 0.25 * np.array(tp, float)).astype(np.uint8)
    assert tuple(out[4, 4]) == tuple(inside)  # tinted inside
    assert tuple(out[0, 0]) == (50, 50, 50)  # background untouched
    with pytest.raises(ValueError, match="same"):
        outcome_overlay(image, pred, gt[:5], matched_pred=[], matched_gt=[])


def test_thumbnail_png_sizes():
    rgb = np.zeros((100, 400, 3), dtype=np.uint8)
    png = thumbnail_png(rgb, max_side=200)
    assert png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).size == (200, 50)
    small = Image.open(io.BytesIO(thumbnail_png(np.zeros((10, 20), np.uint8), max_side=200)))
    assert small.size == (20, 10) and small.mode == "RGB"


def test_confusion_matrix_png(tmp_path):
    cm = np.array([[50, 5, 0], [10, 30, 0], [0, 0, 0]])
    path = confusion_matrix_png(cm, ["bg", "cell", "edge"], tmp_path / "cm.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= 300
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]
    with pytest.raises(ValueError, match=r"K = len\(class_names\) = 2, got shape \(3, 3\)"):
        confusion_matrix_png(cm, ["bg", "cell"], tmp_path / "x.png")


def test_plot_curves_reads_csv_strings_and_skips_missing(tmp_path):
    # rows as train.history holds them (floats) and as log.csv gives them back (strings, "")
    floats = [
        {"step": 1, "train_loss": 0.9},
        {"step": 2, "train_loss": 0.5, "val_loss": 0.6, "val_mean_iou": 0.4, "val_dice": 0.5},
    ]
    strings = [
        {"step": "1", "train_loss": "0.8", "val_loss": "", "val_mean_iou": "", "val_dice": ""},
        {"step": "2", "train_loss": "0.4", "val_loss": "0.7", "val_mean_iou": "0.3"},
    ]
    fig = _curves_figure({"a": floats, "b": strings})
    losses, scores = fig.axes[:2]
    curves = {line.get_label(): line for ax in (losses, scores) for line in ax.lines}
    assert sorted(curves) == [
        "a: Dice",
        "a: mean IoU",
        "a: training loss",
        "a: validation loss",
        "b: mean IoU",
        "b: training loss",
        "b: validation loss",
    ]
    assert list(curves["b: training loss"].get_xdata()) == [1, 2]
    assert list(curves["b: training loss"].get_ydata()) == [0.8, 0.4]
    assert list(curves["b: validation loss"].get_xdata()) == [2]
    assert losses.get_yscale() == "log" and scores.get_ylim() == (0.0, 1.0)
    # one unnamed run: plain labels; a run without validation rows draws no score curves
    single = _curves_figure({"": [{"step": 1, "train_loss": 1.0}]})
    assert [line.get_label() for line in single.axes[0].lines] == ["training loss"]
    assert not single.axes[1].lines

    old = os.umask(0o022)
    try:
        path = plot_curves({"a": floats, "b": strings}, tmp_path / "curves.png")
    finally:
        os.umask(old)
    assert path == tmp_path / "curves.png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (1000, 360)
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def make_rows(n=5):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = rng.integers(0, 255, (32, 48), dtype=np.uint8)
        labels = np.zeros((32, 48), dtype=np.int64)
        labels[4 : 10 + i, 5:20] = 1
        rows.append(
            {
                "name": f"img_{i}.png",
                "thumbnail_png": thumbnail_png(overlay(image, labels)),
                "mean_iou": [0.5, 0.9, float("nan"), 0.1, 0.7][i],
                "pixel_error": [0.2, 0.01, 0.3, 0.4, 0.05][i],
            }
        )
    return rows


def card_order(page):
    return re.findall(r'<div class="name">([^<]*)</div>', page)


def test_write_report_content_and_order(tmp_path):
    rows = make_rows()
    rows[0]["name"] = "<b>&x"
    cm_png = thumbnail_png(np.zeros((4, 4), np.uint8))
    path = write_report(
        tmp_path,
        summary={"mean_iou": 0.55, "per_class_iou": [0.9, 0.2], "n": 5},
        rows=rows,
        title="Eval <run>",
        figures={"confusion matrix": cm_png},
    )
    page = path.read_text()
    assert path == tmp_path / "report.html"
    assert card_order(page) == [
        "img_3.png",
        "&lt;b&gt;&amp;x",
        "img_4.png",
        "img_1.png",
        "img_2.png",
    ]
    assert "<title>Eval &lt;run&gt;</title>" in page
    assert "<td>0.5500</td>" in page and "<td>[0.9000, 0.2000]</td>" in page
    assert page.count(DATA_PNG) == len(rows) + 1
    assert "<script" not in page and "http://" not in page and "https://" not in page
    page2 = write_report(
        tmp_path,
        summary={},
        rows=rows,
        title="t",
        sort_key="pixel_error",
        worst_first_descending=True,
    ).read_text()
    assert card_order(page2)[:2] == ["img_3.png", "img_2.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_report_notes_tables_legend_and_undefined_scores(tmp_path):
    rows = make_rows(3)
    for row, accuracy in zip(rows, [0.8, float("nan"), 0.2], strict=True):
        row["accuracy@0.5"] = accuracy
    page = write_report(
        tmp_path,
        summary={"f1@0.5": 0.5},
        rows=rows,
        title="objects",
        sort_key="accuracy@0.5",
        notes=["Objects: <connected components>."],
        tables={"per IoU": [{"IoU": "0.5", "tp": 3, "f1": 0.5}, {"IoU": "0.9", "tp": 1}]},
        legend=OUTCOME_COLOURS,
    ).read_text()
    assert card_order(page) == ["img_2.png", "img_0.png", "img_1.png"]  # NaN last
    assert '<p class="note">Objects: &lt;connected components&gt;.</p>' in page
    assert "<tr><th>IoU</th><th>tp</th><th>f1</th></tr>" in page
    assert "<tr><td>0.9</td><td>1</td><td>None</td></tr>" in page  # a missing cell
    assert all(name in page for name in OUTCOME_COLOURS)
    assert "background: rgb(0, 200, 0)" in page
    # every row NaN: still a page (undefined scores are not a misnamed key)
    for row in rows:
        row["accuracy@0.5"] = float("nan")
    write_report(tmp_path, summary={}, rows=rows, title="t", sort_key="accuracy@0.5")


def test_write_report_rejects_bad_input(tmp_path):
    rows = make_rows(2)
    with pytest.raises(ValueError, match=r"sort_key 'miou' has no numeric value .*'mean_iou'"):
        write_report(tmp_path, summary={}, rows=rows, title="t", sort_key="miou")
    rows[1]["thumbnail_png"] = b"GIF89a"
    with pytest.raises(ValueError, match="row 'img_1.png' thumbnail_png must be PNG bytes"):
        write_report(tmp_path, summary={}, rows=rows, title="t")


# ---------------------------------------------------------------- headless Chromium


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                capture_output=True,
                timeout=300,
                check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium not found and could not be installed with apt-get")
    return exe


def dump_dom(exe, html_path, tmp_path):
    result = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            html_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if re.search(r"CONSOLE[(:]", line)]
    uncaught = [line for line in result.stderr.splitlines() if "Uncaught" in line]
    return result.stdout, console + uncaught


def test_report_renders_in_headless_chromium(chromium, tmp_path):
    rows = make_rows()
    path = write_report(
        tmp_path / "out",
        summary={"mean_iou": 0.55},
        rows=rows,
        title="chromium check",
        figures={"cm": rows[0]["thumbnail_png"]},
    )
    dom, console = dump_dom(chromium, path, tmp_path)
    assert console == []
    images = re.findall(r'<img src="data:image/png;base64,', dom)
    assert len(images) == len(rows) + 1
    assert dom.count('<div class="card">') == len(rows)
    assert "chromium check" in dom


def test_console_check_catches_script_errors(chromium, tmp_path):
    # Negative control: the log parsing above must see an uncaught error when there is one.
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>throw new Error('boom');</script></body></html>")
    _, console = dump_dom(chromium, page, tmp_path)
    assert any("Uncaught Error: boom" in line for line in console)
