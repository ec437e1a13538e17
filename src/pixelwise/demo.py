"""The built-in demo: from synthetic touching cells to counted objects, in a few CPU minutes.

1. Generate fluorescence-like images of touching cells with instance labels. As in the paper's
   annotations, touching cells are separated by a thin line of background in the training
   masks (`pixelwise.instances.separate_touching`), and the weight map stresses those lines.
2. Train the same small U-Net (same seed, steps, data) for two instance targets
   (`TrainConfig(instances=True, target=...)`): the U-Net paper's two classes with its border
   weights, and three classes (background, interior, boundary; the StarDist paper's 3-class
   U-Net). Training chooses each best checkpoint by its object score and tunes the
   post-processing on the validation images.
3. Predict a larger held-out image with each checkpoint (`pixelwise.Segmenter`: overlap-tile
   inference, then the recorded post-processing, the objects `pixelwise predict --instances`
   writes) and score the objects: accuracy and F1 at IoU 0.5, accuracy at 0.75, the DSB score,
   merges, and how many touching pairs each model keeps apart
   (`pixelwise.instances.touching_pairs_separated`).
4. Write the object overlays (a colour per object), the weight-map figure, the learning curves
   and metrics.json.

This module only composes library calls (synthetic data, train, Segmenter, instances, metrics,
report); nothing here is needed to use pixelwise.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pixelwise.atomic import atomic_write, write_text
from pixelwise.data import write_image
from pixelwise.instances import separate_touching, touching_pairs_separated
from pixelwise.losses import weight_map
from pixelwise.metrics import match_instances, pool_matches
from pixelwise.metrics.objects import panoptic_quality
from pixelwise.report import overlay, plot_curves
from pixelwise.segmenter import Segmenter
from pixelwise.synthetic import to_uint8, touching_cells, write_dataset
from pixelwise.train import TrainConfig, train

__all__ = ["run_demo"]

PIPELINES: dict[str, dict[str, Any]] = {
    "two-class": {"target": "two-class", "weighted": True, "class_names": ["background", "cell"]},
    "three-class": {"target": "three-class", "weighted": False},
}
"""The demo's two trainings, by name: the TrainConfig options in which they differ."""

# Rows of the printed comparison (keys of metrics.json per pipeline).
_SHOWN = (
    "accuracy@0.5",
    "f1@0.5",
    "accuracy@0.75",
    "dsb_score",
    "pq@0.5",
    "merges",
    "objects_predicted",
    "touching_pairs_separated",
)
_OUTPUTS = (
    "overlay.png",
    "overlay_two_class.png",
    "overlay_three_class.png",
    "weight_map.png",
    "curves.png",
    "metrics.json",
)


