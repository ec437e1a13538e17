"""The datasets of a training run: the training/validation split and the border-weight function.

Reading and checking the images is `pixelwise.data`'s; the weight map is `pixelwise.losses`'.
This module decides which images train and which validate, and how each mask's weights are made.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable

import numpy as np

from pixelwise.checks import InputWarning
from pixelwise.data import PERCENTILE_NORMALIZATION, SegmentationDataset, load_dataset
from pixelwise.losses import weight_map
from pixelwise.train.config import TrainConfig


def split_datasets(cfg: TrainConfig) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """(training set, validation set or None) as `cfg` says.

    `cfg.val_data` or `cfg.val_split` name a separate validation set (normalised as the training
    set: with `cfg.normalize` "dataset" by the training images' moments, with "percentile" each
    image by its own percentiles); else a seeded `cfg.val_fraction` of the images is held out
    (none of a single image).
    Both serve the masks of `cfg.target` when it is set (derived from the instance labels,
    which they also keep for border weights and object scores).

    Warns:
        InputWarning: no mask of the training data holds any pixel of a class other than 0
            (every mask empty: the model can only learn background).
    """
    opts = dict(
        layout=cfg.layout,
        # With a target, the instance masks decode to background/object and the target's
        # classes are derived from their ids (SegmentationDataset.num_classes gives its count).
        num_classes=2 if cfg.target is not None else cfg.num_classes,
        ignore_index=cfg.ignore_index,
        instances=cfg.instances,
        target=cfg.target,
    )
    weight_fn = border_weight_fn(cfg) if cfg.weighted else None
    # None: the survey's moments of the training images; else every image by its percentiles.
    normalization = dict(PERCENTILE_NORMALIZATION) if cfg.normalize == "percentile" else None
    train = load_dataset(
        cfg.data, split=cfg.split, weight_fn=weight_fn, normalization=normalization, **opts
    )
    if train.report is not None:
        warn_if_all_background(train.report.class_pixels, cfg.data)
    if cfg.val_data is not None or cfg.val_split is not None:
        val_path = cfg.val_data if cfg.val_data is not None else cfg.data
        val = load_dataset(val_path, split=cfg.val_split, normalization=train.normalization, **opts)
        return train, val
    n_val = math.ceil(cfg.val_fraction * len(train)) if len(train) > 1 else 0
    if n_val == 0:
        return train, None
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    val = SegmentationDataset(
        [train.samples[i] for i in val_idx],
        encoding=train.encoding,
        normalization=train.normalization,
        target=train.target,
    )
    train.samples = [train.samples[i] for i in train_idx]
    return train, val


def warn_if_all_background(class_pixels: np.ndarray, data: str | os.PathLike[str]) -> None:
    """One InputWarning when the masks hold pixels of class 0 alone (every mask empty).

    Args:
        class_pixels: (num_classes,) pixels of each class over the masks (the survey's).
        data: the dataset, for the message.
    """
    counts = np.asarray(class_pixels)
    if counts.size == 0 or counts.sum() == 0 or counts[1:].any():
        return
    warnings.warn(
        InputWarning(
            f"every mask of {data} is background (class 0) only: the model can only learn to "
            f"predict background, and its validation scores say nothing (Dice of an absent "
            f"class is NaN, mean IoU 1.0); check that these are the right masks (`pixelwise "
            f"data check {data}` shows the pixels of each class)"
        ),
        stacklevel=3,
    )


def border_weight_fn(cfg: TrainConfig) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    """`fn(mask, instances)` → the U-Net weight map (H, W) with `cfg.w0` and `cfg.sigma`.

    The border term comes from the objects, the class balance from `mask`, the served mask
    (with a target: its two or three classes). Without instance labels, objects are connected
    components of the foreground, which merge touching objects: pass instance masks to weight
    their gaps.
    """
    return _BorderWeights(w0=cfg.w0, sigma=cfg.sigma, ignore_index=cfg.ignore_index)


class _BorderWeights:
    """A picklable weight function (DataLoader workers receive it)."""

    def __init__(self, *, w0: float, sigma: float, ignore_index: int | None) -> None:
        self.w0, self.sigma, self.ignore_index = w0, sigma, ignore_index

    def __call__(self, mask: np.ndarray, instances: np.ndarray | None) -> np.ndarray:
        from scipy import ndimage

        if instances is None:
            fg = mask > 0
            if self.ignore_index is not None:
                fg &= mask != self.ignore_index
            instances = ndimage.label(fg)[0]
        classes = mask if mask.max() < 256 and self.ignore_index is None else None
        return weight_map(instances, w0=self.w0, sigma=self.sigma, classes=classes)
