"""The high-level predictor: from a checkpoint and a raw image to probabilities, classes, objects.

`Segmenter` owns what turns one raw image into a `Segmentation` the way the checkpoint says:
the recorded input normalisation (`pixelwise.data.to_chw_float`), overlap-tile inference
(`pixelwise.tiling.predict`, the exact engine, with one validated `PredictOptions`) in the
precision that is fast on the device (`precision="auto"`: bf16 autocast on CPUs with native
bf16 and on CUDA, fp32 elsewhere; `pixelwise.precision.resolve_precision`) and, for
instance models, the recorded post-processing (`pixelwise.instances.objects_from_probabilities`
with `postprocessing_from_metadata(meta)`, and `object_scores`). `pixelwise predict` and
`pixelwise.inference.predict_files` use it for every image held in memory, so the command line
and Python make the same objects. It holds one image's maps in memory; images too large for
that are streamed by `predict_files`.

    segmenter = pixelwise.Segmenter.from_checkpoint("runs/nuclei/best.safetensors")
    result = segmenter.predict(pixelwise.data.read_image("scan.png"))  # raw uint8/uint16
    result.instances, result.scores  # (H, W) object ids, (N,) confidences
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from pixelwise import tiling
from pixelwise.checkpoint import load_state
from pixelwise.data import to_chw_float
from pixelwise.data.survey import equivalent_diameters
from pixelwise.distributed import select_device
from pixelwise.instances import (
    PostProcessing,
    object_scores,
    objects_from_probabilities,
    postprocessing_from_metadata,
)
from pixelwise.precision import Precision, merge_older_spelling, resolve_precision
from pixelwise.tiling import PredictOptions

__all__ = [
    "AUTO_MIN_OBJECTS",
    "AUTO_RANGE",
    "AUTO_SCALES",
    "SHIPPED_DIAMETER",
    "Segmentation",
    "Segmenter",
    "median_diameter",
]

AUTO_SCALES = (1.0, 2**-0.5, 2**0.5, 0.5, 2.0, 2**-1.5)
"""The resize factors `diameter="auto"` segments an image at, in this order (nearest to as is
first, shrinking before enlarging): up to 2.8× smaller or 2× larger in steps of √2. Shrinking
is cheap (a pass at 1/2.8 costs 1/8 of one as is; at 2, 4×), so it reaches further: CTC GOWT1's
61 px nuclei need it (the previous shipped model: accuracy@0.5 0.045 with the first five
scales, 0.119 with the sixth)."""

AUTO_RANGE = (0.9, 2.0)
"""`diameter="auto"` keeps the first segmentation of `AUTO_SCALES` whose objects measure, at
the network's scale, from 0.9 to 2 times the recorded diameter (a model segments objects
somewhat larger than its training median as well, smaller ones worse); when none does, the one
nearest that range. Chosen on the previous shipped model's 27 validation images among six
ranges (as is 0.803, [1, 1] 0.736, [0.9, 1.6] 0.787, [0.8, 1.6] 0.785, [0.9, 2] 0.820, [0.8, 2]
0.818, [0.7, 2] 0.786) and checked on the sets it was not chosen on (README, "the shipped
model")."""

AUTO_MIN_OBJECTS = 3
"""`diameter="auto"` measures no size from a segmentation of fewer objects than this (the
segmentation at scale 1 stands if none of them has enough)."""

SHIPPED_DIAMETER = "auto"
"""The `diameter` a shipped model (`pixelwise.pretrained`; metadata with a model card under
"pretrained") predicts with when none is given: it meets microscopes and magnifications it
never saw, so it chooses the size per image. Measured (README, "the shipped model"),
accuracy@0.5 as is → auto: the shipped model's validation images 0.789 → 0.815, CTC HeLa 0.778
→ 0.778, GOWT1 0.097 → 0.368; dsb2018-dev image groups never trained on (checkpoints of two
seeds trained without them) 0.411 → 0.566 and 0.272 → 0.506. A checkpoint of one's own
training predicts as is by default: it meets the kind of images it was trained on."""


@dataclass(frozen=True)
class Segmentation:
    """What `Segmenter.predict` returns for one image of H × W pixels.

    Attributes:
        probabilities: (K, H, W) float32 softmax probabilities, K = the model's classes.
        labels: (H, W) class map, the argmax of `probabilities` (uint8 for K ≤ 256, else
            uint16).
        instances: (H, W) int32 object ids (0 = background, objects 1..N in raster order of
            their first pixel) for instance models; None for semantic models.
        scores: (N,) float64 confidence of objects 1..N (their mean foreground probability
            1 − P(background), the COCO ``score``); None for semantic models.
    """

    probabilities: np.ndarray
    labels: np.ndarray
    instances: np.ndarray | None = None
    scores: np.ndarray | None = None


class Segmenter:
    """Predict raw images with a model and the records of its checkpoint.

    Args:
        model: a pixelwise model (UNet, FCN: anything with the geometry API and `hparams`). It
            runs where its parameters are unless `options.device` says otherwise.
        meta: the checkpoint's metadata (`pixelwise.read_metadata`): its "normalization" is
            applied to every image, its "target" / "postprocessing" make the objects. None: no
            normalisation beyond dtype scaling, no objects (unless `postprocessing` is given).
        options: how to tile and run (`pixelwise.tiling.PredictOptions`); default
            `PredictOptions()`.
        postprocessing: replaces the checkpoint's post-processing record
            (`postprocessing_from_metadata(meta)`), e.g. `segmenter.postprocessing.replace(
            min_size=30)`; it also makes a model without a record an instance model.
        precision: "auto" (bf16 autocast on a CPU with native bf16, AVX512_BF16 or AMX, and on
            CUDA, where the GPU lacks bf16 fp16; fp32 elsewhere), "fp32", "bf16" or "fp16";
            resolved once for the device the model runs on (`options.device`, else where its
            parameters are) into `options.autocast`. An `autocast` given in `options` or the
            overrides is an explicit precision (the older way to ask for one). `precision`
            says what was chosen and why.
        diameter: "default" (`SHIPPED_DIAMETER`, "auto", for a shipped model, whose metadata
            holds a model card; None for any other checkpoint), or the typical object diameter
            in the images to predict, in pixels (as Cellpose's): each image is resized by
            `scale` = the checkpoint's recorded "object_diameter" / `diameter` before
            inference, so its objects come at the size the model was trained on, and the
            probabilities are resized back; the post-processing's sizes follow
            (`PostProcessing.rescaled(1 / scale)`). None: as is (also for a shipped model).
            A `postprocessing` given with it is rescaled too, so give its sizes at the
            checkpoint's scale: replace fields of `postprocessing_from_metadata(meta)`, not of
            a diameter segmenter's `.postprocessing`, which is already rescaled. "auto" (instance
            models): chosen per image by the objects' own size: the image is segmented as is,
            then resized by the next of `AUTO_SCALES` (√2 smaller, √2 larger, 2× smaller, 2×
            larger) until the objects' median equivalent diameter (`median_diameter`), at the
            network's scale, lies in `AUTO_RANGE` × the recorded one (`size_miss`); one pass
            when it does as is, and the segmentation nearest the range when none does. A
            model that breaks large nuclei into pieces measures pieces too small at scale 1
            and whole nuclei in range when shrunk; small nuclei come in range enlarged.
        **option_overrides: `PredictOptions` fields replacing those of `options` (tile_size,
            tta, device, ...).

    Raises:
        TypeError: an unknown option name, or a model without the geometry API.
        ValueError: an option the model cannot use (validated once, here), post-processing
            for another number of classes than the model's, a `precision` not in
            `pixelwise.precision.PRECISIONS` or one that disagrees with `autocast`, a
            `diameter` that is not a number > 0, "auto", "default" or None, or one for a
            checkpoint recording no "object_diameter" ("auto" also for a model without
            post-processing).

    Warns:
        InputWarning: bf16 or fp16 asked for on a CPU that emulates it (slow).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        meta: dict[str, Any] | None = None,
        options: PredictOptions | None = None,
        postprocessing: PostProcessing | None = None,
        precision: str = "auto",
        diameter: float | str | None = "default",
        **option_overrides: Any,
    ) -> None:
        self.model = model
        self.meta: dict[str, Any] = dict(meta or {})
        options = PredictOptions.build(options, **option_overrides)
        options.check_model(model)  # once, before any image
        self.precision: Precision = _resolve_precision(precision, options, model)
        self.options = dataclasses.replace(options, autocast=self.precision.autocast)
        if postprocessing is not None and not isinstance(postprocessing, PostProcessing):
            raise TypeError(
                f"postprocessing must be a PostProcessing or None, got "
                f"{type(postprocessing).__name__}; build one with PostProcessing(target=...)"
            )
        # the diameter resolved: a number of pixels, "auto" or None (as is)
        self.diameter = default_diameter(self.meta) if diameter == "default" else diameter
        self.auto_diameter = self.diameter == "auto"
        self.scale = _scale(None if self.auto_diameter else self.diameter, self.meta)
        self._recorded_postprocessing = postprocessing or postprocessing_from_metadata(self.meta)
        self.postprocessing = self._postprocessing_at(self.scale)
        hparams = getattr(model, "hparams", {})
        self.num_classes: int | None = hparams.get("num_classes")
        self.in_channels: int | None = hparams.get("in_channels")
        pp = self.postprocessing
        if self.auto_diameter and (pp is None or not _recorded_diameter(self.meta)):
            raise ValueError(
                'diameter="auto" measures the objects of a first segmentation, so it needs an '
                "instance model whose checkpoint records its training objects' diameter "
                '("object_diameter" in its metadata: instance training runs record it); give '
                "the diameter in pixels instead, or leave it out"
            )
        if pp is not None and self.num_classes not in (None, pp.num_classes):
            raise ValueError(
                f"post-processing for target {pp.target!r} needs a model with "
                f"{pp.num_classes} classes, but this one has {self.num_classes}; pass "
                f"postprocessing=PostProcessing(target=...) for the model's target"
            )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        options: PredictOptions | None = None,
        postprocessing: PostProcessing | None = None,
        precision: str = "auto",
        diameter: float | str | None = "default",
        **option_overrides: Any,
    ) -> Segmenter:
        """Load a `.safetensors` checkpoint (`pixelwise.checkpoint.load_state`) and keep its
        metadata; the model goes to `options.device`, by default cuda:LOCAL_RANK when CUDA is
        available, else the CPU (`pixelwise.distributed.select_device`).

        Args:
            path: the checkpoint, e.g. `runs/x/best.safetensors`.
            options, postprocessing, precision, diameter, **option_overrides: as for
                `Segmenter(...)`.

        Raises:
            CheckpointError: the file is missing or not a pixelwise checkpoint.
            TypeError, ValueError: as `Segmenter(...)`.
        """
        model, meta, _ = load_state(path)
        options = PredictOptions.build(options, **option_overrides)
        model.to(select_device(options.device))
        return cls(
            model,
            meta=meta,
            options=options,
            postprocessing=postprocessing,
            precision=precision,
            diameter=diameter,
        )

    @property
    def normalization(self) -> dict[str, Any] | None:
        """The checkpoint's {"mean", "std", "scale"} input record, or None."""
        return self.meta.get("normalization")

    @property
    def is_instance_model(self) -> bool:
        """Whether `predict` makes objects (the checkpoint or the caller gave post-processing)."""
        return self.postprocessing is not None

    def predict(self, image: np.ndarray, *, source: str | None = None) -> Segmentation:
        """Segment one raw image.

        Args:
            image: (H, W) or (H, W, C) pixels as `pixelwise.data.read_image` returns them, of a
                dtype the checkpoint accepts (uint8, uint16, float, ... as its training images;
                the recorded "scale" must match the dtype). Normalised here as the checkpoint
                records: dtype scaling (uint8 / 255, ...), then (x − mean) / std per channel.
            source: how error messages name the image (e.g. its file); default "image".

        Returns:
            The image's `Segmentation`: (K, H, W) probabilities, (H, W) class map and, for
            instance models, (H, W) int32 objects and their (N,) scores. With
            `diameter="auto"` the first of the `pass_scales` whose `size_miss` is 0, else
            the least missing one (the earliest of equals).

        Raises:
            DataError: NaN values, or a dtype or channel count unlike the training images.
            ValueError: not an (H, W) or (H, W, C) image with the model's channel count.
        """
        best, best_miss = None, math.inf
        for scale in self.pass_scales():
            result = self._predict_at(image, scale, source)
            miss = self.size_miss(result, scale)
            if best is None or miss < best_miss:
                best, best_miss = result, miss
            if best_miss == 0.0:
                break
        return best

    def _predict_at(self, image: np.ndarray, scale: float, source: str | None) -> Segmentation:
        x = self.network_input(image, source=source, scale=scale)  # (C, h, w) float32
        probs = tiling.predict(self.model, x, options=self.options, output="probs")  # (K, h, w)
        return self.segmentation(probs, shape=np.shape(image)[:2], scale=scale)

    def pass_scales(self) -> tuple[float, ...]:
        """The scales `predict` may segment an image at, in order: `AUTO_SCALES` for
        `diameter="auto"`, else the one `scale`."""
        return AUTO_SCALES if self.auto_diameter else (self.scale,)

    def size_miss(self, result: Segmentation, scale: float) -> float:
        """How far the objects of `result` (a segmentation made at `scale`) measure outside
        `AUTO_RANGE` × the recorded diameter, at the network's scale: |log(ratio)| to the
        range's nearer end, 0 inside it (and always 0 without `diameter="auto"`); infinite
        with fewer than `AUTO_MIN_OBJECTS` objects.

        Worked example: recorded 24 px, range 21.6-48 px; objects of median 12 px found at
        scale 1 measure 12 px: log(21.6 / 12) = 0.59 off; at scale 2 they measure 24 px: 0,
        so `predict` keeps the segmentation made at scale 2.
        """
        if not self.auto_diameter:
            return 0.0
        measured = median_diameter(result.instances, min_objects=AUTO_MIN_OBJECTS)
        if measured is None:
            return math.inf
        recorded = float(self.meta["object_diameter"])
        low, high = AUTO_RANGE[0] * recorded, AUTO_RANGE[1] * recorded
        size = measured * scale  # the objects' diameter in the network's input
        return max(math.log(low / size), math.log(size / high), 0.0)

    def network_input(
        self, image: np.ndarray, *, source: str | None = None, scale: float | None = None
    ) -> np.ndarray:
        """`to_input`, resized by `scale` (default `self.scale`, set by a `diameter`): (C, h,
        w) float32 with h = round(H · scale), w = round(W · scale) (objects at the training
        size)."""
        x = self.to_input(image, source=source)  # (C, H, W)
        scale = self.scale if scale is None else scale
        if scale == 1.0:
            return x
        height, width = x.shape[1:]
        return resize(x, (max(1, round(height * scale)), max(1, round(width * scale))))

    def to_input(self, image: np.ndarray, *, source: str | None = None) -> np.ndarray:
        """(H, W) or (H, W, C) raw pixels → the (C, H, W) float32 network input, normalised as
        the checkpoint records (`pixelwise.data.to_chw_float`); `source` names the image in
        error messages."""
        image = np.asarray(image)
        channels = 1 if image.ndim == 2 else image.shape[-1]
        if image.ndim in (2, 3) and self.in_channels not in (None, channels):
            raise ValueError(
                f"{source or 'image'} of shape {image.shape} has {channels} channel(s) (read as "
                f"(H, W) or (H, W, C), as pixelwise.data.read_image returns images), but the "
                f"model takes "
                f"{self.in_channels}; pass an (H, W, {self.in_channels}) image (a (C, H, W) "
                f"array becomes one with np.moveaxis(image, 0, -1))"
            )
        return to_chw_float(image, normalization=self.normalization, source=source)

    def segmentation(
        self,
        probabilities: np.ndarray,
        *,
        shape: tuple[int, int] | None = None,
        scale: float | None = None,
    ) -> Segmentation:
        """The `Segmentation` of (K, h, w) probabilities: class map and, for instance models,
        objects (`objects_from_probabilities` with the post-processing for `scale`, default
        `self.scale`: `self.postprocessing`) and their scores. `shape` (H, W), the image's,
        resizes probabilities of the `network_input`'s size back first (bilinear: they still
        sum to 1); None: they are the image's size."""
        postprocessing = self.postprocessing if scale is None else self._postprocessing_at(scale)
        if shape is not None:
            probabilities = resize(probabilities, tuple(shape))  # (K, H, W)
        labels = probabilities.argmax(axis=0)  # (H, W)
        labels = labels.astype(np.uint8 if probabilities.shape[0] <= 256 else np.uint16)
        if postprocessing is None:
            return Segmentation(probabilities, labels)
        objects = objects_from_probabilities(probabilities, postprocessing)  # (H, W)
        return Segmentation(probabilities, labels, objects, object_scores(probabilities, objects))

    def _postprocessing_at(self, scale: float) -> PostProcessing | None:
        """The recorded (or given) post-processing for images resized by `scale`: its sizes
        at the image's scale (`PostProcessing.rescaled(1 / scale)`)."""
        recorded = self._recorded_postprocessing
        return recorded if recorded is None or scale == 1.0 else recorded.rescaled(1.0 / scale)

    def __repr__(self) -> str:
        name = type(self.model).__name__
        kind = "semantic" if self.postprocessing is None else self.postprocessing.target
        return f"Segmenter({name}, {self.num_classes} classes, {kind}, {self.options})"


def resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, H, W) float32 → (C, h, w) by bilinear interpolation (antialiased when shrinking).

    Each output value is a convex combination of input values, so probabilities still sum to 1.
    """
    import torch
    from torch.nn import functional

    if tuple(array.shape[1:]) == tuple(shape):
        return array
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]  # (1, C, H, W)
    shrink = shape[0] < array.shape[1] or shape[1] < array.shape[2]
    y = functional.interpolate(
        x, size=shape, mode="bilinear", align_corners=False, antialias=shrink
    )  # (1, C, h, w)
    return y[0].numpy()


def median_diameter(labels: np.ndarray, *, min_objects: int = 1) -> float | None:
    """The median equivalent-circle diameter √(4·area/π) of the objects of a label map, in
    pixels (an object of 314 pixels is 20 px across); None with fewer than `min_objects`.

    Args:
        labels: (H, W) integer object ids, 0 = background.
        min_objects: the fewest objects to measure from.
    """
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    if areas.size < max(min_objects, 1):
        return None
    return float(np.median(equivalent_diameters(areas)))


def default_diameter(meta: dict[str, Any]) -> str | None:
    """`Segmenter`'s `diameter="default"` for a checkpoint's metadata: `SHIPPED_DIAMETER` for a
    shipped model (its metadata holds a model card, "pretrained"), else None (as is)."""
    return SHIPPED_DIAMETER if isinstance(meta.get("pretrained"), dict) else None


def _recorded_diameter(meta: dict[str, Any]) -> bool:
    recorded = meta.get("object_diameter")
    return isinstance(recorded, int | float) and recorded > 0


def _scale(diameter: float | None, meta: dict[str, Any]) -> float:
    """The resize factor for objects of `diameter` pixels: recorded diameter / `diameter`."""
    if diameter is None:
        return 1.0
    if not (
        isinstance(diameter, int | float)
        and not isinstance(diameter, bool)
        and math.isfinite(diameter)
        and diameter > 0
    ):
        raise ValueError(
            f"diameter must be the objects' typical diameter in pixels (a number > 0), "
            f'"auto", "default" or None, got {diameter!r}'
        )
    if not _recorded_diameter(meta):
        raise ValueError(
            "diameter needs a checkpoint that records its training objects' diameter "
            '("object_diameter" in its metadata: instance training runs record it, and the '
            "shipped models have it); this one does not (a semantic model, or one trained "
            "before runs recorded it): resize the images yourself, or leave diameter out"
        )
    return float(meta["object_diameter"]) / float(diameter)


def _resolve_precision(precision: str, options: PredictOptions, model: nn.Module) -> Precision:
    """`precision` resolved for the device the model runs on; an `options.autocast` is an
    explicit precision, which "auto" gives way to and any other precision must equal."""
    precision = merge_older_spelling(precision, options.autocast)
    device = options.device
    if device is None:
        device = next((p.device for p in model.parameters()), "cpu")
    return resolve_precision(precision, device)
