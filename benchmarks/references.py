"""Slow, obviously correct references and synthetic inputs, shared by the tests and the benchmarks.

The library's fast paths are checked against these in tests/ and timed against them in
benchmarks/; neither imports the other, both import this module:

* recipes run as scripts (`python benchmarks/x.py`), so Python puts this folder on sys.path;
* tests/conftest.py puts this folder on sys.path, so a test writes `from references import ...`.

What lives here:

* `weight_map_bruteforce`: U-Net's weight map (eq. 2) with one full-image distance transform per
  object — the reference of `pixelwise.losses.weight_map` (tests/test_losses.py) and its
  baseline in benchmarks/losses_augment.py.
* `whole_image_probs`: a model run once on the whole image, mirror-extended with `np.pad` — the
  reference of overlap-tile inference, `pixelwise.tiling.predict` (benchmarks/tiling.py; the
  same function tests/test_tiling.py writes out as `_whole`).
* `voronoi_cells`: Voronoi cells of random seeds tiling an image, every cell touching its
  neighbours — the one Voronoi generator (benchmarks/metrics.py's ISBI-like membranes,
  benchmarks/losses_augment.py's weight-map input, tests/test_losses.py's random instances).
  `pixelwise.synthetic.touching_cells` draws separate star-shaped cells on a background with a
  rendered image instead; these inputs need a tessellation of the whole image.

Nothing here is imported by `pixelwise` itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

NP_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "constant": "constant"}


def weight_map_bruteforce(
    instances: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | Sequence[float] | None = "balanced",
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """Reference weight map: one full-image EDT per object, then the two smallest per pixel.

    Same contract as `pixelwise.losses.weight_map` (w = w_c + w0 · exp(-(d1 + d2)² / 2σ²), the
    border term on background pixels only and only with ≥ 2 objects), written the slow way:
    O(objects × pixels) work, no cut-off distance.

    Args:
        instances: (H, W) non-negative integer instance labels, 0 = background.
        w0, sigma, class_weights, classes: as in `pixelwise.losses.weight_map`.

    Returns:
        (H, W) float32 weight map.
    """
    class_map = (instances > 0).astype(np.int64) if classes is None else classes
    if class_weights is None:
        wc = np.ones(instances.shape)
    elif isinstance(class_weights, str):  # "balanced"
        wc = np.zeros(instances.shape)
        present = np.unique(class_map)
        for c in present:
            where = class_map == c
            wc[where] = class_map.size / (len(present) * where.sum())
    else:
        wc = np.asarray(class_weights, np.float64)[class_map]
    labels = np.unique(instances)
    labels = labels[labels > 0]
    if len(labels) < 2:
        return wc.astype(np.float32)
    d1 = np.full(instances.shape, np.inf)
    d2 = np.full(instances.shape, np.inf)
    for k in labels:
        d = ndi.distance_transform_edt(instances != k)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)) * (instances == 0)
    return (wc + border).astype(np.float32)


def whole_image_probs(model: nn.Module, image: np.ndarray, mode: str = "reflect") -> np.ndarray:
    """The model on the whole image at once: the result overlap-tile inference must reproduce.

    The image is extended by `margin` on the left/top and up to the smallest valid input size
    on the right/bottom (`np.pad`, independent of `pixelwise.tiling`), run in one forward pass,
    and the softmax is cropped back to the image.

    Args:
        model: a network with the geometry API (`pixelwise.models.Geometry`): UNet, FCN, a toy.
        image: (H, W) or (C, H, W) float image.
        mode: border extension, "reflect" (mirror, the paper's), "replicate" or "constant".

    Returns:
        (K, H, W) float32 class probabilities.
    """
    h, w = image.shape[-2:]
    m = model.margin

    def smallest_valid(n: int) -> int:
        return model.valid_input_sizes(n, n + 64 * model.stride + 8 * m)[0]

    nh, nw = smallest_valid(h + 2 * m), smallest_valid(w + 2 * m)
    pads = ((0, 0),) * (image.ndim - 2) + ((m, nh - h - m), (m, nw - w - m))
    ext = np.pad(image.astype(np.float32), pads, mode=NP_PAD_MODES[mode])  # (C?, nh, nw)
    x = torch.from_numpy(ext).reshape(1, -1, nh, nw)  # (1, C, nh, nw)
    with torch.inference_mode():
        probs = model(x).softmax(1)  # (1, K, nh − 2m, nw − 2m)
    return probs[0, :, :h, :w].numpy()  # (K, H, W)


def voronoi_cells(
    shape: int | tuple[int, int], n_cells: int, rng: np.random.Generator
) -> np.ndarray:
    """Voronoi cells of `n_cells` random seeds: every pixel takes the id of its nearest seed.

    The cells tile the image with no background, each touching its neighbours along a
    one-pixel-sharp border. Seeds drawn twice at the same pixel leave one id unused.

    Worked example: seeds 1 at (0, 0) and 2 at (0, 3) on a 1 × 4 image → [[1, 1, 2, 2]].

    Args:
        shape: (H, W), or one side for a square image.
        n_cells: number of seeds (ids 1..n_cells).
        rng: source of the seed positions (the first draw from it).

    Returns:
        (H, W) int32 labels in 1..n_cells.
    """
    shape = (shape, shape) if isinstance(shape, int) else tuple(shape)
    points = rng.integers(0, shape, (n_cells, 2))  # (n_cells, 2) rows, cols
    labels = np.zeros(shape, np.int32)
    labels[points[:, 0], points[:, 1]] = np.arange(1, n_cells + 1)
    _, (rows, cols) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    return labels[rows, cols]
