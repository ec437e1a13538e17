"""One segmentation as a generator of progress, cancellable between tile batches.

`SegmentationJob` runs `Segmenter`'s own steps on one raw image — `to_input`, the overlap-tile
engine as a generator (`pixelwise.tiling.iter_predict`, which yields a `Progress` after every tile
batch), `segmentation` — so its result equals `Segmenter.predict` and `pixelwise predict`. The
computation advances only as its progress is consumed: a consumer that stops asking or closes
the generator (napari's `GeneratorWorker.quit()`), or a `cancel()` from any thread, stops it
before the next tile batch. This module knows nothing of napari or Qt; `pixelwise.napari.widget`
runs `steps()` in napari's thread worker.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator

import numpy as np

from pixelwise.segmenter import Segmentation, Segmenter
from pixelwise.tiling import Progress, iter_predict

__all__ = ["Progress", "SegmentationJob"]


class SegmentationJob:
    """Segment one raw image with a `Segmenter`, reporting progress per tile batch.

    Args:
        segmenter: the model, its checkpoint's records and the tiling options
            (`segmenter.options`: tile size, batch size, test-time augmentation, precision).
        image: (H, W) or (H, W, C) raw pixels, as for `Segmenter.predict`.
        source: how error messages name the image (e.g. the napari layer).

    Usage: ``gen = job.steps()``; each ``next(gen)`` returns a `Progress`; the generator's return
    value (``StopIteration.value``, napari's ``worker.returned``) is the `Segmentation`, or None
    when the job was cancelled. `cancel()` may be called from any thread.
    """

    def __init__(self, segmenter: Segmenter, image: np.ndarray, *, source: str = "image") -> None:
        self.segmenter, self.image, self.source = segmenter, image, source
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        """Whether `cancel()` was called."""
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop the job before its next tile batch; thread-safe, returns at once."""
        self._cancel.set()

    def steps(self) -> Generator[Progress, None, Segmentation | None]:
        """Run the job: yield a `Progress` after every tile batch, return the `Segmentation`
        (None if cancelled).

        Raises:
            DataError, ValueError: the image does not fit the checkpoint (dtype, channels).
            Whatever else the engine raises.
        """
        if self.cancelled:
            return None
        # diameter="auto": the passes and the choice of Segmenter.predict
        best, best_miss = None, math.inf
        for scale in self.segmenter.pass_scales():
            result = yield from self._segment(scale)
            if result is None:
                return None
            miss = self.segmenter.size_miss(result, scale)
            if best is None or miss < best_miss:
                best, best_miss = result, miss
            if best_miss == 0.0:
                break
        return best

    def _segment(self, scale: float) -> Generator[Progress, None, Segmentation | None]:
        """One pass at `scale` (the image resized by it for the network), as `steps`."""
        segmenter = self.segmenter
        x = segmenter.network_input(self.image, source=self.source, scale=scale)  # (C, h, w)
        tiles = iter_predict(segmenter.model, x, options=segmenter.options)
        try:
            while True:
                try:
                    progress = next(tiles)
                except StopIteration as done:
                    probabilities = done.value  # (K, h, w)
                    break
                yield progress
                if self.cancelled:
                    return None
        finally:
            tiles.close()  # restores the model's mode, device and memory format
        return segmenter.segmentation(probabilities, shape=np.shape(self.image)[:2], scale=scale)
