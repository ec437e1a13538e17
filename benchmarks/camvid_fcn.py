"""Recipe: FCN-32s → 16s → 8s on CamVid (the skip architecture's claim), with a U-Net baseline.

    python benchmarks/camvid_fcn.py ../shared/data/camvid                # 30 + 30 min of training
    python benchmarks/camvid_fcn.py ../shared/data/camvid --quick        # < 90 s, for CI

Protocol (Long, Shelhamer, Darrell 2015, sec. 4.2, staged training): train FCN-32s; start
FCN-16s from the 32s net's best checkpoint (`TrainConfig.init`: backbone and score_fr copied,
the new score_pool4 layer zero-initialised, so training starts from exactly the 32s output);
start FCN-8s from the 16s net the same way. The upsampling layers stay fixed bilinear
interpolation (`learn_upsampling=False`), as the paper's staged nets. Then train a same-padding
U-Net with batch normalisation on the same data for the same total time as the three FCN stages
together. Every net is scored on the CamVid test split (SegNet's 11 classes, label 11 = void is
ignored) with the FCN paper's pixel accuracy, mean accuracy, mean IU and frequency-weighted IU
from one confusion matrix summed over all test images. The issue's target: mean IU of
8s ≥ 16s ≥ 32s (the paper, on PASCAL VOC 2011 val with ImageNet weights: 59.4 / 62.4 / 62.7).

Departures from the paper, forced by a 2-core CPU and an offline machine:

* No ImageNet weights (nothing can be downloaded): every backbone is trained from scratch (He
  initialisation), at a fraction of VGG16's width (`FCN_WIDTH`).
* Images are downscaled by `scale` (0.5: 480×360 → 240×180; Pillow's antialiased bilinear for
  images, nearest for labels) into OUT/data, and the nets train on random 176×176 crops of
  them, batch 4. Test predictions (`pixelwise.tiling.predict`, whole image in one tile) are
  upsampled bilinearly (as probabilities) back to 480×360 and scored against the original
  labels, so the scores are at full resolution.
* Loss: mean cross-entropy with Adam (the paper sums the loss over pixels and uses SGD with a
  tiny learning rate and momentum 0.99; with a small from-scratch net Adam on the mean is the
  stable choice). Each later stage uses a lower learning rate, as the reference solvers do, and
  every stage follows a cosine schedule over its time budget.
* No augmentation (the paper found mirroring and jittering gave no noticeable improvement);
  no class balancing (the paper trains unbalanced too).
* The best checkpoint of each stage (highest mean IU on a subset of the val split, every 4th
  image) is the one evaluated and the one the next stage starts from.

Results go to OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from common import Run, add_training_options, make_parser, parse_args, write_results
from pixelwise import checkpoint
from pixelwise.data import open_dataset, read_image, to_chw_float, write_image
from pixelwise.metrics import confusion_matrix, segmentation_scores
from pixelwise.tiling import predict
from pixelwise.train import TrainConfig, train

CLASS_NAMES = [
    "sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car",
    "pedestrian", "bicyclist",
]  # fmt: skip
NUM_CLASSES, VOID = 11, 11
# (model, share of the FCN budget, stage it starts from, learning rate)
STAGES = (
    ("fcn32s", 0.4, None, 1e-3),
    ("fcn16s", 0.3, "fcn32s", 3e-4),
    ("fcn8s", 0.3, "fcn16s", 1e-4),
)
UNET_LR = 1e-3
SCORE_KEYS = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")
PAPER_VOC_MEAN_IU = {"fcn32s": 0.594, "fcn16s": 0.624, "fcn8s": 0.627}


@dataclass(frozen=True)
class Settings:
    """What differs between the quick (CI) and the full run.

    scale: image downscaling factor; every_*: keep every k-th image of a split (sorted names);
    max_*: at most this many images of a split; steps: per stage, or None to run on time only.
    """

    scale: float
    fcn_width: float
    unet_args: dict[str, Any]
    patch_size: int
    batch_size: int
    every_train: int
    every_val: int
    max_train: int | None
    max_val: int | None
    max_test: int | None
    steps: int | None
    val_every: int


FULL = Settings(
    scale=0.5,
    fcn_width=1 / 8,
    unet_args={"base_channels": 16, "depth": 4, "padding": "same", "batch_norm": True},
    patch_size=176,
    batch_size=4,
    every_train=1,
    every_val=4,
    max_train=None,
    max_val=None,
    max_test=None,
    steps=None,
    val_every=50,
)
QUICK = Settings(
    scale=0.25,
    fcn_width=1 / 32,
    unet_args={"base_channels": 4, "depth": 3, "padding": "same", "batch_norm": True},
    patch_size=48,
    batch_size=2,
    every_train=1,
    every_val=1,
    max_train=4,
    max_val=2,
    max_test=2,
    steps=2,
    val_every=2,
)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) after scaling, rounded, at least 1 (480×360 at 0.5 → 240×180)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def prepare_split(
    data: Path, dst: Path, split: str, scale: float, every: int, limit: int | None
) -> int:
    """Write every `every`-th pair of `split` (at most `limit`), downscaled, to dst in the
    CamVid layout (`<split>/` + `<split>annot/`). Returns the number of pairs written."""
    samples = open_dataset(data, split=split, num_classes=NUM_CLASSES, ignore_index=VOID).samples
    chosen = sorted(samples, key=lambda s: s.image_path.name)[::every][:limit]
    for sample in chosen:
        assert sample.mask_path is not None
        name = sample.image_path.name
        with Image.open(sample.image_path) as image, Image.open(sample.mask_path) as mask:
            size = scaled_size(*image.size, scale)
            small_image = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
            small_mask = mask.resize(size, Image.Resampling.NEAREST)
        write_image(dst / split / name, np.asarray(small_image))  # (h, w, 3) uint8
        write_image(dst / f"{split}annot" / name, np.asarray(small_mask))  # (h, w)
    return len(chosen)


def prepare_data(data: Path, dst: Path, settings: Settings) -> dict[str, int]:
    """Downscaled train/val/test folders under `dst`; returns the image count per split."""
    plan = {
        "train": (settings.every_train, settings.max_train),
        "val": (settings.every_val, settings.max_val),
        "test": (1, settings.max_test),
    }
    return {
        split: prepare_split(data, dst, split, settings.scale, every, limit)
        for split, (every, limit) in plan.items()
    }


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def stage_config(
    model: str,
    model_args: dict[str, Any],
    *,
    data: Path,
    out: Path,
    settings: Settings,
    lr: float,
    minutes: float | None,
    init: Path | None,
    seed: int,
) -> TrainConfig:
    """The TrainConfig of one stage; `minutes` None trains `settings.steps` steps."""
    return TrainConfig(
        data=str(data),
        split="train",
        val_split="val",
        out=str(out),
        num_classes=NUM_CLASSES,
        ignore_index=VOID,
        class_names=CLASS_NAMES,
        model=model,
        model_args=model_args,
        init=None if init is None else str(init),
        steps=settings.steps or 1_000_000,  # the time budget ends a full run
        max_minutes=minutes,
        batch_size=settings.batch_size,
        patch_size=settings.patch_size,
        optimizer="adam",
        lr=lr,
        schedule="cosine",
        reduction="mean",
        augment=False,
        val_every=settings.val_every,
        seed=seed,
    )


def evaluate(
    model: torch.nn.Module, normalization: dict, small: Path, data: Path
) -> tuple[np.ndarray, dict[str, Any]]:
    """Score `model` on the prepared test images against the original full-size labels.

    Each downscaled (3, h, w) image is predicted whole, its (K, h, w) probabilities are
    upsampled bilinearly to the label's (H, W), and the argmax is counted into one (K, K)
    confusion matrix over all images (void pixels ignored). Returns (matrix, scores).
    """
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for path in sorted((small / "test").iterdir()):
        x = to_chw_float(read_image(path), normalization=normalization)  # (3, h, w)
        probs = torch.from_numpy(predict(model, x, output="probs"))  # (K, h, w)
        target = read_image(data / "testannot" / path.name)  # (H, W) uint8, 0..11
        full = F.interpolate(probs[None], size=target.shape, mode="bilinear", align_corners=False)
        pred = full[0].argmax(0).numpy()  # (H, W)
        cm += confusion_matrix(pred, target, NUM_CLASSES, ignore_index=VOID)
    return cm, segmentation_scores(cm)


def run_stage(cfg: TrainConfig, small: Path, data: Path) -> dict[str, Any]:
    """Train one net, evaluate its best checkpoint on the test split; a results record."""
    result = train(cfg, progress=sys.stderr.isatty())
    best = result.out / "best.safetensors"
    model, meta, _ = checkpoint.load_state(best)
    cm, scores = evaluate(model, meta["normalization"], small, data)
    return {
        "model": cfg.model,
        "init": cfg.init,
        "steps": result.step,
        "best_step": result.best["step"] if result.best else None,
        "minutes": float(result.history[-1]["seconds"]) / 60 if result.history else 0.0,
        # trainable only: the fixed bilinear upsampling kernels are not learned
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "checkpoint": str(best),
        "confusion_matrix": cm.tolist(),
        **{k: scores[k] for k in SCORE_KEYS},
        # None for a class absent from both truth and prediction (strict JSON has no NaN)
        "per_class_iou": [None if np.isnan(v) else v for v in scores["per_class_iou"]],
    }


def ordering(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The target mean IU(8s) ≥ IU(16s) ≥ IU(32s): the two differences and whether both hold."""
    iu = {name: rows[name]["mean_iou"] for name in ("fcn32s", "fcn16s", "fcn8s")}
    gaps = {
        "16s_minus_32s": iu["fcn16s"] - iu["fcn32s"],
        "8s_minus_16s": iu["fcn8s"] - iu["fcn16s"],
    }
    return {**gaps, "target_met": all(g >= 0 for g in gaps.values())}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def results_table(rows: dict[str, dict[str, Any]], order: dict[str, Any]) -> str:
    """Markdown: scores per net, the target line, then per-class IU."""
    lines = [
        "| model (CamVid test) | trained from | steps (best) | train min | trained parameters | "
        "pixel acc | mean acc | mean IU | fw IU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        start = "scratch" if r["init"] is None else Path(r["init"]).parent.name
        lines.append(
            f"| {name} | {start} | {r['steps']} ({r['best_step']}) | {r['minutes']:.1f} | "
            f"{r['parameters']:,} | {r['pixel_accuracy']:.4f} | {r['mean_accuracy']:.4f} | "
            f"{r['mean_iou']:.4f} | {r['fw_iou']:.4f} |"
        )
    verdict = "met" if order["target_met"] else "MISSED"
    lines += [
        "",
        f"Target mean IU 8s ≥ 16s ≥ 32s: {verdict} (16s − 32s = {order['16s_minus_32s']:+.4f}, "
        f"8s − 16s = {order['8s_minus_16s']:+.4f}). Paper, PASCAL VOC 2011 val with ImageNet "
        "weights: 0.594 / 0.624 / 0.627.",
        "",
        "| IU per class | " + " | ".join(CLASS_NAMES) + " |",
        "|---|" + "---|" * len(CLASS_NAMES),
    ]
    for name, r in rows.items():
        cells = " | ".join("-" if v is None else f"{v:.3f}" for v in r["per_class_iou"])
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(__doc__, quick="a tiny run (< 90 s), for CI")
    add_training_options(
        parser,
        name="camvid_fcn",
        data="the camvid folder (train/, trainannot/, ...)",
        minutes=30.0,
        minutes_help="training minutes for the three FCN stages together (40/30/30 %%); U-Net "
        "gets the same",
    )
    args = parse_args(parser, argv)
    run = Run("camvid_fcn", argv)
    settings = QUICK if args.quick else FULL
    small = args.out / "data"
    shutil.rmtree(small, ignore_errors=True)  # a previous run's images may be at another scale
    counts = prepare_data(args.data, small, settings)

    def budget(share: float) -> float | None:
        return None if args.quick else share * args.minutes

    common = dict(data=small, settings=settings, seed=args.seed)
    rows: dict[str, dict[str, Any]] = {}
    checkpoints: dict[str, Path] = {}
    for model, share, parent, lr in STAGES:
        cfg = stage_config(
            model,
            {"width": settings.fcn_width},  # learn_upsampling False: fixed bilinear, as the paper
            out=args.out / model,
            lr=lr,
            minutes=budget(share),
            init=checkpoints.get(parent) if parent else None,
            **common,
        )
        rows[model] = run_stage(cfg, small, args.data)
        checkpoints[model] = Path(rows[model]["checkpoint"])
    unet_cfg = stage_config(
        "unet", settings.unet_args, out=args.out / "unet", lr=UNET_LR, minutes=budget(1.0),
        init=None, **common,
    )  # fmt: skip
    rows["unet"] = run_stage(unet_cfg, small, args.data)

    order = ordering(rows)
    table = results_table(rows, order)
    h, w = (round(360 * settings.scale), round(480 * settings.scale))
    header = run.header(
        f"CamVid FCN recipe{' (--quick)' if args.quick else ''}",
        f"data: {counts['train']} train / {counts['val']} val / {counts['test']} test images at "
        f"{w}×{h} (scored at 480×360); FCN width {settings.fcn_width:g}, U-Net "
        f"{settings.unet_args}; from scratch (no ImageNet weights)",
    )
    text = f"{header}\n\n{table}\n"
    print(text)
    results = {
        "models": rows,
        "ordering": order,
        "images": counts,
        "settings": asdict(settings),
        "minutes": args.minutes,
        "quick": args.quick,
        "paper_voc_mean_iou": PAPER_VOC_MEAN_IU,
        "class_names": CLASS_NAMES,
    }
    write_results(args.out, text, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
