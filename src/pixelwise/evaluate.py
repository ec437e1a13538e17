"""Scoring a model on a labelled dataset, and the report a person can open.

`evaluate` scores a checkpoint and writes its report; `evaluate_dataset` is the validation pass
training runs (loss and scores, no files). Every image is predicted whole with overlap-tile
inference (optionally with test-time augmentation), scored with the FCN paper's four metrics
(and, with `isbi=True`, the ISBI 2012 challenge's scores of the interior class,
`pixelwise.metrics.isbi2012`: per image, and for the dataset as one stack, as the challenge
scores its test slices), and shown as an overlay thumbnail. Outputs in `out`: metrics.json,
per_image.csv, confusion_matrix.png and report.html.

Objects, when the masks hold instance ids (`instances=True`, the default for a model trained on
them). Conventions:

* The objects are those `pixelwise predict --instances` writes: for an instance model (metadata
  "target") `objects_from_probabilities(probs, postprocessing_from_metadata(meta))`, the record
  tuned on the validation images at the end of training, or the one given (`postprocessing`;
  the command line's --mask-threshold, --seed-threshold, --min-size change the checkpoint's, as
  for predict); for any other model the connected components of its class map
  (`pixelwise.instances.label`), which the report says.
* Matching: per image, one-to-one, a pair matches at IoU >= t, the most matches
  (`pixelwise.metrics.match_instances`, which agrees with StarDist's matching.py), at t = 0.5,
  0.55, ..., 0.95. Merges and splits by majority overlap (see `match_instances`).
* Pooled (the dataset's scores, metrics.json's top level): TP, FP and FN summed over the images,
  then precision TP/(TP+FP), recall TP/(TP+FN), F1 2TP/(2TP+FP+FN) and accuracy TP/(TP+FP+FN)
  (the DSB's and StarDist's "AP") of the sums — the StarDist paper's convention; keys
  `tp@0.5`, `f1@0.5`, `accuracy@0.75`, ...; `dsb_score` = mean accuracy over the ten thresholds;
  `pq@0.5` = (sum of matched IoUs) / (TP + FP/2 + FN/2) = `sq@0.5` × `rq@0.5` (Kirillov et al.
  2019), sums pooled likewise. Per image (per_image.csv, the report's cards): the same keys from
  that image alone. A ratio with a zero denominator (no objects at all) is NaN: null in JSON.
* Semantic scores stay: an instance model's against the masks of its target derived from the
  ids as in training (`pixelwise.data.targets`; three-class: background, interior, boundary),
  any other model's against the foreground (object ids > 0).
* The report shows each image's objects coloured by outcome at IoU 0.5 (true positives green,
  false positives red, misses yellow), worst images first by `accuracy@0.5`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pixelwise import atomic, checkpoint
from pixelwise.checks import InputWarning, check_output_folder
from pixelwise.data import DataError, SegmentationDataset, load_dataset, read_image
from pixelwise.data.masks import CLASS_VALUES_FIX
from pixelwise.distributed import select_device
from pixelwise.instances import (
    PostProcessing,
    label,
    objects_from_probabilities,
    postprocessing_from_metadata,
)
from pixelwise.losses import SegmentationLoss
from pixelwise.metrics import (
    DEFAULT_IOU_THRESHOLDS,
    ISBI2012_SCORES,
    ConfusionMatrix,
    isbi2012,
    match_instances,
    matched_pairs,
    panoptic_quality,
    pool_matches,
    segmentation_scores,
)
from pixelwise.precision import resolve_precision
from pixelwise.report import (
    OUTCOME_COLOURS,
    confusion_matrix_png,
    outcome_overlay,
    overlay,
    thumbnail_png,
    write_report,
)
from pixelwise.segmenter import Segmenter, default_diameter
from pixelwise.tiling import predict

PER_IMAGE = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")
ISBI = ISBI2012_SCORES
OBJECTS = ("accuracy@0.5", "f1@0.5", "accuracy@0.75", "accuracy@0.9", "dsb_score", "pq@0.5")
"""The main object scores: printed by `pixelwise evaluate`, headlined in the report."""
_CARD_OBJECTS = ("n_gt", "n_pred", "tp@0.5", "fp@0.5", "fn@0.5", "merges", "splits")
_PER_THRESHOLD = ("tp", "fp", "fn", "precision", "recall", "f1", "accuracy")


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
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    device: torch.device | str | None = None,
    probabilities: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """Validation scores of `model` on every image of `dataset`, each predicted whole.

    Training's validation pass: overlap-tile inference (`pixelwise.tiling.predict`) of the
    logits, then the cross-entropy and the confusion matrix over all images.

    Args:
        probabilities: a list to which each image's (K, H, W) float32 softmax probabilities
            are appended, in dataset order (training scores objects on them, predicting once).

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
        if probabilities is not None:
            probabilities.append(torch.softmax(logits[0], 0).numpy())  # (K, H, W)
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
    postprocessing: PostProcessing | None = None,
    diameter: float | str | None = "default",
    tile_size: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    precision: str = "auto",
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
        instances: masks hold instance labels: score objects too (default: as in training).
        postprocessing: replaces the checkpoint's post-processing record (instance models), e.g.
            ``postprocessing_from_metadata(meta).replace(min_size=30)``.
        diameter: as `pixelwise predict`'s (`pixelwise.Segmenter`'s `diameter`): objects of
            this many pixels, "auto", None (as is) or "default" ("auto" for a shipped model,
            else as is). Unless the images are predicted as is, each is predicted from its raw
            pixels by a `Segmenter`, so the scores are those of the objects predict writes.
        tile_size, batch_size: passed to `predict`.
        device: where to predict (`pixelwise.distributed.select_device`: default cuda when
            available, else the CPU).
        precision: "auto" (bf16 autocast where the device computes it natively, else fp32),
            "fp32", "bf16" or "fp16" (`pixelwise.precision.resolve_precision`), as predict.
        progress: per-image tile progress bars.
        log: where one line per image goes.

    Returns:
        The dict written to metrics.json: dataset scores (with objects: the pooled object scores
        under keys such as ``"f1@0.5"``, and ``"objects"``: how they were made) and per-image
        rows.

    Raises:
        ValueError: an option the model or data cannot use (isbi, post-processing), an `out`
            that is a file or not writable, a `device` this machine does not have.
        DataError: the data have problems (labels outside the model's classes, ...).

    Warns:
        InputWarning: some of the model's classes occur in no mask (an 8-class model scored
            on 2-class data).
    """
    check_output_folder(out)
    device = select_device(device)
    model, meta, _ = checkpoint.load_state(checkpoint_path)
    if ignore_index is None:
        ignore_index = meta.get("ignore_index")
    if instances is None:
        instances = bool(meta.get("config", {}).get("instances", False))
    params = _postprocessing(model, meta, instances=instances, record=postprocessing)
    if diameter == "default":  # a shipped model's "auto" where it makes objects
        diameter = default_diameter(meta) if params is not None else None
    dataset = _open_dataset(
        model, meta, data, isbi=isbi, split=split, layout=layout, ignore_index=ignore_index,
        instances=instances, target=params.target if params is not None else None,
    )  # fmt: skip
    total = ConfusionMatrix(model.hparams["num_classes"], ignore_index=ignore_index)
    options = dict(
        tta=tta,
        tile_size=tile_size,
        batch_size=batch_size,
        device=device,
        progress=progress,
        autocast=resolve_precision(precision, device).autocast,
    )
    rescaling = None  # a Segmenter when the images are resized for `diameter`
    if diameter is not None:
        rescaling = Segmenter(
            model.to(device),
            meta=meta,
            postprocessing=params,
            diameter=diameter,
            precision=precision,
            **{k: v for k, v in options.items() if k != "autocast"},
        )
    rows: list[dict[str, Any]] = []
    matches: list[dict[str, Any]] = []
    slices: list[tuple[np.ndarray, np.ndarray]] = []  # isbi: (P(interior), interior truth)
    for i, sample in enumerate(dataset.samples):
        image, mask, truth, _ = dataset.load(i)
        raw = read_image(sample.image_path, page=sample.page)
        if rescaling is None:
            probs = predict(model, image, **options)  # (K, H, W)
            objects = make_objects(probs, params) if instances else None
        else:  # the objects of predict --diameter, from the raw image
            result = rescaling.predict(raw, source=sample.name)
            probs, objects = result.probabilities, result.instances  # (K, H, W), (H, W)
        row = score_probabilities(probs, mask, total, isbi=isbi)
        if isbi:
            slices.append((probs[1].astype(np.float32), mask == 1))
        if instances:
            assert truth is not None  # an instance encoding serves the ids
            assert objects is not None  # an instance model's Segmenter makes objects
            match, picture = _score_objects(objects, truth, raw)
            matches.append(match)
            row |= object_scores_of([match])
        else:
            picture = overlay(raw, probs.argmax(0))
        rows.append({"name": sample.name, **row, "thumbnail_png": thumbnail_png(picture)})
        shown = ", ".join(f"{k} {row[k]:.4f}" for k in _shown(isbi, instances))
        log(f"[{i + 1}/{len(dataset)}] {sample.name}: {shown}")
    names = meta.get("class_names") or [f"class {i}" for i in range(total.num_classes)]
    summary = _summarise(total, rows, names=names, tta=tta, slices=slices)
    if instances:
        summary |= object_scores_of(matches) | {"objects": _objects_record(params, diameter)}
    per_image = [{k: v for k, v in r.items() if k != "thumbnail_png"} for r in rows]
    result = _finite({"checkpoint": str(checkpoint_path), "data": str(data), **summary,
                      "per_image": per_image})  # fmt: skip
    title = f"pixelwise evaluation: {Path(checkpoint_path).name} on {Path(data).name}"
    _write_outputs(Path(out), result, rows, total.matrix, summary, title=title, isbi=isbi)
    return result


def _postprocessing(
    model: nn.Module,
    meta: dict[str, Any],
    *,
    instances: bool,
    record: PostProcessing | None,
) -> PostProcessing | None:
    """The post-processing record objects are made with (`record`, else the checkpoint's);
    None: the model has none, its objects are connected components.

    Raises:
        ValueError: a record without instance masks, or for another number of classes than
            the model's.
    """
    if record is not None and not instances:
        raise ValueError(
            "post-processing makes objects to score: it needs instance masks; pass "
            "instances=True (--instances)"
        )
    params = record if record is not None else postprocessing_from_metadata(meta)
    num_classes = model.hparams["num_classes"]
    if params is not None and params.num_classes != num_classes:
        raise ValueError(
            f"post-processing for target {params.target!r} needs a model with "
            f"{params.num_classes} classes, but this one has {num_classes}; pass a record "
            "for the model's target"
        )
    return params


def make_objects(probs: np.ndarray, params: PostProcessing | None) -> np.ndarray:
    """The objects of one image, as `pixelwise predict --instances` makes them.

    Args:
        probs: (K, H, W) softmax probabilities.
        params: the post-processing record of an instance model; None: the connected
            components of the class map (`pixelwise.instances.label` of the argmax).

    Returns:
        (H, W) int32 object ids, 0 = background.
    """
    if params is None:
        return label(probs.argmax(0))
    return objects_from_probabilities(probs, params)


def _score_objects(
    objects: np.ndarray, truth: np.ndarray, raw: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    """One image's objects against its instance ids.

    Args:
        objects: (H, W) predicted object ids; truth: (H, W) instance ids; raw: the image as
            read.

    Returns:
        (`match_instances` result, (H, W, 3) picture of the outcomes at IoU 0.5).
    """
    pairs = matched_pairs(objects, truth, threshold=0.5)
    picture = outcome_overlay(
        raw, objects, truth, matched_pred=pairs["pred_ids"], matched_gt=pairs["gt_ids"]
    )
    return match_instances(objects, truth), picture


def object_scores_of(matches: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled object scores of `match_instances` results: `pool_matches` and PQ at 0.5."""
    return pool_matches(matches) | panoptic_quality(matches, threshold=0.5)


def _objects_record(params: PostProcessing | None, diameter: float | str | None) -> dict[str, Any]:
    """How the objects were made and scored, for metrics.json and the report."""
    if params is None:
        method = "connected components of the class map (the model has no instance target)"
    else:
        method = f"objects_from_probabilities, target {params.target}"
    if diameter is not None:
        method += f", images resized for diameter {diameter}"
    return {
        "method": method,
        "diameter": diameter,
        "postprocessing": None if params is None else params.to_dict(),
        "iou_thresholds": list(DEFAULT_IOU_THRESHOLDS),
        "pooling": "TP, FP, FN summed over the images, then the ratios",
    }


def _open_dataset(
    model: nn.Module,
    meta: dict[str, Any],
    data: str | Path,
    *,
    isbi: bool,
    split: str | None,
    layout: str,
    ignore_index: int | None,
    instances: bool,
    target: str | None,
) -> SegmentationDataset:
    """The labelled dataset, read with the checkpoint's normalisation, classes and defaults.

    With a `target` (an instance model's) the masks are derived from the instance ids as in
    training (`pixelwise.data.targets`), so the semantic scores are those of the model's classes.

    Raises:
        ValueError: `isbi` for a model that has not two classes.
        DataError: the data's problems; labels outside the model's classes get the fix that
            applies here (another checkpoint, or --ignore-index).

    Warns:
        InputWarning: classes of the model that occur in no mask (`_warn_of_absent_classes`).
    """
    num_classes = model.hparams["num_classes"]
    if isbi and num_classes != 2:
        raise ValueError(
            f"--isbi (isbi=True) needs a 2-class (membrane/interior) model, got one of "
            f"{num_classes} classes; evaluate a 2-class checkpoint, or leave --isbi out"
        )
    try:
        dataset = load_dataset(
            data,
            normalization=meta.get("normalization"),
            num_classes=num_classes if target is None else None,
            ignore_index=ignore_index,
            split=split,
            layout=layout,
            instances=instances,
            target=target,
        )
    except DataError as e:  # the classes are the model's: --num-classes is not the fix here
        fix = (
            f"the model has {num_classes} classes (0..{num_classes - 1}): evaluate with a "
            f"checkpoint trained on these labels, or pass --ignore-index (ignore_index= in "
            f"Python) for a value to leave out"
        )
        problems = [p._replace(fix=fix) if p.fix == CLASS_VALUES_FIX else p for p in e.problems]
        raise DataError(str(e).replace(CLASS_VALUES_FIX, fix), problems) from None
    if target is None and dataset.report is not None:
        _warn_of_absent_classes(dataset.report.class_pixels, data, num_classes)
    return dataset


def _warn_of_absent_classes(class_pixels: np.ndarray, data: str | Path, num_classes: int) -> None:
    """One InputWarning when some of the model's classes occur in no mask of `data`.

    Args:
        class_pixels: (num_classes,) pixels of each class over every mask (the survey's).
    """
    absent = np.flatnonzero(np.asarray(class_pixels) == 0)
    if not absent.size:
        return
    present = np.flatnonzero(np.asarray(class_pixels) > 0)
    held = ", ".join(str(c) for c in present[:10]) + (", ..." if present.size > 10 else "")
    warnings.warn(
        InputWarning(
            f"the model predicts {num_classes} classes but the masks of {data} hold only "
            f"{present.size} of them ({held or 'none'}); the {absent.size} others never occur, "
            f"so they are scored by false positives alone: check that the checkpoint was "
            f"trained on data like these"
        ),
        stacklevel=3,
    )


def score_probabilities(
    probs: np.ndarray, mask: np.ndarray, total: ConfusionMatrix, *, isbi: bool = False
) -> dict[str, float]:
    """Add one image's class map to `total` and score it on its own.

    Args:
        probs: (K, H, W) probabilities of the image (`pixelwise.tiling.predict`).
        mask: (H, W) class labels.
        total: the dataset's confusion matrix, updated in place.
        isbi: add the ISBI 2012 errors of P(class 1) against mask == 1.

    Returns:
        PER_IMAGE scores and, with `isbi`, the ISBI keys.
    """
    pred = probs.argmax(0)  # (H, W)
    scores = segmentation_scores(total.update(pred, mask), ignore_index=total.ignore_index)
    row = {k: scores[k] for k in PER_IMAGE}
    if isbi:  # this slice alone, as the challenge's Fiji code scores a one-slice stack
        row |= isbi2012(probs[1], mask == 1)
    return row


def _shown(isbi: bool, instances: bool) -> tuple[str, ...]:
    """The scores of an image's log line: mean IoU, the ISBI errors, the object accuracy."""
    return ("mean_iou", *(ISBI if isbi else ()), *(("accuracy@0.5",) if instances else ()))


def _summarise(
    total: ConfusionMatrix,
    rows: list[dict[str, Any]],
    *,
    names: list[str],
    tta: str | None,
    slices: list[tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """Dataset scores: the FCN scores of the summed confusion matrix; with ISBI `slices`
    ((H, W) P(interior), interior truth per image), the challenge's scores of them as one
    stack, as the challenge scores its 30 test slices."""
    summary = segmentation_scores(total.matrix, ignore_index=total.ignore_index)
    summary["class_names"] = names
    summary["images"] = len(rows)
    summary["tta"] = tta
    if slices:
        shapes = sorted({p.shape for p, _ in slices})
        if len(shapes) > 1:
            raise ValueError(
                f"--isbi (isbi=True) scores the images as one stack, as the challenge does; "
                f"all images must have one size, got {shapes}; evaluate each size separately"
            )
        stack = np.stack([p for p, _ in slices])  # (N, H, W)
        summary |= isbi2012(stack, np.stack([t for _, t in slices]))
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
    objects = "objects" in summary
    page: dict[str, Any] = {}
    if objects:
        headline += [*OBJECTS, *_CARD_OBJECTS]
        cards = ("name", "thumbnail_png", *OBJECTS, *_CARD_OBJECTS, "mean_iou")
        rows = [{k: r[k] for k in cards} for r in rows]
        page = dict(
            notes=_object_notes(summary["objects"]),
            tables={"objects per IoU threshold (pooled over the images)": _threshold_rows(summary)},
            legend=OUTCOME_COLOURS,
        )
    write_report(
        out,
        summary={k: summary[k] for k in headline}
        | {"images": len(rows), "tta": str(summary["tta"])},
        rows=rows,
        title=title,
        sort_key="pixel_error" if isbi else "accuracy@0.5" if objects else "mean_iou",
        worst_first_descending=isbi,
        figures={"confusion matrix (rows: ground truth)": cm_path.read_bytes()},
        **page,
    )


def _object_notes(record: dict[str, Any]) -> list[str]:
    """The report's paragraphs on how the objects were made and scored."""
    made = f"Objects: {record['method']}."
    if record["postprocessing"] is not None:
        made += (
            " Post-processing: "
            + ", ".join(f"{k} {v}" for k, v in record["postprocessing"].items())
            + "."
        )
    return [
        made,
        "Matching: per image, one-to-one, a pair matches at IoU >= t (the most matches; as "
        "StarDist's matching.py). Dataset scores are pooled: TP, FP and FN summed over the "
        "images, then precision, recall, F1 and accuracy = TP/(TP+FP+FN); dsb_score is the "
        "mean accuracy over t = 0.5, 0.55, ..., 0.95; pq@0.5 = sum of matched IoUs / (TP + "
        "FP/2 + FN/2). Each card shows its image alone, objects coloured by outcome at IoU "
        "0.5.",
    ]


def _threshold_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per IoU threshold of the pooled scores."""
    rows = []
    for t in DEFAULT_IOU_THRESHOLDS:
        key = f"{t:g}"
        rows.append({"IoU": key} | {name: summary[f"{name}@{key}"] for name in _PER_THRESHOLD})
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())
