"""Training: patches with the paper's augmentation and weighted loss, exact resume, DDP.

The package, one concern per module:

* `config`: `TrainConfig`, the one object a run depends on (and the help of every option), with
  its defaults for semantic classes and for objects (`PLAIN_DEFAULTS`, `INSTANCE_DEFAULTS`);
* `datasets`: the training/validation split (serving the masks of the instance target) and the
  border-weight function;
* `patches`: the paper's mirror-extended training tiles and their step-indexed order;
* `optim`: optimiser, learning-rate schedule (steps or time budget), optimiser state I/O;
* `logs`: log.csv, progress lines, TensorBoard;
* `state`: `TrainState` (what changes step to step) and `Run` (what a session builds once);
* `setup`: the first phase, set-up and resume;
* `loop`: `train` in phases: set-up and resume, one step, validate-and-checkpoint, stopping;
* `objects`: instance runs' object scores at each validation (the best checkpoint by the DSB
  score) and the post-processing tuned at the end (imported when first needed).

Validation scoring is `pixelwise.evaluate.evaluate_dataset`; the curves are
`pixelwise.report.plot_curves`. The loop imports both when it first validates: the command line
builds its parser from `TrainConfig`, and matplotlib would slow every command's start.
"""

from pixelwise.train.config import (
    INSTANCE_DEFAULTS,
    OPTIMIZERS,
    PLAIN_DEFAULTS,
    SCHEDULES,
    TrainConfig,
    option_help,
)
from pixelwise.train.datasets import border_weight_fn, split_datasets
from pixelwise.train.logs import LOG_FIELDS
from pixelwise.train.loop import (
    StopSignals,
    TrainResult,
    should_stop,
    train,
    train_step,
    validate_and_checkpoint,
)
from pixelwise.train.optim import (
    Plateau,
    load_optimizer_state,
    make_optimizer,
    optimizer_state_tensors,
    schedule_factor,
)
from pixelwise.train.patches import PatchDataset, PatchLoader, mirror_pad, patch_geometry
from pixelwise.train.setup import initialize_from, set_up
from pixelwise.train.state import Run, TrainState

__all__ = [
    "INSTANCE_DEFAULTS",
    "LOG_FIELDS",
    "OPTIMIZERS",
    "PLAIN_DEFAULTS",
    "SCHEDULES",
    "PatchDataset",
    "PatchLoader",
    "Plateau",
    "Run",
    "StopSignals",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "border_weight_fn",
    "initialize_from",
    "load_optimizer_state",
    "make_optimizer",
    "mirror_pad",
    "optimizer_state_tensors",
    "option_help",
    "patch_geometry",
    "schedule_factor",
    "set_up",
    "should_stop",
    "split_datasets",
    "train",
    "train_step",
    "validate_and_checkpoint",
]
