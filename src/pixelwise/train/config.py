"""The training configuration: `TrainConfig`, its defaults, its one check, its YAML form and its
option help.

Each field carries its help text in `dataclasses.field(metadata={"help": ...})`; the command line
(`pixelwise train --help`) reads it from there, so an option is described in this file only.
Training itself (`pixelwise.train.loop`) reads nothing but a `TrainConfig`.

Two sets of defaults: `PLAIN_DEFAULTS` for semantic classes and `INSTANCE_DEFAULTS` for objects
(`instances=True`). The options they name default to None, "not set", and `TrainConfig`
resolves them once, when it is built (`resolve_defaults`); see the class docstring.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import field
from pathlib import Path
from typing import Any

import torch
import yaml

from pixelwise.checks import choice_message
from pixelwise.data.normalization import NORMALIZE_METHODS
from pixelwise.data.targets import TARGET_CLASS_NAMES
from pixelwise.instances.postprocess import TARGETS
from pixelwise.models import REGISTRY
from pixelwise.precision import PRECISIONS, merge_older_spelling, training_channels_last

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "poly", "cosine", "plateau")

PLAIN_DEFAULTS: dict[str, Any] = {
    "target": None,
    "steps": 1000,
    "max_minutes": None,
    "patch_size": 128,
    "optimizer": "sgd",
    "lr": 0.01,
    "schedule": "poly",
    "val_every": 100,
    "weighted": False,
    "normalize": "dataset",
    "blur": 0.0,
    "noise": 0.0,
}
"""The defaults of the options left unset, for semantic classes (`instances` False)."""

INSTANCE_DEFAULTS: dict[str, Any] = {
    "target": "three-class",
    "model_args": {"padding": "same", "batch_norm": True, "base_channels": 32, "depth": 4},
    "steps": 1_000_000,
    "max_minutes": 30.0,
    "patch_size": 256,
    "optimizer": "adam",
    "lr": 1e-3,
    "schedule": "cosine",
    "val_every": 100,
    "weighted": {"two-class": True, "three-class": False, "distance": False},
    # per-image percentiles: on dsb2018-dev's fixed split, 30 min each, 27 test images,
    # accuracy@0.5 0.820 against 0.774 with the dataset moments, ahead at every IoU
    # (benchmarks/nuclei_instances.py --normalize dataset percentile)
    "normalize": "percentile",
    # blur and noise: on image groups never trained on (benchmarks/nuclei_instances.py --split
    # groups --steps 1000), accuracy@0.5 0.356 without them, 0.411 with blur 1 and noise 0.05
    # (the dim, textured 640x512 group 0.068 -> 0.408), 0.354 with blur 2 and noise 0.1 (the
    # small nuclei blurred away); without them the model learns the warp's smoothing. Seed 1
    # scored 0.272 pooled: the small-nucleus groups vary by seed more than these settings, the
    # 640x512 group's gain held (0.333 against 0.068-0.080 in three runs without)
    "blur": 1.0,
    "noise": 0.05,
}
"""The defaults of the options left unset, for objects (`instances=True`); the one place to
change them. A value given per target (a dict keyed by the TARGETS) follows the resolved target.
`model_args` are U-Net options: they fill in the keys `model_args` leaves out when the model is
"unet". `steps` is large so that the time budget `max_minutes` ends the run and shapes the
schedule; with `steps` set and `max_minutes` not, the steps decide (no time budget)."""

LEGACY_OPTIONS = ("amp",)
"""Older option names `from_dict` and `TrainConfig(...)` still accept (`amp` → `precision`)."""

ADDED_OPTIONS: dict[str, Any] = {"blur": 0.0, "noise": 0.0}
"""Options added after runs had been saved without them → the value those runs trained with
(resuming such a run compares the options it now gets against these)."""

AUTO_FIELDS = tuple(PLAIN_DEFAULTS)
"""The options that default to None ("not set") and are resolved when a `TrainConfig` is built."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.yaml` next to the checkpoints.

    The help of every option is in its field's metadata (`option_help()` lists them); the
    command line turns each field into a flag (`patch_size` → `--patch-size`).

    Defaults for objects: the options of `AUTO_FIELDS` (target, steps, max_minutes,
    patch_size, optimizer, lr, schedule, val_every, weighted, normalize, blur, noise) default
    to None, "not set", and are resolved when the config is built (`__post_init__` →
    `resolve_defaults`): options given are kept; the others take `INSTANCE_DEFAULTS` when
    `instances` is True, else `PLAIN_DEFAULTS` (today's values: 1000 steps, patch 128, SGD at
    0.01, poly, ...). Details:

    * `target`, with `instances` and not given: the target of a given `num_classes` or
      `class_names` count (2 → "two-class", 3 → "three-class", 5 → "distance"), else the
      instance default;
    * `max_minutes`, with `instances`: the instance budget only when `steps` is not given
      either (given steps decide alone);
    * a value `INSTANCE_DEFAULTS` gives per target (`weighted`: the two-class target's border
      weights on, the others off) follows the resolved target;
    * `model_args` (model "unet"): the instance keys the given `model_args` lack are added;
    * `channels_last`, not given: the format that trains faster on the device
      (`pixelwise.precision.training_channels_last`); `workers`, not given, `default_workers`;
    * `precision` stays as given ("auto" by default): the run resolves it for the device it
      runs on (`pixelwise.precision.resolve_precision`), so a run resumed on other hardware
      chooses again; the older `amp` maps onto it.

    A built config holds only resolved values, so `to_yaml` (config.yaml) records what the run
    used and `from_yaml` of it gives an equal config (a resumed run is exact). Set `instances`
    when building the config: changing it on a built config resolves nothing again (`check`
    then asks for a target).
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
        metadata={
            "help": "masks hold instance labels (0 = background, 1..K = objects): train for "
            "objects, with the instance defaults for the options not given (see target)"
        },
    )
    target: str | None = field(
        default=None,
        metadata={
            "help": "with --instances, what the model learns: three-class (background, "
            "interior, one-pixel inner boundary, derived from the instance labels), distance "
            "(background and four bands of each object's normalised distance to its outside) "
            "or two-class (background/object, the U-Net paper's, border weights on by default); "
            "a --num-classes or --class-names count of 2, 3 or 5 chooses it too; the "
            "post-processing is tuned on the validation images at the end"
        },
    )
    normalize: str | None = field(
        default=None,
        metadata={
            "help": "input normalisation: dataset (mean and std over the training images, for "
            "images of one kind and dtype) or percentile (each image's 1st and 99.8th "
            "percentiles onto 0 and 1, dark-on-bright images inverted: any bit depth and "
            "brightness, as StarDist and Cellpose)"
        },
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
            "staged training: 16s from 32s, 8s from 16s; new score layers keep their zero init), "
            "or a shipped model's name to fine-tune it (nuclei; `pixelwise models` lists them)"
        },
    )
    # Optimisation
    steps: int | None = field(
        default=None,
        metadata={
            "help": "optimisation steps in all (with --instances and no --steps, the time "
            "budget decides)"
        },
    )
    batch_size: int = field(
        default=4, metadata={"help": "tiles per step (per process under torchrun)"}
    )
    patch_size: int | None = field(
        default=None,
        metadata={
            "help": "labelled size of each training tile (rounded up to a size the net gives)"
        },
    )
    optimizer: str | None = field(
        default=None, metadata={"help": "sgd (momentum 0.99, as the U-Net paper), adam, adamw"}
    )
    lr: float | None = field(default=None, metadata={"help": "learning rate"})
    momentum: float = field(default=0.99, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    schedule: str | None = field(
        default=None,
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
    weighted: bool | None = field(
        default=None,
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
    zoom: float = field(
        default=1.0,
        metadata={
            "help": "largest random zoom factor z: the content is scaled by a log-uniform factor "
            "in [1/z, z] (1 = none, the paper's), so objects of other sizes are learnt too"
        },
    )
    flip: bool = field(default=True, metadata={"help": "random flips"})
    gray: float = field(
        default=0.1, metadata={"help": "gray-value variation (scale of brightness/contrast jitter)"}
    )
    dim: float = field(
        default=1.0,
        metadata={
            "help": "smallest intensity factor f: each patch's values above its minimum are "
            "scaled by a log-uniform factor in [f, 1] (1 = none), so dim objects are learnt too"
        },
    )
    blur: float | None = field(
        default=None,
        metadata={
            "help": "largest Gaussian blur in pixels: each patch is blurred by a sigma uniform in "
            "[0, blur] (0 = none), so other optics and focus are learnt too"
        },
    )
    noise: float | None = field(
        default=None,
        metadata={
            "help": "largest noise level: Gaussian noise of a std uniform in [0, noise] x the "
            "patch's value range is added (0 = none), so other cameras are learnt too, and the "
            "pixel noise that the warp's interpolation smooths away is back"
        },
    )
    # Run
    seed: int = field(
        default=0, metadata={"help": "seed of data order, augmentation and initialisation"}
    )
    workers: int | None = field(
        default=None,
        metadata={
            "help": "DataLoader worker processes (default: 0 on a CPU, where a training step "
            "outweighs preparing its batch many times over and workers would take its cores; "
            "on a GPU min(4, CPU cores - 1), so that augmentation keeps up with the GPU)"
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "numeric precision: auto (default: bf16 autocast on CPUs with native bf16, "
            "AVX512_BF16 or AMX, and on CUDA GPUs that have it, fp16 with loss scaling on "
            "other GPUs, fp32 on other CPUs, where bf16 is emulated and slow), fp32, bf16, "
            "fp16; chosen again on resume, for the hardware then (the run's first line says "
            "what and why); --amp and --autocast are older names"
        },
    )
    amp: dataclasses.InitVar[str | None] = None
    """The older name of `precision` (bf16 or fp16): mapped onto it when the config is built,
    so config.yaml records `precision` alone."""
    channels_last: bool | None = field(
        default=None,
        metadata={
            "help": "channels_last memory format (default: on for CPUs with AVX-512, where it "
            "trains faster; off on other CPUs, where it is slower, and on GPUs)"
        },
    )
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda when available)"}
    )
    val_every: int | None = field(
        default=None,
        metadata={
            "help": "validate and checkpoint every N steps (instance runs: object scores, and "
            "the best checkpoint by the DSB score)"
        },
    )
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
            "the time already spent; timed runs are not bit-reproducible (with --instances, "
            "the instance budget only when --steps is not given)"
        },
    )

    def __post_init__(self, amp: str | None) -> None:
        """Map the old `amp` onto `precision`; fill in the options left unset
        (`resolve_defaults`)."""
        self.precision = merge_older_spelling(self.precision, amp, names=("precision", "amp"))
        resolve_defaults(self)

    def check(self) -> None:
        """Raise ValueError for an option outside its range, naming the fix."""
        if not self.data:
            raise ValueError("data is required: pass the dataset folder")
        self._check_target()
        unresolved = [name for name in AUTO_FIELDS if getattr(self, name) is None
                      and PLAIN_DEFAULTS[name] is not None]  # fmt: skip
        if unresolved:
            raise ValueError(
                f"{', '.join(unresolved)} not set: build the config with TrainConfig(...), "
                "from_dict or from_yaml, which fill in the defaults, instead of setting None"
            )
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}"),  # noqa: E501
            (self.model in REGISTRY, choice_message("model", self.model, tuple(REGISTRY))),
            (self.optimizer in OPTIMIZERS, choice_message("optimizer", self.optimizer, OPTIMIZERS)),
            (self.schedule in SCHEDULES, choice_message("schedule", self.schedule, SCHEDULES)),
            (self.normalize in NORMALIZE_METHODS,
             choice_message("normalize", self.normalize, NORMALIZE_METHODS)),
            (self.precision in PRECISIONS, choice_message("precision", self.precision, PRECISIONS)),
            (1 <= self.zoom <= 4,
             f"zoom must be in [1, 4] (1 = none, 1.5 = from 0.67x to 1.5x), got {self.zoom}"),
            (0.01 <= self.dim <= 1,
             f"dim must be in [0.01, 1] (1 = none, 0.3 = down to 30 %), got {self.dim}"),
            (0 <= self.blur <= 10,
             f"blur must be in [0, 10] pixels (0 = none, 1 = sigmas up to 1 px), got {self.blur}"),
            (0 <= self.noise <= 1,
             f"noise must be in [0, 1] (0 = none, 0.05 = up to 5 % of the range), got {self.noise}"),  # noqa: E501
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

    def _check_target(self) -> None:
        """The target: one of TARGETS, only with instance masks, agreeing with the classes."""
        if self.target is None:
            if self.instances:
                raise ValueError(
                    f"instances=True needs a target ({', '.join(TARGETS)}); build the config "
                    "with instances=True (which chooses the default target) or pass --target"
                )
            return
        if self.target not in TARGETS:
            raise ValueError(choice_message("target", self.target, TARGETS))
        if not self.instances:
            raise ValueError(
                f"target {self.target!r} is derived from instance masks: pass --instances "
                "(instances=True) with masks of instance ids, or no target for semantic classes"
            )
        n = len(TARGET_CLASS_NAMES[self.target])
        if self.num_classes is not None and self.num_classes != n:
            raise ValueError(
                f"target {self.target!r} has {n} classes, got num_classes {self.num_classes}; "
                "leave --num-classes out (the target sets it)"
            )
        if self.class_names is not None and len(self.class_names) != n:
            raise ValueError(
                f"target {self.target!r} has {n} classes, got {len(self.class_names)} "
                f"class_names {self.class_names}; give {n} names or none"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a dict (e.g. a YAML file); unknown keys raise, listing the known ones.
        The older key `amp` (config.yaml files of earlier runs) maps onto `precision`."""
        known = {f.name for f in dataclasses.fields(cls)} | set(LEGACY_OPTIONS)
        unknown = sorted(set(values) - known)
        if unknown:
            fields = sorted(f.name for f in dataclasses.fields(cls))
            raise ValueError(f"{source}: unknown option(s) {unknown}; known: {fields}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a YAML mapping of option: value (a saved `config.yaml`, or one written by hand)."""
        return cls.from_dict(read_yaml_options(path), source=str(path))

    def to_yaml(self) -> str:
        """The YAML text `from_yaml` reads back into an equal config."""
        return yaml.safe_dump(dataclasses.asdict(self))


def read_yaml_options(path: str | os.PathLike) -> dict[str, Any]:
    """The option: value mapping of a YAML file, unresolved (the command line adds its flags
    before the config is built)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the YAML config ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config must be a mapping of option: value")
    return values


def default_help(name: str) -> str:
    """The defaults of option `name` as `--help` shows them, e.g. "(default: 128) (with
    --instances: 256)"; "" for an option whose help states its default."""
    field_ = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    if "default:" in field_.metadata["help"]:
        return ""
    if name not in AUTO_FIELDS:
        return f"(default: {None if field_.default is dataclasses.MISSING else field_.default})"
    text = f"(default: {PLAIN_DEFAULTS[name]})"
    if name not in INSTANCE_DEFAULTS:
        return text
    value = INSTANCE_DEFAULTS[name]
    if isinstance(value, dict):
        value = ", ".join(f"{v} for {target}" for target, v in value.items())
    if name == "max_minutes":
        value = f"{value} when --steps is not given"
    return f"{text} (with --instances: {value})"


