"""The training run, in phases: set-up and resume, one step, validate-and-checkpoint, stopping.

`train` reads top to bottom: `set_up` (`pixelwise.train.setup`) builds a `Run` (what stays
fixed: data, model, optimiser) and a `TrainState` (what changes: step, plateau, best scores,
running losses, time spent; `pixelwise.train.state`); then each iteration is `train_step`,
`share_clock_and_signals`, `should_stop`, and, when due, `validate_and_checkpoint` (else
`save_last` when the run stops early).

Exact resume: the last checkpoint stores the weights, the optimiser's state, the TrainState and
the torch RNG, and the batches of step s depend on s alone (`pixelwise.train.patches`), so a run
interrupted after step k and resumed ends with the same weights as one that never stopped.

DDP (torchrun): every rank takes the same steps on its share of each global batch. Whatever
decides the control flow is agreed on by all ranks: rank 0's clock (time budget, learning rate),
any rank's stop signal, rank 0's validation scores (plateau schedule). Only rank 0 writes files
and logs.

Stopping: after `cfg.steps` steps; after `stop_after` steps; on Ctrl-C or SIGTERM (the step in
flight is finished, the last checkpoint saved; a second signal interrupts at once); or once
`cfg.max_minutes` of training time are spent (validated and checkpointed as at the last step).

Divergence: a NaN or infinite training loss (on any rank) stops the run at once with
`TrainingDiverged`, saving nothing, so the checkpoints on disk keep the last finite weights; the
weights are also checked before every save, so no checkpoint holds NaN weights.

Instance runs (`cfg.target` set, `pixelwise.train.objects`): every validation also scores the
objects, and the best checkpoint is the one of the best DSB score; a run that ends by its steps
or its time budget then tunes the post-processing on the validation images and records it in
best.safetensors (not an interrupted one: resume it, and it tunes when it ends).
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from pixelwise import checkpoint
from pixelwise.distributed import init_process_group
from pixelwise.train.config import TrainConfig
from pixelwise.train.logs import Progress, format_row, write_log
from pixelwise.train.optim import optimizer_state_tensors, schedule_factor
from pixelwise.train.setup import set_up
from pixelwise.train.state import Run, TrainState

StopReason = Literal["steps", "stop_after", "signal", "time", "diverged"]


class TrainingDiverged(ValueError):
    """The training loss or the weights became NaN or infinite (a learning rate too high for the
    model and data, most often); the message names the step, the checkpoint kept and the fix."""


@dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        out: the output folder; step: the last step done; best: the best validation scores
            (rank 0; None on other ranks or without a validation); interrupted: stopped by a
            signal (resume with `resume=True`); history: the log.csv rows; signal: that
            signal's number, else None.
    """

    out: Path
    step: int
    best: dict[str, float] | None
    interrupted: bool
    history: list[dict[str, Any]]
    signal: int | None = None


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    allow_new_data: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a model as `cfg` says; write checkpoints, logs and curves to `cfg.out`.

    An instance run (`cfg.target`) that ends by its steps or its time budget then tunes the
    post-processing on the validation images and records it in best.safetensors (rank 0).

    Args:
        cfg: the run's configuration.
        resume: continue from `cfg.out/last.safetensors` exactly where it stopped. The
            options that build the model must be the saved run's, and the data too unless
            `allow_new_data` (`pixelwise.train.setup.check_resume`).
        allow_new_data: with `resume`, go on with other data (data, val_data, split, ...).
        stop_after: stop (and checkpoint) once this many steps in all are done, as an
            interruption would; `resume` continues from there.
        progress: show progress (rank 0 only): a bar on a terminal, else a log line every
            `cfg.log_every` steps.
        log: where rank 0's messages go.

    Returns:
        TrainResult with the output folder, the last step, the best validation scores.

    Raises:
        TrainingDiverged: the training loss or the weights became NaN or infinite; the
            checkpoints on disk keep the last finite weights.
    """
    cfg.check()
    context, device = init_process_group(cfg.device)
    log = log if context.main else _silent
    run, state = set_up(cfg, context, device, resume=resume, allow_new_data=allow_new_data, log=log)
    shown = Progress(
        total=cfg.steps,
        initial=state.step,
        every=cfg.log_every,
        enabled=progress and context.main,
        log=log,
        budget_minutes=cfg.max_minutes,
    )
    state.start_session()
    reason = should_stop(cfg, state, stop_after)
    with StopSignals() as signals, closing(run.loader.batches(state.step)) as batches:
        try:
            while reason is None:
                train_step(run, state, next(batches))
                lr = run.optimizer.param_groups[0]["lr"]
                shown.update(
                    state.step, state.running, state.images_per_second(), lr, state.seconds_now()
                )
                share_clock_and_signals(run, state, signals)
                reason = should_stop(cfg, state, stop_after)
                if reason == "diverged":
                    break  # nothing saved: the checkpoints keep the last finite weights
                if due_for_validation(cfg, state):
                    validate_and_checkpoint(run, state, log)
                elif reason is not None:
                    save_last(run, state)
        finally:
            shown.close()
            if run.writer is not None:
                run.writer.close()
    if reason == "diverged":
        raise TrainingDiverged(diverged_message(run, state, "the training loss"))
    _log_stop(run, state, reason, log)
    if context.world_size > 1 and dist.is_initialized():
        dist.barrier()
    if reason in ("steps", "time") and cfg.target is not None and context.main:
        from pixelwise.train.objects import tune_best_checkpoint

        tune_best_checkpoint(run, state, log)  # rank 0 alone, after the others are released
    return TrainResult(
        run.out, state.step, state.best, reason == "signal", state.history, state.signal
    )


# --------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------


def train_step(run: Run, state: TrainState, batch: dict[str, torch.Tensor]) -> None:
    """One optimisation step on `batch` at the scheduled learning rate; advances `state`."""
    cfg = run.cfg
    # non_blocking: from pinned memory (CUDA) the copies overlap; a no-op on a CPU
    x = batch["image"].to(run.device, non_blocking=True)  # (B, C, n, n)
    y = batch["mask"].to(run.device, non_blocking=True)  # (B, n − 2m, n − 2m)
    w = batch["weight"].to(run.device, non_blocking=True) if cfg.weighted else None
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    lr = cfg.lr * schedule_factor(cfg, state.step, state.plateau.scale, state.elapsed)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(run.device.type, dtype=run.autocast, enabled=run.autocast is not None):
        logits = run.net(x)  # (B, K, n − 2m, n − 2m)
    loss = run.loss_fn(logits.float(), y, w)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    state.step += 1
    state.seen += x.shape[0] * run.context.world_size
    state.running.append(loss.item())
    state.diverged = state.diverged or not math.isfinite(state.running[-1])


# --------------------------------------------------------------------------------------------
# Stop conditions
# --------------------------------------------------------------------------------------------


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (what cluster schedulers send before killing a job) ask the
    loop to stop after the step in flight and save; a second signal interrupts at once
    (KeyboardInterrupt). A context manager: the previous handlers are restored on exit.

    Python installs handlers only in the main thread; elsewhere signals keep their handlers.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:  # None: a handler not installed from Python
                signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum


def share_clock_and_signals(run: Run, state: TrainState, signals: StopSignals) -> None:
    """Set `state.elapsed` (rank 0's clock), `state.signal` and `state.diverged` (any rank's)
    on every rank.

    The time budget, the learning rate and stopping then agree across ranks: a rank that
    stopped alone would leave the others waiting in their next gradient all-reduce. One
    all-reduce of three numbers per step under torchrun; nothing in a single process.
    """
    elapsed, received = state.seconds_now(), signals.received or 0
    if run.context.world_size > 1:
        mine = [elapsed if run.context.main else 0.0, float(received), float(state.diverged)]
        shared = torch.tensor(mine, dtype=torch.float64, device=run.device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        elapsed, received = float(shared[0]), int(shared[1])
        state.diverged = bool(shared[2])
    state.elapsed, state.signal = elapsed, received or None


def time_is_up(cfg: TrainConfig, state: TrainState) -> bool:
    """Whether the time budget `cfg.max_minutes` (if any) is spent."""
    return cfg.max_minutes is not None and state.elapsed >= 60 * cfg.max_minutes


def should_stop(cfg: TrainConfig, state: TrainState, stop_after: int | None) -> StopReason | None:
    """Why the run stops after the current step (the first that holds), or None to go on."""
    if state.diverged:
        return "diverged"
    if state.step >= cfg.steps:
        return "steps"
    if stop_after is not None and state.step >= stop_after:
        return "stop_after"
    if state.signal is not None:
        return "signal"
    if time_is_up(cfg, state):
        return "time"
    return None


def due_for_validation(cfg: TrainConfig, state: TrainState) -> bool:
    """Every `cfg.val_every` steps, at the last step, and when the time budget is spent."""
    return state.step % cfg.val_every == 0 or state.step == cfg.steps or time_is_up(cfg, state)


def _log_stop(
    run: Run, state: TrainState, reason: StopReason | None, log: Callable[[str], None]
) -> None:
    """Say why a run stopped early (a time budget, a signal)."""
    if reason == "time":
        log(f"time budget of {run.cfg.max_minutes:g} min spent: stopped at step {state.step}")
    elif reason == "signal":
        name = signal.Signals(state.signal).name
        log(
            f"interrupted ({name}) at step {state.step}: saved {run.last_path}; "
            "continue with --resume"
        )


def diverged_message(run: Run, state: TrainState, what: str) -> str:
    """What `TrainingDiverged` says: the step, what became non-finite, the checkpoint kept, and
    a lower learning rate to train with (a fresh run: the weights and optimiser state before a
    divergence are often already far off)."""
    cfg = run.cfg
    if state.saved_step is not None:
        kept = f"{run.last_path} keeps the last finite weights (step {state.saved_step})"
    else:
        first = min(cfg.val_every, cfg.steps)
        kept = f"no checkpoint was written (the first was due at step {first})"
    return (
        f"training diverged at step {state.step}: {what} is NaN or infinite at --lr "
        f"{cfg.lr:g}; {kept}; lower the learning rate, e.g. train again with --lr {cfg.lr / 10:g}"
    )


def check_finite_weights(run: Run, state: TrainState) -> None:
    """Raise TrainingDiverged when a parameter or buffer of the model is NaN or infinite (every
    rank checks the same weights, so all ranks stop together)."""
    for tensor in run.model.state_dict().values():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TrainingDiverged(diverged_message(run, state, "a weight of the model"))


def _silent(_message: str) -> None:
    """The log of ranks other than 0."""


# --------------------------------------------------------------------------------------------
# Validate and checkpoint
# --------------------------------------------------------------------------------------------


def validate_and_checkpoint(run: Run, state: TrainState, log: Callable[[str], None]) -> None:
    """Score the validation set, log a row, update the plateau and best; save best and last.

    The best checkpoint is the one of the highest `best_metric` so far. Weights that are NaN or
    infinite raise `TrainingDiverged` before anything is scored or saved.
    """
    check_finite_weights(run, state)
    cfg = run.cfg
    row = {
        "step": state.step,
        "epoch": state.step / run.loader.steps_per_epoch,
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": float(np.mean(state.running)),
        "seconds": state.seconds_now(),
    }
    state.running = []
    scores, probabilities = validation_scores(run)
    row |= scores
    if scores and cfg.schedule == "plateau":
        state.plateau.update(scores["val_loss"], cfg.patience)
    if run.context.main:
        _record(run, state, row)
        metric = best_metric(row)
        if _improves(metric, state.best):
            state.best = {"metric": metric, "step": state.step, **scores}
            state.best_probabilities = probabilities
            checkpoint.save(run.model, run.best_path, step=state.step, best=state.best, **run.meta)
        log(format_row(row))
    save_last(run, state)
    run.model.train()


def best_metric(row: dict[str, Any]) -> float:
    """What chooses the best checkpoint: the objects' DSB score (instance runs), else the mean
    IoU, else (no validation set) minus the training loss."""
    for key in ("val_dsb_score", "val_mean_iou"):
        if key in row:
            return float(row[key])
    return -float(row["train_loss"])


def _improves(metric: float, best: dict[str, Any] | None) -> bool:
    """Whether `metric` beats the best so far (a NaN score never does, and is always beaten)."""
    if best is None:
        return True
    if math.isnan(best["metric"]):
        return not math.isnan(metric)
    return metric > best["metric"]


def validation_scores(run: Run) -> tuple[dict[str, float], list[np.ndarray] | None]:
    """Rank 0 scores the validation set (`evaluate_dataset`), and in an instance run its
    objects (`pixelwise.train.objects.object_scores`, on the probabilities of the same pass).

    Every rank gets the scores, so that the plateau schedules agree; rank 0 also gets the
    probabilities of an instance run (else None). ({}, None) without a validation set.
    """
    from pixelwise.evaluate import evaluate_dataset  # with matplotlib: only when needed

    scores: dict[str, float] = {}
    probabilities: list[np.ndarray] | None = None
    if run.val_ds is not None and run.context.main:
        probabilities = [] if run.cfg.target is not None else None
        scores = evaluate_dataset(
            run.model, run.val_ds, device=run.device, probabilities=probabilities
        )
        if probabilities is not None:
            from pixelwise.train.objects import object_scores

            scores |= object_scores(run, probabilities)
    if run.context.world_size > 1:
        box = [scores]
        dist.broadcast_object_list(box, src=0)
        scores = box[0]
    return scores, probabilities


def _record(run: Run, state: TrainState, row: dict[str, Any]) -> None:
    """Append `row` to the history, log.csv, the learning curves and TensorBoard."""
    from pixelwise.report import plot_curves  # matplotlib: only when needed

    state.history.append(row)
    write_log(run.out / "log.csv", state.history)
    plot_curves({"": state.history}, run.out / "curves.png")
    if run.writer is not None:
        for key, value in row.items():
            run.writer.add_scalar(key, value, state.step)


def save_last(run: Run, state: TrainState) -> None:
    """Rank 0 writes the last checkpoint: weights, optimiser, TrainState, torch RNG (weights
    that are NaN or infinite raise `TrainingDiverged` on every rank instead)."""
    check_finite_weights(run, state)
    state.saved_step = state.step
    if not run.context.main:
        return
    tensors, optimizer_meta = optimizer_state_tensors(run.optimizer)
    tensors["rng/torch"] = torch.get_rng_state()
    checkpoint.save(
        run.model,
        run.last_path,
        extra_tensors=tensors,
        optimizer=optimizer_meta,
        **state.metadata(),
        **run.meta,
    )
