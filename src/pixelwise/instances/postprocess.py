"""Post-processing: from a network's probabilities to objects, with scikit-image's watershed.

One function, :func:`objects_from_probabilities`, turns the (K, H, W) softmax output of an
instance model into an (H, W) label map, as its :class:`PostProcessing` record says. The record
is stored in the checkpoint's metadata (``"postprocessing"``), tuned on the validation images at
the end of training (:mod:`pixelwise.tuning`), so `predict`, `evaluate` and
:class:`pixelwise.Segmenter` all make the same objects.

Three training targets, two ways to seed the watershed:

* ``"three-class"`` (background, interior, boundary; the DSB 2018 winners' and the StarDist
  paper's 3-class U-Net): seeds are the connected components of P(interior) > ``seed_threshold``;
  they grow by watershed on −P(interior) inside the foreground 1 − P(background) >
  ``mask_threshold``, so the predicted boundary band separates touching nuclei.
* ``"distance"`` (background and B bands of the normalised distance to the outside of each
  object, :func:`pixelwise.data.targets.distance_target`; the Deep Watershed Transform's
  quantised energy): the predicted distance is the expected band, E = Σₖ P(band k)·k/B (0 on
  the background, 1 at confident centres); seeds are the connected components of E >
  ``seed_threshold``, grown by watershed on −E inside the foreground. Example with B = 4: a
  pixel with P = (0.1, 0.1, 0.2, 0.3, 0.3) has E = (0.1·1 + 0.2·2 + 0.3·3 + 0.3·4)/4 = 0.65.
* ``"two-class"`` (the U-Net paper's background / object with border weights): the foreground
  P(object) > ``mask_threshold`` is split by a watershed on its distance transform, seeded at
  distance maxima at least ``seed_distance`` pixels apart (``seed_distance`` 0: connected
  components, no split).

Then, for all: holes inside an object are filled (``fill_holes``), objects under ``min_size``
pixels are dropped, objects touching the image border are dropped if ``exclude_border``, and
ids are renumbered 1..N in raster order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pixelwise.checks import check_choice
from pixelwise.data.targets import TARGET_CLASS_NAMES

__all__ = [
    "TARGETS",
    "PostProcessing",
    "object_scores",
    "objects_from_probabilities",
    "postprocessing_from_metadata",
]

TARGETS = ("two-class", "three-class", "distance")
"""Instance targets: the class layout of an instance model's output."""

