"""The `pixelwise` command line. Every subcommand is a thin layer over the library.

User errors (bad files, bad options) print one line naming the problem and the fix and exit
with status 2; no traceback. Input that runs but is probably not what was meant
(`pixelwise.checks.InputWarning`) prints one `warning: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import warnings
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


def _cmd_models(args: argparse.Namespace) -> int:
    """List the shipped models with their cards (`pixelwise.zoo`)."""
    from pixelwise.segmenter import SHIPPED_DIAMETER
    from pixelwise.zoo import MODELS, model_card, model_path

    for name in MODELS:
        card = model_card(name)
        print(f"{name}: {card['description']}")
        print(f"  input            {card['input']}")
        print(f"  object diameter  {card['object_diameter']:.1f} px (median of the training "
              f"objects; --diameter rescales to it)")  # fmt: skip
        print(f"  diameter         {SHIPPED_DIAMETER} by default (measured per image; "
              f"--diameter none: as is)")  # fmt: skip
        print(f"  training data    {card['training_data']}")
        print(f"  licence          {card['licence']}")
        for key, how in (
            ("validation_scores_auto", f"diameter {SHIPPED_DIAMETER}, the default"),
            ("validation_scores", "as is"),
        ):
            scores = card[key]
            print(
                f"  validation       accuracy@0.5 {scores['accuracy@0.5']:.3f}, "
                f"F1@0.5 {scores['f1@0.5']:.3f}, accuracy@0.75 {scores['accuracy@0.75']:.3f}, "
                f"DSB score {scores['dsb_score']:.3f} ({scores['n_gt']} objects, "
                f"{len(card['validation_images'])} images, {how})"
            )
        print(f"  training         {card.get('training_steps')} steps, "
              f"{card.get('training_minutes')} min on {card.get('machine')}")  # fmt: skip
        scored = f"; scored at {card['scored_commit']}" if "scored_commit" in card else ""
        print(f"  recipe           {card['recipe']} (commit {card['commit']}{scored})")
        print(f"  file             {model_path(name)}")
    return 0


def _parse_model_arg(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r} (e.g. depth=4)")
    return key.replace("-", "_"), yaml.safe_load(value)


def _parse_diameter(text: str) -> float | str | None:
    """--diameter: a number of pixels, "auto", "none" (as is) → None, or "default" (the
    model's: auto for a shipped model, else as is)."""
    if text in ("auto", "none", "default"):
        return None if text == "none" else text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected the objects' diameter in pixels (e.g. 30), auto or none, got {text!r}"
        ) from None