def resolve_defaults(cfg: TrainConfig) -> None:
    """Fill in the options `cfg` leaves unset (None) with the plain or the instance defaults.

    The one place defaults are chosen (see the `TrainConfig` docstring for the rules). Values
    already set are kept, so resolving a resolved config changes nothing.
    """
    steps_given = cfg.steps is not None
    if cfg.instances and cfg.target is None:
        count = cfg.num_classes or (len(cfg.class_names) if cfg.class_names else None)
        by_count = {len(names): target for target, names in TARGET_CLASS_NAMES.items()}
        cfg.target = by_count.get(count, INSTANCE_DEFAULTS["target"])
    defaults = INSTANCE_DEFAULTS if cfg.instances else PLAIN_DEFAULTS
    for name in AUTO_FIELDS:
        if getattr(cfg, name) is not None:
            continue
        value = defaults.get(name, PLAIN_DEFAULTS[name])
        if name == "max_minutes" and steps_given:
            value = None  # the steps given decide
        if isinstance(value, dict):  # per target
            value = value.get(cfg.target, PLAIN_DEFAULTS[name])
        setattr(cfg, name, value)
    if cfg.instances and cfg.model == "unet":
        cfg.model_args = INSTANCE_DEFAULTS.get("model_args", {}) | cfg.model_args
    if cfg.channels_last is None:
        cfg.channels_last = training_channels_last(cfg.device)
    if cfg.workers is None:
        cfg.workers = default_workers(cfg.device)


def default_workers(device: str | None) -> int:
    """DataLoader workers for training on `device` (None: cuda when available): none on a CPU,
    where the step takes seconds and its batch milliseconds (benchmarks/performance.py,
    section 3), and workers would compete with the step for the cores; min(4, cores − 1) on a
    GPU, whose step takes about as long as the main process needs to augment a batch."""
    on_gpu = (device is None and torch.cuda.is_available()) or str(device).startswith("cuda")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(4, (cores or 1) - 1)) if on_gpu else 0


def option_help() -> dict[str, str]:
    """Field name → help text, for every `TrainConfig` option."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}
