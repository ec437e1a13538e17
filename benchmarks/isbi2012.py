"""Recipe: U-Net on ISBI 2012 EM membranes, the paper's headline result, and mirror vs zero padding.

    python benchmarks/isbi2012.py ../shared/data/isbi2012                 # 50 min of training
    python benchmarks/isbi2012.py ../shared/data/isbi2012 --quick         # ~1 min, for CI
    python benchmarks/isbi2012.py ../shared/data/isbi2012 --evaluate-only \
        --submission OUT/isbi2012-test.tif                                 # the challenge's file

Protocol: train a valid-padding U-Net with the paper's elastic augmentation and border-weighted
loss (cells = connected components of the interior) on slices 0-24 (two of them monitor
training and pick the best checkpoint), then score the held-out slices 25-29 as one stack with
`pixelwise.metrics.isbi2012`, exactly as the challenge's Fiji evaluation scores its test stack
(the interior probability is the submission, labels 255 = interior): the warping, Rand and pixel
errors of the 2012 leaderboard that the U-Net paper's Table 1 reports, each at its best threshold
of the challenge's sweep, and V_rand / V_info after border thinning that rank today's
leaderboard; without and with the paper's test-time averaging over the 8 flips/rotations
(`tta="d4"`). The pixel error of the fixed threshold 0.5 and 1 - pixel accuracy at 0.5 are
reported too. Then predict the held-out slices with mirror ("reflect"), zero ("constant") and
"replicate" border extension and compare the fraction of wrong pixels at 0.5 in the band 0-32 px
from the image edge with the interior. The paper's figures are on the challenge's hidden test
set, so they are a reference, not the same measurement. `--submission PATH` also predicts the 30
unlabelled test slices (test/image/0..29) with d4 TTA and writes them in the challenge's
submission format: one 30-page 32-bit float TIFF, 0 = membrane, 1 = cell interior. Results go
to OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch

from common import Run, add_training_options, make_parser, parse_args, write_results
from pixelwise import checkpoint
from pixelwise.atomic import atomic_path
from pixelwise.data import open_dataset, read_image, to_chw_float
from pixelwise.metrics import isbi2012
from pixelwise.tiling import predict
from pixelwise.train import TrainConfig, train

TRAIN_SLICES, HELD_OUT, TEST_SLICES = range(0, 25), range(25, 30), range(0, 30)
# U-Net paper, Table 1 (the 2012 leaderboard on the hidden test stack, same definitions as
# isbi2012): warping error, Rand error, pixel error.
PAPER = {
    "human values": {"warping_error": 0.000005, "rand_error": 0.0021, "pixel_error": 0.0010},
    "u-net": {"warping_error": 0.000353, "rand_error": 0.0382, "pixel_error": 0.0611},
    "DIVE-SCI": {"warping_error": 0.000355, "rand_error": 0.0305, "pixel_error": 0.0584},
    "IDSIA": {"warping_error": 0.000420, "rand_error": 0.0504, "pixel_error": 0.0613},
    "DIVE": {"warping_error": 0.000430, "rand_error": 0.0545, "pixel_error": 0.0582},
    "IDSIA-SCI": {"warping_error": 0.000653, "rand_error": 0.0189, "pixel_error": 0.1027},
}
# NVIDIA DeepLearningExamples UNet_Medical on the challenge's test set (as issue 14 quotes it).
NVIDIA_THIN = {"v_rand_thin": 0.9385, "v_info_thin": 0.9703}
TARGET = {"pixel_error": 0.08, "rand_error": 0.08}
BAND = 32  # px from the image edge


def split_folders(data: Path, out: Path) -> tuple[Path, Path]:
    """Symlink folders out/train (slices 0-24) and out/heldout (25-29), images/ + masks/."""
    pairs = {int(s.image_path.stem): s for s in open_dataset(data).samples}
    if sorted(pairs) != list(range(30)):
        raise SystemExit(
            f"error: {data}: expected the 30 labelled slices 0..29 (train/image, train/label), "
            f"found {sorted(pairs)}; pass the isbi2012 folder of ../shared/data"
        )
    folders = []
    for name, slices in (("train", TRAIN_SLICES), ("heldout", HELD_OUT)):
        root = out / name
        for sub in ("images", "masks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for i in slices:
            for sub, src in (("images", pairs[i].image_path), ("masks", pairs[i].mask_path)):
                link = root / sub / f"{i:02d}{src.suffix}"
                if not link.exists():
                    link.symlink_to(src.resolve())
        folders.append(root)
    return folders[0], folders[1]


def edge_band(shape: tuple[int, int], width: int) -> np.ndarray:
    """(H, W) bool mask of the pixels less than `width` px from the image edge."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return np.minimum.reduce([yy, xx, h - 1 - yy, w - 1 - xx]) < width


