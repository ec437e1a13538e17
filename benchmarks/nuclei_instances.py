"""Recipe: objects from nuclei images, each pixelwise instance target beside cellpose 3.1.

    python benchmarks/nuclei_instances.py ../shared/data --minutes 10     # about 75 min
    python benchmarks/nuclei_instances.py ../shared/data --quick          # < 90 s, for CI
    python benchmarks/nuclei_instances.py ../shared/data --minutes 30 --data-sets dsb2018-dev \
        --targets three-class --normalize dataset percentile    # two normalisations side by side

`--steps N` trains each pixelwise model N steps instead of `--minutes` (a result the machine's
load does not change); `--no-cellpose` leaves out the cellpose rows; `--split groups` tests on
image groups the models never saw (below).

The question (issue 11): which pixelwise training target makes the best objects, and how they
compare with cellpose 3.1 trained from scratch on the same images for the same CPU minutes.

Protocol, one table per data set from one run:

* Data (DATA = ../shared/data). ``dsb2018-dev`` (133 gray images of the 2018 Data Science Bowl
  collection, instance masks): a fixed split, the ids ordered by the SHA-256 of
  ``SPLIT_SALT + id`` and the first ``TEST_FRACTION`` (27 images) held out for testing — it
  depends on the ids alone, not on file order or machine; the lists are in results.json. With
  ``--split groups`` the test images are instead every image of the groups `UNSEEN_GROUPS`
  (the collection's image groups, told apart by image size as in index.csv; 22 images: dim,
  textured 640×512 nuclei of 37 px, small dense ones of 13 px in 1272×603 and 347×260 frames)
  and the models train on the other groups: the question of issue 11's held-out groups, whether
  objects carry over to a microscope and magnification never seen; one row per group. The
  Cell Tracking Challenge nuclei ``nuclei/N2DH-GOWT1`` and ``nuclei/N2DL-HeLa``: as in
  nuclei_weights.py, the last frame of each set (GOWT1 t72, HeLa t79) is held out and one model
  trains on the other 5 + 3 frames; every frame is normalised on its own (percentiles 1 and
  99.8, `nuclei_weights.normalize_percentile`: HeLa's uint16 frames carry a ~33000 offset) and
  written as float32. Training masks are the instance labels as annotated, for every method.
* pixelwise, one model per target of `pixelwise.instances.TARGETS` ("two-class" with the
  U-Net paper's border weights, "three-class" interior/boundary, "distance" bands of the
  normalised distance to each object's outside): ``TrainConfig(data,
  instances=True, target=..., max_minutes=M)`` and nothing else, i.e. the instance defaults
  `pixelwise train DATA --instances --target T` uses (model, patch size, optimiser, schedule
  shaped by the budget, 20 % of the training images held out to pick the best checkpoint and
  tune the post-processing). Objects: ``Segmenter.from_checkpoint(best).predict(image)
  .instances`` on the raw test image (the checkpoint's normalisation and tuned
  post-processing).
* cellpose 3.1, a fresh network (``CellposeModel(pretrained_model=False)``: no weights are
  downloaded, and `forbid_downloads` turns any attempt into an error) trained by
  ``cellpose.train.train_seg`` on all the training images (pixelwise's validation images
  included) with the cellpose command line's from-scratch settings (SGD, learning rate 0.2,
  momentum 0.9, weight decay 1e-5, batch 8, 224 px tiles, training images rescaled to a 30 px
  mean nucleus diameter). Its budget is the wall time of the longest pixelwise run on that
  data set (so cellpose never gets less): the flows are computed, two epochs of 1 and 1 +
  ``cellpose_timing_steps`` (2) batches at cellpose's first warm-up learning rate (0: they learn
  nothing) time a step apart from each ``train_seg`` call's preparation of the images (one
  epoch of 2 batches timed both as 2 steps, which stopped cellpose at about half its budget),
  and ``n_epochs`` is the number of steps the rest of the budget allows,
  with ``nimg_per_epoch`` = one batch, so cellpose's own schedule (10 warm-up epochs, halvings
  at the end of long runs) spans the budget (a step estimate off under a changing CPU load
  makes the measured minutes differ from the budget; the table shows the measured ones).
  Training images without any nucleus are dropped by cellpose (``min_train_masks=1``); the
  network trains without mkldnn (faster here). Objects: ``CellposeModel(pretrained_model=
  <trained>).eval(image, channels=[0, 0])`` with cellpose's defaults (its per-image percentile
  normalisation; every test image rescaled by the training set's mean nucleus diameter, as
  cellpose does for a custom model without a size model — on the CTC nuclei one mean for
  GOWT1's ~60 px and HeLa's ~25 px nuclei).
* Scores: the same function for every method (`score_objects`): one-to-one matching per test
  image (`pixelwise.metrics.match_instances`), counts pooled over the images
  (`pixelwise.metrics.pool_matches`): accuracy = TP / (TP + FP + FN) at IoU 0.5, 0.75, 0.9,
  F1 at 0.5, the DSB score (mean accuracy over IoU 0.5, 0.55, ..., 0.95). Training minutes
  are wall minutes of the whole training call (pixelwise: set-up, validation and tuning
  included; cellpose: flows included). Prediction seconds per megapixel: wall time of
  predicting every test image (normalisation and post-processing included, after one untimed
  warm-up image) over their megapixels, on the CPU.

Results go to OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from common import Run, add_training_options, make_parser, parse_args, write_results
from nuclei_weights import PERCENTILES, center_crop, ctc_frames
from pixelwise import Segmenter
from pixelwise.data import read_image, write_image
from pixelwise.data.normalization import NORMALIZE_METHODS
from pixelwise.instances import TARGETS
from pixelwise.metrics import match_instances, pool_matches
from pixelwise.train import TrainConfig, train

DSB = "dsb2018-dev"
CTC = "nuclei"
SPLIT_SALT = "pixelwise nuclei_instances split v1:"
SPLITS = ("ids", "groups")
UNSEEN_GROUPS = ("347x260", "640x512", "1272x603")
"""The dsb2018-dev image groups (width x height) that `--split groups` tests on."""
TEST_FRACTION = 0.2
CELLPOSE = "cellpose"
ALL = "all"
# (results key, column title): the pooled scores of the table.
SCORES = (
    ("accuracy@0.5", "accuracy@0.5"),
    ("f1@0.5", "F1@0.5"),
    ("accuracy@0.75", "accuracy@0.75"),
    ("accuracy@0.9", "accuracy@0.9"),
    ("dsb_score", "DSB score"),
)


@dataclass(frozen=True)
class Settings:
    """What differs between the quick (CI) and the full run.

    dsb_images: (training, test) images of the fixed split used, the first of each in id
        order; None: all.
    crop: every image (train and test) is cut to its centre crop × crop window, or None.
    pixelwise: TrainConfig fields beside data, out, instances, target and seed (quick: a tiny
        net for a few steps; full: only the time budget, so the instance defaults apply).
    cellpose_batch, cellpose_bsize: cellpose's training batch and tile size (`bsize`, also
        used to predict).
    cellpose_diameter: cellpose's `diam_mean`, the nucleus diameter its images are resized to
        (30, its command line's default; the quick run's tiny crops take less, for fewer tiles).
    cellpose_timing_steps: k, the extra batches of the second timing epoch (learning rate 0)
        whose difference from the first measures cellpose's step time.
    warmup: predict the first test image once untimed before timing the test images.
    """

    dsb_images: tuple[int, int] | None
    crop: int | None
    pixelwise: dict[str, Any] = field(default_factory=dict)
    cellpose_batch: int = 8
    cellpose_bsize: int = 224
    cellpose_diameter: float = 30.0
    cellpose_timing_steps: int = 2
    warmup: bool = True

    def pixelwise_options(
        self, minutes: float, steps: int | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The TrainConfig fields given beside the data: the quick run's, else the budget (a
        number of steps when given, which a machine's load does not change, else minutes),
        then `extra` (--set) over them."""
        if self.pixelwise:
            options = dict(self.pixelwise)
        else:
            options = {"steps": steps, "max_minutes": None} if steps else {"max_minutes": minutes}
        return {**options, **(extra or {})}


