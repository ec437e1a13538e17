"""Set-up and resume: the first phase of a training run.

`set_up` builds the `Run` (datasets, model, optimiser, patches, loss) and the `TrainState`, new
or restored from the last checkpoint; rank 0 creates the output folder and writes config.yaml.

Resuming compares the options with those the last checkpoint records (`check_resume`): the
model's (`FIXED_ON_RESUME`) must not change; the data's (`DATA_OPTIONS`) only when the caller
allows new data; the run's control (`FREE_ON_RESUME`: steps, time budget, workers, device,
precision, memory format, logging, validation interval) may; any other change is logged, as the
run is then no longer the same as one that never stopped. A resumed run resolves
`--precision auto` again for the hardware it runs on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pixelwise import atomic, checkpoint
from pixelwise.augment import Augment
from pixelwise.checks import check_output_folder
from pixelwise.data import SegmentationDataset
from pixelwise.data.targets import TARGET_CLASS_NAMES
from pixelwise.distributed import DistributedContext
from pixelwise.losses import SegmentationLoss
from pixelwise.models import build, model_config
from pixelwise.precision import resolve_precision
from pixelwise.train.config import ADDED_OPTIONS, TrainConfig
from pixelwise.train.datasets import split_datasets
from pixelwise.train.logs import open_tensorboard, read_log
from pixelwise.train.optim import load_optimizer_state, make_optimizer
from pixelwise.train.patches import PatchDataset, PatchLoader, patch_geometry
from pixelwise.train.state import Run, TrainState

FIXED_ON_RESUME = (
    "model",
    "model_args",
    "num_classes",
    "class_names",
    "instances",
    "target",
    "normalize",
    "optimizer",
)
"""Options a resumed run must keep: they build the model, give its outputs their meaning, or
shape the optimiser state the last checkpoint holds."""

DATA_OPTIONS = ("data", "val_data", "layout", "split", "val_split", "val_fraction")
"""Options that choose the images; a resumed run changes them only with `allow_new_data`."""

FREE_ON_RESUME = (
    "out",
    "init",
    "steps",
    "max_minutes",
    "workers",
    "device",
    "precision",
    "channels_last",
    "val_every",
    "log_every",
)
"""Options a resumed run may change freely: how long, where and how fast it runs, and logs."""


def set_up(
    cfg: TrainConfig,
    context: DistributedContext,
    device: torch.device,
    *,
    resume: bool,
    log: Callable[[str], None],
    allow_new_data: bool = False,
) -> tuple[Run, TrainState]:
    """Build the run's data, model and optimiser; restore the state of a resumed run.

    The order is part of exact resume: seed, datasets, the model's initialisation, then
    (resuming) the saved weights, optimiser state and torch RNG state. Rank 0 also creates the
    output folder, writes config.yaml and reads back log.csv.

    Raises:
        FileNotFoundError: `resume` without a last checkpoint.
        ValueError: `cfg.out` is not a writable folder; `resume` with options that differ
            from the saved run's (`check_resume`); model arguments the model does not take
            (`build_model`).
    """
    check_output_folder(cfg.out, "out")
    last_path = Path(cfg.out) / "last.safetensors"
    if resume:
        check_resume(cfg, last_path, allow_new_data=allow_new_data, log=log)
    torch.manual_seed(cfg.seed)
    train_ds, val_ds = split_datasets(cfg)
    for notice in train_ds.report.notices if train_ds.report else []:
        log(f"notice: {notice}")
    model = build_model(cfg, train_ds)
    if cfg.init and not resume:
        log(initialize_from(model, cfg.init))
    tile, label = patch_geometry(model, cfg.patch_size)
    # placed first: a restored optimiser state then loads onto its parameters' device
    net = place_model(model, cfg, context, device)
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    state = restore(last_path, model, optimizer) if resume else TrainState()
    if resume:
        log(f"resuming from {last_path} at step {state.step}")
    precision = resolve_precision(cfg.precision, device)
    run = Run(
        cfg=cfg,
        context=context,
        device=device,
        model=model,
        net=net,
        optimizer=optimizer,
        loader=make_loader(cfg, train_ds, model, tile, context, device),
        loss_fn=SegmentationLoss(cfg.loss, ignore_index=cfg.ignore_index, reduction=cfg.reduction),
        scaler=torch.amp.GradScaler(enabled=precision.name == "fp16" and device.type == "cuda"),
        autocast=precision.dtype,
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
            f"{context.world_size}{target}, device {device}, {precision.describe()}"
            f"{', channels_last' if cfg.channels_last else ''}"
        )
    return run, state


def build_model(cfg: TrainConfig, train_ds: SegmentationDataset) -> nn.Module:
    """The registry model `cfg.model`, its input channels and classes from the data unless
    `cfg.model_args` gives them."""
    in_channels = train_ds.load(0).image.shape[0]
    model_args = {"in_channels": in_channels, "num_classes": train_ds.num_classes}
    try:
        return build(cfg.model, **(model_args | cfg.model_args))
    except ValueError as e:
        raise ValueError(f"--model-arg (model_args): {e}") from None


def initialize_from(model: nn.Module, path: str | Path) -> str:
    """Copy into `model` every parameter/buffer of checkpoint `path` with the same name and shape.

    `path` may be a run folder (its best checkpoint, `pixelwise.checkpoint.resolve`) or a
    shipped model's name (`pixelwise.zoo.MODELS`, e.g. "nuclei": fine-tuning). Returns
    a one-line summary naming the file. Raises ValueError when nothing matches (a different
    model), CheckpointError for a file that is not a sound checkpoint.
    """
    path = checkpoint.resolve(path)
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


def _flag(name: str) -> str:
    """The command-line spelling of option (or model argument) `name`."""
    return "the dataset folder" if name == "data" else "--" + name.replace("_", "-")


def _change(name: str, saved: object, now: object) -> str:
    return f"{name} {'not set' if saved is None else saved} → {'not set' if now is None else now}"


def _same(name: str, saved: object, now: object) -> bool:
    """Whether option `name` has the same value; dataset paths compare as paths (`data/` and
    `data` are one folder, and so are a relative and an absolute path to it)."""
    if name in ("data", "val_data") and isinstance(saved, str) and isinstance(now, str):
        return Path(saved) == Path(now) or Path(saved).resolve() == Path(now).resolve()
    return saved == now


def check_resume(
    cfg: TrainConfig, last_path: Path, *, allow_new_data: bool, log: Callable[[str], None]
) -> None:
    """Compare `cfg` with the options the last checkpoint `last_path` records.

    Raises:
        FileNotFoundError: no last checkpoint.
        ValueError: an option of `FIXED_ON_RESUME` differs, or one of `DATA_OPTIONS` without
            `allow_new_data`; the message names each with its saved and its new value.

    Other differences (the learning rate, ...) are logged: the resumed run goes on with them.
    """
    if not last_path.exists():
        raise FileNotFoundError(f"{last_path}: nothing to resume; start without --resume")
    saved = checkpoint.read_metadata(last_path).get("config")
    if not isinstance(saved, dict):
        return  # a checkpoint without its config: the model check in `restore` remains
    saved = ADDED_OPTIONS | saved  # a run saved before an option existed trained without it
    now = json.loads(json.dumps(asdict(cfg)))  # as the checkpoint's JSON holds it
    changed = [k for k in now if k in saved and not _same(k, saved[k], now[k])]
    fixed = [k for k in changed if k in FIXED_ON_RESUME]
    if "model" in fixed:
        fixed = ["model"]  # the arguments of another model do not compare
    diffs = []
    for k in fixed:
        if k == "model_args" and isinstance(saved[k], dict):
            keys = dict.fromkeys([*saved[k], *now[k]])
            diffs += [
                _change(f"--model-arg {a}", saved[k].get(a), now[k].get(a))
                for a in keys
                if saved[k].get(a) != now[k].get(a)
            ]
        else:
            diffs.append(_change(_flag(k), saved[k], now[k]))
    if diffs:
        raise ValueError(
            f"cannot resume {cfg.out}: the model settings differ from the saved run's "
            f"({last_path}): {'; '.join(diffs)}; resume with the saved settings (--config "
            f"{Path(cfg.out) / 'config.yaml'}), or start a new run with another --out (--init "
            f"{last_path} starts it from these weights)"
        )
    data = [_change(_flag(k), saved[k], now[k]) for k in changed if k in DATA_OPTIONS]
    if data and not allow_new_data:
        raise ValueError(
            f"cannot resume {cfg.out} on other data: {'; '.join(data)} (saved in {last_path}); "
            f"pass --allow-new-data (allow_new_data=True) to go on with the new data, or resume "
            f"with the saved data"
        )
    if data:
        log(f"resuming on new data: {'; '.join(data)}")
    checked = (*FIXED_ON_RESUME, *DATA_OPTIONS, *FREE_ON_RESUME)
    other = [_change(_flag(k), saved[k], now[k]) for k in changed if k not in checked]
    if other:
        log(
            f"resuming with changed settings: {'; '.join(other)} (the run is no longer the "
            "same as one that never stopped)"
        )


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Load the weights, optimiser state and torch RNG state of last checkpoint `path`.

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        ValueError: the model built now (from the options and the data: its channels and
            classes) is not the saved one; the message names the arguments that differ.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: nothing to resume; start without --resume")
    saved, meta, extra = checkpoint.load_state(path)
    (saved_name, saved_args), (name, args) = model_config(saved), model_config(model)
    if saved_name != name or saved_args != args:
        diffs = [_change("--model", saved_name, name)]
        if saved_name == name:
            flags = {"num_classes": "--num-classes", "in_channels": "the images' channels"}
            diffs = [
                _change(flags.get(k, f"--model-arg {k}"), saved_args.get(k), args.get(k))
                for k in dict.fromkeys([*saved_args, *args])
                if saved_args.get(k) != args.get(k)
            ]
        raise ValueError(
            f"cannot resume from {path}: the model built now differs from the saved one: "
            f"{'; '.join(diffs)}; resume with the data and settings of the saved run"
        )
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
    device: torch.device,
) -> PatchLoader:
    """This rank's augmented patches of `tile` px, batched by step; in pinned (page-locked)
    memory when they go to a CUDA device, so that the copy runs asynchronously."""
    augment = None
    if cfg.augment:
        augment = Augment(
            elastic_sigma=cfg.elastic_sigma,
            elastic_grid=cfg.elastic_grid,
            rotation=cfg.rotation,
            shift=cfg.shift,
            zoom=cfg.zoom,
            flip=cfg.flip,
            gray=cfg.gray,
            dim=cfg.dim,
            blur=cfg.blur,
            noise=cfg.noise,
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
        pin_memory=device.type == "cuda",
    )


def _checkpoint_meta(cfg: TrainConfig, train_ds: SegmentationDataset) -> dict[str, Any]:
    """Metadata of every checkpoint of the run: what prediction needs, and the config; for an
    instance run its `target` (so that even an interrupted run's checkpoints have it) and the
    training objects' median equivalent diameter with its 5th-95th percentiles (over every
    instance mask of the training data, validation images included)."""
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
    diameters = train_ds.report.object_diameters if train_ds.report is not None else ()
    if cfg.target is not None and len(diameters):
        # What `Segmenter(diameter=...)` / `predict --diameter` rescale new images to.
        meta["object_diameter"] = float(np.median(diameters))
        meta["object_diameter_range"] = [float(v) for v in np.percentile(diameters, [5, 95])]
    return meta