def evaluate_heldout(
    model: torch.nn.Module, normalization: dict, heldout: Path, quick: bool
) -> tuple[dict, dict]:
    """ISBI 2012 scores of the held-out stack without/with TTA; band/interior wrong pixels."""
    images = sorted((heldout / "images").iterdir())[: 1 if quick else None]
    stacks: dict[str, list[np.ndarray]] = {"U-Net": [], "U-Net + d4 TTA": []}
    truths = []
    wrong = {mode: {"band": 0, "interior": 0} for mode in ("reflect", "constant", "replicate")}
    pixels = {"band": 0, "interior": 0}
    for path in images:
        raw = read_image(path)  # (512, 512) uint8
        truth = read_image(heldout / "masks" / path.name)  # (512, 512) uint8, 255 = interior
        x = to_chw_float(raw, normalization=normalization)  # (1, 512, 512)
        truths.append(truth)
        stacks["U-Net"].append(predict(model, x)[1])  # (512, 512) probability of interior
        stacks["U-Net + d4 TTA"].append(predict(model, x, tta="d4")[1])
        band = edge_band(truth.shape, BAND)
        pixels["band"] += int(band.sum())
        pixels["interior"] += int((~band).sum())
        for mode, counts in wrong.items():
            bad = (predict(model, x, pad_mode=mode)[1] > 0.5) != (truth > 127)  # (512, 512)
            counts["band"] += int(bad[band].sum())
            counts["interior"] += int(bad[~band].sum())
    labels = np.stack(truths)  # (N, 512, 512): scored as one stack, as the challenge does
    isbi = {}
    for name, probs in stacks.items():
        stack = np.stack(probs).astype(np.float32)  # (N, 512, 512)
        row = isbi2012(stack, labels)
        at_half = isbi2012(stack, labels, scores=("pixel_error",), thresholds=(0.5,))
        row["pixel_error_at_0.5"] = at_half["pixel_error"]
        row["wrong_pixels_at_0.5"] = float(np.mean((stack > 0.5) != (labels > 127)))
        isbi[name] = row
    padding = {
        mode: {k: counts[k] / pixels[k] for k in ("band", "interior")}
        for mode, counts in wrong.items()
    }
    return isbi, padding


def write_submission(
    model: torch.nn.Module, normalization: dict, test_images: Path, path: Path
) -> Path:
    """Predict test/image/0..29 with d4 TTA; write the challenge's 30-page float32 TIFF."""
    slices = []
    for i in TEST_SLICES:
        matches = sorted(test_images.glob(f"{i}.*"))
        if not matches:
            raise SystemExit(
                f"error: {test_images}/{i}.png not found; --submission needs the 30 test "
                "slices test/image/0..29 of the isbi2012 folder"
            )
        x = to_chw_float(read_image(matches[0]), normalization=normalization)  # (1, 512, 512)
        slices.append(predict(model, x, tta="d4")[1].astype(np.float32))  # P(interior)
    stack = np.stack(slices)  # (30, 512, 512): 0 = membrane, 1 = cell interior
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, stack, imagej=True, metadata={"axes": "ZYX"})
    return path


