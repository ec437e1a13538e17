"""Training patches (U-Net paper §3) and the step-indexed order in which the loop reads them.

For a valid-padding network with margin m, a training sample is an input tile of a valid size n
and the label of its centre, n − 2m pixels. The image, mask and weight map are mirror-extended by
m first, so that every labelled pixel can sit at the centre of a tile, exactly as in overlap-tile
inference (`pixelwise.tiling`).

Step s belongs to epoch s // steps_per_epoch; an epoch's sample order comes from a
DistributedSampler seeded by (seed, epoch), and every patch's augmentation from a generator
seeded by (seed, epoch, index). An instance target (three-class boundaries, distance bands) is
derived from each patch's transformed instance ids, not transformed itself: a one-pixel boundary
resampled by a rotation or a zoom would break up, one derived afterwards is whole in the patch's
own pixels. So the batches from step s on depend on s alone, which is what
makes a resumed run equal to an uninterrupted one.

Sizes are checked before any patch is made (`check_patch_memory`): a patch size whose tiles,
mirror-extended images and batch would not fit in the memory available is refused with the
largest that fits; one larger than every image gets a warning (its patches are mostly mirror
copies).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from pixelwise.augment import Augment
from pixelwise.checks import InputWarning
from pixelwise.data import SegmentationDataset
from pixelwise.data.targets import derive_target
from pixelwise.models.geometry import Geometry


def patch_geometry(model: Geometry, patch_size: int) -> tuple[int, int]:
    """(input tile size, label size) for training patches whose label is ≥ `patch_size`.

    Worked example (paper U-Net, margin 92): patch_size 100 → the smallest output ≥ 100 that a
    valid input gives is 100 (input 284); patch_size 101 → 116 (input 300).
    """
    margin = model.margin
    for n in model.valid_input_sizes(patch_size + 2 * margin, patch_size + 2 * margin + 4096):
        return n, model.output_size(n)
    raise ValueError(
        f"no valid input size for patch_size {patch_size} (margin {margin}); pass a smaller "
        "--patch-size"
    )


def mirror_pad(a: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Mirror-extend the last two axes of `a` (..., H, W) → (..., top + H + bottom, left + W +
    right); repeatedly, when a pad exceeds the size; edge-replicated when a side is 1 pixel."""
    width = [(0, 0)] * (a.ndim - 2) + [(top, bottom), (left, right)]
    if min(a.shape[-2:]) == 1:
        return np.pad(a, width, mode="edge")
    return np.pad(a, width, mode="reflect")


_GIB = 2**30


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def patch_bytes(
    image_size: tuple[int, int], tile: int, margin: int, *, channels: int, batch_size: int
) -> int:
    """Estimated host memory of a batch of training patches, in bytes: the image's mirror-
    extended float32 image, int64 mask and float32 weights (`PatchDataset.__getitem__`), its
    (augmented) tile of each, and the batch of `batch_size` tiles and centre labels."""
    h, w = image_size
    padded = max(h + 2 * margin, tile) * max(w + 2 * margin, tile)  # pixels
    per_pixel = 4 * channels + 8 + 4  # image, mask, weight
    label = max(tile - 2 * margin, 1)
    batch = batch_size * (4 * channels * tile * tile + 12 * label * label)
    return per_pixel * (padded + tile * tile) + batch


def check_patch_memory(
    base: SegmentationDataset,
    tile: int,
    margin: int,
    *,
    batch_size: int = 1,
    available: int | None = None,
    warn: bool = True,
) -> None:
    """Refuse training tiles whose patches would not fit in memory; warn of tiles larger than
    every image. Run before any patch is made (numpy would otherwise fail to allocate deep in a
    DataLoader).

    Args:
        base: the training images (their sizes and channels from its survey report).
        tile, margin: the input tile size and the network's margin (`patch_geometry`).
        batch_size: patches per batch.
        available: bytes of memory to fit in (default: `available_memory()`; None: unknown,
            nothing is refused).
        warn: warn of a patch larger than every image.

    Raises:
        ValueError: the patches need more memory than is available; the message gives the
            memory, the image sizes and the largest --patch-size that fits.

    Warns:
        InputWarning: the patch (the tile's centre label) is larger than every image.
    """
    report = getattr(base, "report", None)
    sizes = sorted(report.sizes) if report is not None and report.sizes else []
    channels = max(report.channels) if report is not None and report.channels else 1
    label = tile - 2 * margin
    largest = max((max(s) for s in sizes), default=None)  # longest image side
    available = available_memory() if available is None else available
    if available is not None:
        _check_fits(sizes, tile, margin, channels, batch_size, available)
    if warn and largest is not None and label > largest:
        warnings.warn(
            InputWarning(
                f"patch size {label} px (--patch-size) is larger than every image (the largest "
                f"side is {largest} px): each patch is mostly mirror copies of an image; pass "
                f"--patch-size {largest} or less"
            ),
            stacklevel=3,
        )


