"""The napari widget: segment an image layer with a pixelwise checkpoint, with progress.

`SegmentWidget` picks a checkpoint (`.safetensors` or a run folder) and an image layer, sets the
overlap-tile options (tile size, tiles per batch, test-time augmentation, precision: the fields
of `pixelwise.tiling.PredictOptions`), and runs a `pixelwise.napari.job.SegmentationJob` in
napari's thread worker, so the viewer stays responsive: the progress bar follows the tiles and
Cancel stops the computation before the next tile batch. The result becomes Labels layers
(`pixelwise.napari.layers`): the class map with the checkpoint's class names and colours and,
for instance models, the objects; equal to what `pixelwise predict` writes for the same image
and options. Bad input (a missing checkpoint, a tile size the model cannot use, an image of the
wrong channels) is one line in the widget and a napari notification, never a traceback.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox

from pixelwise.checkpoint import CheckpointError, load_state, resolve
from pixelwise.checks import InputWarning
from pixelwise.data.errors import DataError
from pixelwise.distributed import select_device
from pixelwise.napari.job import Progress, SegmentationJob
from pixelwise.napari.layers import segmentation_layers
from pixelwise.precision import PRECISIONS
from pixelwise.segmenter import Segmentation, Segmenter
from pixelwise.tiling import TTA_MODES, PredictOptions

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

__all__ = ["SegmentWidget"]

USER_ERRORS = (CheckpointError, DataError, ValueError, TypeError, OSError)
"""What bad input raises (checkpoint, options, image); shown as one line."""
PROGRESS_STEPS = 1000
"""The progress bar's maximum: it shows the fraction of the image's pixels done."""


class SegmentWidget(Container):
    """Dock widget: checkpoint + image layer + tiling options → Labels layers.

    Args:
        napari_viewer: the viewer whose image layers are offered and which gets the layers.

    Attributes:
        worker: napari's thread worker of the running (or last) job, or None.
        job: the running (or last) `SegmentationJob`, or None.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.checkpoint = FileEdit(
            label="checkpoint", mode="r", filter="*.safetensors",
            tooltip="a pixelwise checkpoint (.safetensors) or a training run folder",
        )  # fmt: skip
        self.image = ComboBox(label="image", choices=self._image_layers, nullable=False)
        self.tile_size = SpinBox(
            label="tile size", min=0, max=16384, value=0,
            tooltip="input tile size in pixels, a valid size of the model (572 for the "
            "paper's U-Net); 0: automatic, the fewest pixels that fit the memory budget",
        )  # fmt: skip
        self.batch_size = SpinBox(
            label="tiles per batch", min=0, max=4096, value=0,
            tooltip="tiles per forward pass; 0: as many as fit the memory budget",
        )  # fmt: skip
        self.tta = ComboBox(
            label="test-time aug.",
            choices=[("none", None), *((mode, mode) for mode in TTA_MODES)],
            tooltip="average flipped (4 passes) or flipped and rotated (d4: 8 passes) "
            "predictions",
        )  # fmt: skip
        self.precision = ComboBox(
            label="precision", choices=PRECISIONS, value="auto",
            tooltip="auto: bf16 autocast on CUDA and on CPUs that compute bf16 natively, fp32 "
            "elsewhere; or fp32, bf16, fp16 (mixed precision, torch.autocast)",
        )  # fmt: skip
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=PROGRESS_STEPS, value=0)
        self.status = Label(value="")
        super().__init__(
            widgets=[
                self.checkpoint, self.image, self.tile_size, self.batch_size, self.tta,
                self.precision, self.run_button, self.cancel_button, self.progress, self.status,
            ]
        )  # fmt: skip
        self.worker: GeneratorWorker | None = None
        self.job: SegmentationJob | None = None
        self._loaded: dict[tuple[str, int], tuple[Any, dict[str, Any]]] = {}
        self.run_button.changed.connect(lambda: self.segment())
        self.cancel_button.changed.connect(self.cancel)
        for event in ("inserted", "removed", "reordered"):
            getattr(self.viewer.layers.events, event).connect(self.reset_choices)

    def _image_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def segmenter(self) -> Segmenter:
        """The checkpoint's `Segmenter` with the widget's options (the checkpoint is read once
        per file version; the model goes to CUDA when available).

        Warns (as napari notifications): `InputWarning`, e.g. bf16 on a CPU that emulates it.

        Raises:
            CheckpointError: no checkpoint given, or not a pixelwise checkpoint.
            ValueError: an option the model cannot use (e.g. an invalid tile size).
        """
        from napari.utils.notifications import show_warning

        value = str(self.checkpoint.value)
        if value in ("", "."):
            raise CheckpointError("no checkpoint chosen: pick a .safetensors file or a run folder")
        path = resolve(value)
        key = (str(path.resolve()), path.stat().st_mtime_ns if path.is_file() else -1)
        if key not in self._loaded:
            model, meta, _ = load_state(path)
            self._loaded = {key: (model.to(select_device(None)), meta)}  # keep one model
        model, meta = self._loaded[key]
        options = PredictOptions(
            tile_size=self.tile_size.value or None,
            batch_size=self.batch_size.value or None,
            tta=self.tta.value,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputWarning)
            segmenter = Segmenter(model, meta=meta, options=options, precision=self.precision.value)
        for warning in caught:  # e.g. bf16 asked for on a CPU that emulates it
            show_warning(f"pixelwise: {warning.message}")
        return segmenter

    def _raw_image(self, layer: Any) -> np.ndarray:
        """The layer's (H, W) or (H, W, C) pixels (level 0 of a multiscale image)."""
        data = layer.data[0] if layer.multiscale else layer.data
        image = np.asarray(data)
        if image.ndim != 2 and not (layer.rgb and image.ndim == 3):
            raise ValueError(
                f"image layer {layer.name!r} has shape {image.shape}; the widget segments one "
                f"2-D image, (H, W) or RGB (H, W, C): segment stacks with `pixelwise predict "
                f"CHECKPOINT stack.tif --out OUT`, or pick a 2-D layer"
            )
        return image

    def segment(self, *, start: bool = True) -> GeneratorWorker | None:
        """Start segmenting the chosen image layer in napari's thread worker.

        Args:
            start: start the worker (False: the caller connects to it, then calls
                `worker.start()`).

        Returns:
            The worker; None when the input was refused (the status line says why).
        """
        from napari.qt.threading import create_worker

        if self.worker is not None and self.worker.is_running:
            return self.worker
        layer = self.image.value
        try:
            if layer is None:
                raise ValueError("no image layer: open an image (or File > Open Sample)")
            segmenter = self.segmenter()
            job = SegmentationJob(segmenter, self._raw_image(layer), source=f"layer {layer.name!r}")
        except USER_ERRORS as e:
            self._fail(e)
            return None
        checkpoint = str(self.checkpoint.value)
        worker = create_worker(_steps, job, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_result(result, job, layer, checkpoint))
        worker.errored.connect(self._fail)
        worker.finished.connect(self._on_finished)
        worker.aborted.connect(job.cancel)  # napari's worker.quit(): stop the engine too
        self.job, self.worker = job, worker
        self.progress.value = 0
        self.status.value = f"segmenting {layer.name}, {segmenter.precision.describe()}…"
        self.run_button.enabled, self.cancel_button.enabled = False, True
        if start:
            worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running job before its next tile batch. Thread-safe: it only sets the
        job's flag; the worker then finishes without layers."""
        if self.job is not None:
            self.job.cancel()

    def _on_progress(self, progress: Progress) -> None:
        self.progress.value = round(PROGRESS_STEPS * progress.fraction)
        self.status.value = f"{progress.tiles} tile(s), {progress.fraction:.0%}"

    def _on_result(
        self, result: Segmentation | None, job: SegmentationJob, layer: Any, checkpoint: str
    ) -> None:
        if result is None:
            self.status.value = f"cancelled at {self.progress.value / PROGRESS_STEPS:.0%}"
            return
        meta = job.segmenter.meta
        placement = {"scale": layer.scale[-2:], "translate": layer.translate[-2:]}
        for data, kwargs, _ in segmentation_layers(
            result, meta, name=layer.name, checkpoint=checkpoint, **placement
        ):
            self._show_labels(data, kwargs)
        count = "" if result.instances is None else f", {len(result.scores)} objects"
        self.status.value = f"done: {Path(checkpoint).name}{count}"

    def _show_labels(self, data: np.ndarray, kwargs: dict[str, Any]) -> None:
        """Add a Labels layer, or update the one of the same name (a rerun)."""
        from napari.layers import Labels

        name = kwargs["name"]
        existing = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401
        if not isinstance(existing, Labels):
            self.viewer.add_labels(data, **kwargs)
            return
        existing.data = data
        for key, value in kwargs.items():
            if key != "name":
                setattr(existing, key, value)

    def _fail(self, error: BaseException) -> None:
        from napari.utils.notifications import show_error

        message = str(error)
        if not isinstance(error, USER_ERRORS):  # a fault, not bad input: name its kind
            message = f"{type(error).__name__}: {message}"
        self.status.value = f"error: {message}"
        show_error(f"pixelwise: {message}")

    def _on_finished(self) -> None:
        self.run_button.enabled, self.cancel_button.enabled = True, False


def _steps(job: SegmentationJob) -> Generator[Progress, None, Segmentation | None]:
    """The worker's generator: the job's steps, then napari's Labels colour kernels compiled
    here, off the main thread (numba compiles them at a session's first Labels layer of each
    dtype: 2.3 s measured, which would freeze the viewer when the layers are added)."""
    from napari.layers import Labels

    result = yield from job.steps()
    if result is not None:
        colormap = {None: (0.0, 0.0, 0.0, 0.0), 1: (1.0, 0.0, 0.0, 1.0)}
        for labels in (result.labels, result.instances):
            if labels is not None:
                Labels(np.zeros((2, 2), labels.dtype), colormap=colormap)  # compiles, then dropped
                Labels(np.zeros((2, 2), labels.dtype))
    return result