def _add_diameter_option(p: argparse.ArgumentParser) -> None:
    """predict's and evaluate's --diameter (`pixelwise.Segmenter`'s `diameter`)."""
    p.add_argument(
        "--diameter",
        type=_parse_diameter,
        default="default",
        metavar="PX|auto|none",
        help="typical object diameter in the images, in pixels: each image is resized so its "
        "objects match the model's training size (instance checkpoints record it, as the "
        "shipped ones); auto: chosen per image, segmenting it as is, then 1.4x and 2x "
        "smaller or larger until its objects measure 0.9-2x the training size (images of "
        "another magnification); none: as is; default: auto for a shipped model (nuclei), "
        "none for any other checkpoint",
    )


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """Every TrainConfig field as a flag (`patch_size` → `--patch-size`), with the field's help
    and its defaults (plain, and with --instances: `pixelwise.train.config.default_help`)."""
    import typing
    from dataclasses import fields

    from pixelwise.train import TrainConfig
    from pixelwise.train.config import INSTANCE_DEFAULTS, default_help

    p.description = (
        "Train a model. With --instances (masks of instance ids), the options not given take "
        "the defaults for objects (each option's 'with --instances' value); OUT/config.yaml "
        "records the values the run used."
    )
    p.add_argument("data", nargs="?", help="dataset folder (or give it in --config)")
    p.add_argument("--config", help="YAML file of options; flags override it")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/last.safetensors (the model settings must be the saved run's; "
        "steps, time budget, workers, device, logging may change)",
    )
    p.add_argument(
        "--allow-new-data",
        action="store_true",
        help="with --resume: go on with other data (data, --val-data, --split, ...) than the "
        "saved run's",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument(
        "--model-arg",
        action="append",
        type=_parse_model_arg,
        default=[],
        metavar="KEY=VALUE",
        help="model constructor option, e.g. --model-arg base_channels=16 (repeatable; with "
        "--instances and the unet, the keys not given are "
        + " ".join(f"{k}={v}" for k, v in INSTANCE_DEFAULTS.get("model_args", {}).items())
        + ")",
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name in ("data", "model_args"):
            continue
        flags = ["--" + f.name.replace("_", "-")]
        if f.name == "precision":
            flags += ["--amp", "--autocast"]  # the older names, kept as aliases
        help_ = " ".join((f.metadata["help"], default_help(f.name))).strip()
        kind = _flag_type(hints[f.name])
        if kind is bool:
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif kind is list:
            p.add_argument(*flags, nargs="+", default=None, help=help_, dest=f.name)
        else:
            p.add_argument(*flags, type=kind, default=None, help=help_, dest=f.name)


def _flag_type(hint: object) -> type:
    """The type a flag parses for a TrainConfig annotation: `int | None` → int, `list[str]` →
    list."""
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def train_config_from_args(args: argparse.Namespace):
    """TrainConfig of the YAML file's options and the flags given (flags win), built once, so
    that the options neither sets take their defaults (plain, or for --instances)."""
    from dataclasses import fields

    from pixelwise.train import TrainConfig
    from pixelwise.train.config import read_yaml_options

    try:
        values = read_yaml_options(args.config) if args.config else {}
        for f in fields(TrainConfig):
            value = getattr(args, f.name, None)
            if value is not None and f.name != "model_args":
                values[f.name] = value
        values["model_args"] = {**(values.get("model_args") or {}), **dict(args.model_arg)}
        cfg = TrainConfig.from_dict(values, source=args.config or "options")
        cfg.check()
    except ValueError as e:
        raise UserError(str(e)) from None
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    from pixelwise.data import DataError
    from pixelwise.distributed import distributed_context
    from pixelwise.train import train

    cfg = train_config_from_args(args)
    _check_out(cfg.out)
    try:
        result = train(
            cfg,
            resume=args.resume,
            allow_new_data=args.allow_new_data,
            progress=not args.no_progress,
        )
    except (DataError, FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if result.interrupted:
        return 128 + (result.signal or 2)  # the shell's status of a process stopped by it
    if result.best is not None and distributed_context().main:
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
    try:
        text, problems = check_dataset(args.path, **kwargs)
    except ValueError as e:  # an option the data cannot use, e.g. --num-classes 0
        raise UserError(str(e)) from None
    print(text)
    return 1 if problems else 0


def _postprocessing_overrides(args: argparse.Namespace):
    """The checkpoint's post-processing with predict's --mask-threshold, --seed-threshold and
    --min-size applied, or None when no flag is given."""
    from pixelwise.checkpoint import read_metadata
    from pixelwise.instances import postprocessing_from_metadata

    flags = ("mask_threshold", "seed_threshold", "min_size")
    changes = {f: getattr(args, f) for f in flags if getattr(args, f) is not None}
    if not changes:
        return None
    try:
        recorded = postprocessing_from_metadata(read_metadata(args.checkpoint))
        if recorded is None:
            given = ", ".join("--" + f.replace("_", "-") for f in changes)
            raise UserError(
                f"{given}: checkpoint {args.checkpoint} is not an instance model (no target in "
                f"its metadata), so it makes no objects to post-process; train with --instances"
            )
        return recorded.replace(**changes)
    except ValueError as e:  # a value outside its rule, e.g. --mask-threshold 1.5
        raise UserError(str(e)) from None


def _cmd_predict(args: argparse.Namespace) -> int:
    from pixelwise.distributed import distributed_context
    from pixelwise.inference import predict_files
    from pixelwise.tiling import PredictOptions

    context = distributed_context()
    _check_out(args.out)
    _check_device(args.device)
    budget = {} if args.memory_budget_mb is None else {"memory_budget_mb": args.memory_budget_mb}
    overlap = {} if args.block_overlap is None else {"block_overlap": args.block_overlap}
    postprocessing = _postprocessing_overrides(args)
    precision = _precision_arg(args)
    if context.main:
        print(_precision_header(precision, args.device))
    try:
        options = PredictOptions(
            tile_size=args.tile_size,
            batch_size=args.batch_size,
            tta=args.tta,
            pad_mode=args.pad_mode,
            halo=args.halo,
            channels_last=args.channels_last,
            device=args.device,
            progress=not args.no_progress,
            **budget,
        )
        summary = predict_files(
            args.checkpoint,
            args.inputs,
            args.out,
            options=options,
            probs=args.probs,
            overlay=args.overlay,
            objects=args.objects,
            instances=args.instances,
            postprocessing=postprocessing,
            precision=precision,
            diameter=args.diameter,
            output_format=args.format,
            channel=args.channel,
            level=args.level,
            rank=context.rank,
            world_size=context.world_size,
            **overlap,
        )
    except ValueError as e:  # an option the model cannot use, e.g. --tile-size 50 for a U-Net
        raise UserError(str(e)) from None
    print(summary.report())
    return summary.exit_status


def _cmd_export(args: argparse.Namespace) -> int:
    from pixelwise.export import ExportError, export_onnx

    if args.onnx is None and args.bioimageio is None:
        raise UserError("export needs --onnx FILE or --bioimageio OUT (a folder or .zip), or both")
    if args.bioimageio is not None:
        _export_bioimageio(args)
    if args.onnx is not None:
        try:
            path = export_onnx(
                args.checkpoint, args.onnx, opset=args.opset, example_size=args.example_size
            )
        except (ExportError, ValueError) as e:
            raise UserError(str(e)) from None
        print(f"wrote {path}")
    return 0


def _export_bioimageio(args: argparse.Namespace) -> None:
    """`export --bioimageio OUT`: the bioimage.io package (`pixelwise.bioimageio`)."""
    from pixelwise.bioimageio import BioimageioError, PackageInfo, export_bioimageio
    from pixelwise.export import ExportError

    cite = []
    for text in args.cite or ():
        words, sep, ref = text.rpartition("|")
        if not sep or not words.strip():
            raise UserError(f"--cite {text!r}: write it as 'TEXT|DOI_OR_URL'")
        cite.append((words.strip(), ref.strip()))
    defaults = PackageInfo()
    info = PackageInfo(
        name=args.name,
        description=args.description,
        authors=tuple(args.author or ()),
        license=args.license or defaults.license,
        cite=tuple(cite),
        tags=tuple(args.tag or ()),
        git_repo=args.git_repo,
    )
    weights = args.weights.split(",") if args.weights else None
    try:
        path = export_bioimageio(
            args.checkpoint,
            args.bioimageio,
            info=info,
            weights=weights,
            test_image=args.test_image,
            input_dtype=args.input_dtype,
            opset=args.opset,
        )
    except (BioimageioError, ExportError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {path}")
    if not args.author:
        print("note: --author was not given: the package names your login name as its author")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pixelwise.data import DataError
    from pixelwise.evaluate import ISBI, OBJECTS, PER_IMAGE, evaluate

    _check_out(args.out)
    _check_device(args.device)
    postprocessing = _postprocessing_overrides(args)  # predict's flags, predict's rules
    print(_precision_header(args.precision, args.device, verb="evaluating"))
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
            postprocessing=postprocessing,
            diameter=args.diameter,
            tile_size=args.tile_size,
            device=args.device,
            precision=args.precision,
        )
    except (DataError, ValueError) as e:
        raise UserError(str(e)) from None
    objects = OBJECTS if "objects" in result else ()
    for key in (*PER_IMAGE, *(ISBI if args.isbi else ()), *objects):
        value = result[key]
        print(f"{key:16s} {value:.4f}" if value is not None else f"{key:16s} n/a")
    if objects:
        print(f"objects          {result['objects']['method']}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pixelwise.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    return 0


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train U-Net on synthetic touching cells for two instance targets (the paper's "
        "weighted two classes, and three classes) and compare their objects",
    )
    p.add_argument("--out", default="pixelwise-demo", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny run, for a smoke test")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the data and both trainings (default: 0)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def _add_tile_option(p: argparse.ArgumentParser) -> None:
    """--tile-size (canonical, as train's --patch-size) and its older spelling --tile."""
    p.add_argument(
        "--tile-size",
        "--tile",
        type=int,
        metavar="N",
        help="input tile size, a valid input size of the model (default: fit the memory budget)",
    )


def _add_postprocessing_flags(p: argparse.ArgumentParser) -> None:
    """Overrides of an instance checkpoint's post-processing (predict and evaluate)."""
    for flag, kind, metavar, text in (
        ("--mask-threshold", float, "P", "foreground = 1 - P(background) > P"),
        ("--seed-threshold", float, "P", "seeds: P(interior) > P (three-class), distance > P"),
        ("--min-size", int, "N", "objects with fewer than N pixels are removed"),
    ):
        p.add_argument(
            flag,
            type=kind,
            metavar=metavar,
            help=f"instance models: {text} (default: the checkpoint's record)",
        )


_CHECKPOINT_HELP = (
    "a .safetensors checkpoint, a run folder (its best.safetensors), or a shipped model's "
    "name (nuclei; `pixelwise models` lists them)"
)


def _add_precision_option(p: argparse.ArgumentParser) -> None:
    """--precision of predict and evaluate (`pixelwise.precision.resolve_precision`)."""
    from pixelwise.precision import PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default): bf16 autocast on CPUs with native bf16 (AVX512_BF16 or AMX) and "
        "on CUDA GPUs with bf16, fp16 on other GPUs, fp32 on other CPUs (where bf16 is "
        "emulated, slow); the run's first line says what was chosen and why",
    )


def _precision_header(precision: str, device: str | None, *, verb: str = "predicting") -> str:
    """predict's and evaluate's first line: the device and the precision chosen there, and why.
    The choice is `resolve_precision`'s, a pure function of the device and the CPU, so it is the
    one `predict_files` makes (which also gives any warning about it)."""
    from pixelwise.distributed import select_device
    from pixelwise.precision import resolve_precision

    target = select_device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f"{verb} on {target}, {resolve_precision(precision, target).describe()}"


def _precision_arg(args: argparse.Namespace) -> str:
    """--precision, or the precision the older --autocast/--amp names (they must agree)."""
    from pixelwise.precision import merge_older_spelling

    try:
        return merge_older_spelling(
            args.precision, args.autocast, names=("--precision", "--autocast")
        )
    except ValueError as e:
        raise UserError(str(e)) from None


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images of any size with overlap-tile inference",
        usage="pixelwise predict (CHECKPOINT | --model NAME) INPUT [INPUT ...] --out OUT ...",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=_CHECKPOINT_HELP)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders, TIFF stacks")
    p.add_argument(
        "--model",
        dest="shipped_model",
        metavar="NAME",
        help="a shipped model instead of a CHECKPOINT (nuclei: 2-D fluorescence nuclei; "
        "`pixelwise models` lists them); every positional argument is then an INPUT",
    )
    _add_diameter_option(p)
    p.add_argument("--out", required=True, help="output folder")
    # Canonical spellings match train's (--batch-size, --patch-size); --tile, --batch,
    # --memory-budget and --amp are the older/other spellings, kept as aliases.
    _add_tile_option(p)
    p.add_argument(
        "--batch-size", "--batch", type=int, help="tiles per batch (default: fit the budget)"
    )
    p.add_argument("--tta", choices=("flips", "d4"), help="average flipped/rotated predictions")
    p.add_argument("--pad-mode", default="reflect", choices=("reflect", "constant", "replicate"))
    p.add_argument(
        "--halo", type=int, help="same-padding models: overlap cropped per tile side, in pixels"
    )
    p.add_argument("--probs", action="store_true", help="also write probability TIFFs")
    p.add_argument("--overlay", action="store_true", help="also write colour overlay PNGs")
    p.add_argument(
        "--objects",
        action="store_true",
        help="also write object tables (CSV + COCO JSON): an instance model's instances, "
        "else connected components of each class",
    )
    p.add_argument(
        "--instances",
        action="store_true",
        help="instance models: also write instances/<name>.tif (uint16/uint32 object ids, "
        "0 = background) and the object tables",
    )
    _add_postprocessing_flags(p)
    p.add_argument(
        "--block-overlap",
        type=int,
        metavar="PX",
        help="streamed images: context around each block made into objects; exact for objects "
        "up to half of it across (default: 128)",
    )
    p.add_argument(
        "--format",
        default="png",
        choices=("png", "tif", "ome-zarr"),
        help="class-map format: palette PNG, TIFF (tiled, compressed BigTIFF for large images) "
        "or OME-Zarr (NGFF label images; probs as an NGFF image)",
    )
    p.add_argument(
        "--channel",
        type=int,
        metavar="N",
        help="predict channel N (0-based) of multi-channel images (default: every channel)",
    )
    p.add_argument(
        "--level",
        type=int,
        default=0,
        metavar="N",
        help="pyramid level of pyramidal TIFF / OME-Zarr inputs (default: 0, full resolution)",
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda:LOCAL_RANK when available)")
    p.add_argument(
        "--memory-budget-mb",
        "--memory-budget",
        type=float,
        metavar="MB",
        help="memory of one tile batch (and, for streamed images, the output rows held); sets "
        "the automatic tile size (default: 1024; streamed images 512)",
    )
    _add_precision_option(p)
    p.add_argument(
        "--autocast",
        "--amp",
        choices=("bf16", "fp16"),
        help="mixed-precision inference: the older spelling of --precision bf16|fp16",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on for CPUs)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_predict)


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX or as a bioimage.io model package"
    )
    p.add_argument("checkpoint", help=_CHECKPOINT_HELP)
    p.add_argument("--onnx", metavar="FILE", help="output .onnx file")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--example-size",
        "--size",
        type=int,
        metavar="N",
        help="side of the example input to trace, a valid input size (default: a small one)",
    )
    g = p.add_argument_group("bioimage.io package (pip install 'pixelwise[bioimageio]')")
    g.add_argument("--bioimageio", metavar="OUT", help="the package: a new folder or a .zip")
    g.add_argument("--name", help="the model's name (default from the model and its target)")
    g.add_argument("--description", help="one sentence on the model")
    g.add_argument(
        "--author",
        action="append",
        metavar="'NAME [<EMAIL>] [@GITHUB]'",
        help="an author, repeatable (default: your login name)",
    )
    g.add_argument("--license", help="SPDX licence identifier (default CC-BY-4.0)")
    g.add_argument(
        "--cite",
        action="append",
        metavar="'TEXT|DOI_OR_URL'",
        help="a citation, repeatable (default: the architecture's paper)",
    )
    g.add_argument("--tag", action="append", help="an extra tag, repeatable")
    g.add_argument("--git-repo", metavar="URL", help="the code that trained the model")
    g.add_argument(
        "--weights",
        metavar="FORMATS",
        help="comma-separated: pytorch_state_dict, torchscript, onnx (default: all available)",
    )
    g.add_argument(
        "--test-image",
        metavar="IMAGE",
        help="an image like the training images, cropped to a valid size as the package's "
        "test input (default: synthetic cells)",
    )
    g.add_argument(
        "--input-dtype",
        help="the input dtype when the checkpoint records no normalisation (default float32)",
    )
    p.set_defaults(func=_cmd_export)


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a labelled dataset, with a report")
    p.add_argument("checkpoint", help=_CHECKPOINT_HELP)
    p.add_argument("data", help="labelled dataset folder")
    p.add_argument("--out", required=True, help="folder for metrics.json, CSV, PNG, report.html")
    p.add_argument("--tta", choices=("flips", "d4"), help="average flipped/rotated predictions")
    p.add_argument("--isbi", action="store_true", help="add ISBI 2012 pixel/Rand/warping errors")
    p.add_argument("--split", help="dataset split (e.g. val)")
    p.add_argument("--ignore-index", type=int, help="mask value to leave out of the scores")
    p.add_argument(
        "--instances",
        action="store_true",
        help="masks hold instance labels: score objects too (default: as the model was trained)",
    )
    _add_postprocessing_flags(p)
    _add_diameter_option(p)
    _add_tile_option(p)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    _add_precision_option(p)
    p.set_defaults(func=_cmd_evaluate)


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `pixelwise` parser: one sub-parser per command.

    Args:
        command: the command about to be parsed (`_command_of`), or None for all. The train
            sub-parser's options come from `pixelwise.train.TrainConfig`, whose import loads
            the whole training stack (scipy included, 0.3-0.4 s): they are added only when
            `command` is "train" or None.
    """
    parser = argparse.ArgumentParser(
        prog="pixelwise",
        description="Per-pixel segmentation with FCN and U-Net.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("info", help="print the models' geometry and parameter counts")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser(
        "models", help="list the shipped pretrained models: data, licence, validation scores"
    )
    p.set_defaults(func=_cmd_models)
    _add_demo_parser(sub)
    p = sub.add_parser("train", help="train a model on a labelled dataset")
    if command in (None, "train"):
        _add_train_options(p)
    p.set_defaults(func=_cmd_train)
    _add_predict_parser(sub)
    _add_export_parser(sub)
    _add_evaluate_parser(sub)
    _add_data_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """pixelwise's InputWarnings as one `warning: ...` line on stderr; others as Python shows
    them."""
    from pixelwise.checks import InputWarning

    if issubclass(category, InputWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _check_out(path: str | None) -> None:
    """--out of train, predict and evaluate: a folder that exists or can be made, writable."""
    from pixelwise.checks import check_output_folder

    if path is not None:
        try:
            check_output_folder(path, "--out")
        except ValueError as e:
            raise UserError(str(e)) from None


def _check_device(device: str | None) -> None:
    """--device names a device this machine has (`pixelwise.distributed.select_device`)."""
    from pixelwise.distributed import select_device

    if device is not None:
        try:
            select_device(device)
        except ValueError as e:
            raise UserError(str(e)) from None


def _resolve_checkpoint_arg(args: argparse.Namespace) -> None:
    """A CHECKPOINT (predict, evaluate, export) that is a run folder becomes its best checkpoint,
    one that names a shipped model (and no file) its file (`pixelwise.checkpoint.resolve`);
    with predict's `--model NAME`, the positional CHECKPOINT is the first INPUT. stderr says
    which file."""
    from pixelwise.checkpoint import resolve
    from pixelwise.zoo import model_path

    shipped = getattr(args, "shipped_model", None)
    if shipped is not None:
        try:
            path = model_path(shipped)
        except ValueError as e:
            raise UserError(f"--model {shipped}: {e}") from None
        args.inputs = [args.checkpoint, *args.inputs]
        args.checkpoint = str(path)
        return
    given = getattr(args, "checkpoint", None)
    if hasattr(args, "inputs") and not args.inputs:
        raise UserError(
            f"predict needs INPUT images after the checkpoint {given}: pixelwise predict "
            f"CHECKPOINT INPUT [INPUT ...] --out OUT (or --model NAME INPUT ...)"
        )
    if given is not None and (path := resolve(given)) != Path(given):
        kind = "a folder" if Path(given).is_dir() else "a shipped model"
        print(f"note: {given} is {kind}: using {path}", file=sys.stderr)
        args.checkpoint = str(path)


def _command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` starts with (`pixelwise predict ...` → "predict"), or None when it
    starts with an option (`pixelwise --help`): then the parser is built whole."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    try:
        _resolve_checkpoint_arg(args)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except (UserError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