FULL = Settings(dsb_images=None, crop=None)
QUICK = Settings(
    dsb_images=(4, 1),
    crop=96,
    pixelwise={
        "steps": 4,
        "model_args": {"base_channels": 4, "depth": 2},
        "patch_size": 32,
        "batch_size": 2,
        "val_every": 2,
    },
    cellpose_batch=2,
    cellpose_bsize=64,
    cellpose_diameter=10.0,
    cellpose_timing_steps=1,
    warmup=False,
)
# cellpose's command-line defaults for training from scratch (cellpose/cli.py, 3.1).
CELLPOSE_TRAINING = {"learning_rate": 0.2, "SGD": True, "momentum": 0.9, "weight_decay": 1e-5}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class DataSet:
    """One prepared data set: dst/{train,test}/{images,masks}/<name> and each test image's group
    (its table rows: "all" plus, for the CTC nuclei, "GOWT1" and "HeLa")."""

    name: str
    root: Path
    train: list[str]
    test: list[str]
    groups: dict[str, str] = field(default_factory=dict)  # test image → group

    def pairs(self, part: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, image, instance mask) of every image of `part` ("train" or "test")."""
        folder = self.root / part
        return [
            (n, read_image(folder / "images" / n), read_image(folder / "masks" / n))
            for n in getattr(self, part)
        ]


def split_ids(ids: Sequence[str], test_fraction: float = TEST_FRACTION) -> dict[str, list[str]]:
    """The fixed split: ids ordered by SHA-256(SPLIT_SALT + id), the first round(fraction · n)
    (at least 1) held out for testing; both lists come back sorted.

    It depends on the set of ids only: the same ids in any order, on any machine, give the same
    split.
    """
    if len(set(ids)) != len(ids) or len(ids) < 2:
        raise ValueError(
            f"need at least 2 distinct ids to split, got {len(ids)} ({len(set(ids))} "
            "distinct); pass the image stems of the data set"
        )
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}; pass e.g. 0.2")
    order = sorted(ids, key=lambda i: hashlib.sha256((SPLIT_SALT + i).encode()).hexdigest())
    n_test = min(len(ids) - 1, max(1, round(test_fraction * len(ids))))
    return {"train": sorted(order[n_test:]), "test": sorted(order[:n_test])}


def image_groups(source: Path) -> dict[str, str]:
    """id → its image group, "WIDTHxHEIGHT", from dsb2018-dev's index.csv."""
    with open(source / "index.csv", newline="") as f:
        return {row["id"]: f"{row['width']}x{row['height']}" for row in csv.DictReader(f)}


