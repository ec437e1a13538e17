"""Benchmark evaluation metrics on synthetic data; prints one table of medians.

    python benchmarks/metrics.py            # 20 x 512 x 512 label maps, 512 x 512 ISBI-like map
    python benchmarks/metrics.py --quick    # smaller inputs, fewer repeats (smoke test)

Rows: confusion-matrix accumulation (21 classes, uint8 maps; plain, with 10 % void pixels
ignored, and from torch tensors) in megapixels per second; foreground-restricted Rand error
(single threshold and the 9-threshold sweep), warping error and pixel error on an ISBI-like
synthetic cell map; watershed labelling of touching discs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from common import Run, make_parser, median_seconds, parse_args
from pixelwise.instances import label
from pixelwise.metrics import (
    adapted_rand_error,
    classic_warping_error,
    confusion_matrix,
    isbi2012,
    pixel_disagreement,
)
from references import voronoi_cells


def isbi_like(size: int, cells: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi cells with ~3 px membranes (gt, bool interior) and a noisy interior probability."""
    rng = np.random.default_rng(seed)
    regions = voronoi_cells(size, cells, rng)  # (size, size) ids 1..cells
    membrane = ndimage.morphological_gradient(regions, size=3) > 0
    gt = ~ndimage.binary_dilation(membrane, iterations=1)
    prob = ndimage.gaussian_filter(gt.astype(np.float64), 1.5) + rng.normal(0, 0.15, gt.shape)
    return gt, np.clip(prob, 0.0, 1.0)


def touching_discs(size: int) -> np.ndarray:
    """(size, size) bool mask of discs of radius size/16 in rows, each overlapping the next."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), dtype=bool)
    radius = size // 16
    for cy in range(radius, size - radius, 2 * radius):
        for cx in range(radius, size - radius, int(1.7 * radius)):
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    return mask


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(make_parser(__doc__, quick="small inputs, few repeats"), argv)
    run = Run("metrics", argv)
    n_maps, side, repeats = (4, 256, 3) if args.quick else (20, 512, 7)
    rng = np.random.default_rng(0)
    k = 21
    target = rng.integers(0, k, size=(n_maps, side, side), dtype=np.uint8)
    pred = rng.integers(0, k, size=(n_maps, side, side), dtype=np.uint8)
    void = target.copy()
    void[rng.random(void.shape) < 0.1] = 255
    pred_t, target_t = torch.from_numpy(pred), torch.from_numpy(target)
    megapixels = target.size / 1e6
    rows: list[tuple[str, str, float, str]] = []
    for name, fn in (
        ("confusion_matrix", lambda: confusion_matrix(pred, target, k)),
        ("confusion_matrix ignore=255", lambda: confusion_matrix(pred, void, k, ignore_index=255)),
        ("confusion_matrix torch", lambda: confusion_matrix(pred_t, target_t, k)),
    ):
        t = median_seconds(fn, repeats=repeats, warmup=1)
        rows.append((name, f"{n_maps}x{side}x{side} u8, K={k}", t, f"{megapixels / t:.0f} MP/s"))

    isbi_side = 256 if args.quick else 512
    gt, prob = isbi_like(isbi_side, cells=isbi_side // 4, seed=1)
    binary = prob > 0.5
    shape = f"{isbi_side}x{isbi_side}"
    for name, fn, what in (
        ("isbi2012 (challenge, 5 scores)", lambda: isbi2012(prob, gt), "probs, Fiji sweeps"),
        ("adapted_rand_error", lambda: adapted_rand_error(binary, gt), "binary, 1 threshold"),
        ("adapted_rand_error", lambda: adapted_rand_error(prob, gt), "probs, 9 thresholds"),
        ("classic_warping_error", lambda: classic_warping_error(prob, gt), "probs at 0.5"),
        ("pixel_disagreement", lambda: pixel_disagreement(prob, gt, thresholds=(0.5,)), "at 0.5"),
        ("pixel_disagreement", lambda: pixel_disagreement(prob, gt), "probs, 9 thresholds"),
    ):
        t = median_seconds(fn, repeats=repeats, warmup=1)
        rows.append((name, f"{shape} {what}", t, f"{isbi_side**2 / t / 1e6:.1f} MP/s"))
    discs = touching_discs(isbi_side)
    t = median_seconds(lambda: label(discs, watershed=True), repeats=repeats, warmup=1)
    n_obj = int(label(discs, watershed=True).max())
    rows.append(("label watershed", f"{shape} touching discs", t, f"{n_obj} objects"))

    print(run.header(f"pixelwise metrics benchmark{' (--quick)' if args.quick else ''}"))
    print()
    print(f"{'benchmark':<30} {'input':<32} {'median ms':>10}  throughput")
    for name, what, t, rate in rows:
        print(f"{name:<30} {what:<32} {t * 1e3:>10.2f}  {rate}")
    challenge = isbi2012(prob, gt)
    print("challenge values: " + ", ".join(f"{k} {v:.4f}" for k, v in challenge.items()))


if __name__ == "__main__":
    main()
