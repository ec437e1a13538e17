"""U-Net's weighted loss: the border weight map (eq. 2), weighted cross-entropy, soft Dice.

U-Net (Ronneberger et al. 2015, eq. 2) weights every pixel x of the cross-entropy by

    w(x) = w_c(x) + w0 · exp(-(d1(x) + d2(x))² / (2σ²))

where w_c balances the class frequencies and d1, d2 are the Euclidean distances to the border of
the nearest and the second-nearest cell. The border term pushes the network to learn the thin
background gaps that separate touching cells (w0 = 10, σ ≈ 5 pixels in the paper).

`weight_map` computes the map exactly to within 1e-4 but with bounded work per object (see
`_border_cutoff`; benchmarks/references.py holds the one-distance-transform-per-object reference
it is tested and timed against), and `weighted_cross_entropy`, `soft_dice_loss` and
`SegmentationLoss` are the torch losses that consume it. Training computes the map once per
image, before augmentation, and the dataset keeps it in memory (`SegmentationDataset`'s
`weight_fn` and `cache_weights`); this module does no caching or file I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from torch.nn import functional as F

__all__ = [
    "SegmentationLoss",
    "soft_dice_loss",
    "weight_map",
    "weighted_cross_entropy",
]

LOSS_KINDS = ("ce", "dice", "ce+dice")
REDUCTIONS = ("mean", "sum")

# Largest error the fast border term may make, per pixel (the specification allows 1e-3).
_BORDER_TOL = 1e-4


# --------------------------------------------------------------------------------------------
# Weight map (numpy)
# --------------------------------------------------------------------------------------------


def weight_map(
    instances: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | Sequence[float] | None = "balanced",
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """U-Net pixel weights w = w_c + w0 · exp(-(d1 + d2)² / (2σ²)) (paper eq. 2).

    The border term is added only on background pixels (``instances == 0``) and only when the
    image holds at least two objects; d1 and d2 are the Euclidean distances to the nearest and the
    second-nearest object. With 0 or 1 objects the map is just w_c (never all zero).

    Touching objects must come as *instance* labels. The connected components of a binary mask
    MERGE cells that touch, so two touching cells become one object and the gap between them gets
    no border weight. For annotations that mark cell borders as a class (ISBI 2012 membranes, the
    nuclei border class), build instances with
    `pixelwise.instances.instances_from_border_class` first.

    The class-balance term w_c ("balanced") gives each class c present in the image the weight

        w_c = total / (n_present · count_c)

    (scikit-learn's "balanced" rule): the weights average to 1 over the image and every present
    class carries the same total weight. Example: 900 background and 100 foreground pixels give
    1000 / (2 · 900) = 0.556 and 1000 / (2 · 100) = 5.0. Classes absent from the image get no
    weight (no pixel has them).

    Args:
        instances: (H, W) non-negative integer instance labels; 0 = background, 1..K = objects.
            Labels need not be contiguous.
        w0: border weight, ≥ 0 (paper: 10).
        sigma: border decay length in pixels, > 0 (paper: ≈ 5).
        class_weights: "balanced" (see above), None (w_c = 1 everywhere) or a sequence of
            positive per-class weights indexed by class value.
        classes: optional (H, W) non-negative integer semantic class map used for w_c; by default
            the classes are background (instances == 0) = 0 and foreground (instances > 0) = 1.

    Returns:
        (H, W) float32 weight map, finite and > 0 everywhere.

    Raises:
        ValueError: for a malformed `instances`/`classes` array or out-of-range parameters.
    """
    instances = _check_label_image(instances, "instances")
    _check_border_params(w0, sigma)
    class_map = (instances > 0).astype(np.intp) if classes is None else classes
    class_map = _check_label_image(class_map, "classes")
    if class_map.shape != instances.shape:
        raise ValueError(
            f"classes must have the shape of instances {instances.shape}, got {class_map.shape}; "
            "pass the semantic class map of the same image"
        )
    weights = _class_weight_map(class_map, class_weights)
    weights += _border_term(instances, w0=w0, sigma=sigma)
    return weights


def _check_label_image(labels: np.ndarray, name: str) -> np.ndarray:
    """Return `labels` as an array after checking it is 2-D, integer and non-negative."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (H, W) label image, got shape {labels.shape}; "
            "pass one image at a time"
        )
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name} must have an integer dtype, got {labels.dtype}; "
            "cast label images with .astype(np.int32)"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"{name} must be non-negative, got minimum {labels.min()}; "
            "use 0 for background and 1..K for labels"
        )
    return labels


def _check_border_params(w0: float, sigma: float) -> None:
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be finite and >= 0, got {w0}; pass e.g. w0=10.0 (the paper's)")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(
            f"sigma must be > 0, got {sigma}; pass a positive distance in pixels (paper: 5.0)"
        )