def split_groups(groups: dict[str, str], held_out: Sequence[str]) -> dict[str, list[str]]:
    """Every id of the `held_out` groups to test, the others to train; both lists sorted."""
    unknown = sorted(set(held_out) - set(groups.values()))
    if unknown:
        raise ValueError(
            f"no image of group(s) {unknown}; the groups are {sorted(set(groups.values()))}"
        )
    test = sorted(i for i, g in groups.items() if g in held_out)
    return {"train": sorted(set(groups) - set(test)), "test": test}


def _write_pair(dst: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    write_image(dst / "images" / name, image)
    write_image(dst / "masks" / name, mask.astype(np.uint16))


def prepare_dsb(source: Path, dst: Path, settings: Settings, split_by: str = "ids") -> DataSet:
    """Write a fixed split of dsb2018-dev (images as they are, uint16 instance masks): by the
    ids' hashes (`split_ids`), or the `UNSEEN_GROUPS` to test (`split_groups`, `split_by`
    "groups"; each test image's table group is then its image group)."""
    ids = sorted(p.stem for p in (source / "images").glob("*.png"))
    groups = image_groups(source)
    split = split_ids(ids) if split_by == "ids" else split_groups(groups, UNSEEN_GROUPS)
    if settings.dsb_images is not None:
        split = {part: split[part][:n] for part, n in zip(split, settings.dsb_images, strict=True)}
    for part, names in split.items():
        for i in names:
            image = center_crop(read_image(source / "images" / f"{i}.png"), settings.crop)
            mask = center_crop(read_image(source / "masks" / f"{i}.png"), settings.crop)
            _write_pair(dst / part, f"{i}.png", image, mask)
    train_names = [f"{i}.png" for i in split["train"]]
    test_names = [f"{i}.png" for i in split["test"]]
    if split_by == "ids":
        return DataSet(DSB, dst, train_names, test_names, dict.fromkeys(test_names, ALL))
    by_group = {f"{i}.png": groups[i] for i in sorted(split["test"], key=groups.__getitem__)}
    return DataSet(DSB, dst, train_names, test_names, by_group)


def prepare_ctc(source: Path, dst: Path, settings: Settings) -> DataSet:
    """Write GOWT1 + HeLa: all but the last frame of each set to train, that one to test."""
    data = DataSet(CTC, dst, [], [])
    for part, short, name, image, mask in ctc_frames(source, settings.crop):
        _write_pair(dst / part, name, image, mask)
        getattr(data, part).append(name)
        if part == "test":
            data.groups[name] = short
    return data


# --------------------------------------------------------------------------------------------
# Methods: each trains on data.root/train and returns a predictor of one raw image's objects
# --------------------------------------------------------------------------------------------

Predictor = Callable[[np.ndarray], np.ndarray]  # (H, W) raw image → (H, W) integer objects


def train_pixelwise(
    data: DataSet,
    out: Path,
    target: str,
    settings: Settings,
    *,
    minutes: float,
    seed: int,
    steps: int | None = None,
    normalize: str | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Predictor, dict[str, Any]]:
    """Train one target with the instance defaults (`normalize`: the input normalisation, None
    = the default; `extra`: TrainConfig fields set on the command line); objects from the best
    checkpoint."""
    overrides = settings.pixelwise_options(minutes, steps, extra)
    if normalize is not None:
        overrides["normalize"] = normalize
    cfg = TrainConfig(
        data=str(data.root / "train"),
        out=str(out),
        instances=True,
        target=target,
        seed=seed,
        **overrides,
    )
    started = time.perf_counter()
    result = train(cfg, progress=sys.stderr.isatty())
    wall = time.perf_counter() - started
    segmenter = Segmenter.from_checkpoint(result.out / "best.safetensors", device="cpu")
    info = {
        "minutes": wall / 60,
        "steps": result.step,
        "best_step": (result.best or {}).get("step"),
        "parameters": sum(p.numel() for p in segmenter.model.parameters()),
        "postprocessing": segmenter.postprocessing.to_dict() if segmenter.postprocessing else None,
        "validation_scores": segmenter.meta.get("postprocessing_scores"),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("data", "out")},
    }

    def objects(image: np.ndarray) -> np.ndarray:
        instances = segmenter.predict(image).instances
        assert instances is not None  # an instance checkpoint records its target
        return instances

    return objects, info


