"""The built-in demo: U-Net's whole idea on synthetic touching cells, in a few CPU minutes.

1. Generate fluorescence-like images of touching cells with instance labels. As in the paper's
   annotations, touching cells are separated by a thin line of background in the training
   masks (`pixelwise.instances.separate_touching`), and the weight map stresses exactly those
   lines.
2. Train the same small U-Net twice, with and without the border weights (same seed, steps).
3. Predict a larger held-out image with overlap-tile inference and compare: foreground IoU,
   object F1 and AP, merges, and how many touching pairs each model separates
   (`pixelwise.instances.touching_pairs_separated`).
4. Write the overlay, the weight-map figure, the learning curves and metrics.json.

This module only composes library calls (synthetic data, train, tiling, instances, metrics,
report); nothing here is needed to use pixelwise.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pixelwise import checkpoint
from pixelwise.atomic import atomic_write, write_text
from pixelwise.data import to_chw_float, write_image
from pixelwise.instances import label, separate_touching, touching_pairs_separated
from pixelwise.losses import weight_map
from pixelwise.metrics import match_instances
from pixelwise.report import overlay, plot_curves
from pixelwise.synthetic import to_uint8, touching_cells, write_dataset
from pixelwise.tiling import predict
from pixelwise.train import TrainConfig, train

__all__ = ["run_demo"]

# Rows of the printed comparison (and keys of metrics.json per model).
_SHOWN = ("foreground_iou", "f1_iou50", "ap_50_95", "merges", "touching_pairs_separated")
_OUTPUTS = ("overlay.png", "weight_map.png", "curves.png", "metrics.json")


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
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def _config(
    data: Path, out: Path, *, weighted: bool, steps: int, quick: bool, seed: int
) -> TrainConfig:
    """The TrainConfig of one of the two runs; only `weighted` differs between them."""
    return TrainConfig(
        data=str(data),
        out=str(out),
        instances=True,
        class_names=["background", "cell"],
        model="unet",
        model_args={"base_channels": 16, "depth": 4},
        steps=steps,
        batch_size=4,
        patch_size=64 if not quick else 16,
        optimizer="adam",
        lr=2e-3,
        schedule="cosine",
        weighted=weighted,
        val_fraction=0.125,
        val_every=max(steps // 5, 1),
        rotation=180.0,
        seed=seed,
    )


def _score(
    checkpoint_path: Path, image: np.ndarray, gt: np.ndarray, *, progress: bool
) -> tuple[dict[str, Any], np.ndarray]:
    """(scores, objects): one trained model on the held-out image against its instances.

    Args:
        checkpoint_path: the run's checkpoint; image: (H, W) uint8; gt: (H, W) instance ids.
    """
    model, meta, _ = checkpoint.load_state(checkpoint_path)
    x = to_chw_float(image, normalization=meta["normalization"])  # (1, H, W)
    probs = predict(model, x, output="probs", progress=progress)  # (2, H, W)
    fg = probs.argmax(0) == 1
    truth = gt > 0
    objects = label(fg.astype(np.uint8))
    match = match_instances(objects, gt)
    kept, pairs = touching_pairs_separated(gt, objects)
    scores = {
        "foreground_iou": float((fg & truth).sum() / max((fg | truth).sum(), 1)),
        "objects_predicted": int(match["n_pred"]),
        "objects_true": int(match["n_gt"]),
        "f1_iou50": match["f1_50"],
        "ap_50_95": match["ap_50_95"],
        "merges": match["merges"],
        "touching_pairs_separated": kept,
        "touching_pairs": pairs,
    }
    return scores, objects


def _print_summary(results: dict[str, Any], out: Path, log: Callable[[str], None]) -> None:
    log("")
    log(f"{'':28s}{'weighted':>12s}{'unweighted':>12s}")
    for key in _SHOWN:
        w, u = results["weighted"][key], results["unweighted"][key]
        fmt = "{:>12.3f}" if isinstance(w, float) else "{:>12d}"
        log(f"{key:28s}" + fmt.format(w) + fmt.format(u))
    log(f"(of {results['weighted']['touching_pairs']} touching pairs in the held-out image)")
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
        quick: a much smaller run (for tests): fewer images and steps; the targets don't apply.
        seed: seed of the data and of both trainings.
        progress: show progress bars.
        log: where messages go.
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
    for name, weighted in (("weighted", True), ("unweighted", False)):
        log(f"training U-Net {name} ({'with' if weighted else 'without'} border weights)")
        cfg = _config(
            data, out / "runs" / name, weighted=weighted, steps=steps, quick=quick, seed=seed
        )
        run = train(cfg, progress=progress, log=log)
        histories[name] = run.history
        results[name], objects = _score(run.out / "last.safetensors", image, gt, progress=progress)
        results[name]["train_seconds"] = run.history[-1]["seconds"] if run.history else None
        if weighted:
            write_image(out / "overlay.png", overlay(image, objects))
    plot_curves(histories, out / "curves.png")
    results["seconds"] = time.perf_counter() - t0
    results["held_out_size"] = held_out
    write_text(out / "metrics.json", json.dumps(results, indent=2))
    _print_summary(results, out, log)
    return results