def _class_weight_map(
    class_map: np.ndarray, class_weights: str | Sequence[float] | None
) -> np.ndarray:
    """(H, W) float32 map of per-class weights w_c (see `weight_map`)."""
    if class_weights is None:
        return np.ones(class_map.shape, np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f'class_weights must be "balanced", None or a sequence of floats, got '
                f"{class_weights!r}; pass one of those"
            )
        counts = np.bincount(class_map.ravel())
        present = counts > 0
        table = np.zeros(counts.shape, np.float64)
        table[present] = class_map.size / (present.sum() * counts[present])
    else:
        table = np.asarray(class_weights, np.float64)
        if table.ndim != 1 or not np.all(np.isfinite(table)) or not np.all(table > 0):
            raise ValueError(
                f"class_weights must be a 1-D sequence of finite positive floats, got "
                f"{list(np.atleast_1d(table))}; pass one weight > 0 per class"
            )
        top = int(class_map.max(initial=0))
        if top >= len(table):
            raise ValueError(
                f"class_weights has {len(table)} entries but the class map holds class {top}; "
                f"pass at least {top + 1} weights (one per class value 0..{top})"
            )
    return table.astype(np.float32)[class_map]


def _border_cutoff(w0: float, sigma: float) -> float | None:
    """Distance D beyond which the border term is below `_BORDER_TOL`; None if it never exceeds it.

    w0 · exp(-s² / (2σ²)) < tol  ⇔  s > D = σ · sqrt(2 · ln(w0 / tol)),  with s = d1 + d2.

    Worked example, w0 = 10, σ = 5, tol = 1e-4: ln(10 / 1e-4) = ln(1e5) = 11.513, so
    D = 5 · sqrt(23.03) = 5 · 4.799 = 24.0 px. At s = 24 the term is 10 · exp(-576 / 50) =
    10 · exp(-11.52) ≈ 1e-4. Because d1 ≤ d2, a pixel can only carry a term ≥ tol when
    d2 ≤ s ≤ D, i.e. when it lies within D of at least two objects.
    """
    if w0 <= _BORDER_TOL:
        return None
    return sigma * math.sqrt(2.0 * math.log(w0 / _BORDER_TOL))


def _consecutive_labels(instances: np.ndarray) -> np.ndarray:
    """Labels with 0 kept as background, relabelled 1..K only if the maximum label is huge.

    `scipy.ndimage.find_objects` allocates one slot per label value up to the maximum, which is
    fine for the usual labels (≤ the pixel count) and not for, say, hashes as labels.
    """
    if int(instances.max(initial=0)) <= instances.size:
        return instances
    uniques, inverse = np.unique(instances, return_inverse=True)
    return inverse.reshape(instances.shape) + int(uniques[0] != 0)


