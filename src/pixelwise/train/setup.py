"""Set-up and resume: the first phase of a training run.

`set_up` builds the `Run` (datasets, model, optimiser, patches, loss) and the `TrainState`, new
or restored from the last checkpoint; rank 0 creates the output folder and writes config.yaml.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelwise import atomic, checkpoint
from pixelwise.augment import Augment
from pixelwise.data import SegmentationDataset
from pixelwise.data.targets import TARGET_CLASS_NAMES
from pixelwise.distributed import DistributedContext
from pixelwise.losses import SegmentationLoss
from pixelwise.models import build
from pixelwise.precision import AUTOCAST_DTYPES
from pixelwise.train.config import TrainConfig
from pixelwise.train.datasets import split_datasets
from pixelwise.train.logs import open_tensorboard, read_log
from pixelwise.train.optim import load_optimizer_state, make_optimizer
from pixelwise.train.patches import PatchDataset, PatchLoader, patch_geometry
from pixelwise.train.state import Run, TrainState


def set_up(
    cfg: TrainConfig,
    context: DistributedContext,
    device: torch.device,
    *,
    resume: bool,
    log: Callable[[str], None],
) -> tuple[Run, TrainState]:
    """Build the run's data, model and optimiser; restore the state of a resumed run.

    The order is part of exact resume: seed, datasets, the model's initialisation, then
    (resuming) the saved weights, optimiser state and torch RNG state. Rank 0 also creates the
    output folder, writes config.yaml and reads back log.csv.
    """
    torch.manual_seed(cfg.seed)
    train_ds, val_ds = split_datasets(cfg)
    for notice in train_ds.report.notices if train_ds.report else []:
        log(f"notice: {notice}")
    model = build_model(cfg, train_ds)
    if cfg.init and not resume:
        log(initialize_from(model, cfg.init))
    tile, label = patch_geometry(model, cfg.patch_size)
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    last_path = Path(cfg.out) / "last.safetensors"
    state = restore(last_path, model, optimizer) if resume else TrainState()
    if resume:
        log(f"resuming from {last_path} at step {state.step}")
    autocast = AUTOCAST_DTYPES.get(cfg.amp or "")
    run = Run(
        cfg=cfg,
        context=context,
        device=device,
        model=model,
        net=place_model(model, cfg, context, device),
        optimizer=optimizer,
        loader=make_loader(cfg, train_ds, model, tile, context),
        loss_fn=SegmentationLoss(cfg.loss, ignore_index=cfg.ignore_index, reduction=cfg.reduction),
        scaler=torch.amp.GradScaler(enabled=autocast is torch.float16 and device.type == "cuda"),
        autocast=autocast,
        val_ds=val_ds,
        meta=_checkpoint_meta(cfg, train_ds),
    )
    if context.main:
        state.history = read_log(run.out / "log.csv", state.step)
        run.writer = open_tensorboard(run.out)
        run.out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run.out / "config.yaml", cfg.to_yaml())
        budget = f" or {cfg.max_minutes:g} min" if cfg.max_minutes is not None else ""
        target = f", target {cfg.target}" if cfg.target is not None else ""
        log(
            f"training {cfg.model} ({sum(p.numel() for p in model.parameters()):,} parameters) "
            f"on {len(train_ds)} images ({len(val_ds) if val_ds else 0} for validation), tiles "
            f"{tile}→{label} px, {cfg.steps} steps{budget} of batch {cfg.batch_size}×"
            f"{context.world_size}{target}, device {device}"
        )
    return run, state


def build_model(cfg: TrainConfig, train_ds: SegmentationDataset) -> nn.Module:
    """The registry model `cfg.model`, its input channels and classes from the data unless
    `cfg.model_args` gives them."""
    in_channels = train_ds.load(0).image.shape[0]
    model_args = {"in_channels": in_channels, "num_classes": train_ds.num_classes}
    return build(cfg.model, **(model_args | cfg.model_args))


def initialize_from(model: nn.Module, path: str | Path) -> str:
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


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Load the weights, optimiser state and torch RNG state of last checkpoint `path`."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: nothing to resume; start without --resume")
    saved, meta, extra = checkpoint.load_state(path)
    model.load_state_dict(saved.state_dict())
    load_optimizer_state(optimizer, extra, meta["optimizer"])
    torch.set_rng_state(extra["rng/torch"])
    return TrainState.from_metadata(meta)


def place_model(
    model: nn.Module, cfg: TrainConfig, context: DistributedContext, device: torch.device
) -> nn.Module:
    """Move `model` to `device` (channels_last if asked); wrap it in DDP under torchrun."""
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if context.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def make_loader(
    cfg: TrainConfig,
    train_ds: SegmentationDataset,
    model: nn.Module,
    tile: int,
    context: DistributedContext,
) -> PatchLoader:
    """This rank's augmented patches of `tile` px, batched by step."""
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
    repeats = max(1, math.ceil(cfg.batch_size * context.world_size / len(train_ds)))
    patches = PatchDataset(
        train_ds, tile=tile, margin=model.margin, augment=augment, repeats=repeats, seed=cfg.seed
    )
    return PatchLoader(
        patches,
        batch_size=cfg.batch_size,
        rank=context.rank,
        world_size=context.world_size,
        workers=cfg.workers,
        seed=cfg.seed,
    )


def _checkpoint_meta(cfg: TrainConfig, train_ds: SegmentationDataset) -> dict[str, Any]:
    """Metadata of every checkpoint of the run: what prediction needs, and the config; the
    `target` of an instance run (so that even an interrupted run's checkpoints have it)."""
    names = cfg.class_names
    if names is None and cfg.target is not None:
        names = list(TARGET_CLASS_NAMES[cfg.target])
    meta = {
        "normalization": train_ds.normalization,
        "class_names": names or [f"class {i}" for i in range(train_ds.num_classes)],
        "ignore_index": cfg.ignore_index,
        "config": asdict(cfg),
    }
    if cfg.target is not None:
        meta["target"] = cfg.target
    return meta
