"""What a training run reports as it goes: log.csv, progress, TensorBoard.

Only rank 0 reports. log.csv has one row per validation (LOG_FIELDS; the object columns
`val_dsb_score`, `val_accuracy_50`, `val_f1_50` are filled in instance runs only, see
`pixelwise.train.objects`); a resumed run reads the rows up to its step back, so its log is the
log of an uninterrupted run. Progress is a tqdm bar
on a terminal and, elsewhere (cluster logs), one line every `log_every` steps. The learning
curves are drawn by `pixelwise.report.plot_curves`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pixelwise import atomic

LOG_FIELDS = (
    "step", "epoch", "lr", "train_loss", "val_loss", "val_mean_iou", "val_dice",
    "val_pixel_accuracy", "val_dsb_score", "val_accuracy_50", "val_f1_50", "seconds",
)  # fmt: skip


def read_log(path: Path, upto: int) -> list[dict[str, str]]:
    """The rows of log.csv `path` whose step is ≤ `upto` (values as strings); [] if none."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto]


def write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write `rows` as log.csv (columns LOG_FIELDS; a missing value is left empty)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    atomic.atomic_write(path, write)


def format_row(row: dict[str, Any]) -> str:
    """One log line for a log.csv row: step, training loss and the validation scores."""
    parts = [f"step {row['step']}", f"loss {row['train_loss']:.4f}"]
    if "val_mean_iou" in row:
        parts += [
            f"val loss {row['val_loss']:.4f}",
            f"mean IoU {row['val_mean_iou']:.4f}",
            f"Dice {row['val_dice']:.4f}",
            f"pixel acc {row['val_pixel_accuracy']:.4f}",
        ]
    if "val_dsb_score" in row:
        parts += [
            f"objects: DSB score {row['val_dsb_score']:.4f}",
            f"accuracy@0.5 {row['val_accuracy_50']:.4f}",
            f"F1@0.5 {row['val_f1_50']:.4f}",
        ]
    return " | ".join(parts)


class Progress:
    """Rank 0's progress: a tqdm bar on a terminal, else a log line every `every` steps.

    Args:
        total: the run's steps; initial: steps already done (a resumed run).
        every: steps between updates of the bar's figures or between log lines.
        enabled: False shows nothing (other ranks, `--no-progress`).
        log: where the lines go off a terminal.
        budget_minutes: the time budget, if any: its minutes spent are shown too.
    """

    def __init__(
        self,
        *,
        total: int,
        initial: int,
        every: int,
        enabled: bool,
        log: Callable[[str], None],
        budget_minutes: float | None = None,
    ) -> None:
        from tqdm import tqdm

        on_terminal = enabled and os.isatty(2)
        self.total, self.every, self.log, self.budget = total, every, log, budget_minutes
        self.lines = enabled and not on_terminal
        self.bar = tqdm(
            total=total, initial=initial, unit="step", disable=not on_terminal, dynamic_ncols=True
        )

    def update(
        self,
        step: int,
        losses: Sequence[float],
        images_per_s: float,
        lr: float,
        seconds: float = 0.0,
    ) -> None:
        """Count step `step`; every `every` steps show the mean of the last losses (and, with
        a budget, the minutes spent of it: `seconds` is the run's training time)."""
        self.bar.update(1)
        if step % self.every:
            return
        loss = float(np.mean(losses[-self.every :])) if losses else float("nan")
        spent = f"{seconds / 60:.1f}/{self.budget:g}" if self.budget is not None else None
        if self.lines:
            minutes = f" | {spent} min" if spent else ""
            self.log(
                f"step {step}/{self.total}{minutes} | loss {loss:.4f} | {images_per_s:.1f} img/s"
                f" | lr {lr:.3g}"
            )
        else:
            extra = {"min": spent} if spent else {}
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}", **extra)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


def open_tensorboard(out: Path) -> Any | None:
    """A TensorBoard SummaryWriter into `out/tensorboard`, or None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))
