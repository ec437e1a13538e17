"""The built-in demo: U-Net's whole idea on synthetic touching cells, in a few CPU minutes.

1. Generate fluorescence-like images of touching cells with instance labels. As in the paper's
   annotations, touching cells are separated by a thin line of background in the training
   masks (`separate_touching`), and the weight map stresses exactly those lines.
2. Train the same small U-Net twice, with and without the border weights (same seed, steps).
3. Predict a larger held-out image with overlap-tile inference and compare: foreground IoU,
   object F1 and AP, merged objects, and how many touching pairs each model separates.
4. Write the overlay, the weight-map figure, the learning curves and metrics.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pixelwise import checkpoint
from pixelwise.data import to_chw_float, write_image_atomic
from pixelwise.instances import label
from pixelwise.losses import weight_map
from pixelwise.metrics import match_instances
from pixelwise.report import overlay
from pixelwise.synthetic import touching_cells
from pixelwise.tiling import predict
from pixelwise.train import TrainConfig, train


def separate_touching(instances: np.ndarray) -> np.ndarray:
    """Instances with a background line wherever two objects touch.

    A pixel whose 4-neighbour belongs to another object is set to 0, so two touching cells
    end up 2 pixels apart — the "separating background labels" of the U-Net paper (§3.1).
    """
    out = instances.copy()
    border = np.zeros(instances.shape, bool)
    for axis in (0, 1):
        a = np.moveaxis(instances, axis, 0)
        b = np.moveaxis(border, axis, 0)
        touch = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)  # (H−1, W) contacts
        b[1:] |= touch
        b[:-1] |= touch
    out[border] = 0
    return out


def touching_pairs_separated(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """(pairs of touching ground-truth objects that the prediction keeps apart, all such pairs).

    Objects a and b "touch" when they are at most 2 pixels apart (their separating line). A pair
    is kept apart when each is mostly covered by a different predicted object.
    """
    grown = ndimage.grey_dilation(gt, size=(3, 3))
    pairs = set()
    for axis in (0, 1):
        a, b = np.moveaxis(gt, axis, 0), np.moveaxis(grown, axis, 0)
        for x, y in ((a[1:], b[:-1]), (a[:-1], b[1:])):
            hit = (x > 0) & (y > 0) & (x != y)
            pairs |= {tuple(sorted(p)) for p in zip(x[hit].tolist(), y[hit].tolist(), strict=True)}
    owner = {}
    for obj in np.unique(gt[gt > 0]):
        ids, counts = np.unique(pred[gt == obj], return_counts=True)
        best = ids[np.argmax(counts)]
        owner[int(obj)] = int(best) if best > 0 and counts.max() * 2 > counts.sum() else 0
    kept = sum(1 for a, b in pairs if owner[a] and owner[b] and owner[a] != owner[b])
    return kept, len(pairs)


def _write_dataset(folder: Path, n: int, size: int, seed: int) -> None:
    for i in range(n):
        image, instances = touching_cells((size, size), rng=seed + i)
        write_image_atomic(folder / "images" / f"cell_{i:03d}.png", _to_uint8(image))
        # instance ids with separating lines, as uint16 TIFF
        write_image_atomic(
            folder / "masks" / f"cell_{i:03d}.tif", separate_touching(instances).astype(np.uint16)
        )


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _weight_figure(image: np.ndarray, instances: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = weight_map(instances)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(instances > 0, cmap="gray")
    axes[1].set_title("mask: touching cells kept apart")
    im = axes[2].imshow(w, cmap="jet")
    axes[2].set_title("U-Net weight map (w0 = 10, σ = 5)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    checkpoint.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


def _curves_figure(histories: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in histories.items():
        steps = [int(r["step"]) for r in rows]
        ax1.plot(steps, [float(r["train_loss"]) for r in rows], label=f"{name}: training loss")
        ax2.plot(steps, [float(r["val_mean_iou"]) for r in rows], "o-", label=f"{name}: val IoU")
    ax1.set_xlabel("step")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    checkpoint.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


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
    _write_dataset(data, n_train, size, seed)
    image, gt = touching_cells((held_out, held_out), rng=seed + 10_000)
    gt = separate_touching(gt)
    _weight_figure(image, gt, out / "weight_map.png")

    results: dict[str, Any] = {}
    histories = {}
    for name, weighted in (("weighted", True), ("unweighted", False)):
        log(f"training U-Net {name} ({'with' if weighted else 'without'} border weights)")
        cfg = TrainConfig(
            data=str(data),
            out=str(out / "runs" / name),
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
        run = train(cfg, progress=progress, log=log)
        histories[name] = run.history
        model, meta, _ = checkpoint.load_state(run.out / "last.safetensors")
        x = to_chw_float(_to_uint8(image), normalization=meta["normalization"])
        probs = predict(model, x, output="probs", progress=progress)  # (2, H, W)
        fg = probs.argmax(0) == 1
        truth = gt > 0
        iou = float((fg & truth).sum() / max((fg | truth).sum(), 1))
        objects = label(fg.astype(np.uint8))
        match = match_instances(objects, gt)
        kept, pairs = touching_pairs_separated(gt, objects)
        results[name] = {
            "foreground_iou": iou,
            "objects_predicted": int(match["n_pred"]),
            "objects_true": int(match["n_gt"]),
            "f1_iou50": match["f1_50"],
            "ap_50_95": match["ap_50_95"],
            "merges": match["merges"],
            "touching_pairs_separated": kept,
            "touching_pairs": pairs,
            "train_seconds": run.history[-1]["seconds"] if run.history else None,
        }
        if weighted:
            rgb = overlay(_to_uint8(image), objects)
            write_image_atomic(out / "overlay.png", rgb)
    _curves_figure(histories, out / "curves.png")
    results["seconds"] = time.perf_counter() - t0
    results["held_out_size"] = held_out
    text = json.dumps(results, indent=2)
    checkpoint.atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(text))

    log("")
    log(f"{'':28s}{'weighted':>12s}{'unweighted':>12s}")
    for key in ("foreground_iou", "f1_iou50", "ap_50_95", "merges", "touching_pairs_separated"):
        w, u = results["weighted"][key], results["unweighted"][key]
        fmt = "{:>12.3f}" if isinstance(w, float) else "{:>12d}"
        log(f"{key:28s}" + fmt.format(w) + fmt.format(u))
    log(f"(of {results['weighted']['touching_pairs']} touching pairs in the held-out image)")
    log("")
    log(f"done in {results['seconds']:.0f} s. Look at:")
    for name in ("overlay.png", "weight_map.png", "curves.png", "metrics.json"):
        log(f"  {out / name}")
    return results
