"""Score a checkpoint on a labelled dataset and write a report a person can open.

Every image is predicted whole with overlap-tile inference (optionally with test-time
augmentation), scored with the FCN paper's four metrics (and, with `isbi=True`, the ISBI 2012
pixel, Rand and warping errors on the interior class), and shown as an overlay thumbnail.
Outputs in `out`: metrics.json, per_image.csv, confusion_matrix.png and report.html.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise import checkpoint
from pixelwise.data import load_and_validate, read_image
from pixelwise.metrics import (
    ConfusionMatrix,
    pixel_error,
    rand_error,
    segmentation_scores,
    warping_error,
)
from pixelwise.report import confusion_matrix_png, overlay, thumbnail_png, write_report
from pixelwise.tiling import predict

PER_IMAGE = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")
ISBI = ("pixel_error", "rand_error", "warping_error")


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def evaluate(
    checkpoint_path: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    tta: str | None = None,
    isbi: bool = False,
    split: str | None = None,
    layout: str = "auto",
    ignore_index: int | None = None,
    instances: bool | None = None,
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Predict and score every image of `data`; write the report files into `out`.

    Args:
        checkpoint_path: a pixelwise `.safetensors` checkpoint.
        data: labelled dataset folder (any layout `pixelwise.data.open_dataset` reads).
        out: output folder.
        tta: None, "flips" or "d4" (averaged probabilities, see `pixelwise.tiling.predict`).
        isbi: add the ISBI 2012 errors; needs a 2-class model whose class 1 is the cell
            interior (ISBI labels: 255 = interior → class 1, 0 = membrane → class 0).
        split, layout: passed to `open_dataset`.
        ignore_index: mask value left out of the scores (default: the checkpoint's).
        instances: masks hold instance labels, scored as foreground (default: as in training).
        tile_size, batch_size, device: passed to `predict`.
        progress: per-image tile progress bars.
        log: where one line per image goes.

    Returns:
        The dict written to metrics.json: dataset scores and per-image rows.
    """
    model, meta, _ = checkpoint.load_state(checkpoint_path)
    num_classes = model.hparams["num_classes"]
    if ignore_index is None:
        ignore_index = meta.get("ignore_index")
    if instances is None:
        instances = bool(meta.get("config", {}).get("instances", False))
    if isbi and num_classes != 2:
        raise ValueError(
            f"isbi=True needs a 2-class (membrane/interior) model, got {num_classes} classes"
        )
    dataset = load_and_validate(
        data,
        normalization=meta.get("normalization"),
        num_classes=num_classes,
        ignore_index=ignore_index,
        split=split,
        layout=layout,
        instances=instances,
    )
    names = meta.get("class_names") or [f"class {i}" for i in range(num_classes)]
    out = Path(out)
    total = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    rows: list[dict[str, Any]] = []
    for i, sample in enumerate(dataset.samples):
        image, mask, _, _ = dataset.load(i)
        probs = predict(
            model,
            image,
            tta=tta,
            tile_size=tile_size,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )  # (K, H, W)
        pred = probs.argmax(0)  # (H, W)
        scores = segmentation_scores(total.update(pred, mask))
        row: dict[str, Any] = {"name": sample.name, **{k: scores[k] for k in PER_IMAGE}}
        if isbi:
            interior, truth = probs[1], mask == 1  # (H, W) probability and truth of interior
            row["pixel_error"] = pixel_error(interior, truth)
            row["rand_error"] = rand_error(interior, truth)
            row["warping_error"] = warping_error(interior, truth)
        rows.append(row)
        shown = ", ".join(f"{k} {row[k]:.4f}" for k in (*PER_IMAGE[2:3], *(ISBI if isbi else ())))
        log(f"[{i + 1}/{len(dataset)}] {sample.name}: {shown}")
        raw = read_image(sample.image_path, page=sample.page)
        row["thumbnail_png"] = thumbnail_png(overlay(raw, pred))

    summary = segmentation_scores(total.matrix)
    summary["class_names"] = names
    summary["images"] = len(rows)
    summary["tta"] = tta
    if isbi:
        for key in ISBI:
            summary[key] = float(np.mean([r[key] for r in rows]))
    per_image = [{k: v for k, v in r.items() if k != "thumbnail_png"} for r in rows]
    result = _finite({"checkpoint": str(checkpoint_path), "data": str(data), **summary,
                      "per_image": per_image})  # fmt: skip
    text = json.dumps(result, indent=2)
    checkpoint.atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    _write_csv(out / "per_image.csv", per_image)
    cm_path = confusion_matrix_png(total.matrix, names, out / "confusion_matrix.png")
    headline = ["pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou", *(ISBI if isbi else ())]
    write_report(
        out,
        summary={k: summary[k] for k in headline} | {"images": len(rows), "tta": str(tta)},
        rows=rows,
        title=f"pixelwise evaluation: {Path(checkpoint_path).name} on {Path(data).name}",
        sort_key="pixel_error" if isbi else "mean_iou",
        worst_first_descending=isbi,
        figures={"confusion matrix (rows: ground truth)": cm_path.read_bytes()},
    )
    return result


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    checkpoint.atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))