def _save_figure(fig: Figure, axes: Any, path: Path) -> None:
    """Hide the picture axes' frames and ticks, then write the PNG."""
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def _weight_figure(image: np.ndarray, instances: np.ndarray, path: Path) -> None:
    """Image, separated mask and U-Net weight map side by side, as a PNG."""
    fig = Figure(figsize=(12, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(instances > 0, cmap="gray")
    axes[1].set_title("mask: touching cells kept apart")
    shown = axes[2].imshow(weight_map(instances), cmap="jet")
    axes[2].set_title("U-Net weight map (w0 = 10, σ = 5)")
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    _save_figure(fig, axes, path)


def _objects_figure(panels: Mapping[str, np.ndarray], path: Path) -> None:
    """RGB pictures side by side with their titles, as a PNG."""
    fig = Figure(figsize=(4.2 * len(panels), 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    for ax, (title, rgb) in zip(axes, panels.items(), strict=True):
        ax.imshow(rgb)
        ax.set_title(title)
    _save_figure(fig, axes, path)


def _config(
    data: Path, out: Path, options: dict[str, Any], *, steps: int, quick: bool, seed: int
) -> TrainConfig:
    """The TrainConfig of one pipeline; only `options` (see PIPELINES) differ between them."""
    return TrainConfig(
        data=str(data),
        out=str(out),
        instances=True,
        model="unet",
        # the paper's network (valid convolutions, no batch norm), narrower and shallower
        model_args={
            "base_channels": 8 if quick else 16,
            "depth": 3 if quick else 4,
            "padding": "valid",
            "batch_norm": False,
        },
        steps=steps,
        batch_size=4,
        patch_size=64 if not quick else 16,
        optimizer="adam",
        lr=2e-3,
        schedule="cosine",
        val_fraction=0.125,
        val_every=steps if quick else max(steps // 5, 1),
        rotation=180.0,
        # the synthetic images share one intensity range, which the dataset moments keep (the
        # instance default, per-image percentiles, scored three-class 0.792 against 0.860 here)
        normalize="dataset",
        seed=seed,
        **options,
    )


def _score(
    checkpoint_path: Path, image: np.ndarray, gt: np.ndarray, *, progress: bool
) -> tuple[dict[str, Any], np.ndarray]:
    """(scores, objects): one trained model on the held-out image against its instances.

    Args:
        checkpoint_path: the run's checkpoint; image: (H, W) uint8; gt: (H, W) instance ids.
    """
    segmenter = Segmenter.from_checkpoint(checkpoint_path, progress=progress)
    result = segmenter.predict(image)
    objects = result.instances  # (H, W) int32, as `pixelwise predict --instances` writes them
    assert objects is not None and segmenter.postprocessing is not None  # an instance model
    match = match_instances(objects, gt)
    pooled = pool_matches([match]) | panoptic_quality(match)
    kept, pairs = touching_pairs_separated(gt, objects)
    fg, truth = result.labels > 0, gt > 0
    scores = {
        **{k: pooled[k] for k in _SHOWN if k in pooled},
        "splits": pooled["splits"],
        "objects_predicted": pooled["n_pred"],
        "objects_true": pooled["n_gt"],
        "touching_pairs_separated": kept,
        "touching_pairs": pairs,
        "foreground_iou": float((fg & truth).sum() / max((fg | truth).sum(), 1)),
        "postprocessing": segmenter.postprocessing.to_dict(),
    }
    return scores, objects


def _json_safe(value: Any) -> Any:
    """NaN (a score without objects, e.g. in a --quick run) becomes null, recursively."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _print_summary(results: dict[str, Any], out: Path, log: Callable[[str], None]) -> None:
    names = list(PIPELINES)
    log("")
    log(f"{'':28s}" + "".join(f"{name:>14s}" for name in names))
    for key in _SHOWN:
        values = [results[name][key] for name in names]
        fmt = "{:>14.3f}" if isinstance(values[0], float) else "{:>14d}"
        log(f"{key:28s}" + "".join(fmt.format(v) for v in values))
    first = results[names[0]]
    log(
        f"(held-out image: {first['objects_true']} cells, {first['touching_pairs']} touching pairs)"
    )
    log("")
    log(f"done in {results['seconds']:.0f} s. Look at:")
    for name in _OUTPUTS:
        log(f"  {out / name}")


def run_demo(
    out: str | Path = "pixelwise-demo",
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo into `out`; returns the metrics written to `out/metrics.json`.

    Args:
        out: output folder.
        quick: a much smaller run (for tests): fewer images and steps; the scores mean nothing.
        seed: seed of the data and of both trainings.
        progress: show progress bars.
        log: where messages go.

    Returns:
        ``{pipeline: scores}`` for each of PIPELINES (the object scores of the held-out image,
        `train_seconds`, the post-processing record used), plus ``seconds`` and
        ``held_out_size``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    n_train, size, held_out, steps = (4, 96, 160, 6) if quick else (16, 192, 512, 600)
    data = out / "data"
    log(f"generating {n_train} synthetic images of touching cells in {data}")
    shutil.rmtree(data, ignore_errors=True)  # the demo's own data: a rerun may use other sizes
    write_dataset(data, n_train, (size, size), seed=seed, separate=True)
    image, gt = touching_cells((held_out, held_out), rng=seed + 10_000)
    image, gt = to_uint8(image), separate_touching(gt)
    _weight_figure(image, gt, out / "weight_map.png")

    results: dict[str, Any] = {}
    histories = {}
    panels = {"image": overlay(image, np.zeros_like(gt))}
    for name, options in PIPELINES.items():
        log(
            f"training U-Net, {name} target"
            + (" with border weights" if options["weighted"] else "")
        )
        cfg = _config(data, out / "runs" / name, options, steps=steps, quick=quick, seed=seed)
        run = train(cfg, progress=progress, log=log)
        histories[name] = run.history
        results[name], objects = _score(run.out / "best.safetensors", image, gt, progress=progress)
        results[name]["train_seconds"] = run.history[-1]["seconds"] if run.history else None
        picture = overlay(image, objects)  # a colour per object
        write_image(out / f"overlay_{name.replace('-', '_')}.png", picture)
        panels[f"{name}: {results[name]['objects_predicted']} objects"] = picture
    _objects_figure(panels, out / "overlay.png")
    plot_curves(histories, out / "curves.png")
    results["seconds"] = time.perf_counter() - t0
    results["held_out_size"] = held_out
    write_text(out / "metrics.json", json.dumps(_json_safe(results), indent=2))
    _print_summary(results, out, log)
    return results
