"""Training: patches with the paper's augmentation and weighted loss, exact resume, DDP.

The loop counts optimisation steps. Step s belongs to epoch s // steps_per_epoch; an epoch's
sample order comes from a DistributedSampler seeded by (seed, epoch), and every patch's
augmentation from a generator seeded by (seed, epoch, index). The last checkpoint stores the
weights, the optimizer's state, the schedule's state and the torch RNG, so a run interrupted
after step k and resumed ends with the same weights as one that never stopped.

Patches (U-Net paper §3): for a valid-padding network with margin m, a training sample is an
input tile of a valid size n and the label of its centre, n − 2m pixels. The image, mask and
weight map are mirror-extended by m first, so that every labelled pixel can sit at the centre
of a tile, exactly as in overlap-tile inference.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from pixelwise import checkpoint
from pixelwise.augment import Augment
from pixelwise.data import SegmentationDataset, load_and_validate
from pixelwise.losses import SegmentationLoss, weight_map
from pixelwise.metrics import ConfusionMatrix
from pixelwise.models import build

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "poly", "cosine", "plateau")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.yaml` next to the checkpoints.

    Data:
        data: dataset folder (any layout `pixelwise.data.open_dataset` reads).
        val_data: separate validation folder; else `val_fraction` of `data` is held out.
        layout, split, val_split, num_classes, ignore_index, instances: see `open_dataset`.
        class_names: names stored in the checkpoint (default "class 0", "class 1", ...).
    Model:
        model: registry name ("unet", "fcn8s", ...); init: a checkpoint whose parameters of the
            same name and shape start the model (FCN's staged training: 16s from 32s, 8s from
            16s; the new score layers keep their zero init); model_args: constructor keywords
            (in_channels and num_classes come from the data unless given).
    Optimisation:
        steps: optimisation steps in all; batch_size per process; patch_size: size of the
            labelled centre of each training tile (rounded up to a size the network gives).
        optimizer "sgd" (momentum 0.99 as the U-Net paper) | "adam" | "adamw"; schedule
            "constant" | "poly" (power 0.9) | "cosine" | "plateau" (×0.1 after `patience`
            validations without improvement of the validation loss).
        loss "ce" | "dice" | "ce+dice"; reduction "mean" | "sum" (FCN's unnormalised loss).
        weighted: U-Net border weights (w0, sigma) + class balancing; instances come from
            instance masks, else from connected components (which merge touching objects).
    Augmentation: augment (on/off), elastic_sigma (px, paper 10), elastic_grid (3), rotation
        (max degrees), shift (px), flip, gray.
    Run: seed, workers (DataLoader processes), amp None | "bf16" | "fp16", channels_last,
        device (None: cuda when available), val_every and log_every (steps), out (folder).
        max_minutes: a time budget: training ends (validated and checkpointed as at the last
            step) once this much training time has passed, and the poly/cosine schedules run
            on whichever is further along, steps or time. A resumed run counts the time
            already spent. Timed runs are not bit-reproducible.
    """

    data: str = ""
    out: str = "runs/pixelwise"
    val_data: str | None = None
    val_fraction: float = 0.2
    layout: str = "auto"
    split: str | None = None
    val_split: str | None = None
    num_classes: int | None = None
    ignore_index: int | None = None
    instances: bool = False
    class_names: list[str] | None = None
    model: str = "unet"
    model_args: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    steps: int = 1000
    batch_size: int = 4
    patch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: str = "poly"
    patience: int = 5
    loss: str = "ce"
    reduction: str = "mean"
    weighted: bool = False
    w0: float = 10.0
    sigma: float = 5.0
    augment: bool = True
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    rotation: float = 180.0
    shift: float = 0.0
    flip: bool = True
    gray: float = 0.1
    seed: int = 0
    workers: int = 0
    amp: str | None = None
    channels_last: bool = False
    device: str | None = None
    val_every: int = 100
    log_every: int = 10
    max_minutes: float | None = None

    def validate(self) -> None:
        """Raise ValueError for an option outside its range, naming the fix."""
        if not self.data:
            raise ValueError("data is required: pass the dataset folder")
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}"),  # noqa: E501
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.amp in (None, *AMP_DTYPES), "amp must be bf16, fp16 or None"),
            (self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}"),
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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read the YAML config ({e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config must be a mapping of option: value")
        return cls.from_dict(values, source=str(path))


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


def patch_geometry(model: nn.Module, patch_size: int) -> tuple[int, int]:
    """(input tile size, label size) for training patches whose label is ≥ `patch_size`.

    Worked example (paper U-Net, margin 92): patch_size 100 → the smallest output ≥ 100 that a
    valid input gives is 100 (input 284); patch_size 101 → 116 (input 300).
    """
    margin = model.margin
    for n in model.valid_input_sizes(patch_size + 2 * margin, patch_size + 2 * margin + 4096):
        return n, model.output_size(n)
    raise ValueError(f"no valid input size for patch_size {patch_size}")


def _mirror_pad(a: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Mirror-extend the last two axes (repeatedly, when a pad exceeds the size)."""
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
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, mask, _, weight = self.base.load(i % len(self.base))
        rng = np.random.default_rng([self.seed, self.epoch, i])
        m, n = self.margin, self.tile
        h, w = mask.shape
        # Mirror-extend by m, plus what an image smaller than the tile needs on the far side.
        pads = (m, m + max(0, n - h - 2 * m), m, m + max(0, n - w - 2 * m))
        image = _mirror_pad(image, *pads)  # (C, H + 2m + extra, W + 2m + extra)
        mask = _mirror_pad(mask, *pads)
        weight = np.ones(mask.shape, np.float32) if weight is None else _mirror_pad(weight, *pads)
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
    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# --------------------------------------------------------------------------------------------
# Optimiser, schedule, state
# --------------------------------------------------------------------------------------------


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def initialize_from(model: nn.Module, path: str | os.PathLike) -> str:
    """Copy into `model` every parameter/buffer of checkpoint `path` with the same name and shape.

    Returns a one-line summary. Raises ValueError when nothing matches (a different model).
    """
    source = checkpoint.load(path).state_dict()
    target = model.state_dict()
    copied = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    if not copied:
        raise ValueError(
            f"{path}: no parameter matches {type(model).__name__} by name and shape; "
            "init needs a checkpoint of the same architecture family (e.g. fcn32s for fcn16s)"
        )
    model.load_state_dict(copied, strict=False)
    kept = sorted({k.split(".")[0] for k in target if k not in copied})
    return f"initialised {len(copied)} of {len(target)} tensors from {path}" + (
        f"; new: {', '.join(kept)}" if kept else ""
    )


def schedule_factor(
    cfg: TrainConfig, step: int, plateau_scale: float, elapsed: float = 0.0
) -> float:
    """Learning-rate multiplier at `step` (0-based) of `cfg.steps`, `elapsed` seconds in.

    With a time budget (`cfg.max_minutes`), progress is the larger of the step fraction and the
    time fraction, so the schedule ends when the budget does.
    """
    t = step / cfg.steps
    if cfg.max_minutes is not None:
        t = min(max(t, elapsed / (60 * cfg.max_minutes)), 1.0)
    if cfg.schedule == "poly":
        return (1 - t) ** 0.9
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "plateau":
        return plateau_scale
    return 1.0


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{pid}/{key}"] = value
            else:
                scalars[f"{pid}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------------------------
# Distributed
# --------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device | None) -> tuple[_Dist, torch.device]:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if world <= 1:
        return _Dist(), device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return _Dist(dist.get_rank(), world, local), device


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------

LOG_FIELDS = (
    "step", "epoch", "lr", "train_loss", "val_loss", "val_mean_iou", "val_dice",
    "val_pixel_accuracy", "seconds",
)  # fmt: skip


def _read_log(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto]


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    checkpoint.atomic_write(path, write)


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Learning curves (training loss, validation loss and mean IoU against step) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(*series("train_loss"), label="training loss")
    ax1.plot(*series("val_loss"), "o-", label="validation loss")
    ax1.set_xlabel("step")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(*series("val_mean_iou"), "o-", label="mean IoU")
    ax2.plot(*series("val_dice"), "s-", label="Dice")
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    checkpoint.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def evaluate_dataset(
    model: nn.Module, dataset: SegmentationDataset, *, device: torch.device
) -> dict[str, float]:
    """Whole-image validation through overlap-tile inference: loss, mean IoU, Dice, accuracy."""
    from pixelwise.tiling import predict

    num_classes = model.hparams["num_classes"]
    cm = ConfusionMatrix(num_classes, ignore_index=dataset.ignore_index)
    loss_fn = SegmentationLoss("ce", ignore_index=dataset.ignore_index)
    losses = []
    for i in range(len(dataset)):
        image, mask, _, _ = dataset.load(i)
        logits = predict(model, image, output="logits", device=device)  # (K, H, W)
        logits = torch.from_numpy(logits)[None]  # (1, K, H, W)
        target = torch.from_numpy(mask)[None]  # (1, H, W)
        losses.append(float(loss_fn(logits, target)))
        cm.update(logits.argmax(1), target)
    scores = cm.scores()
    dice = scores["per_class_dice"]
    return {
        "val_loss": float(np.mean(losses)),
        "val_mean_iou": scores["mean_iou"],
        # Dice of the foreground for two classes, else the mean over classes
        "val_dice": dice[1] if num_classes == 2 else float(np.nanmean(dice)),
        "val_pixel_accuracy": scores["pixel_accuracy"],
    }


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out: Path
    step: int
    best: dict[str, float] | None
    interrupted: bool
    history: list[dict[str, Any]]


def _datasets(cfg: TrainConfig) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    opts = dict(
        layout=cfg.layout,
        num_classes=cfg.num_classes,
        ignore_index=cfg.ignore_index,
        instances=cfg.instances,
    )
    weight_fn = _weight_fn(cfg) if cfg.weighted else None
    train = load_and_validate(cfg.data, split=cfg.split, weight_fn=weight_fn, **opts)
    if cfg.val_data is not None or cfg.val_split is not None:
        val_path = cfg.val_data if cfg.val_data is not None else cfg.data
        val = load_and_validate(
            val_path, split=cfg.val_split, normalization=train.normalization, **opts
        )
        return train, val
    n_val = math.ceil(cfg.val_fraction * len(train)) if len(train) > 1 else 0
    if n_val == 0:
        return train, None
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    val_idx, train_idx = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    val = SegmentationDataset(
        [train.samples[i] for i in val_idx],
        encoding=train.encoding,
        normalization=train.normalization,
    )
    train.samples = [train.samples[i] for i in train_idx]
    return train, val


def _weight_fn(cfg: TrainConfig) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    from scipy import ndimage

    def fn(mask: np.ndarray, instances: np.ndarray | None) -> np.ndarray:
        if instances is None:
            # Without instance labels, objects are connected components of the foreground,
            # which merge touching objects: pass instance masks to weight their gaps.
            fg = mask > 0
            if cfg.ignore_index is not None:
                fg &= mask != cfg.ignore_index
            instances = ndimage.label(fg)[0]
        classes = mask if mask.max() < 256 and cfg.ignore_index is None else None
        return weight_map(instances, w0=cfg.w0, sigma=cfg.sigma, classes=classes)

    return fn


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a model as `cfg` says; write checkpoints, logs and curves to `cfg.out`.

    Args:
        cfg: the run's configuration.
        resume: continue from `cfg.out/last.safetensors` exactly where it stopped.
        stop_after: stop (and checkpoint) once this many steps in all are done, as an
            interruption would; `resume` continues from there.
        progress: show a progress bar (only on a terminal, only on rank 0).
        log: where rank 0's messages go.

    Returns:
        TrainResult with the output folder, the last step, the best validation scores.
    """
    cfg.validate()
    device = torch.device(cfg.device) if cfg.device else None
    dd, device = _init_distributed(device)
    out = Path(cfg.out)
    last_path, best_path = out / "last.safetensors", out / "best.safetensors"
    log = log if dd.main else (lambda _msg: None)

    torch.manual_seed(cfg.seed)
    train_ds, val_ds = _datasets(cfg)
    for notice in train_ds.report.notices if train_ds.report else []:
        log(f"notice: {notice}")
    in_channels = train_ds.load(0).image.shape[0]
    num_classes = train_ds.num_classes
    model_args = {"in_channels": in_channels, "num_classes": num_classes, **cfg.model_args}
    model = build(cfg.model, **model_args)
    if cfg.init and not resume:
        log(initialize_from(model, cfg.init))
    tile, label = patch_geometry(model, cfg.patch_size)
    meta_common = {
        "normalization": train_ds.normalization,
        "class_names": cfg.class_names or [f"class {i}" for i in range(num_classes)],
        "ignore_index": cfg.ignore_index,
        "config": asdict(cfg),
    }
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    step, plateau = 0, {"scale": 1.0, "best": math.inf, "bad": 0}
    spent = 0.0  # training seconds of earlier sessions of this run (for max_minutes)
    best: dict[str, float] | None = None
    running: list[float] = []  # training losses since the last log row
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"{last_path}: nothing to resume; start without --resume")
        saved, meta, extra = checkpoint.load_state(last_path)
        model.load_state_dict(saved.state_dict())
        _restore_optimizer(opt, extra, meta["optimizer"])
        step, plateau, best, running = meta["step"], meta["plateau"], meta["best"], meta["running"]
        spent = float(meta.get("seconds", 0.0))
        torch.set_rng_state(extra["rng/torch"])
        log(f"resuming from {last_path} at step {step}")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ddp_model = model
    if dd.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    augment = None
    if cfg.augment:
        augment = Augment(
            elastic_sigma=cfg.elastic_sigma,
            elastic_grid=cfg.elastic_grid,
            rotation=cfg.rotation,
            shift=cfg.shift,
            flip=cfg.flip,
            gray=cfg.gray,
            out_size=(tile, tile),
        )
    # Enough copies of the data that an epoch holds at least one batch per process.
    repeats = max(1, math.ceil(cfg.batch_size * dd.world / len(train_ds)))
    patches = PatchDataset(
        train_ds, tile=tile, margin=model.margin, augment=augment, repeats=repeats, seed=cfg.seed
    )
    # Partial batches are dropped, so that every step sees a full global batch: then N ranks ×
    # batch b take the same optimisation steps as one process with batch N·b.
    sampler = DistributedSampler(
        patches, num_replicas=dd.world, rank=dd.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // cfg.batch_size
    loss_fn = SegmentationLoss(cfg.loss, ignore_index=cfg.ignore_index, reduction=cfg.reduction)
    amp_dtype = AMP_DTYPES.get(cfg.amp or "")
    scaler = torch.amp.GradScaler(enabled=amp_dtype is torch.float16 and device.type == "cuda")

    history = _read_log(out / "log.csv", step) if dd.main else []
    writer = _tensorboard(out) if dd.main else None
    if dd.main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write(
            out / "config.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(asdict(cfg)))
        )
        log(
            f"training {cfg.model} ({sum(p.numel() for p in model.parameters()):,} parameters) "
            f"on {len(train_ds)} images ({len(val_ds) if val_ds else 0} for validation), tiles "
            f"{tile}→{label} px, {cfg.steps} steps of batch {cfg.batch_size}×{dd.world}, "
            f"device {device}"
        )

    def save_last() -> None:
        if not dd.main:
            return
        tensors, opt_meta = _optimizer_tensors(opt)
        tensors["rng/torch"] = torch.get_rng_state()
        checkpoint.save(
            model,
            last_path,
            extra_tensors=tensors,
            step=step,
            plateau=plateau,
            best=best,
            running=running,
            seconds=spent + time.perf_counter() - t0,
            optimizer=opt_meta,
            **meta_common,
        )

    bar = _progress(cfg.steps, step, enabled=progress and dd.main)
    t0, seen = time.perf_counter(), 0
    interrupted = False
    stop = _StopFlag()
    time_up = False

    def out_of_time() -> bool:
        """Whether the time budget is spent; in DDP, rank 0's clock decides for all ranks."""
        if cfg.max_minutes is None:
            return False
        flag = torch.tensor(float(spent + time.perf_counter() - t0 >= 60 * cfg.max_minutes))
        if dd.world > 1:
            dist.broadcast(flag.to(device), src=0)
        return bool(flag.item())

    try:
        while step < cfg.steps and (stop_after is None or step < stop_after) and not stop.set:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch)
            patches.set_epoch(epoch)
            indices = list(sampler)[offset * cfg.batch_size :]
            loader = DataLoader(
                patches,
                batch_size=cfg.batch_size,
                sampler=_ListSampler(indices),
                drop_last=True,
                num_workers=cfg.workers,
                # its own generator, so creating the loader leaves the global RNG untouched
                generator=torch.Generator().manual_seed(cfg.seed),
            )
            model.train()
            for batch in loader:
                x = batch["image"].to(device)  # (B, C, n, n)
                y = batch["mask"].to(device)  # (B, n − 2m, n − 2m)
                w = batch["weight"].to(device) if cfg.weighted else None
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * schedule_factor(
                        cfg, step, plateau["scale"], spent + time.perf_counter() - t0
                    )
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = ddp_model(x)  # (B, K, n − 2m, n − 2m)
                loss = loss_fn(logits.float(), y, w)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                step += 1
                seen += x.shape[0] * dd.world
                running.append(loss.item())
                bar.update(1)
                bar.set_postfix(
                    loss=f"{running[-1]:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.1f}"
                )
                time_up = out_of_time()
                if step % cfg.val_every == 0 or step == cfg.steps or time_up:
                    row = {
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        "lr": opt.param_groups[0]["lr"],
                        "train_loss": float(np.mean(running)),
                        "seconds": spent + time.perf_counter() - t0,
                    }
                    running = []
                    scores = _validate(model, val_ds, device, dd)
                    row |= scores
                    if scores and cfg.schedule == "plateau":
                        _plateau_update(plateau, scores["val_loss"], cfg.patience)
                    if dd.main:
                        history.append(row)
                        _write_log(out / "log.csv", history)
                        plot_curves(history, out / "curves.png")
                        if writer is not None:
                            for k, v in row.items():
                                writer.add_scalar(k, v, step)
                        metric = scores.get("val_mean_iou", -row["train_loss"])
                        if best is None or metric > best["metric"]:
                            best = {"metric": metric, "step": step, **scores}
                            checkpoint.save(model, best_path, step=step, best=best, **meta_common)
                        log(_format_row(row))
                    save_last()
                    model.train()
                if step >= cfg.steps or (stop_after is not None and step >= stop_after) or stop.set:
                    break
                if time_up:
                    log(f"time budget of {cfg.max_minutes:g} min spent: stopped at step {step}")
                    break
            if time_up:
                break
        if stop.set or (stop_after is not None and step == stop_after < cfg.steps):
            save_last()
        if stop.set:
            interrupted = True
            log(f"interrupted at step {step}: saved {last_path}; continue with --resume")
    finally:
        stop.restore()
        bar.close()
        if writer is not None:
            writer.close()
    if dd.world > 1 and dist.is_initialized():
        dist.barrier()
    return TrainResult(out, step, best, interrupted, history)


class _StopFlag:
    """The first Ctrl-C asks the loop to stop after the current step (and save); a second one
    interrupts at once."""

    def __init__(self) -> None:
        self.set = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _validate(
    model: nn.Module, val_ds: SegmentationDataset | None, device: torch.device, dd: _Dist
) -> dict[str, float]:
    """Rank 0 validates; the scores reach every rank so that schedules agree."""
    scores = evaluate_dataset(model, val_ds, device=device) if val_ds and dd.main else {}
    if dd.world > 1:
        box = [scores]
        dist.broadcast_object_list(box, src=0)
        scores = box[0]
    return scores


def _plateau_update(state: dict[str, float], val_loss: float, patience: int) -> None:
    if val_loss < state["best"]:
        state["best"], state["bad"] = val_loss, 0
    else:
        state["bad"] += 1
        if state["bad"] > patience:
            state["scale"], state["bad"] = state["scale"] * 0.1, 0


def _format_row(row: dict[str, Any]) -> str:
    parts = [f"step {row['step']}", f"loss {row['train_loss']:.4f}"]
    if "val_mean_iou" in row:
        parts += [
            f"val loss {row['val_loss']:.4f}",
            f"mean IoU {row['val_mean_iou']:.4f}",
            f"Dice {row['val_dice']:.4f}",
            f"pixel acc {row['val_pixel_accuracy']:.4f}",
        ]
    return " | ".join(parts)


def _progress(total: int, initial: int, *, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        disable=not enabled or not os.isatty(2),
        dynamic_ncols=True,
    )


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))