def cellpose_available() -> bool:
    """Whether cellpose is installed (the `bench` extra)."""
    return importlib.util.find_spec("cellpose") is not None


def forbid_downloads() -> None:
    """Make cellpose's one download function raise: no weights may come from the network (none
    can here), so a code path that would fetch a pretrained or size model fails loudly."""
    import cellpose.utils

    def refuse(url: str, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            f"cellpose tried to download {url}; this recipe trains from scratch and must not "
            "fetch weights (build CellposeModel with pretrained_model=False)"
        )

    cellpose.utils.download_url_to_file = refuse


def train_cellpose(
    data: DataSet, out: Path, settings: Settings, *, budget_s: float, seed: int
) -> tuple[Predictor, dict[str, Any]]:
    """Train a fresh cellpose network for `budget_s` wall seconds (see the module docstring)."""
    forbid_downloads()
    from cellpose import dynamics, models
    from cellpose import train as cellpose_train

    pairs = data.pairs("train")
    images = [image for _, image, _ in pairs]
    started = time.perf_counter()
    torch.manual_seed(seed)
    # mkldnn off: this build trains ~25 % faster without it on the CPU.
    diameter = settings.cellpose_diameter
    net = models.CellposeModel(
        gpu=False, pretrained_model=False, mkldnn=False, diam_mean=diameter
    ).net
    flows = dynamics.labels_to_flows(  # (4, H, W) each: labels, cell probability, dy, dx
        [mask.astype(np.int32) for _, _, mask in pairs], device=torch.device("cpu")
    )
    run = {
        "train_data": images,
        "train_labels": flows,
        "channels": [0, 0],
        "batch_size": settings.cellpose_batch,
        "nimg_per_epoch": settings.cellpose_batch,
        "bsize": settings.cellpose_bsize,
        "min_train_masks": 1,
        "save_path": str(out),
        "model_name": CELLPOSE,
        **CELLPOSE_TRAINING,
    }
    out.mkdir(parents=True, exist_ok=True)
    setup_s = time.perf_counter() - started
    # Two epochs at cellpose's first warm-up learning rate, 0 (they learn nothing), of 1 and
    # 1 + k batches: their difference is k steps, so a step's time comes apart from what every
    # `train_seg` call costs before its first step (preparing each training image), which the
    # training call pays once more. Worked example: 100 s and 130 s for 1 and 3 batches → 15 s
    # a step and 85 s a call.
    timing_steps = settings.cellpose_timing_steps
    seconds = []
    for batches in (1, 1 + timing_steps):
        timing = {**run, "nimg_per_epoch": batches * settings.cellpose_batch}
        call_started = time.perf_counter()
        cellpose_train.train_seg(net, n_epochs=1, **timing)
        seconds.append(time.perf_counter() - call_started)
    step_s = max(1e-3, (seconds[1] - seconds[0]) / timing_steps)
    call_s = max(0.0, seconds[0] - step_s)
    left_s = budget_s - (time.perf_counter() - started) - call_s
    steps = max(1, math.floor(left_s / step_s))
    path, losses, _ = cellpose_train.train_seg(net, n_epochs=steps, **run)
    wall = time.perf_counter() - started
    model = models.CellposeModel(gpu=False, pretrained_model=str(path))  # mkldnn: its default
    info = {
        "minutes": wall / 60,
        "budget_minutes": budget_s / 60,
        "steps": steps,
        "step_seconds": step_s,
        "call_seconds": call_s,
        "setup_seconds": setup_s,
        "final_train_loss": float(losses[-1]),
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "mean_diameter": float(model.diam_labels),
        "settings": {
            **CELLPOSE_TRAINING,
            "batch_size": settings.cellpose_batch,
            "bsize": settings.cellpose_bsize,
            "nimg_per_epoch": settings.cellpose_batch,
            "diam_mean": diameter,
        },
    }

    def objects(image: np.ndarray) -> np.ndarray:
        return model.eval(image, channels=[0, 0], bsize=settings.cellpose_bsize)[0]

    return objects, info


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def score_objects(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> dict[str, Any]:
    """Pooled scores of a method's objects on some test images: `match_instances` per image,
    `pool_matches` over them. Every method (pixelwise targets, cellpose) is scored here.

    Args:
        predicted: (H, W) integer object maps (any ids, 0 = background), one per image.
        truth: the (H, W) ground-truth instance maps, in the same order.
    """
    return pool_matches([match_instances(p, t) for p, t in zip(predicted, truth, strict=True)])


def predict_test(
    objects: Predictor, test: Sequence[tuple[str, np.ndarray, np.ndarray]], *, warmup: bool
) -> tuple[dict[str, np.ndarray], float]:
    """(test image → objects, wall seconds of predicting them all), after one untimed
    prediction of the first image if `warmup`."""
    if warmup:
        objects(test[0][1])
    started = time.perf_counter()
    maps = {name: objects(image) for name, image, _ in test}
    return maps, time.perf_counter() - started


def table_rows(
    maps: dict[str, np.ndarray],
    test: Sequence[tuple[str, np.ndarray, np.ndarray]],
    groups: dict[str, str],
    *,
    minutes: float,
    seconds: float,
) -> dict[str, dict[str, Any]]:
    """rows[group] (each group of `groups`, then "all"): pooled scores, object counts, training
    minutes and prediction seconds per megapixel (the whole test set's)."""
    megapixels = sum(image.shape[0] * image.shape[1] for _, image, _ in test) / 1e6
    members = {g: [t for t in test if groups[t[0]] == g] for g in dict.fromkeys(groups.values())}
    members[ALL] = list(test)
    rows = {}
    for group, items in members.items():
        pooled = score_objects([maps[name] for name, _, _ in items], [gt for *_, gt in items])
        rows[group] = {
            **{key: pooled[key] for key, _ in SCORES},
            **{key: pooled[key] for key in ("n_pred", "n_gt", "merges", "splits")},
            "images": len(items),
            "train_minutes": minutes,
            "predict_s_per_mp": seconds / megapixels,
        }
    return rows


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def results_table(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: one row per method × test group (rows[method][group], as `table_rows`)."""
    titles = " | ".join(title for _, title in SCORES)
    lines = [
        f"| method | test images | {titles} | objects pred / GT | training min | prediction s/MP |",
        "|---|---|" + "---|" * len(SCORES) + "---|---|---|",
    ]
    for method, by_group in rows.items():
        for group, r in by_group.items():
            scores = " | ".join(f"{r[key]:.3f}" for key, _ in SCORES)
            lines.append(
                f"| {method} | {group} ({r['images']}) | {scores} | {r['n_pred']} / {r['n_gt']} "
                f"| {r['train_minutes']:.1f} | {r['predict_s_per_mp']:.2f} |"
            )
    return "\n".join(lines)


def run_data_set(
    data: DataSet,
    out: Path,
    settings: Settings,
    *,
    minutes: float,
    seed: int,
    cellpose: bool,
    targets: Sequence[str] = TARGETS,
    steps: int | None = None,
    normalize: Sequence[str | None] = (None,),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and score every method on one prepared data set: each pixelwise target of
    `targets` with each input normalisation of `normalize` (None = the default; a row is named
    "T, normalize N" when more than one is asked), then cellpose."""
    test = data.pairs("test")
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    training: dict[str, dict[str, Any]] = {}
    variants = [
        (target if len(normalize) == 1 else f"{target}, normalize {norm}", target, norm)
        for target in TARGETS
        if target in targets
        for norm in normalize
    ]
    for method, target, norm in [*variants, *([(CELLPOSE, None, None)] if cellpose else [])]:
        if method == CELLPOSE:
            budget_s = max(t["minutes"] for t in training.values()) * 60
            objects, info = train_cellpose(
                data, out / method, settings, budget_s=budget_s, seed=seed
            )
        else:
            folder = out / method.replace(", normalize ", "-")
            objects, info = train_pixelwise(
                data, folder, target, settings, minutes=minutes, seed=seed, steps=steps,
                normalize=norm, extra=extra,
            )  # fmt: skip
        maps, seconds = predict_test(objects, test, warmup=settings.warmup)
        rows[method] = table_rows(maps, test, data.groups, minutes=info["minutes"], seconds=seconds)
        training[method] = info
    return {"rows": rows, "training": training, "train": data.train, "test": data.test}


def _unseen(data: DataSet) -> str:
    """ ", test images of groups A, B never trained on" for a split by groups, else ""."""
    groups = sorted(set(data.groups.values()) - {ALL})
    return f" of image groups {', '.join(groups)} never trained on" if groups else ""


def describe(
    prepared: Sequence[DataSet],
    settings: Settings,
    minutes: float,
    steps: int | None = None,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """The header's lines on the data and the methods' settings."""
    crop = f"; centre {settings.crop}×{settings.crop} crops" if settings.crop else ""
    options = settings.pixelwise_options(minutes, steps, extra)
    parts = [
        f"{d.name}: fixed split, {len(d.train)} training / {len(d.test)} test images" + _unseen(d)
        if d.name == DSB
        else f"{d.name}: {', '.join(d.train)} to train, {', '.join(d.test)} to test (per-image "
        f"percentiles {PERCENTILES[0]:g}/{PERCENTILES[1]:g})"
        for d in prepared
    ]
    return [
        "; ".join(parts) + crop,
        "pixelwise: TrainConfig(instances=True, target=T, "
        + ", ".join(f"{k}={v}" for k, v in options.items())
        + f"), objects from best.safetensors; cellpose 3.1 from scratch: {CELLPOSE_TRAINING}, "
        f"batch {settings.cellpose_batch}, tiles {settings.cellpose_bsize} px, diam_mean "
        f"{settings.cellpose_diameter:g} px, for the longest pixelwise run's wall time",
    ]


RECIPE_FIELDS = ("data", "out", "instances", "target", "seed", "steps", "max_minutes", "normalize")
"""TrainConfig fields the recipe sets itself (its own options), which --set may not."""


def train_fields(pairs: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """--set FIELD=VALUE pairs → {field: YAML value}; a usage error for a malformed pair, an
    unknown field or one of RECIPE_FIELDS."""
    names = {f.name for f in fields(TrainConfig)}
    extra: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.replace("-", "_")
        if not sep or not key:
            parser.error(f"--set expects FIELD=VALUE, got {pair!r} (e.g. --set zoom=1.5)")
        if key not in names:
            parser.error(f"--set {pair}: TrainConfig has no field {key!r}; see pixelwise train -h")
        if key in RECIPE_FIELDS:
            parser.error(f"--set {pair}: the recipe sets {key!r} itself; use its own option")
        extra[key] = yaml.safe_load(value)
    return extra


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(__doc__, quick="a tiny run (< 90 s), for CI; cellpose only if installed")
    add_training_options(
        parser,
        name="nuclei_instances",
        data="the shared data folder (with dsb2018-dev/ and nuclei/)",
        minutes=10.0,
        minutes_help="training minutes of each pixelwise model (cellpose gets the longest "
        "pixelwise run's wall time)",
    )
    parser.add_argument(
        "--data-sets",
        nargs="+",
        choices=(DSB, CTC),
        default=[DSB, CTC],
        help="which data sets to run (default: both)",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=TARGETS,
        default=list(TARGETS),
        help="which pixelwise targets to train (default: all; cellpose follows them)",
    )
    parser.add_argument(
        "--normalize",
        nargs="+",
        choices=NORMALIZE_METHODS,
        help="input normalisation of the pixelwise models; several: one model per target and "
        "normalisation, side by side (default: the instance default)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="train each pixelwise model this many steps instead of --minutes (the schedule "
        "spans them; the result does not depend on the machine's load)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="ids",
        help="dsb2018-dev's test images: ids (default: a fixed 20 %% by id hash) or groups "
        f"(every image of the groups {', '.join(UNSEEN_GROUPS)}, never seen in training)",
    )
    parser.add_argument(
        "--no-cellpose", action="store_true", help="pixelwise rows only (no cellpose training)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a TrainConfig field for every pixelwise model, e.g. --set zoom=1.5 (repeatable; "
        "the value is read as YAML)",
    )
    args = parse_args(parser, argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be ≥ 1, got {args.steps}")
    extra = train_fields(args.set, parser)
    run = Run("nuclei_instances", argv)
    settings = QUICK if args.quick else FULL
    cellpose = cellpose_available() and not args.no_cellpose
    if not cellpose and not args.quick and not args.no_cellpose:
        parser.error(
            "cellpose is not installed: pip install -e '.[bench]' --constraint "
            "constraints.txt (or pass --quick to run pixelwise alone)"
        )
    data_dir = args.out / "data"
    shutil.rmtree(data_dir, ignore_errors=True)  # a previous run may have used another crop
    prepared = tuple(
        prepare_dsb(args.data / DSB, data_dir / DSB, settings, args.split)
        if name == DSB
        else prepare_ctc(args.data / CTC, data_dir / CTC, settings)
        for name in (DSB, CTC)
        if name in args.data_sets
    )
    results: dict[str, Any] = {}
    for data in prepared:
        results[data.name] = run_data_set(
            data,
            args.out / data.name,
            settings,
            minutes=args.minutes,
            seed=args.seed,
            cellpose=cellpose,
            targets=args.targets,
            steps=args.steps,
            normalize=args.normalize or (None,),
            extra=extra,
        )
    notes = (
        []
        if cellpose
        else [
            "--no-cellpose: no cellpose rows"
            if args.no_cellpose
            else "cellpose is not installed (the `bench` extra): no cellpose rows"
        ]
    )
    header = run.header(
        f"Nuclei instance recipe{' (--quick: centre crops, tiny nets)' if args.quick else ''}",
        *describe(prepared, settings, args.minutes, args.steps, extra),
        *notes,
    )
    tables = "\n\n".join(f"### {name}\n\n{results_table(r['rows'])}" for name, r in results.items())
    text = f"{header}\n\n{tables}\n"
    print(text)
    write_results(
        args.out,
        text,
        {
            "data_sets": results,
            "settings": asdict(settings),
            "minutes": args.minutes,
            "steps": args.steps,
            "split": args.split,
            "normalize": args.normalize,
            "set": extra,
            "quick": args.quick,
            "seed": args.seed,
            "cellpose": cellpose,
            "notes": notes,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
