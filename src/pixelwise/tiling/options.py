"""Prediction options: one frozen object, validated once, shared by every entry point.

`PredictOptions` holds how an image is tiled and run (tile and batch size, test-time
augmentation, padding, halo, memory budget, precision, memory format, device, progress bar).
`pixelwise.tiling.predict` and `pixelwise.inference.predict_files` both accept one, and both
build one from their keyword arguments, so an option is checked in one place with one wording:
its own value in `__post_init__`, its fit to a model in `check_model`, once per call before
any image is read. What a call returns (`output`, `out`) and what a file run writes are not
options of the engine and stay arguments of those functions.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

from pixelwise.checks import check_choice, check_positive_int
from pixelwise.models import Geometry
from pixelwise.precision import AUTOCAST_DTYPES
from pixelwise.tiling.memory import DEFAULT_MEMORY_BUDGET_MB
from pixelwise.tiling.plan import (
    PAD_MODES,
    check_halo,
    check_tile_size,
    resolve_halo,
    tile_pair,
)

TTA_MODES = ("flips", "d4")
_GEOMETRY = (  # the members of pixelwise.models.Geometry, named when a model lacks some
    "margin",
    "stride",
    "receptive_radius",
    "output_size",
    "input_size",
    "valid_input_sizes",
)


@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    """How `pixelwise.tiling.predict` tiles and runs an image (keyword-only, immutable).

    Attributes:
        tile_size: input tile size, int or (height, width), a valid input size of the model
            (572 for the paper). None: the size that computes the fewest pixels while one tile
            batch fits `memory_budget_mb` (`choose_tile_size`), e.g. the whole image.
        batch_size: tiles per forward pass. None: as many as fit `memory_budget_mb`.
        tta: None, "flips" (identity, horizontal, vertical, both: 4 passes) or "d4" (the flips
            with 90° rotations: 8 passes); probabilities are averaged per tile.
        pad_mode: how the image is extended beyond its border: "reflect" (mirror, as the
            paper), "constant" (zeros) or "replicate" (edge pixel).
        halo: same-padding models: pixels of each tile's output discarded next to a
            neighbouring tile. None: `default_halo(model)` (the receptive radius rounded up to
            the stride, at most 128). Valid models need none (None or 0).
        memory_budget_mb: bound on the estimated memory of one tile batch
            (`tile_bytes_per_pixel`: activations and the tile's buffers), in MiB; sets the
            automatic tile and batch sizes. None: `DEFAULT_MEMORY_BUDGET_MB` (1024) here;
            `pixelwise.inference.predict_files` gives streamed images 512, counting the
            output rows they hold.
        autocast: None (float32), "bf16" or "fp16": torch.autocast on the device's type.
        channels_last: run the model and the tiles in channels_last memory format. None: on
            for CPU devices, where oneDNN convolutions run ~1.4× faster in it
            (benchmarks/tiling.py, section 4), off elsewhere.
        device: run the model there (str or torch.device). None: where its parameters are.
        progress: show a tqdm progress bar of the tiles (only when stderr is a terminal).

    Raises:
        ValueError: from the constructor, for any value outside its rule; the message states
            the rule, the value and the fix.
    """

    tile_size: int | tuple[int, int] | None = None
    batch_size: int | None = None
    tta: str | None = None
    pad_mode: str = "reflect"
    halo: int | None = None
    memory_budget_mb: float | None = None
    autocast: str | None = None
    channels_last: bool | None = None
    device: str | torch.device | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.tile_size is not None:
            height, width = tile_pair(self.tile_size)
            size = height if isinstance(self.tile_size, numbers.Integral) else (height, width)
            object.__setattr__(self, "tile_size", size)  # frozen: normalise once, here
        if self.batch_size is not None:
            check_positive_int("batch_size", self.batch_size)
        check_choice("tta", self.tta, (None, *TTA_MODES))
        check_choice("pad_mode", self.pad_mode, PAD_MODES)
        check_halo(self.halo)
        budget = self.memory_budget_mb
        if budget is not None and (
            isinstance(budget, bool)
            or not isinstance(budget, numbers.Real)
            or not math.isfinite(budget)
            or budget <= 0
        ):
            raise ValueError(
                f"memory_budget_mb must be a finite number > 0, got {budget!r}; it bounds the "
                f"estimated memory of one tile batch, in MiB (default "
                f"{DEFAULT_MEMORY_BUDGET_MB:g}; None: the default)"
            )
        check_choice("autocast", self.autocast, (None, *AUTOCAST_DTYPES))
        _check_flag("channels_last", self.channels_last, none="on for CPUs, off elsewhere")
        _check_flag("progress", self.progress)
        if self.device is not None and not isinstance(self.device, torch.device):
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"device must be None, a torch.device or a device string such as 'cpu', "
                    f"'cuda' or 'cuda:1', got {self.device!r}"
                ) from None

    @property
    def element_size(self) -> int:
        """Bytes per activation for the memory estimate: 4 in float32, 2 under autocast."""
        return 4 if self.autocast is None else 2

    @classmethod
    def build(cls, options: PredictOptions | None = None, **overrides: Any) -> PredictOptions:
        """`options` with `overrides` replaced (a new object), or `PredictOptions(**overrides)`.

        This is how the keyword call style (`predict(model, image, tile_size=572)`) becomes an
        options object.

        Raises:
            TypeError: `options` is not a PredictOptions, or an override names no option.
            ValueError: an override's value is outside its rule.
        """
        if options is not None and not isinstance(options, cls):
            raise TypeError(
                f"options must be a PredictOptions or None, got {type(options).__name__}; "
                f"build one with PredictOptions(tile_size=..., ...)"
            )
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(
                f"unknown prediction option(s) {', '.join(map(repr, unknown))}; the options "
                f"are {', '.join(names)}"
            )
        if options is None:
            return cls(**overrides)
        return dataclasses.replace(options, **overrides) if overrides else options

    def check_model(self, model: Geometry) -> None:
        """Raise unless these options fit `model`: it has the geometry API, every tile size is
        a valid input size, and a halo is only given to a same-padding model.

        `predict` calls it before it reads the image; `predict_files` before it reads any file
        (a failure would fail every file), so the same message comes from either.

        Raises:
            TypeError: `model` lacks the geometry API.
            ValueError: a tile size or the halo does not fit the model (the message names the
                nearest valid sizes, or the fix).
        """
        if not isinstance(model, Geometry):
            missing = [name for name in _GEOMETRY if not hasattr(model, name)]
            raise TypeError(
                f"{type(model).__name__} lacks the geometry API that overlap-tile inference "
                f"plans with (missing: {', '.join(missing)}); use a pixelwise model (UNet, "
                f"FCN) or implement pixelwise.models.Geometry"
            )
        if self.tile_size is not None:
            for n in tile_pair(self.tile_size):
                check_tile_size(model, n)
        resolve_halo(model, self.halo)


def _check_flag(name: str, value: object, *, none: str | None = None) -> None:
    """ValueError unless `value` is a bool (or None, when `none` says what None means)."""
    if isinstance(value, bool) or (none is not None and value is None):
        return
    allowed = "True or False" if none is None else f"True, False or None ({none})"
    raise ValueError(f"{name} must be {allowed}, got {value!r}")
