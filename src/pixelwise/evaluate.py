"""Scoring a model on a labelled dataset, and the report a person can open.

`evaluate` scores a checkpoint and writes its report; `evaluate_dataset` is the validation pass
training runs (loss and scores, no files). Every image is predicted whole with overlap-tile
inference (optionally with test-time augmentation), scored with the FCN paper's four metrics
(and, with `isbi=True`, the ISBI 2012 pixel, Rand and warping errors on the interior class), and
shown as an overlay thumbnail. Outputs in `out`: metrics.json, per_image.csv,
confusion_matrix.png and report.html.
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
import torch
from torch import nn

from pixelwise import atomic, checkpoint
from pixelwise.data import SegmentationDataset, load_dataset, read_image
from pixelwise.losses import SegmentationLoss
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


def evaluate_dataset(
    model: nn.Module, dataset: SegmentationDataset, *, device: torch.device | str | None = None
) -> dict[str, float]:
    """Validation scores of `model` on every image of `dataset`, each predicted whole.

    Training's validation pass: overlap-tile inference (`pixelwise.tiling.predict`) of the
    logits, then the cross-entropy and the confusion matrix over all images.

    Returns:
        ``val_loss`` (mean per-image cross-entropy), ``val_mean_iou``, ``val_dice`` (of the
        foreground for two classes, else the mean over classes) and ``val_pixel_accuracy``.
    """
    num_classes = model.hparams["num_classes"]
    cm = ConfusionMatrix(num_classes, ignore_index=dataset.ignore_index)
    loss_fn = SegmentationLoss("ce", ignore_index=dataset.ignore_index)
    losses = []
    for i in range(len(dataset)):
        image, mask, _, _ = dataset.load(i)
        logits = predict(model, image, output="logits", device=device)  # (K, H, W)
        logits = torch.from_numpy(logits)[None]  # (1, K, H, W)
        target = torch.from_numpy(mask)[None]  # (1, H, W)
        losses.append(float(loss_fn(logits, target)))
        cm.update(logits.argmax(1), target)
    scores = cm.scores()
    dice = scores["per_class_dice"]
    return {
        "val_loss": float(np.mean(losses)),
        "val_mean_iou": scores["mean_iou"],
        "val_dice": dice[1] if num_classes == 2 else float(np.nanmean(dice)),
        "val_pixel_accuracy": scores["pixel_accuracy"],
    }


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
    if ignore_index is None:
        ignore_index = meta.get("ignore_index")
    dataset = _open_dataset(
        model,
        meta,
        data,
        isbi=isbi,
        split=split,
        layout=layout,
        ignore_index=ignore_index,
        instances=instances,
    )
    total = ConfusionMatrix(model.hparams["num_classes"], ignore_index=ignore_index)
    options = dict(
        tta=tta, tile_size=tile_size, batch_size=batch_size, device=device, progress=progress
    )
    rows: list[dict[str, Any]] = []
    for i, sample in enumerate(dataset.samples):
        image, mask, _, _ = dataset.load(i)
        row, pred = score_image(model, image, mask, total, isbi=isbi, **options)
        rows.append({"name": sample.name, **row})
        shown = ", ".join(f"{k} {row[k]:.4f}" for k in _shown(isbi))
        log(f"[{i + 1}/{len(dataset)}] {sample.name}: {shown}")
        raw = read_image(sample.image_path, page=sample.page)
        rows[-1]["thumbnail_png"] = thumbnail_png(overlay(raw, pred))
    names = meta.get("class_names") or [f"class {i}" for i in range(total.num_classes)]
    summary = _summarise(total.matrix, rows, names=names, tta=tta, isbi=isbi)
    per_image = [{k: v for k, v in r.items() if k != "thumbnail_png"} for r in rows]
    result = _finite({"checkpoint": str(checkpoint_path), "data": str(data), **summary,
                      "per_image": per_image})  # fmt: skip
    title = f"pixelwise evaluation: {Path(checkpoint_path).name} on {Path(data).name}"
    _write_outputs(Path(out), result, rows, total.matrix, summary, title=title, isbi=isbi)
    return result


def _open_dataset(
    model: nn.Module,
    meta: dict[str, Any],
    data: str | Path,
    *,
    isbi: bool,
    split: str | None,
    layout: str,
    ignore_index: int | None,
    instances: bool | None,
) -> SegmentationDataset:
    """The labelled dataset, read with the checkpoint's normalisation, classes and defaults.

    Raises:
        ValueError: `isbi` for a model that has not two classes.
    """
    num_classes = model.hparams["num_classes"]
    if isbi and num_classes != 2:
        raise ValueError(
            f"isbi=True needs a 2-class (membrane/interior) model, got {num_classes} classes"
        )
    return load_dataset(
        data,
        normalization=meta.get("normalization"),
        num_classes=num_classes,
        ignore_index=ignore_index,
        split=split,
        layout=layout,
        instances=(
            bool(meta.get("config", {}).get("instances", False)) if instances is None else instances
        ),
    )


def score_image(
    model: nn.Module,
    image: np.ndarray,
    mask: np.ndarray,
    total: ConfusionMatrix,
    *,
    isbi: bool = False,
    **predict_options: Any,
) -> tuple[dict[str, float], np.ndarray]:
    """Predict one image whole, add it to `total`, and score it on its own.

    Args:
        model: the network; image: (C, H, W) normalised; mask: (H, W) class labels.
        total: the dataset's confusion matrix, updated in place.
        isbi: add the ISBI 2012 errors of P(class 1) against mask == 1.
        **predict_options: passed to `pixelwise.tiling.predict` (tta, tile_size, ...).

    Returns:
        (scores: PER_IMAGE and, with `isbi`, ISBI keys; predicted class map (H, W)).
    """
    probs = predict(model, image, **predict_options)  # (K, H, W)
    pred = probs.argmax(0)  # (H, W)
    scores = segmentation_scores(total.update(pred, mask))
    row = {k: scores[k] for k in PER_IMAGE}
    if isbi:
        interior, truth = probs[1], mask == 1  # (H, W) probability and truth of interior
        row["pixel_error"] = pixel_error(interior, truth)
        row["rand_error"] = rand_error(interior, truth)
        row["warping_error"] = warping_error(interior, truth)
    return row, pred


def _shown(isbi: bool) -> tuple[str, ...]:
    """The scores of an image's log line: mean IoU, and the ISBI errors."""
    return ("mean_iou", *(ISBI if isbi else ()))


