"""Benchmark: fast U-Net weight map vs one-EDT-per-object, and augmentation time per sample.

Run:  python benchmarks/losses_augment.py [--quick]

Prints one table:
* weight_map on a 1024 × 1024 image of ~300 touching Voronoi cells (330 seeds, some gaps,
  10 % of the cells dropped): median time of `pixelwise.losses.weight_map` and of the
  brute-force reference (`weight_map_bruteforce` in benchmarks/references.py, the one the tests
  check against too), speedup, max abs difference;
* `pixelwise.augment.Augment` on a 512 × 512 image + mask + weight map, one core: median ms with
  and without the elastic deformation, with a bicubic image, and scipy's map_coordinates
  resampling the same coordinates (order 1 image and weight, order 0 mask) for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from common import Run, make_parser, median_seconds, parse_args, time_calls
from pixelwise.augment import Augment
from pixelwise.losses import weight_map
from references import voronoi_cells, weight_map_bruteforce


def gapped_cells(size: int = 1024, n_cells: int = 330, seed: int = 0) -> np.ndarray:
    """(size, size) int32 instances: Voronoi cells of random seeds, half the borders opened
    into 1-3 px background gaps, 10 % of the cells dropped to background."""
    rng = np.random.default_rng(seed)
    labels = voronoi_cells(size, n_cells, rng)  # (size, size) ids 1..n_cells, no background
    edges = ndi.grey_dilation(labels, 3) != ndi.grey_erosion(labels, 3)
    gapped = rng.random(n_cells + 1) < 0.5
    labels[edges & gapped[labels]] = 0
    dropped = rng.random(n_cells + 1) < 0.1
    dropped[0] = False
    labels[dropped[labels]] = 0
    return labels


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(make_parser(__doc__, quick="fewer repeats (about 30 s)"), argv)
    run = Run("losses_augment", argv)
    torch.set_num_threads(1)  # one core: the budget is per DataLoader worker
    fast_repeats, brute_repeats, augment_repeats = (3, 1, 20) if args.quick else (7, 2, 60)

    rows: list[tuple[str, str, int]] = []
    instances = gapped_cells()
    n_objects = len(np.unique(instances)) - 1
    # No warm-up: one brute-force call takes seconds; the fast one is timed like it.
    t_fast, fast = time_calls(lambda: weight_map(instances), repeats=fast_repeats, warmup=0)
    t_brute, reference = time_calls(
        lambda: weight_map_bruteforce(instances), repeats=brute_repeats, warmup=0
    )
    title = f"weight_map 1024² ({n_objects} objects)"
    rows += [
        (f"{title}: fast", f"{t_fast * 1e3:.0f} ms", fast_repeats),
        (f"{title}: brute force", f"{t_brute * 1e3:.0f} ms", brute_repeats),
        (f"{title}: speedup", f"{t_brute / t_fast:.0f}×", 0),
        (f"{title}: max |fast - brute|", f"{np.abs(fast - reference).max():.1e}", 0),
    ]

    rng = np.random.default_rng(0)
    image = ndi.gaussian_filter(rng.random((512, 512)), 3).astype(np.float32)
    mask = gapped_cells(512, 80, seed=1)
    weight = weight_map(mask)
    cases = {
        "elastic+rotation+flip+gray, bilinear": Augment(),
        "rotation+flip+gray, no elastic": Augment(p_elastic=0.0),
        "elastic+rotation+flip+gray, bicubic": Augment(image_order=3),
    }
    for name, augment in cases.items():
        seconds = median_seconds(
            lambda a=augment: a(image, mask, weight, rng=rng), repeats=augment_repeats, warmup=0
        )
        rows.append(
            (f"Augment 512² image+mask+weight: {name}", f"{seconds * 1e3:.1f} ms", augment_repeats)
        )
    coords = Augment().sample_transform((512, 512), rng).coordinates((512, 512))

    def scipy_resample() -> None:
        ndi.map_coordinates(image, coords, order=1, mode="mirror")
        ndi.map_coordinates(mask, coords, order=0, mode="mirror")
        ndi.map_coordinates(weight, coords, order=1, mode="mirror")

    seconds = median_seconds(scipy_resample, repeats=augment_repeats, warmup=0)
    rows.append(
        (
            "scipy map_coordinates, same coordinates (resampling only)",
            f"{seconds * 1e3:.1f} ms",
            augment_repeats,
        )
    )

    width = max(len(name) for name, _, _ in rows)
    print(run.header(f"pixelwise losses/augment benchmark{' (--quick)' if args.quick else ''}"))
    print()
    print(f"| {'measurement':<{width}} | {'median':>9} | repeats |")
    print(f"|{'-' * (width + 2)}|{'-' * 11}|---------|")
    for name, value, repeats in rows:
        print(f"| {name:<{width}} | {value:>9} | {repeats or '':>7} |")


if __name__ == "__main__":
    main()
