"""Recipe: U-Net's border weights on touching nuclei (Cell Tracking Challenge GOWT1 and HeLa).

    python benchmarks/nuclei_weights.py ../shared/data/nuclei              # 15 min per model
    python benchmarks/nuclei_weights.py ../shared/data/nuclei --quick      # < 90 s, for CI

The claim (Ronneberger et al. 2015, sec. 3 and fig. 3): weighting the cross-entropy with
w(x) = w_c(x) + w0 · exp(-(d1 + d2)² / 2σ²) (w0 = 10, σ = 5 px) makes the network learn the thin
background gaps between touching cells, so fewer touching cells are merged into one object.

Protocol:

* Data: Fluo-N2DH-GOWT1 (6 frames, 1024×1024 uint8) and Fluo-N2DL-HeLa (4 frames, 700×1100
  uint16 with a ~33000 offset) with their instance ground truth (img/ + gt/, paired by trailing
  number). Split by time: the last frame of each set (GOWT1 t72, HeLa t79) is held out for
  testing, the models train on the other 5 + 3 frames; there is no validation set (the last
  checkpoint is evaluated).
* Normalisation: `pixelwise.data` scales by the dtype (uint8 / 255, uint16 / 65535) and then
  standardises with ONE per-channel mean/std measured on the whole training set; TrainConfig has
  no per-image option, and `pixelwise.data.validate` refuses a folder mixing uint8 and uint16
  images. So every image is normalised on its own first — percentiles 1 and 99.8 mapped to 0
  and 1 (`normalize_percentile`) — and written as a float32 TIFF into OUT/data (a plain copy, not
  symlinks); TrainConfig's dataset-wide standardisation then runs on top of that.
* Training masks: the CTC annotations do touch (HeLa t75/t79: dozens of instance pairs share a
  border; `pixelwise.instances.count_touching_pairs`). The weight map's border term only lives
  on background pixels, so as in the paper's annotations a one-pixel background line is drawn
  wherever two instances touch (`pixelwise.instances.separate_touching`), for both models. Test
  masks stay as annotated.
* Models: the same valid-padding U-Net (the paper's geometry, base 16 channels, depth 4), Adam,
  cosine schedule, the paper's augmentation (elastic, rotation, flips, gray values), same seed —
  so both runs see exactly the same patches in the same order. The weighted run
  (`weighted=True`: class balance w_c plus the border term) trains for `--minutes`; the
  unweighted run then trains for exactly as many steps (equal work; on a shared CPU a time
  budget alone would give the two runs different step counts).
* Evaluation on the held-out frames: foreground probabilities by overlap-tile inference
  (`pixelwise.tiling.predict`), objects by `pixelwise.instances.label` — plain connected
  components and the seeded watershed option — with objects under `MIN_SIZE` pixels dropped;
  `pixelwise.metrics.match_instances` gives F1 at IoU 0.5, AP averaged over IoU 0.5:0.95
  (TP / (TP + FP + FN)), merges and splits; `pixelwise.instances.touching_pairs_separated`
  counts the ground-truth pairs at most 2 px apart that the prediction keeps apart. The "all"
  rows pool the counts of both frames (TP, FP, FN per threshold; merges; pairs; pixels).

Target: the weighted model merges fewer objects than the unweighted one (pooled, connected
components). Results go to OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import Run, add_training_options, make_parser, parse_args, write_results
from pixelwise import checkpoint
from pixelwise.data import Sample, open_dataset, read_image, to_chw_float, write_image
from pixelwise.instances import (
    count_touching_pairs,
    label,
    separate_touching,
    touching_pairs_separated,
)
from pixelwise.metrics import match_instances
from pixelwise.tiling import predict
from pixelwise.train import TrainConfig, train

DATASETS = {"N2DH-GOWT1": "GOWT1", "N2DL-HeLa": "HeLa"}  # folder → short name
PERCENTILES = (1.0, 99.8)
MIN_SIZE = 16  # px; HeLa's smallest annotated nucleus has 164 px, GOWT1's 2084
WATERSHED_MIN_DISTANCE = 8  # px; smaller values over-split HeLa's ground truth itself
LABELLINGS = ("components", "watershed")
MODELS = ("weighted", "unweighted")
COLUMNS = ("f1_50", "ap_50_95", "merges", "splits", "pairs_kept", "foreground_iou")


@dataclass(frozen=True)
class Settings:
    """What differs between the quick (CI) and the full run.

    crop: every image (train and test) is cut to its centre crop × crop window, or None.
    steps: training steps of both models, or None: the weighted model trains for the time
        budget and the unweighted one for as many steps.
    val_every: steps between two log rows (there is no validation set).
    """

    crop: int | None
    model_args: dict[str, Any]
    patch_size: int
    batch_size: int
    steps: int | None
    val_every: int


FULL = Settings(
    crop=None,
    # valid padding, no batch norm (the paper's U-Net, margin 44 px); pinned, since instance runs
    # otherwise fill in the instance defaults (same padding, batch norm)
    model_args={"base_channels": 16, "depth": 4, "padding": "valid", "batch_norm": False},
    patch_size=100,  # 188 × 188 input tiles
    batch_size=4,
    steps=None,
    val_every=25,
)
QUICK = Settings(
    crop=160,
    model_args={"base_channels": 4, "depth": 3, "padding": "valid", "batch_norm": False},
    patch_size=32,
    batch_size=2,
    steps=6,
    val_every=3,
)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def normalize_percentile(
    image: np.ndarray, low: float = PERCENTILES[0], high: float = PERCENTILES[1]
) -> np.ndarray:
    """Per-image normalisation: the `low` and `high` percentiles map to 0 and 1 (not clipped).

    Worked example: HeLa values 33000 (1st percentile) and 35000 (99.8th) → 0 and 1, so
    34000 → 0.5, whatever the camera offset.

    Args:
        image: (H, W) array of any real dtype.
        low, high: percentiles with 0 <= low < high <= 100.

    Returns:
        (H, W) float32 array.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(
            f"percentiles must satisfy 0 <= low < high <= 100, got {low} and {high}; "
            "pass e.g. 1 and 99.8"
        )
    lo, hi = np.percentile(image, (low, high))
    if hi <= lo:
        raise ValueError(
            f"image is constant between its {low} and {high} percentiles ({lo}); "
            "a flat image cannot be normalised, drop it"
        )
    return ((image.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


def center_crop(array: np.ndarray, size: int | None) -> np.ndarray:
    """The centre (min(size, H), min(size, W)) window of an (H, W) array; all of it for None."""
    if size is None:
        return array
    h, w = array.shape
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return array[top : top + size, left : left + size]


def split_frames(samples: Sequence[Sample]) -> tuple[list[Sample], Sample]:
    """(training frames, held-out frame): the last frame in time order is held out.

    `open_dataset` lists CTC pairs in the order of their trailing frame number.
    """
    if len(samples) < 2:
        raise ValueError(
            f"need at least 2 image/mask pairs to hold one out, got {len(samples)}; "
            "pass the nuclei folder with N2DH-GOWT1/ and N2DL-HeLa/ (img/ + gt/)"
        )
    return list(samples[:-1]), samples[-1]


Frame = tuple[str, str, str, np.ndarray, np.ndarray]  # part, set, file name, image, mask


def ctc_frames(data: Path, crop: int | None) -> Iterator[Frame]:
    """(part, set, file name, normalised image, instance mask) of every frame of the CTC sets:
    part "train" for all but the last frame of each set, "test" for that one (`split_frames`).

    Images are cut to their centre `crop` window (None: whole) and normalised on their own
    (`normalize_percentile`, float32); masks are the uint16 instance labels as annotated.
    """
    for folder, short in DATASETS.items():
        samples = open_dataset(data / folder, layout="folder", instances=True).samples
        train_frames, held_out = split_frames(samples)
        for part, frames in (("train", train_frames), ("test", [held_out])):
            for sample in frames:
                assert sample.mask_path is not None
                name = f"{short}_{sample.image_path.stem}.tif"
                image = center_crop(read_image(sample.image_path), crop)  # (H, W) uint8/16
                mask = center_crop(read_image(sample.mask_path), crop).astype(np.uint16)
                yield part, short, name, normalize_percentile(image), mask


def prepare_data(data: Path, dst: Path, crop: int | None) -> dict[str, Any]:
    """Write the per-image-normalised copies and masks; return the split and the GT statistics.

    Layout: dst/train/{images,masks}/<set>_<stem>.tif (float32 images, uint16 instance masks with
    separating lines) and dst/test/{images,masks}/ (float32 images, masks as annotated).
    """
    split: dict[str, Any] = {"train": [], "test": [], "ground_truth": {}}
    for part, _, name, image, gt in ctc_frames(data, crop):
        mask = separate_touching(gt) if part == "train" else gt
        write_image(dst / part / "images" / name, image)
        write_image(dst / part / "masks" / name, mask)
        split[part].append(name)
        split["ground_truth"][name] = {
            "objects": int(np.unique(gt[gt > 0]).size),
            "contact_pairs": count_touching_pairs(gt),
            "pairs_within_2px": touching_pairs_separated(gt, gt)[1],
        }
    return split


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train_config(
    data: Path,
    out: Path,
    settings: Settings,
    *,
    weighted: bool,
    steps: int | None,
    minutes: float | None,
    seed: int,
) -> TrainConfig:
    """The TrainConfig of one model; `steps` None trains until `minutes` are spent."""
    return TrainConfig(
        data=str(data),
        out=str(out),
        instances=True,  # the weight map needs the instance ids
        num_classes=2,
        class_names=["background", "nucleus"],
        model="unet",
        model_args=settings.model_args,
        steps=steps or 1_000_000,
        max_minutes=minutes if steps is None else None,
        batch_size=settings.batch_size,
        patch_size=settings.patch_size,
        optimizer="adam",
        lr=1e-3,
        schedule="cosine",
        weighted=weighted,
        w0=10.0,
        sigma=5.0,
        val_fraction=0.0,
        val_every=settings.val_every,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def score_objects(objects: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """Counts for one image: TP/FP/FN per IoU threshold, merges, splits, touching pairs.

    Args:
        objects: (H, W) predicted instance map; gt: (H, W) ground-truth instance map.
    """
    match = match_instances(objects, gt)
    kept, pairs = touching_pairs_separated(gt, objects)
    return {
        "n_pred": match["n_pred"],
        "n_gt": match["n_gt"],
        "counts": [[row["tp"], row["fp"], row["fn"]] for row in match["per_threshold"]],
        "merges": match["merges"],
        "splits": match["splits"],
        "pairs_kept": kept,
        "pairs": pairs,
    }


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pool per-image records (from `score_objects` plus "intersection"/"union") into scores.

    F1@0.5 = 2·ΣTP / (2·ΣTP + ΣFP + ΣFN) at the first threshold (0.5); AP = mean over the
    thresholds of ΣTP / (ΣTP + ΣFP + ΣFN). Worked example: one image with TP, FP, FN = 8, 2, 2
    at 0.5 and 4, 6, 6 at the only other threshold → F1 = 16 / 20 = 0.8,
    AP = (8/12 + 4/16) / 2 = 0.458.
    """
    counts = np.sum([r["counts"] for r in records], axis=0)  # (thresholds, 3): tp, fp, fn
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = tp / (tp + fp + fn)
        f1 = 2 * tp[0] / (2 * tp[0] + fp[0] + fn[0])
    union = sum(r["union"] for r in records)
    return {
        "f1_50": float(f1),
        "ap_50_95": float(np.mean(ap)),
        **{k: int(sum(r[k] for r in records)) for k in ("merges", "splits", "pairs_kept")},
        "pairs": int(sum(r["pairs"] for r in records)),
        "n_pred": int(sum(r["n_pred"] for r in records)),
        "n_gt": int(sum(r["n_gt"] for r in records)),
        "foreground_iou": sum(r["intersection"] for r in records) / union if union else 1.0,
    }


def evaluate(
    model: torch.nn.Module, normalization: dict, test_dir: Path
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per held-out image and labelling: the `score_objects` record plus foreground counts."""
    records: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted((test_dir / "images").iterdir()):
        x = to_chw_float(read_image(path), normalization=normalization)  # (1, H, W)
        probs = predict(model, x, output="probs")  # (2, H, W)
        gt = read_image(test_dir / "masks" / path.name).astype(np.int64)  # (H, W)
        fg, truth = probs[1] > 0.5, gt > 0
        pixels = {"intersection": int((fg & truth).sum()), "union": int((fg | truth).sum())}
        records[path.name] = {}
        for how in LABELLINGS:
            objects = label(
                probs,
                min_size=MIN_SIZE,
                watershed=how == "watershed",
                min_distance=WATERSHED_MIN_DISTANCE,
            )
            records[path.name][how] = {**score_objects(objects, gt), **pixels}
    return records


def table_rows(
    records: dict[str, dict[str, dict[str, dict[str, Any]]]],
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """rows[model][labelling][GOWT1 | HeLa | all] = `summarize` of the matching images."""
    rows: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for model, per_image in records.items():
        for how in LABELLINGS:
            groups = {short: [] for short in DATASETS.values()} | {"all": []}
            for name, by_labelling in per_image.items():
                groups[name.split("_", 1)[0]].append(by_labelling[how])
                groups["all"].append(by_labelling[how])
            rows.setdefault(model, {})[how] = {
                group: summarize(items) for group, items in groups.items() if items
            }
    return rows


def merge_verdict(rows: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> dict[str, Any]:
    """The target: pooled merges (connected components) of the weighted < unweighted model."""
    weighted = rows["weighted"]["components"]["all"]["merges"]
    unweighted = rows["unweighted"]["components"]["all"]["merges"]
    return {"weighted": weighted, "unweighted": unweighted, "target_met": weighted < unweighted}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def results_table(rows: dict[str, dict[str, dict[str, dict[str, Any]]]], verdict: dict) -> str:
    """Markdown: one row per model × labelling × image set."""
    lines = [
        "| model | objects from | test set | F1@0.5 | AP 0.5:0.95 | merges | splits | "
        "touching pairs kept apart | foreground IoU | objects pred / GT |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for how in LABELLINGS:
        for model in MODELS:
            for group, s in rows[model][how].items():
                lines.append(
                    f"| {model} | {how} | {group} | {s['f1_50']:.3f} | {s['ap_50_95']:.3f} | "
                    f"{s['merges']} | {s['splits']} | {s['pairs_kept']} / {s['pairs']} | "
                    f"{s['foreground_iou']:.3f} | {s['n_pred']} / {s['n_gt']} |"
                )
    status = "met" if verdict["target_met"] else "MISSED"
    lines += [
        "",
        f"Target (weighted merges fewer touching nuclei, pooled, connected components): {status}"
        f" — merges {verdict['weighted']} weighted vs {verdict['unweighted']} unweighted.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(__doc__, quick="a tiny run (< 90 s), for CI")
    add_training_options(
        parser,
        name="nuclei_weights",
        data="the nuclei folder (N2DH-GOWT1/, N2DL-HeLa/)",
        minutes=15.0,
        minutes_help="training minutes of the weighted model; the unweighted one trains as many "
        "steps",
    )
    args = parse_args(parser, argv)
    run = Run("nuclei_weights", argv)
    settings = QUICK if args.quick else FULL
    data_dir = args.out / "data"
    shutil.rmtree(data_dir, ignore_errors=True)  # a previous run may have used another crop
    split = prepare_data(args.data, data_dir, settings.crop)

    records: dict[str, Any] = {}
    training: dict[str, dict[str, Any]] = {}
    steps = settings.steps
    for model in MODELS:  # weighted first: its step count is the unweighted run's budget
        cfg = train_config(
            data_dir / "train",
            args.out / model,
            settings,
            weighted=model == "weighted",
            steps=steps,
            minutes=args.minutes,
            seed=args.seed,
        )
        result = train(cfg, progress=sys.stderr.isatty())
        steps = result.step
        net, meta, _ = checkpoint.load_state(result.out / "last.safetensors")
        training[model] = {
            "steps": result.step,
            "minutes": float(result.history[-1]["seconds"]) / 60 if result.history else 0.0,
            "final_train_loss": float(result.history[-1]["train_loss"]) if result.history else None,
            "parameters": sum(p.numel() for p in net.parameters()),
        }
        records[model] = evaluate(net, meta["normalization"], data_dir / "test")

    rows = table_rows(records)
    verdict = merge_verdict(rows)
    table = results_table(rows, verdict)
    gt = split["ground_truth"]
    header = run.header(
        f"Nuclei border-weight recipe{' (--quick: centre crops, tiny net)' if args.quick else ''}",
        f"train: {', '.join(split['train'])}; held out: {', '.join(split['test'])}"
        + (f" (centre {settings.crop}×{settings.crop} crops)" if settings.crop else ""),
        "held-out GT: "
        + "; ".join(
            f"{n}: {gt[n]['objects']} nuclei, {gt[n]['contact_pairs']} pairs in contact, "
            f"{gt[n]['pairs_within_2px']} within 2 px"
            for n in split["test"]
        )
        + f"; training GT: {sum(gt[n]['contact_pairs'] for n in split['train'])} pairs in "
        "contact, separated by a background line",
        f"valid U-Net {settings.model_args}, patch {settings.patch_size}, batch "
        f"{settings.batch_size}, w0 10, σ 5 px; "
        + "; ".join(
            f"{m}: {t['steps']} steps in {t['minutes']:.1f} min" for m, t in training.items()
        )
        + f"; images normalised per image (percentiles {PERCENTILES[0]:g}/{PERCENTILES[1]:g});"
        f" objects < {MIN_SIZE} px dropped, watershed min_distance {WATERSHED_MIN_DISTANCE}",
    )
    text = f"{header}\n\n{table}\n"
    print(text)
    results = {
        "rows": rows,
        "verdict": verdict,
        "training": training,
        "per_image": records,
        "split": split,
        "settings": asdict(settings),
        "minutes": args.minutes,
        "quick": args.quick,
        "seed": args.seed,
    }
    write_results(args.out, text, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
