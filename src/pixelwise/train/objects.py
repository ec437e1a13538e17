"""Objects in an instance run (`TrainConfig.target` set): validation scores and tuning.

At every validation the probabilities the validation pass predicted
(`pixelwise.evaluate.evaluate_dataset`) become objects with the target's default
post-processing and are scored against the validation images' instance labels
(`pixelwise.tuning.score_postprocessing`, pooled): `val_dsb_score` (mean accuracy over IoU 0.5,
0.55, ..., 0.95) chooses the best checkpoint; `val_accuracy_50` and `val_f1_50` are logged
beside it.

At the end of a completed or timed-out run, `tune_best_checkpoint` tunes the post-processing
on the validation images (`pixelwise.tuning.tune_postprocessing`) with the best checkpoint's
probabilities, and writes the record and its scores into best.safetensors' metadata
("postprocessing", "postprocessing_scores"), where prediction and evaluation read it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pixelwise import checkpoint
from pixelwise.instances.postprocess import PostProcessing
from pixelwise.tiling import predict
from pixelwise.train.state import Run, TrainState
from pixelwise.tuning import score_postprocessing, tune_postprocessing

OBJECT_COLUMNS = {"val_dsb_score": "dsb_score", "val_accuracy_50": "accuracy@0.5",
                  "val_f1_50": "f1@0.5"}  # fmt: skip
"""log.csv column → key of the pooled object scores (`pixelwise.metrics.pool_matches`)."""

_HEADER = ("format", "version", "model", "model_args")  # written by checkpoint.save itself


def ground_truth(run: Run) -> list[np.ndarray]:
    """The validation images' (H, W) instance labels, read once per session."""
    assert run.val_ds is not None
    if run.val_instances is None:
        labels = []
        for i in range(len(run.val_ds)):
            instances = run.val_ds.load(i).instances
            assert instances is not None  # a target needs instance masks (SegmentationDataset)
            labels.append(instances)
        run.val_instances = labels
    return run.val_instances


def object_scores(run: Run, probabilities: Sequence[np.ndarray]) -> dict[str, float]:
    """The OBJECT_COLUMNS of the objects of `probabilities` (one (K, H, W) array per validation
    image) with the target's default post-processing."""
    pooled = score_postprocessing(
        PostProcessing(target=run.cfg.target), probabilities, ground_truth(run)
    )
    return {column: float(pooled[key]) for column, key in OBJECT_COLUMNS.items()}


def tune_best_checkpoint(run: Run, state: TrainState, log: Callable[[str], None]) -> None:
    """Tune the post-processing on the validation images; record it in best.safetensors.

    The probabilities are those kept from the best validation when it was this session's
    (`state.best_probabilities`), else the best checkpoint predicts the validation images.
    Without validation images the target's defaults stay (the log says so).
    """
    target = run.cfg.target
    if run.val_ds is None:
        log(
            f"no validation images: the post-processing keeps the defaults of {target!r} "
            "(hold some out with --val-fraction or --val-data to tune it)"
        )
        return
    started = time.perf_counter()
    model, meta, extra = checkpoint.load_state(run.best_path)
    probabilities = state.best_probabilities
    if probabilities is None:
        model.to(run.device)
        probabilities = [
            predict(model, run.val_ds.load(i).image, device=run.device)  # (K, H, W)
            for i in range(len(run.val_ds))
        ]
    start = PostProcessing(target=target)
    tuned, scores = tune_postprocessing(probabilities, ground_truth(run), start=start)
    kept = {k: v for k, v in meta.items() if k not in _HEADER}
    kept |= {"postprocessing": tuned.to_dict(), "postprocessing_scores": _json_safe(scores)}
    checkpoint.save(model, run.best_path, extra_tensors=extra or None, **kept)
    before = (state.best or {}).get("val_dsb_score", math.nan)
    changed = {k: v for k, v in tuned.to_dict().items() if getattr(start, k) != v}
    log(
        f"post-processing tuned on {len(probabilities)} validation images in "
        f"{time.perf_counter() - started:.0f} s: DSB score {scores['dsb_score']:.4f} "
        f"(defaults {before:.4f}), accuracy@0.5 {scores['accuracy@0.5']:.4f}, "
        f"F1@0.5 {scores['f1@0.5']:.4f}; "
        + (", ".join(f"{k} {v}" for k, v in changed.items()) or "the defaults kept")
        + f"; saved in {run.best_path}"
    )


def _json_safe(scores: dict[str, Any]) -> dict[str, Any]:
    """Pooled scores for JSON metadata: numbers as Python numbers, NaN as None."""
    safe: dict[str, Any] = {}
    for key, value in scores.items():
        if isinstance(value, int | np.integer):
            safe[key] = int(value)
        else:
            value = float(value)
            safe[key] = value if math.isfinite(value) else None
    return safe
