"""The training configuration: `TrainConfig`, its one check, its YAML form and its option help.

Each field carries its help text in `dataclasses.field(metadata={"help": ...})`; the command line
(`pixelwise train --help`) reads it from there, so an option is described in this file only.
Training itself (`pixelwise.train.loop`) reads nothing but a `TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from pixelwise.checks import choice_message
from pixelwise.precision import AUTOCAST_DTYPES

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "poly", "cosine", "plateau")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.yaml` next to the checkpoints.

    The help of every option is in its field's metadata (`option_help()` lists them); the
    command line turns each field into a flag (`patch_size` → `--patch-size`).
    """

    # Data
    data: str = field(
        default="",
        metadata={"help": "dataset folder (any layout `pixelwise.data.open_dataset` reads)"},
    )
    out: str = field(
        default="runs/pixelwise",
        metadata={"help": "output folder for checkpoints, log.csv, curves.png, config.yaml"},
    )
    val_data: str | None = field(
        default=None,
        metadata={
            "help": "separate validation dataset folder (else val_fraction of data is held out)"
        },
    )
    val_fraction: float = field(
        default=0.2, metadata={"help": "fraction of the images held out for validation"}
    )
    layout: str = field(
        default="auto", metadata={"help": "dataset layout: auto, folder, voc, tiff-stack"}
    )
    split: str | None = field(
        default=None,
        metadata={"help": "dataset split to train on (VOC: ImageSets name; CamVid: train)"},
    )
    val_split: str | None = field(
        default=None, metadata={"help": "split to validate on (e.g. val)"}
    )
    num_classes: int | None = field(
        default=None, metadata={"help": "number of classes (default: from the masks)"}
    )
    ignore_index: int | None = field(
        default=None,
        metadata={
            "help": "mask value to ignore in loss and metrics (e.g. 255 for VOC, 11 for CamVid)"
        },
    )
    instances: bool = field(
        default=False,
        metadata={"help": "masks hold instance labels (0 = background, 1..K = objects)"},
    )
    class_names: list[str] | None = field(
        default=None,
        metadata={"help": "class names stored in the checkpoint (default: class 0, class 1, ...)"},
    )
    # Model
    model: str = field(default="unet", metadata={"help": "model name: unet, fcn32s, fcn16s, fcn8s"})
    model_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "model constructor keywords (in_channels and num_classes come from the data)"
        },
    )
    init: str | None = field(
        default=None,
        metadata={
            "help": "checkpoint whose parameters of the same name and shape start the model (FCN's "
            "staged training: 16s from 32s, 8s from 16s; new score layers keep their zero init)"
        },
    )
    # Optimisation
    steps: int = field(default=1000, metadata={"help": "optimisation steps in all"})
    batch_size: int = field(
        default=4, metadata={"help": "tiles per step (per process under torchrun)"}
    )
    patch_size: int = field(
        default=128,
        metadata={
            "help": "labelled size of each training tile (rounded up to a size the net gives)"
        },
    )
    optimizer: str = field(
        default="sgd", metadata={"help": "sgd (momentum 0.99, as the U-Net paper), adam, adamw"}
    )
    lr: float = field(default=0.01, metadata={"help": "learning rate"})
    momentum: float = field(default=0.99, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    schedule: str = field(
        default="poly",
        metadata={
            "help": "constant, poly (power 0.9), cosine, plateau (lr × 0.1 after `patience` "
            "validations without a lower validation loss)"
        },
    )
    patience: int = field(
        default=5,
        metadata={"help": "plateau schedule: validations without improvement before lr × 0.1"},
    )
    loss: str = field(default="ce", metadata={"help": "ce, dice, ce+dice"})
    reduction: str = field(
        default="mean", metadata={"help": "mean, or sum (FCN's unnormalised loss)"}
    )
    weighted: bool = field(
        default=False,
        metadata={
            "help": "U-Net border weights between touching objects (w0, sigma) and class balance; "
            "objects come from instance masks, else from connected components (which merge "
            "touching ones)"
        },
    )
    w0: float = field(default=10.0, metadata={"help": "border weight w0 (paper: 10)"})
    sigma: float = field(default=5.0, metadata={"help": "border weight sigma in pixels (paper: 5)"})
    # Augmentation
    augment: bool = field(
        default=True,
        metadata={"help": "the paper's elastic deformation, rotation, flips, gray values"},
    )
    elastic_sigma: float = field(
        default=10.0,
        metadata={"help": "std of the coarse elastic displacements in pixels (paper: 10)"},
    )
    elastic_grid: int = field(
        default=3, metadata={"help": "elastic displacement grid points per axis (paper: 3)"}
    )
    rotation: float = field(default=180.0, metadata={"help": "maximum rotation in degrees"})
    shift: float = field(default=0.0, metadata={"help": "maximum shift in pixels"})
    flip: bool = field(default=True, metadata={"help": "random flips"})
    gray: float = field(
        default=0.1, metadata={"help": "gray-value variation (scale of brightness/contrast jitter)"}
    )
    # Run
    seed: int = field(
        default=0, metadata={"help": "seed of data order, augmentation and initialisation"}
    )
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    amp: str | None = field(default=None, metadata={"help": "autocast dtype: bf16 or fp16"})
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory format"})
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda when available)"}
    )
    val_every: int = field(default=100, metadata={"help": "validate and checkpoint every N steps"})
    log_every: int = field(
        default=10,
        metadata={
            "help": "steps between progress updates (the bar's figures, or a log line when "
            "not on a terminal)"
        },
    )
    max_minutes: float | None = field(
        default=None,
        metadata={
            "help": "time budget: stop, validate and checkpoint once this much training time is "
            "spent; poly/cosine anneal over the steps the budget allows; a resumed run counts "
            "the time already spent; timed runs are not bit-reproducible"
        },
    )

    def check(self) -> None:
        """Raise ValueError for an option outside its range, naming the fix."""
        if not self.data:
            raise ValueError("data is required: pass the dataset folder")
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}"),  # noqa: E501
            (self.optimizer in OPTIMIZERS, choice_message("optimizer", self.optimizer, OPTIMIZERS)),
            (self.schedule in SCHEDULES, choice_message("schedule", self.schedule, SCHEDULES)),
            (self.amp in (None, *AUTOCAST_DTYPES), choice_message("amp", self.amp, (None, *AUTOCAST_DTYPES))),  # noqa: E501
            (self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.max_minutes is None or self.max_minutes > 0,
             f"max_minutes must be > 0 (or None for no time limit), got {self.max_minutes}"),
            (self.class_names is None or len(self.class_names) >= 1, "class_names is empty"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a dict (e.g. a YAML file); unknown keys raise, listing the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a YAML mapping of option: value (a saved `config.yaml`, or one written by hand)."""
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read the YAML config ({e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config must be a mapping of option: value")
        return cls.from_dict(values, source=str(path))

    def to_yaml(self) -> str:
        """The YAML text `from_yaml` reads back into an equal config."""
        return yaml.safe_dump(dataclasses.asdict(self))


def option_help() -> dict[str, str]:
    """Field name → help text, for every `TrainConfig` option."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}
