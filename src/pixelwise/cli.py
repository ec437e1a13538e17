"""The `pixelwise` command line. Every subcommand is a thin layer over the library.

User errors (bad files, bad options) print one line naming the problem and the fix and exit
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pixelwise.checkpoint import CheckpointError
from pixelwise.data import DataError


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit status 2."""


def _cmd_info(args: argparse.Namespace) -> int:
    """Print the geometry and size of the registered models."""
    from pixelwise.models import UNet, build

    unet = UNet()
    print("U-Net (paper): 1 input channel, 2 classes, depth 5, valid padding")
    print(f"  parameters       {sum(p.numel() for p in unet.parameters()):,}")
    print(f"  input → output   572 → {unet.output_size(572)}  (margin {unet.margin} per side)")
    print(f"  valid inputs     {unet.valid_input_sizes(500, 600)} (in 500..600)")
    for name in ("fcn32s", "fcn16s", "fcn8s"):
        fcn = build(name)
        n = sum(p.numel() for p in fcn.parameters())
        print(f"{name}: VGG16 backbone, 21 classes, {n:,} parameters, any input size → same size")
    return 0


# Help for the training options; every TrainConfig field becomes a flag (--patch-size, ...).
_TRAIN_HELP = {
    "out": "output folder for checkpoints, log.csv, curves.png, config.yaml",
    "val_data": "separate validation dataset folder",
    "val_fraction": "fraction of the images held out for validation",
    "split": "dataset split to train on (VOC: ImageSets name; CamVid: train)",
    "val_split": "split to validate on (e.g. val)",
    "init": "checkpoint to start from (same-name parameters; FCN-16s from FCN-32s)",
    "batch_size": "tiles per step (per process under torchrun)",
    "lr": "learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "patience": "plateau schedule: validations without improvement before lr × 0.1",
    "w0": "border weight w0 (paper: 10)",
    "sigma": "border weight sigma in pixels (paper: 5)",
    "augment": "the paper's elastic deformation, rotation, flips, gray values",
    "elastic_sigma": "std of the coarse elastic displacements in pixels (paper: 10)",
    "elastic_grid": "elastic displacement grid points per axis (paper: 3)",
    "rotation": "maximum rotation in degrees",
    "shift": "maximum shift in pixels",
    "flip": "random flips",
    "gray": "gray-value variation (scale of brightness/contrast jitter)",
    "seed": "seed of data order, augmentation and initialisation",
    "channels_last": "channels_last memory format",
    "val_every": "validate and checkpoint every N steps",
    "log_every": "steps between progress updates",
    "layout": "dataset layout: auto, folder, voc, tiff-stack",
    "num_classes": "number of classes (default: from the masks)",
    "ignore_index": "mask value to ignore in loss and metrics (e.g. 255 for VOC, 11 for CamVid)",
    "instances": "masks hold instance labels (0 = background, 1..K = objects)",
    "model": "model name: unet, fcn32s, fcn16s, fcn8s",
    "steps": "optimisation steps in all",
    "patch_size": "labelled size of each training tile (rounded up to a size the net gives)",
    "optimizer": "sgd (momentum 0.99, as the U-Net paper), adam, adamw",
    "schedule": "constant, poly, cosine, plateau",
    "loss": "ce, dice, ce+dice",
    "reduction": "mean, or sum (FCN's unnormalised loss)",
    "weighted": "U-Net border weights between touching objects (w0, sigma) and class balance",
    "amp": "autocast dtype: bf16 or fp16",
    "device": "cpu, cuda, cuda:1 ... (default: cuda when available)",
    "workers": "DataLoader worker processes",
    "max_minutes": "time budget: stop, validate and checkpoint once this much time is spent",
}


def _parse_model_arg(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r} (e.g. depth=4)")
    return key.replace("-", "_"), yaml.safe_load(value)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from dataclasses import MISSING, fields

    from pixelwise.train import TrainConfig

    p.add_argument("data", nargs="?", help="dataset folder (or give it in --config)")
    p.add_argument("--config", help="YAML file of options; flags override it")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--model-arg",
        action="append",
        type=_parse_model_arg,
        default=[],
        metavar="KEY=VALUE",
        help="model constructor option, e.g. --model-arg base_channels=16 (repeatable)",
    )
    for f in fields(TrainConfig):
        if f.name in ("data", "model_args"):
            continue
        if f.name == "class_names":
            p.add_argument("--class-names", nargs="+", help="class names stored in the checkpoint")
            continue
        default = f.default if f.default is not MISSING else None
        flag = "--" + f.name.replace("_", "-")
        help_ = _TRAIN_HELP.get(f.name, "") + f" (default: {default})"
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            kind = {int: int, float: float}.get(type(default), str)
            if f.name in ("num_classes", "ignore_index"):
                kind = int
            if f.name == "max_minutes":
                kind = float
            p.add_argument(flag, type=kind, default=None, help=help_, dest=f.name)