def _two_nearest_distances(labels: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Distances (d1, d2) to the nearest and second-nearest object, exact where ≤ `cutoff`.

    Each object's Euclidean distance transform is computed only inside its bounding box grown by
    ceil(cutoff) pixels: every pixel within `cutoff` of the object lies in that box and so does
    the whole object, so the distances there are exact. Elsewhere the object is farther than
    `cutoff` and is left out. d1 and d2 are +inf where fewer than one or two objects are within
    reach.

    Returns:
        d1, d2: (H, W) float32 arrays; n_objects: the number of objects found.
    """
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    grow = math.ceil(cutoff)
    height, width = labels.shape
    n_objects = 0
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:  # label value not used
            continue
        n_objects += 1
        rows = slice(max(box[0].start - grow, 0), min(box[0].stop + grow, height))
        cols = slice(max(box[1].start - grow, 0), min(box[1].stop + grow, width))
        dist = ndi.distance_transform_edt(labels[rows, cols] != index).astype(np.float32)
        nearest, second = d1[rows, cols], d2[rows, cols]  # views: updated in place
        np.minimum(second, np.maximum(nearest, dist), out=second)
        np.minimum(nearest, dist, out=nearest)
    return d1, d2, n_objects


def _border_term(instances: np.ndarray, *, w0: float, sigma: float) -> np.ndarray:
    """(H, W) float32 border term of eq. 2, on background pixels, zero with < 2 objects."""
    term = np.zeros(instances.shape, np.float32)
    cutoff = _border_cutoff(w0, sigma)
    if cutoff is None:
        return term
    d1, d2, n_objects = _two_nearest_distances(_consecutive_labels(instances), cutoff)
    if n_objects < 2:
        return term
    near = (instances == 0) & np.isfinite(d2)  # elsewhere d2 > cutoff: term < _BORDER_TOL
    total = d1[near] + d2[near]
    term[near] = w0 * np.exp(-(total * total) / np.float32(2.0 * sigma * sigma))
    return term


# --------------------------------------------------------------------------------------------
# Losses (torch)
# --------------------------------------------------------------------------------------------


def _check_logits_target(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> None:
    if logits.ndim != 4:
        raise ValueError(
            f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}; "
            "add the batch dimension with logits[None]"
        )
    if target.ndim != 3 or target.dtype != torch.long:
        raise ValueError(
            f"target must be an (N, H, W) int64 tensor, got shape {tuple(target.shape)} and "
            f"dtype {target.dtype}; pass class indices with target.long()"
        )
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"logits (N, C, H, W) = {tuple(logits.shape)} and target (N, H, W) = "
            f"{tuple(target.shape)} must agree in N, H and W; crop the target to the network "
            "output (valid U-Nets output less than their input)"
        )
    if weight is not None and weight.shape != target.shape:
        raise ValueError(
            f"weight must have the target's shape {tuple(target.shape)}, got "
            f"{tuple(weight.shape)}; crop the weight map like the target"
        )


def _valid_and_safe_target(
    target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(mask of non-ignored pixels or None, target with ignored pixels set to class 0)."""
    if ignore_index is None:
        return None, target
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy multiplied by a weight map (U-Net eq. 1).

    loss(x) = -w(x) · log softmax(logits(x))[target(x)].

    Reductions:
        "mean": sum(w · ce) / sum(w), both over the non-ignored pixels: the weighted mean. With
            no weight map it is the plain mean over non-ignored pixels (= `F.cross_entropy`).
            Its scale does not depend on the image size or on the overall scale of w, so
            ordinary learning rates (1e-3 with Adam) work. 0 when every pixel is ignored.
        "sum": sum(w · ce) over the non-ignored pixels, unnormalised: the loss FCN trains with,
            needed to reproduce its learning rates (1e-10 for FCN-32s with the summed loss).

    Args:
        logits: (N, C, H, W) class scores.
        target: (N, H, W) int64 class indices in [0, C) or `ignore_index`.
        weight: (N, H, W) per-pixel weights (e.g. from `weight_map`), or None for all ones.
        ignore_index: target value whose pixels are left out (e.g. 255), or None.
        reduction: "mean" or "sum" (see above).

    Returns:
        Scalar loss tensor.
    """
    _check_logits_target(logits, target, weight)
    _check_reduction(reduction)
    valid, safe_target = _valid_and_safe_target(target, ignore_index)
    ce = F.cross_entropy(logits, safe_target, reduction="none")  # (N, H, W)
    if weight is None:
        weight = torch.ones_like(ce)
    weight = weight.to(ce.dtype)
    if valid is not None:
        weight = weight * valid
    total = (weight * ce).sum()
    if reduction == "sum":
        return total
    return total / weight.sum().clamp_min(torch.finfo(ce.dtype).tiny)


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int | None = None,
    eps: float = 1.0,
) -> torch.Tensor:
    """Multi-class soft Dice loss, 1 − mean over classes of the soft Dice coefficient.

    With softmax probabilities p and one-hot targets g, summed over the batch and the non-ignored
    pixels, class c scores dice_c = (2 · Σ p_c g_c + eps) / (Σ p_c + Σ g_c + eps). Every one of
    the C classes counts equally; eps keeps classes absent from both prediction and target near
    a Dice of 1 instead of 0/0.

    Args:
        logits: (N, C, H, W) class scores.
        target: (N, H, W) int64 class indices in [0, C) or `ignore_index`.
        ignore_index: target value whose pixels are left out, or None.
        eps: smoothing added to numerator and denominator, > 0.

    Returns:
        Scalar loss in [0, 1].
    """
    _check_logits_target(logits, target)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}; pass a small positive smoothing like 1.0")
    valid, safe_target = _valid_and_safe_target(target, ignore_index)
    probs = logits.softmax(dim=1)
    onehot = torch.zeros_like(probs).scatter_(1, safe_target.unsqueeze(1), 1.0)
    if valid is not None:
        mask = valid.unsqueeze(1).to(probs.dtype)
        probs, onehot = probs * mask, onehot * mask
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * intersection + eps) / (denominator + eps)
    return 1.0 - dice.mean()


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}; pick one")


class SegmentationLoss(nn.Module):
    """Cross-entropy, soft Dice or their sum, as one module.

    Args:
        kind: "ce" (`weighted_cross_entropy`), "dice" (`soft_dice_loss`) or "ce+dice" (their
            unscaled sum; use reduction="mean" so the two terms are of comparable size).
        ignore_index: target value whose pixels are left out, or None.
        reduction: "mean" or "sum", for the cross-entropy term.

    Forward:
        logits (N, C, H, W), target (N, H, W) int64, weight (N, H, W) or None → scalar. The
        weight map applies to the cross-entropy term only; kind="dice" rejects one.
    """

    def __init__(
        self, kind: str = "ce", *, ignore_index: int | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}; pick one")
        _check_reduction(reduction)
        self.kind = kind
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.kind == "dice" and weight is not None:
            raise ValueError(
                "kind='dice' does not use a weight map, got one; pass weight=None or use "
                "kind='ce' or 'ce+dice'"
            )
        parts = self.kind.split("+")
        loss = logits.new_zeros(())
        if "ce" in parts:
            loss = loss + weighted_cross_entropy(
                logits,
                target,
                weight,
                ignore_index=self.ignore_index,
                reduction=self.reduction,
            )
        if "dice" in parts:
            loss = loss + soft_dice_loss(logits, target, ignore_index=self.ignore_index)
        return loss

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
