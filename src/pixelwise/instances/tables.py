"""Describing objects: per-object tables (CSV) and COCO export with run-length masks.

* :func:`object_table` lists each object's id, majority class, area, box, centroid and mean
  class probability; :func:`write_object_csv` writes the rows (columns :data:`CSV_COLUMNS`).
* :func:`to_coco` / :func:`write_coco_json` give COCO's ``images`` / ``annotations`` /
  ``categories`` with uncompressed RLE segmentations and, given per-object scores, the
  ``score`` a COCO result needs (the confidence its evaluation ranks detections by);
  :func:`rle_encode` is that encoding (also of a mask cut out of a larger image, which is how
  streamed prediction encodes objects without the whole map), :func:`rle_decode` its inverse,
  for users reading the COCO output back; :func:`coco_annotation` builds one annotation.

Conventions: bounding boxes in tables are ``(y0, x0, y1, x1)`` with exclusive ends (the slice
``instances[y0:y1, x0:x1]`` holds the object); COCO boxes are ``[x, y, width, height]``. Files
are written with :mod:`pixelwise.atomic`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from pixelwise.arrays import as_instances, as_numpy
from pixelwise.atomic import write_text

__all__ = [
    "CSV_COLUMNS",
    "coco_annotation",
    "object_table",
    "rle_decode",
    "rle_encode",
    "to_coco",
    "write_coco_json",
    "write_object_csv",
]

CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "class",
    "area",
    "y0",
    "x0",
    "y1",
    "x1",
    "centroid_y",
    "centroid_x",
    "mean_probability",
)


def _classes_and_probabilities(
    inst: np.ndarray, ids: np.ndarray, classes: np.ndarray | None, prob: np.ndarray | None
) -> tuple[list[int | None], list[float | None]]:
    """Per object id in `ids`: majority class and mean probability of that class (or None).

    Args:
        inst: (H, W) instance ids; ids: (N,) sorted ids present (0 excluded).
        classes: (H, W) classes or None; prob: (C, H, W) probabilities or None.
    """
    if classes is None:
        return [None] * ids.size, [None] * ids.size
    # Majority class per object from one joint histogram of (object, class) pairs.
    flat_ids, flat_cls = inst[inst > 0], classes[inst > 0].astype(np.int64)
    n_cls = int(flat_cls.max()) + 1
    dense = np.searchsorted(ids, flat_ids)
    hist = np.bincount(dense * n_cls + flat_cls, minlength=ids.size * n_cls)
    best = hist.reshape(ids.size, n_cls).argmax(axis=1)  # (N,)
    majority: list[int | None] = [int(c) for c in best]
    if prob is None:
        return majority, [None] * ids.size
    if best.max() >= prob.shape[0]:
        raise ValueError(
            f"class_map has class {int(best.max())} but probs has only {prob.shape[0]} "
            "channels; pass probabilities for every class"
        )
    # Per pixel, the probability of its object's class; then the mean per object.
    class_of_id = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    class_of_id[ids] = best
    own = np.take_along_axis(prob, class_of_id[inst][None], axis=0)[0]  # (H, W)
    return majority, [float(v) for v in ndimage.mean(own, inst, ids)]


def object_table(
    instances: np.ndarray | torch.Tensor,
    *,
    class_map: np.ndarray | torch.Tensor | None = None,
    probs: np.ndarray | torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """One row per object.

    Args:
        instances: (H, W) integer instance map, 0 = background.
        class_map: optional (H, W) classes; an object's class is its most frequent class. If
            absent but ``probs`` is given, the argmax of ``probs`` is used; otherwise ``class``
            is None.
        probs: optional (C, H, W) class probabilities; ``mean_probability`` is the mean of the
            object's class channel over its pixels (None without probs).

    Returns:
        Rows ``{"id", "class", "area", "bbox": (y0, x0, y1, x1), "centroid": (y, x),
        "mean_probability"}`` sorted by id, with plain Python numbers (``bbox`` ends are
        exclusive; ``centroid`` is the mean pixel coordinate).
    """
    inst = as_instances(instances)
    prob = None if probs is None else as_numpy(probs, "probs")
    if prob is not None and (prob.ndim != 3 or prob.shape[1:] != inst.shape):
        raise ValueError(
            f"probs must be (C, H, W) with (H, W) = {inst.shape}, got shape {prob.shape}"
        )
    classes = None if class_map is None else as_numpy(class_map, "class_map")
    if classes is None and prob is not None:
        classes = prob.argmax(axis=0)
    if classes is not None and classes.shape != inst.shape:
        raise ValueError(f"class_map must have shape {inst.shape}, got {classes.shape}")
    ids = np.unique(inst)
    ids = ids[ids != 0]
    if ids.size == 0:
        return []
    area = ndimage.sum_labels(np.ones(inst.shape), inst, ids)
    centroids = ndimage.center_of_mass(np.ones(inst.shape), inst, ids)
    boxes = ndimage.find_objects(inst)
    majority, mean_prob = _classes_and_probabilities(inst, ids, classes, prob)
    rows = []
    for k, obj in enumerate(ids):
        ys, xs = boxes[obj - 1]
        rows.append(
            {
                "id": int(obj),
                "class": majority[k],
                "area": int(area[k]),
                "bbox": (int(ys.start), int(xs.start), int(ys.stop), int(xs.stop)),
                "centroid": (float(centroids[k][0]), float(centroids[k][1])),
                "mean_probability": mean_prob[k],
            }
        )
    return rows


def write_object_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write :func:`object_table` rows as CSV (columns :data:`CSV_COLUMNS`), atomically.

    Returns:
        The written path. Missing values (class or probability) are empty cells.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        y0, x0, y1, x1 = row["bbox"]
        cy, cx = row["centroid"]
        values = [row["id"], row["class"], row["area"], y0, x0, y1, x1, cy, cx]
        values.append(row["mean_probability"])
        writer.writerow(["" if v is None else v for v in values])
    return write_text(path, buffer.getvalue())


def rle_encode(
    mask: np.ndarray,
    *,
    offset: tuple[int, int] = (0, 0),
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """COCO uncompressed RLE of an (H, W) boolean mask.

    Runs alternate background/foreground over the mask read in column-major (Fortran) order,
    starting with a (possibly zero) background run. Example: the 2x2 mask [[0, 1], [0, 1]] reads
    0, 0, 1, 1 column by column, so ``counts = [2, 2]``.

    Args:
        mask: (h, w) boolean mask.
        offset: (row, column) of ``mask[0, 0]`` in the image the RLE describes.
        size: (H, W) of that image; default the mask's own shape (with offset (0, 0)). So the
            RLE of an object can be computed from the crop holding it: ``rle_encode(crop,
            offset=(y0, x0), size=(H, W)) == rle_encode(full == id)``.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    height, width = m.shape if size is None else (int(size[0]), int(size[1]))
    top, left = int(offset[0]), int(offset[1])
    if top < 0 or left < 0 or top + m.shape[0] > height or left + m.shape[1] > width:
        raise ValueError(
            f"a {m.shape[0]}x{m.shape[1]} mask at offset {(top, left)} does not fit an image of "
            f"size {height}x{width}; pass the crop's offset and the full image's size"
        )
    ys, xs = np.nonzero(m.T)[::-1]  # column-major order of the mask's pixels
    flat = (xs.astype(np.int64) + left) * height + (ys + top)  # increasing column-major indices
    counts = [height * width]
    if flat.size:
        breaks = np.flatnonzero(np.diff(flat) != 1) + 1
        starts = flat[np.concatenate([[0], breaks])]
        ends = flat[np.concatenate([breaks - 1, [flat.size - 1]])] + 1
        counts = _rle_from_runs(starts, ends - starts, height * width)
    return {"size": [height, width], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode`: ``{"size": [h, w], "counts": [...]}`` -> (h, w) bool."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(
            f"RLE counts sum to {int(counts.sum())} but size {h}x{w} needs {h * w}; "
            "the RLE is truncated or for another image size"
        )
    values = np.arange(counts.size) % 2 == 1  # runs alternate background, foreground, ...
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()


def _runs_by_object(inst: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Column-major runs of the whole map, grouped by object: id -> (starts, lengths)."""
    flat = inst.ravel(order="F")
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    values = flat[starts]
    order = np.argsort(values, kind="stable")
    values, starts, lengths = values[order], starts[order], lengths[order]
    ids, first = np.unique(values, return_index=True)
    bounds = [*first[1:].tolist(), values.size]
    return {
        int(i): (starts[a:b], lengths[a:b])
        for i, a, b in zip(ids, first, bounds, strict=True)
        if i != 0
    }


def _rle_from_runs(starts: np.ndarray, lengths: np.ndarray, total: int) -> list[int]:
    # counts = [gap0, run0, gap1, run1, ..., tail gap] with gaps between consecutive runs.
    ends = starts + lengths
    gaps = starts - np.concatenate([[0], ends[:-1]])
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0:-1:2] = gaps
    counts[1::2] = lengths
    counts[-1] = total - ends[-1]
    if counts[-1] == 0:
        counts = counts[:-1]
    return counts.tolist()


def coco_annotation(
    row: dict[str, Any],
    segmentation: dict[str, Any],
    *,
    annotation_id: int,
    image_id: int,
    score: float | None = None,
) -> dict[str, Any]:
    """One COCO annotation from an :func:`object_table` row and its RLE (:func:`rle_encode`).

    ``category_id`` is the row's class (1 when None), ``bbox`` = [x, y, width, height], ``area``
    in pixels, ``iscrowd`` = 0 and, when given, ``score`` (a float in [0, 1]).
    """
    y0, x0, y1, x1 = row["bbox"]
    annotation = {
        "id": int(annotation_id),
        "image_id": int(image_id),
        "category_id": 1 if row["class"] is None else int(row["class"]),
        "segmentation": segmentation,
        "area": int(row["area"]),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "iscrowd": 0,
    }
    if score is not None:
        annotation["score"] = float(score)
    return annotation


def to_coco(
    instances: np.ndarray | torch.Tensor,
    *,
    image_id: int,
    file_name: str,
    class_map: np.ndarray | torch.Tensor | None = None,
    categories: Sequence[dict[str, Any]] | None = None,
    first_annotation_id: int = 1,
    scores: Sequence[float] | np.ndarray | None = None,
) -> dict[str, Any]:
    """COCO-format dict (``images``, ``annotations``, ``categories``) for one image.

    Args:
        instances: (H, W) integer instance map, 0 = background.
        image_id: COCO image id.
        file_name: image file name recorded in ``images``.
        class_map: optional (H, W) classes; ``category_id`` is an object's majority class
            (1 for every object when absent).
        categories: COCO categories ``[{"id": ..., "name": ...}]``; default one entry
            ``class_<id>`` per category id used.
        first_annotation_id: id of the first annotation (keep ids unique across images).
        scores: optional (N,) confidence of each object, in increasing id order (for a map
            with ids 1..N, ``scores[i - 1]`` is object i's, as `object_scores` returns them);
            written as each annotation's ``score``, which COCO evaluation ranks detections by.

    Returns:
        Dict with uncompressed RLE segmentations (``{"size": [h, w], "counts": [...]}``,
        column-major), ``bbox`` = [x, y, width, height], ``area`` in pixels, ``iscrowd`` = 0,
        and ``score`` when ``scores`` is given.

    Raises:
        ValueError: ``scores`` does not hold one value per object.
    """
    inst = as_instances(instances)
    h, w = inst.shape
    rows = object_table(inst, class_map=class_map)
    if scores is not None and len(scores) != len(rows):
        raise ValueError(
            f"scores must hold one value per object: {len(rows)} objects, got {len(scores)} "
            f"scores; pass object_scores(probs, instances)"
        )
    runs = _runs_by_object(inst)
    annotations = []
    for k, row in enumerate(rows):
        starts, lengths = runs[row["id"]]
        segmentation = {"size": [h, w], "counts": _rle_from_runs(starts, lengths, h * w)}
        score = None if scores is None else scores[k]
        annotations.append(
            coco_annotation(
                row,
                segmentation,
                annotation_id=first_annotation_id + k,
                image_id=image_id,
                score=score,
            )
        )
    if categories is None:
        used = sorted({a["category_id"] for a in annotations})
        categories = [{"id": c, "name": f"class_{c}"} for c in used]
    return {
        "images": [{"id": image_id, "file_name": file_name, "height": h, "width": w}],
        "annotations": annotations,
        "categories": [dict(c) for c in categories],
    }


def write_coco_json(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a COCO dict as JSON atomically (temporary file + ``os.replace``)."""
    return write_text(path, json.dumps(obj, separators=(",", ":")))