def train_config_from_args(args: argparse.Namespace):
    """TrainConfig from defaults, then the YAML file, then the flags given."""
    from dataclasses import fields

    from pixelwise.train import TrainConfig

    try:
        cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
        for f in fields(TrainConfig):
            value = getattr(args, f.name, None)
            if value is not None and f.name != "model_args":
                setattr(cfg, f.name, value)
        cfg.model_args = {**cfg.model_args, **dict(args.model_arg)}
        cfg.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    from pixelwise.data import DataError
    from pixelwise.train import train

    cfg = train_config_from_args(args)
    try:
        result = train(cfg, resume=args.resume, progress=not args.no_progress)
    except (DataError, FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if result.interrupted:
        return 130
    if result.best is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {result.out / 'best.safetensors'} (step {result.best['step']})")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from pixelwise.data import check_dataset

    kwargs = dict(
        layout=args.layout,
        split=args.split,
        num_classes=args.num_classes,
        ignore_index=args.ignore_index,
        instances=args.instances,
    )
    text, problems = check_dataset(args.path, **kwargs)
    print(text)
    return 1 if problems else 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pixelwise.inference import distributed_context, predict_files

    rank, world, _ = distributed_context()
    try:
        summary = predict_files(
            args.checkpoint,
            args.inputs,
            args.out,
            tile_size=args.tile,
            batch_size=args.batch,
            tta=args.tta,
            pad_mode=args.pad_mode,
            probs=args.probs,
            overlay=args.overlay,
            objects=args.objects,
            output_format=args.format,
            device=args.device,
            progress=not args.no_progress,
            rank=rank,
            world_size=world,
            autocast=args.autocast,
            **({"memory_budget_mb": args.memory_budget} if args.memory_budget else {}),
        )
    except ValueError as e:  # an option the model cannot use, e.g. --tile 50 for a valid U-Net
        raise UserError(str(e)) from None
    print(summary.report())
    return summary.exit_status


def _cmd_export(args: argparse.Namespace) -> int:
    from pixelwise.export import ExportError, export_onnx

    try:
        path = export_onnx(args.checkpoint, args.onnx, opset=args.opset, example_size=args.size)
    except (ExportError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pixelwise.data import DataError
    from pixelwise.evaluate import evaluate

    try:
        result = evaluate(
            args.checkpoint,
            args.data,
            args.out,
            tta=args.tta,
            isbi=args.isbi,
            split=args.split,
            ignore_index=args.ignore_index,
            instances=args.instances or None,
            tile_size=args.tile,
            device=args.device,
        )
    except (DataError, ValueError) as e:
        raise UserError(str(e)) from None
    keys = ["pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"]
    keys += ["pixel_error", "rand_error", "warping_error"] if args.isbi else []
    for key in keys:
        value = result[key]
        print(f"{key:16s} {value:.4f}" if value is not None else f"{key:16s} n/a")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pixelwise.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelwise",
        description="Per-pixel segmentation with FCN and U-Net.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="print the models' geometry and parameter counts")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "demo",
        help="train U-Net on synthetic touching cells, with and without "
        "border weights, and show the results",
    )
    p.add_argument("--out", default="pixelwise-demo", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny run, for a smoke test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a model on a labelled dataset")
    _add_train_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="segment images of any size with overlap-tile inference")
    p.add_argument("checkpoint", help="a .safetensors checkpoint")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, TIFF stacks")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tile", type=int, help="input tile size (default: fit the memory budget)")
    p.add_argument("--batch", type=int, help="tiles per batch")
    p.add_argument("--tta", choices=("flips", "d4"), help="average flipped/rotated predictions")
    p.add_argument("--pad-mode", default="reflect", choices=("reflect", "constant", "replicate"))
    p.add_argument("--probs", action="store_true", help="also write probability TIFFs")
    p.add_argument("--overlay", action="store_true", help="also write colour overlay PNGs")
    p.add_argument("--objects", action="store_true", help="also write an object table per image")
    p.add_argument("--format", default="png", choices=("png", "tif"), help="class-map format")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda:LOCAL_RANK when available)")
    p.add_argument(
        "--memory-budget",
        type=float,
        metavar="MB",
        help="activation memory of one tile batch; sets the automatic tile size (default: 1024)",
    )
    p.add_argument("--autocast", choices=("bf16", "fp16"), help="mixed-precision inference")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (dynamic height and width)")
    p.add_argument("checkpoint")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--size", type=int, help="example input size to trace (a valid size)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("evaluate", help="score a checkpoint on a labelled dataset, with a report")
    p.add_argument("checkpoint")
    p.add_argument("data", help="labelled dataset folder")
    p.add_argument("--out", required=True, help="folder for metrics.json, CSV, PNG, report.html")
    p.add_argument("--tta", choices=("flips", "d4"))
    p.add_argument("--isbi", action="store_true", help="add ISBI 2012 pixel/Rand/warping errors")
    p.add_argument("--split", help="dataset split (e.g. val)")
    p.add_argument("--ignore-index", type=int, help="mask value to leave out of the scores")
    p.add_argument("--instances", action="store_true", help="masks hold instance labels")
    p.add_argument("--tile", type=int)
    p.add_argument("--device")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("data", help="inspect datasets")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("check", help="images, sizes, classes, frequencies, every problem")
    p.add_argument("path", help="dataset folder")
    p.add_argument("--layout", default="auto", help="auto, folder, voc, tiff-stack")
    p.add_argument("--split", help="split to check (e.g. train)")
    p.add_argument("--num-classes", type=int, help="declared number of classes")
    p.add_argument("--ignore-index", type=int, help="mask value to ignore")
    p.add_argument("--instances", action="store_true", help="masks hold instance labels")
    p.set_defaults(func=_cmd_data_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
