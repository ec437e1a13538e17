"""Benchmark: fast U-Net weight map vs one-EDT-per-object, and augmentation time per sample.

Run:  python benchmarks/losses_augment.py [--quick]

Prints one table:
* weight_map on a 1024 × 1024 image of ~300 touching Voronoi cells (330 seeds, some gaps,
  10 % of the cells dropped): median time of `pixelwise.losses.weight_map` and of the
  brute-force reference (`weight_map_bruteforce` in tests/test_losses.py), speedup, max abs
  difference;
* `pixelwise.augment.Augment` on a 512 × 512 image + mask + weight map, one core: median ms with
  and without the elastic deformation, with a bicubic image, and scipy's map_coordinates
  resampling the same coordinates (order 1 image and weight, order 0 mask) for comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from pixelwise.augment import Augment
from pixelwise.losses import weight_map

ROOT = Path(__file__).resolve().parents[1]


def load_bruteforce() -> Callable[..., np.ndarray]:
    """The reference implementation lives only in the tests; load it from there."""
    spec = importlib.util.spec_from_file_location("test_losses", ROOT / "tests" / "test_losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.weight_map_bruteforce


def voronoi_cells(size: int = 1024, n_cells: int = 330, seed: int = 0) -> np.ndarray:
    """(size, size) int32 instances: Voronoi cells of random seeds, half the borders opened
    into 1-3 px background gaps, 10 % of the cells dropped to background."""
    rng = np.random.default_rng(seed)
    points = rng.integers(0, size, (n_cells, 2))
    labels = np.zeros((size, size), np.int32)
    labels[points[:, 0], points[:, 1]] = np.arange(1, n_cells + 1)
    _, (rows, cols) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    labels = labels[rows, cols]
    edges = ndi.grey_dilation(labels, 3) != ndi.grey_erosion(labels, 3)
    gapped = rng.random(n_cells + 1) < 0.5
    labels[edges & gapped[labels]] = 0
    dropped = rng.random(n_cells + 1) < 0.1
    dropped[0] = False
    labels[dropped[labels]] = 0
    return labels


def median_seconds(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median wall time in seconds over `repeats` calls, the last call's result)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 30 s)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core: the budget is per DataLoader worker
    fast_repeats, brute_repeats, augment_repeats = (3, 1, 20) if args.quick else (7, 2, 60)

    rows: list[tuple[str, str, int]] = []
    instances = voronoi_cells()
    n_objects = len(np.unique(instances)) - 1
    bruteforce = load_bruteforce()
    t_fast, fast = median_seconds(lambda: weight_map(instances), fast_repeats)
    t_brute, reference = median_seconds(lambda: bruteforce(instances), brute_repeats)
    title = f"weight_map 1024² ({n_objects} objects)"
    rows += [
        (f"{title}: fast", f"{t_fast * 1e3:.0f} ms", fast_repeats),
        (f"{title}: brute force", f"{t_brute * 1e3:.0f} ms", brute_repeats),
        (f"{title}: speedup", f"{t_brute / t_fast:.0f}×", 0),
        (f"{title}: max |fast - brute|", f"{np.abs(fast - reference).max():.1e}", 0),
    ]

    rng = np.random.default_rng(0)
    image = ndi.gaussian_filter(rng.random((512, 512)), 3).astype(np.float32)
    mask = voronoi_cells(512, 80, seed=1)
    weight = weight_map(mask)
    cases = {
        "elastic+rotation+flip+gray, bilinear": Augment(),
        "rotation+flip+gray, no elastic": Augment(p_elastic=0.0),
        "elastic+rotation+flip+gray, bicubic": Augment(image_order=3),
    }
    for name, augment in cases.items():
        seconds, _ = median_seconds(
            lambda a=augment: a(image, mask, weight, rng=rng), augment_repeats
        )
        rows.append(
            (f"Augment 512² image+mask+weight: {name}", f"{seconds * 1e3:.1f} ms", augment_repeats)
        )
    coords = Augment().sample_geometry((512, 512), rng).coordinates((512, 512))

    def scipy_resample() -> None:
        ndi.map_coordinates(image, coords, order=1, mode="mirror")
        ndi.map_coordinates(mask, coords, order=0, mode="mirror")
        ndi.map_coordinates(weight, coords, order=1, mode="mirror")

    seconds, _ = median_seconds(scipy_resample, augment_repeats)
    rows.append(
        (
            "scipy map_coordinates, same coordinates (resampling only)",
            f"{seconds * 1e3:.1f} ms",
            augment_repeats,
        )
    )

    width = max(len(name) for name, _, _ in rows)
    print(f"| {'measurement':<{width}} | {'median':>9} | repeats |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|---------|")
    for name, value, repeats in rows:
        print(f"| {name:<{width}} | {value:>9} | {repeats or '':>7} |")


if __name__ == "__main__":
    main()