_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True, kw_only=True)
class PostProcessing:
    """How probabilities become objects (see the module docstring).

    Attributes:
        target: "three-class" (K = 3: background, interior, boundary), "distance" (K = 5:
            background and four distance bands) or "two-class" (K = 2).
        mask_threshold: foreground = 1 − P(background) > this.
        seed_threshold: three-class: seeds = components of P(interior) > this; distance: of
            the expected normalised distance E > this.
        seed_distance: two-class: minimum distance in pixels between watershed seeds (maxima of
            the distance transform); 0 = connected components.
        min_size: objects with fewer pixels are removed.
        fill_holes: fill holes inside each object.
        exclude_border: remove objects that touch the image border.
    """

    target: str = "three-class"
    mask_threshold: float = 0.5
    seed_threshold: float = 0.5
    seed_distance: int = 4
    min_size: int = 16
    fill_holes: bool = True
    exclude_border: bool = False

    def __post_init__(self) -> None:
        check_choice("target", self.target, TARGETS)
        for name in ("mask_threshold", "seed_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
        for name in ("seed_distance", "min_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (pixels), got {value!r}")

    @property
    def num_classes(self) -> int:
        """The number of output classes of a model trained for this target."""
        return len(TARGET_CLASS_NAMES[self.target])

    def to_dict(self) -> dict[str, Any]:
        """JSON form, for checkpoint metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "postprocessing") -> PostProcessing:
        """From checkpoint metadata; unknown keys raise, naming the known ones."""
        if not isinstance(values, dict):
            raise ValueError(f"{source} must be a mapping of option: value, got {values!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> PostProcessing:
        """A copy with `changes` (validated again)."""
        return dataclasses.replace(self, **changes)

    def rescaled(self, factor: float) -> PostProcessing:
        """The same post-processing for objects `factor` times as large in pixels: lengths
        (`seed_distance`) × factor, areas (`min_size`) × factor², rounded; thresholds kept.

        Worked example: tuned at 20-pixel nuclei, min_size 25 and seed_distance 4; on an image
        whose nuclei are 10 pixels across (factor 0.5) they become 6 (25/4 = 6.25) and 2.
        """
        if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a finite number > 0, got {factor!r}")
        return self.replace(
            seed_distance=round(self.seed_distance * factor),
            min_size=round(self.min_size * factor**2),
        )


def _check_probabilities(probs: np.ndarray, params: PostProcessing) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[0] != params.num_classes:
        raise ValueError(
            f"probabilities must be ({params.num_classes}, H, W) for target {params.target!r}, "
            f"got shape {probs.shape}; pass the model's softmax output for one image"
        )
    return probs.astype(np.float32, copy=False)


def _seed_map(probs: np.ndarray, params: PostProcessing) -> np.ndarray | None:
    """(H, W) what seeds are thresholded on and the watershed floods down from: P(interior) for
    three-class, the expected normalised distance for distance; None for two-class."""
    if params.target == "three-class":
        return probs[1]
    if params.target == "distance":
        bands = np.arange(probs.shape[0], dtype=np.float32) / (probs.shape[0] - 1)  # 0, 1/B..1
        return np.tensordot(bands, probs, axes=1)  # (K,) · (K, H, W) → (H, W)
    return None


def _seeds(
    seed_map: np.ndarray | None, foreground: np.ndarray, params: PostProcessing
) -> np.ndarray:
    """(H, W) int32 watershed markers (0 = none)."""
    if seed_map is not None:
        seeds, _ = ndimage.label((seed_map > params.seed_threshold) & foreground, _FOUR)
        return seeds.astype(np.int32)
    components, n = ndimage.label(foreground, _FOUR)
    if params.seed_distance == 0 or n == 0:
        return components.astype(np.int32)
    from skimage.feature import peak_local_max

    distance = ndimage.distance_transform_edt(foreground)
    peaks = peak_local_max(
        distance,
        min_distance=params.seed_distance,
        labels=components,
        num_peaks_per_label=np.inf,
        exclude_border=False,
    )
    seeds = np.zeros(foreground.shape, np.int32)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # A component without a peak (flat, or thinner than the seed distance) keeps one object.
    missing = np.setdiff1d(np.arange(1, n + 1), np.unique(components[seeds > 0]))
    for component in missing:
        y, x = ndimage.maximum_position(distance, components, component)
        seeds[int(y), int(x)] = seeds.max() + 1
    return seeds


def _flood(seed_map: np.ndarray | None, seeds: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    from skimage.segmentation import watershed

    # Basins at confident interiors (or far from the background), ridges where objects meet.
    height = seed_map if seed_map is not None else ndimage.distance_transform_edt(foreground)
    return watershed(-height, markers=seeds, mask=foreground).astype(np.int32)


def _fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of every object: background enclosed by that one object.

    A gap enclosed by a ring of several touching objects is not a hole of any of them and
    stays background, so the result depends only on each object's own neighbourhood (which
    keeps block-wise post-processing of large images equal to the whole-image result).
    """
    out = labels.copy()
    for i, box in enumerate(ndimage.find_objects(labels), 1):
        if box is not None:
            hole = ndimage.binary_fill_holes(labels[box] == i) & (labels[box] == 0)
            out[box][hole] = i
    return out


def _finish(labels: np.ndarray, params: PostProcessing) -> np.ndarray:
    """Holes, small and border objects, then ids 1..N in raster order of first pixel."""
    if params.fill_holes:
        labels = _fill_holes(labels)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(params.min_size, 1)
    keep[0] = False
    if params.exclude_border:
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        keep[np.unique(edge)] = False
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    order = ids[keep[ids]][np.argsort(first[keep[ids]])]
    lookup = np.zeros(sizes.size, np.int32)
    lookup[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return lookup[labels]


def objects_from_probabilities(probs: np.ndarray, params: PostProcessing) -> np.ndarray:
    """Objects of one image from its probabilities.

    Args:
        probs: (K, H, W) softmax probabilities, K = `params.num_classes` (class 0 background).
        params: the post-processing record (the checkpoint's, or tuned).

    Returns:
        (H, W) int32 label map: 0 = background, objects 1..N in raster order of first pixel.
    """
    probs = _check_probabilities(probs, params)
    foreground = (1.0 - probs[0]) > params.mask_threshold  # (H, W)
    seed_map = _seed_map(probs, params)
    seeds = _seeds(seed_map, foreground, params)
    labels = _flood(seed_map, seeds, foreground) if seeds.any() else seeds
    return _finish(labels, params)


def object_scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confidence of each object: its mean foreground probability 1 − P(background).

    Args:
        probs: (K, H, W) probabilities.
        labels: (H, W) label map with objects 1..N.

    Returns:
        (N,) float64 scores in [0, 1] for objects 1..N (a COCO result's ``score``).
    """
    n = int(labels.max(initial=0))
    if n == 0:
        return np.zeros(0)
    foreground = 1.0 - np.asarray(probs[0], np.float64)
    return np.asarray(ndimage.mean(foreground, labels, np.arange(1, n + 1)), np.float64)


def postprocessing_from_metadata(meta: dict[str, Any]) -> PostProcessing | None:
    """The post-processing a checkpoint records, or None for a model that is not an instance
    model (no ``"postprocessing"`` and no instance ``"target"`` in its metadata).

    A checkpoint with a ``"target"`` but no tuned record (e.g. an interrupted run) gets the
    defaults for that target.

    Raises:
        ValueError: a malformed record (the message names the key).
    """
    recorded = meta.get("postprocessing")
    if recorded is not None:
        return PostProcessing.from_dict(recorded, source="checkpoint postprocessing")
    target = meta.get("target")
    return PostProcessing(target=target) if target in TARGETS else None
