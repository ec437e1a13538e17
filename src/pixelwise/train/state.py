"""The two objects the phases of a training run share: `TrainState` and `Run`.

`TrainState` is what changes from step to step (and what the last checkpoint stores); `Run` is
what a session builds once (data, model, optimiser). The phases (`pixelwise.train.setup`,
`pixelwise.train.loop`) are functions of these two, with no other state between them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pixelwise.data import SegmentationDataset
from pixelwise.distributed import DistributedContext
from pixelwise.losses import SegmentationLoss
from pixelwise.train.config import TrainConfig
from pixelwise.train.optim import Plateau
from pixelwise.train.patches import PatchLoader

clock = time.perf_counter
"""The run's clock in seconds (time budget, schedule); tests replace it to run without waiting."""


@dataclass
class TrainState:
    """What changes from step to step. The first five fields go into the last checkpoint.

    Attributes:
        step: optimisation steps done. plateau: the plateau schedule's state.
        best: the best validation scores so far, with "metric" and "step".
        running: training losses since the last log row.
        seconds: training seconds of the earlier sessions of this run (resumed runs).
        history: the log.csv rows (rank 0).
        started: this session's start on `clock`; elapsed: training seconds in all, as the
            ranks agree after each step; seen: images this session (all ranks); signal: the
            stop signal received by any rank, else None; diverged: a step's training loss was
            NaN or infinite (on any rank, once the ranks agree); saved_step: the step of the
            last checkpoint on disk (written or resumed from this session), else None.
        best_probabilities: instance runs, rank 0: the validation images' (K, H, W)
            probabilities at the best validation of this session (None before one, and after
            a resume), kept for tuning the post-processing at the end without predicting again.
    """

    step: int = 0
    plateau: Plateau = field(default_factory=Plateau)
    best: dict[str, float] | None = None
    running: list[float] = field(default_factory=list)
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    elapsed: float = 0.0
    seen: int = 0
    signal: int | None = None
    diverged: bool = False
    saved_step: int | None = None
    best_probabilities: list[np.ndarray] | None = None

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> TrainState:
        """The state a last checkpoint's metadata records."""
        seconds = float(meta.get("seconds", 0.0))
        return cls(
            step=meta["step"],
            plateau=Plateau(**meta["plateau"]),
            best=meta["best"],
            running=meta["running"],
            seconds=seconds,
            elapsed=seconds,
            saved_step=meta["step"],
        )

    def metadata(self) -> dict[str, Any]:
        """What `from_metadata` reads back (JSON-serialisable)."""
        return {
            "step": self.step,
            "plateau": asdict(self.plateau),
            "best": self.best,
            "running": self.running,
            "seconds": self.seconds_now(),
        }

    def start_session(self) -> None:
        """Start this session's clock (after set-up, before the first step)."""
        self.started = clock()

    def images_per_second(self) -> float:
        """Training images per second of this session, all ranks together."""
        return self.seen / max(clock() - self.started, 1e-9)

    def seconds_now(self) -> float:
        """Training seconds in all, by this process's clock."""
        return self.seconds + clock() - self.started


@dataclass
class Run:
    """What a training session builds once and its phases share.

    Attributes:
        model: the bare model (checkpoints, validation); net: what a step calls (`model`, or
            DistributedDataParallel around it).
        autocast: the autocast dtype, or None for full precision.
        meta: metadata every checkpoint of the run carries (normalisation, class names, config,
            and the target of an instance run).
        writer: rank 0's TensorBoard SummaryWriter, when tensorboard is installed.
        val_instances: the validation images' (H, W) instance labels (instance runs, rank 0),
            read at the first validation (`pixelwise.train.objects.ground_truth`).
    """

    cfg: TrainConfig
    context: DistributedContext
    device: torch.device
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: torch.dtype | None
    loss_fn: SegmentationLoss
    loader: PatchLoader
    val_ds: SegmentationDataset | None
    meta: dict[str, Any]
    writer: Any | None = None
    val_instances: list[np.ndarray] | None = None

    @property
    def out(self) -> Path:
        """The output folder."""
        return Path(self.cfg.out)

    @property
    def last_path(self) -> Path:
        """The checkpoint to resume from: weights and training state after the last save."""
        return self.out / "last.safetensors"

    @property
    def best_path(self) -> Path:
        """The checkpoint of the best validation score."""
        return self.out / "best.safetensors"
