"""Optimiser, learning-rate schedule and the optimiser's state in a safetensors checkpoint.

The schedule is a pure function of progress (`schedule_factor`), so the loop sets each step's
learning rate from the step, the time spent and the plateau state alone, and a resumed run
follows the same schedule as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from pixelwise.train.config import TrainConfig


def make_optimizer(cfg: TrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with momentum (the U-Net paper: 0.99), Adam or AdamW, as `cfg.optimizer` says."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def schedule_factor(
    cfg: TrainConfig, step: int, plateau_scale: float, elapsed: float = 0.0
) -> float:
    """Learning-rate multiplier at `step` (0-based) of `cfg.steps`, `elapsed` seconds in.

    Progress t runs from 0 to 1: poly gives (1 − t)^0.9, cosine (1 + cos πt) / 2, plateau the
    plateau scale, constant 1.

    With a time budget B (`cfg.max_minutes`), t is the larger of the step fraction and the time
    fraction: t = max(step / steps, elapsed / B). At a mean step time τ (validation included)
    the budget allows E = B / τ steps and elapsed = step · τ, so elapsed / B = step / E and
    t = step / min(steps, E): the schedule anneals over the steps the budget allows, E being
    re-estimated from the measured time at every step. `--steps 4000 --max-minutes 15` that
    stops at step 413 therefore ends its cosine at step 413, its rate near 0.
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


@dataclass
class Plateau:
    """State of the plateau schedule: lr × `scale`; × 0.1 after `patience` + 1 validations in a
    row without a validation loss below `best` (`bad` counts them)."""

    scale: float = 1.0
    best: float = math.inf
    bad: int = 0

    def update(self, val_loss: float, patience: int) -> None:
        """Record one validation loss."""
        if val_loss < self.best:
            self.best, self.bad = val_loss, 0
            return
        self.bad += 1
        if self.bad > patience:
            self.scale, self.bad = self.scale * 0.1, 0


def optimizer_state_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and JSON metadata.

    Tensors are named "optim/<param id>/<key>"; `load_optimizer_state` reverses the split.
    """
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{pid}/{key}"] = value
            else:
                scalars[f"{pid}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Restore what `optimizer_state_tensors` split (other tensors in `tensors` are ignored)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