def results_table(isbi: dict, padding: dict, train_info: dict) -> str:
    lines = [
        f"| ISBI 2012 scores as the challenge computes them (held-out slices {HELD_OUT.start}-"
        f"{HELD_OUT.stop - 1}) | warping error | Rand error | pixel error | "
        "V_rand thin | V_info thin | pixel error at 0.5 | wrong pixels at 0.5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in isbi.items():
        lines.append(
            f"| {name} | {row['warping_error']:.6f} | {row['rand_error']:.4f} | "
            f"{row['pixel_error']:.4f} | "
            f"{row['v_rand_thin']:.4f} | {row['v_info_thin']:.4f} | "
            f"{row['pixel_error_at_0.5']:.4f} | {row['wrong_pixels_at_0.5']:.4f} |"
        )
    for name, row in PAPER.items():
        lines.append(
            f"| {name} (U-Net paper Table 1, hidden test set) | {row['warping_error']:.6f} | "
            f"{row['rand_error']:.4f} | {row['pixel_error']:.4f} | | | | |"
        )
    lines.append(
        f"| NVIDIA UNet_Medical (hidden test set) | | | | {NVIDIA_THIN['v_rand_thin']} | "
        f"{NVIDIA_THIN['v_info_thin']} | | |"
    )
    lines += [
        "",
        f"| border extension | wrong pixels at 0.5, band 0-{BAND} px from the edge | "
        "same, interior | band ÷ interior |",
        "|---|---|---|---|",
    ]
    for mode, row in padding.items():
        ratio = row["band"] / row["interior"] if row["interior"] else float("nan")
        lines.append(f"| {mode} | {row['band']:.4f} | {row['interior']:.4f} | {ratio:.2f} |")
    for name, row in isbi.items():
        missed = [f"{k} {row[k]:.4f} > {v}" for k, v in TARGET.items() if not row[k] <= v]
        verdict = "MISSED (" + ", ".join(missed) + ")" if missed else "met"
        lines.append(f"\n{name}: targets pixel and Rand error ≤ 0.08 {verdict}.")
    lines += [
        "",
        f"Training: {train_info['steps']} steps in {train_info['minutes']:.1f} min, "
        f"{train_info['parameters']:,} parameters, {train_info['model']}.",
    ]
    return "\n".join(lines)


def train_model(train_dir: Path, run_dir: Path, *, quick: bool, minutes: float, seed: int) -> None:
    """Train the recipe's U-Net on `train_dir`; checkpoints and log.csv go to `run_dir`."""
    model_args = {"base_channels": 4, "depth": 3} if quick else {"base_channels": 16, "depth": 4}
    cfg = TrainConfig(
        data=str(train_dir),
        out=str(run_dir),
        class_names=["membrane", "interior"],
        model="unet",
        model_args=model_args,  # valid convolutions, as the paper
        steps=20 if quick else 100_000,  # the time budget ends the full run
        max_minutes=None if quick else minutes,
        batch_size=4,
        patch_size=32 if quick else 128,
        optimizer="adam",
        lr=1e-3,
        schedule="cosine",
        weighted=True,  # the paper's border weights between cells (+ class balance)
        val_fraction=0.08,  # 2 of the 25 training slices pick the best checkpoint
        val_every=10 if quick else 500,
        rotation=180.0,
        seed=seed,
    )
    train(cfg, progress=sys.stderr.isatty())


def trained_model(run_dir: Path) -> tuple[torch.nn.Module, dict, dict]:
    """The best checkpoint of a finished run, its metadata and a summary of its training."""
    best = run_dir / "best.safetensors"
    if not best.exists():
        raise SystemExit(f"error: {best} not found; train first (run without --evaluate-only)")
    model, meta, _ = checkpoint.load_state(best)
    with open(run_dir / "log.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    info = {
        "steps": int(last["step"]),
        "minutes": float(last["seconds"]) / 60,
        "parameters": sum(p.numel() for p in model.parameters()),
        "model": f"valid U-Net {meta['model_args']}, best at step {meta['step']}",
    }
    return model, meta, info


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(__doc__, quick="a tiny run (~1 min), for CI")
    add_training_options(
        parser, name="isbi2012", data="the isbi2012 folder (train/image, train/label)", minutes=50.0
    )
    parser.add_argument(
        "--evaluate-only", action="store_true",
        help="score the best checkpoint of an earlier run in OUT/run without training",
    )  # fmt: skip
    parser.add_argument(
        "--submission", type=Path, metavar="PATH",
        help="also predict the 30 test slices (d4 TTA) into PATH, the challenge's 30-page "
        "32-bit float TIFF (0 = membrane, 1 = cell interior)",
    )  # fmt: skip
    args = parse_args(parser, argv)
    run = Run("isbi2012", argv)
    train_dir, heldout = split_folders(args.data, args.out / "data")

    if not args.evaluate_only:
        train_model(train_dir, args.out / "run", quick=args.quick, minutes=args.minutes,
                    seed=args.seed)  # fmt: skip
    model, meta, train_info = trained_model(args.out / "run")
    isbi, padding = evaluate_heldout(model, meta["normalization"], heldout, args.quick)
    if args.submission is not None:
        write_submission(
            model, meta["normalization"], args.data / "test" / "image", args.submission
        )

    table = results_table(isbi, padding, train_info)
    header = run.header(f"ISBI 2012 recipe{' (--quick: 1 held-out slice)' if args.quick else ''}")
    text = f"{header}\n\n{table}\n"
    print(text)
    results = {"isbi": isbi, "padding": padding, "train": train_info, "paper": PAPER,
               "nvidia_unet_medical": NVIDIA_THIN, "targets": TARGET, "quick": args.quick,
               "submission": None if args.submission is None else str(args.submission)}  # fmt: skip
    write_results(args.out, text, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