def _check_fits(
    sizes: list[tuple[int, int]],
    tile: int,
    margin: int,
    channels: int,
    batch_size: int,
    available: int,
) -> None:
    """Raise ValueError when a batch of `tile` px patches of images of `sizes` needs more than
    `available` bytes (see `check_patch_memory`)."""
    label = tile - 2 * margin
    largest = max((max(s) for s in sizes), default=None)

    def need(n: int) -> int:
        return max(
            (patch_bytes(s, n, margin, channels=channels, batch_size=batch_size) for s in sizes),
            default=patch_bytes((1, 1), n, margin, channels=channels, batch_size=batch_size),
        )

    needed = need(tile)
    if needed <= available:
        return
    what = (
        f"patch size {label} px (--patch-size; patch_size= in Python): a batch of {batch_size} "
        f"training tile(s) of {tile}×{tile} px needs about {needed / _GIB:.1f} GiB of memory "
        f"(the tiles and the mirror-extended images), but {available / _GIB:.1f} GiB are "
        f"available"
    )
    shown = f"; the images are at most {largest} px a side" if largest is not None else ""
    low, high = 0, label  # the largest label that fits, by bisection (need grows with it)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if need(mid + 2 * margin) <= available else (low, mid - 1)
    if low == 0:
        raise ValueError(
            f"{what}{shown}, and even the smallest patch does not fit: free memory, or crop "
            f"the images into smaller ones"
        )
    fits = min(low, largest) if largest is not None else low
    raise ValueError(f"{what}{shown}: pass --patch-size {fits} or less")


class PatchDataset(Dataset):
    """Random training tiles (image, centre label, centre weights) from whole images.

    Item `i` reads image `i % len(base)`; `repeats` copies of the base per epoch give each
    image several patches. Randomness: `np.random.default_rng([seed, epoch, i])`.

    Raises:
        ValueError: one patch would not fit in memory (`check_patch_memory`).
    """

    def __init__(
        self,
        base: SegmentationDataset,
        *,
        tile: int,
        margin: int,
        augment: Augment | None,
        repeats: int = 1,
        seed: int = 0,
    ) -> None:
        check_patch_memory(base, tile, margin)
        self.base, self.tile, self.margin, self.augment = base, tile, margin, augment
        self.repeats, self.seed, self.epoch = repeats, seed, 0

    def __len__(self) -> int:
        return len(self.base) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        """Seed the augmentation of the coming epoch."""
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, mask, instances, weight = self.base.load(i % len(self.base))
        target = self.base.target
        if target is not None:
            assert instances is not None  # a dataset with a target decodes instances
            mask = instances  # transformed as ids; the target is derived from the patch below
        rng = np.random.default_rng([self.seed, self.epoch, i])
        m, n = self.margin, self.tile
        h, w = mask.shape
        # Mirror-extend by m, plus what an image smaller than the tile needs on the far side.
        pads = (m, m + max(0, n - h - 2 * m), m, m + max(0, n - w - 2 * m))
        image = mirror_pad(image, *pads)  # (C, H + 2m + extra, W + 2m + extra)
        mask = mirror_pad(mask, *pads)
        weight = np.ones(mask.shape, np.float32) if weight is None else mirror_pad(weight, *pads)
        if self.augment is not None:
            image, mask, weight = self.augment(image, mask, weight, rng=rng)  # (C, n, n)
        else:
            y = int(rng.integers(0, mask.shape[0] - n + 1))
            x = int(rng.integers(0, mask.shape[1] - n + 1))
            image = image[:, y : y + n, x : x + n]  # (C, n, n)
            mask, weight = mask[y : y + n, x : x + n], weight[y : y + n, x : x + n]
        if target is not None:
            mask = derive_target(mask, target)  # (n, n) classes of the patch's objects
        centre = (slice(m, n - m), slice(m, n - m))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, np.float32)),  # (C, n, n)
            "mask": torch.from_numpy(np.ascontiguousarray(mask[centre], np.int64)),  # (n−2m,)²
            "weight": torch.from_numpy(np.ascontiguousarray(weight[centre], np.float32)),
        }


class _ListSampler(Sampler[int]):
    """The given indices, in order (the rest of an epoch's DistributedSampler order)."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class PatchLoader:
    """This process's batches of patches, addressed by optimisation step.

    Partial batches are dropped, so that every step sees a full global batch: then N ranks ×
    batch b take the same optimisation steps as one process with batch N·b.

    Raises:
        ValueError: a batch of patches would not fit in memory (`check_patch_memory`).
    """

    def __init__(
        self,
        patches: PatchDataset,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if batch_size > 1:  # the dataset checked one patch (and warned); the batch holds more
            check_patch_memory(
                patches.base, patches.tile, patches.margin, batch_size=batch_size, warn=False
            )
        self.patches, self.batch_size, self.workers, self.seed = patches, batch_size, workers, seed
        self.pin_memory = pin_memory
        self.sampler = DistributedSampler(
            patches, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.steps_per_epoch = len(self.sampler) // batch_size

    def batches(self, start: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of steps `start`, `start` + 1, ... (endless, epoch after epoch)."""
        epoch, offset = divmod(start, self.steps_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            self.patches.set_epoch(epoch)
            indices = list(self.sampler)[offset * self.batch_size :]
            yield from DataLoader(
                self.patches,
                batch_size=self.batch_size,
                sampler=_ListSampler(indices),
                drop_last=True,
                num_workers=self.workers,
                pin_memory=self.pin_memory,
                # its own generator, so creating the loader leaves the global RNG untouched
                generator=torch.Generator().manual_seed(self.seed),
            )
            epoch, offset = epoch + 1, 0
