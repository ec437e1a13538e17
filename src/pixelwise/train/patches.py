"""Training patches (U-Net paper §3) and the step-indexed order in which the loop reads them.

For a valid-padding network with margin m, a training sample is an input tile of a valid size n
and the label of its centre, n − 2m pixels. The image, mask and weight map are mirror-extended by
m first, so that every labelled pixel can sit at the centre of a tile, exactly as in overlap-tile
inference (`pixelwise.tiling`).

Step s belongs to epoch s // steps_per_epoch; an epoch's sample order comes from a
DistributedSampler seeded by (seed, epoch), and every patch's augmentation from a generator
seeded by (seed, epoch, index). So the batches from step s on depend on s alone, which is what
makes a resumed run equal to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from pixelwise.augment import Augment
from pixelwise.data import SegmentationDataset
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


class PatchDataset(Dataset):
    """Random training tiles (image, centre label, centre weights) from whole images.

    Item `i` reads image `i % len(base)`; `repeats` copies of the base per epoch give each
    image several patches. Randomness: `np.random.default_rng([seed, epoch, i])`.
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
        self.base, self.tile, self.margin, self.augment = base, tile, margin, augment
        self.repeats, self.seed, self.epoch = repeats, seed, 0

    def __len__(self) -> int:
        return len(self.base) * self.repeats

    def set_epoch(self, epoch: int) -> None:
        """Seed the augmentation of the coming epoch."""
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, mask, _, weight = self.base.load(i % len(self.base))
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
    ) -> None:
        self.patches, self.batch_size, self.workers, self.seed = patches, batch_size, workers, seed
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
                # its own generator, so creating the loader leaves the global RNG untouched
                generator=torch.Generator().manual_seed(self.seed),
            )
            epoch, offset = epoch + 1, 0