def _summarise(
    matrix: np.ndarray,
    rows: list[dict[str, Any]],
    *,
    names: list[str],
    tta: str | None,
    isbi: bool,
) -> dict[str, Any]:
    """Dataset scores: the FCN scores of the summed confusion matrix, mean ISBI errors."""
    summary = segmentation_scores(matrix)
    summary["class_names"] = names
    summary["images"] = len(rows)
    summary["tta"] = tta
    if isbi:
        for key in ISBI:
            summary[key] = float(np.mean([r[key] for r in rows]))
    return summary


def _write_outputs(
    out: Path,
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    matrix: np.ndarray,
    summary: dict[str, Any],
    *,
    title: str,
    isbi: bool,
) -> None:
    """metrics.json, per_image.csv, confusion_matrix.png and report.html into `out`."""
    atomic.write_text(out / "metrics.json", json.dumps(result, indent=2))
    _write_csv(out / "per_image.csv", result["per_image"])
    cm_path = confusion_matrix_png(matrix, summary["class_names"], out / "confusion_matrix.png")
    headline = [*PER_IMAGE, *(ISBI if isbi else ())]
    write_report(
        out,
        summary={k: summary[k] for k in headline}
        | {"images": len(rows), "tta": str(summary["tta"])},
        rows=rows,
        title=title,
        sort_key="pixel_error" if isbi else "mean_iou",
        worst_first_descending=isbi,
        figures={"confusion matrix (rows: ground truth)": cm_path.read_bytes()},
    )


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())
