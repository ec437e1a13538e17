"""`predict_files`: one run over image files, with a checkpoint and one set of options.

Owns the run: loading the model, the checks that would fail every file (done once, before any
file is read), this rank's share of the files, and per image the choice between in-memory
prediction (`pixelwise.Segmenter`, so files and Python make the same objects) and streamed
prediction (`pixelwise.tiling.predict` into memory maps, objects in blocks). Which files and how
they are read is `pixelwise.inference.inputs`; what is written and how,
`pixelwise.inference.outputs`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pixelwise import tiling
from pixelwise.checks import check_choice, check_output_folder, check_positive_int
from pixelwise.data import DataError
from pixelwise.data.lazy import PixelSize
from pixelwise.data.palette import checkpoint_palette
from pixelwise.distributed import check_rank, select_device
from pixelwise.inference.blocks import BLOCK_OVERLAP
from pixelwise.inference.inputs import (
    NormalizedImage,
    check_image,
    check_selection,
    expand_inputs,
    open_image,
    output_names,
    pages,
    where,
)
from pixelwise.inference.outputs import OUTPUT_FORMATS, Outputs
from pixelwise.inference.summary import Log, PredictSummary, RunLog, one_line
from pixelwise.instances import PostProcessing
from pixelwise.segmenter import Segmenter
from pixelwise.tiling import PredictOptions

STREAM_PIXELS = 4096 * 4096
"""Images with more pixels than this are streamed (read and written region by region)."""

STREAM_MEMORY_BUDGET_MB = 512.0
"""Default memory budget of a streamed image (when `memory_budget_mb` is None): the tile batch
(`pixelwise.tiling.tile_bytes_per_pixel`) plus the output rows its row bands hold. Measured by
benchmarks/large_images.py: peak RSS flat as the image grows, and no slower than larger tiles
on a CPU (a smaller tile stays in cache)."""


@dataclass(frozen=True)
class _Run:
    """Settings shared by every image of a run."""

    segmenter: Segmenter
    in_channels: int
    stream_pixels: int
    outputs: Outputs
    channel: int | None = None
    level: int = 0


def predict_files(
    checkpoint: str | os.PathLike | nn.Module,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    options: PredictOptions | None = None,
    probs: bool = False,
    overlay: bool = False,
    objects: bool = False,
    instances: bool = False,
    postprocessing: PostProcessing | None = None,
    precision: str = "auto",
    diameter: float | str | None = "default",
    output_format: str = "png",
    channel: int | None = None,
    level: int = 0,
    rank: int = 0,
    world_size: int = 1,
    stream_pixels: int = STREAM_PIXELS,
    block_overlap: int = BLOCK_OVERLAP,
    log: Log | None = print,
    **overrides: Any,
) -> PredictSummary:
    """Segment image files with a checkpoint and write the results (see `pixelwise.inference`).

    Args:
        checkpoint: `.safetensors` checkpoint (its "normalization" record is applied: dtype
            scaling, then (x − mean) / std per channel; without one, dtype scaling only), or a
            model (no normalisation beyond dtype scaling).
        inputs: image files (PNG, TIFF, JPEG; multi-page TIFFs are one image per page) and
            folders (their image files, sorted by name, not recursive).
        out_dir: output folder (created).
        options: how to tile and run (`pixelwise.tiling.PredictOptions`; defaults: tiles and
            batch chosen to fit the memory budget, no TTA, mirroring). Its `device` defaults to
            `select_device()`: cuda:LOCAL_RANK, else the CPU.
        probs: also write (K, H, W) float32 probabilities to probs/<name>.tif.
        overlay: also write a colour overlay to overlays/<name>.png.
        objects: also write the objects to objects/<name>.csv and objects/<name>.json (COCO):
            an instance model's instances, else the connected components of each class.
        instances: also write an instance model's objects to instances/<name>.tif (uint16,
            uint32 above 65,535 objects; 0 = background), with their tables as `objects`.
        postprocessing: replaces the checkpoint's post-processing record
            (`postprocessing_from_metadata`), e.g. with thresholds from the command line.
        precision: "auto" (bf16 autocast where the device computes it natively, else fp32),
            "fp32", "bf16" or "fp16", as `pixelwise.Segmenter` (whose `precision` says what
            was chosen and why).
        diameter: the objects' typical diameter in the images, in pixels: each image is
            resized to the checkpoint's recorded "object_diameter" for inference and its maps
            back (`pixelwise.Segmenter`'s `diameter`; images held in memory only); "auto":
            measured per image from a first segmentation (a streamed image is predicted as is,
            with a note); None: as is; "default": "auto" for a shipped model, else None.
        output_format: "png" (palette PNG class maps), "tif" (grayscale TIFF class ids) or
            "ome-zarr" (NGFF label images, `pixelwise.inference.ome_zarr`).
        channel: predict only this channel of multi-channel images (`--channel`); None
            gives the model every channel.
        level: the pyramid level of pyramidal TIFFs and OME-Zarr images (`--level`), 0 = full
            resolution.
        rank, world_size: this process takes files[rank::world_size].
        stream_pixels: images with more pixels are streamed (see `pixelwise.inference`); their
            objects are made in blocks of √stream_pixels (at least block_overlap) pixels a
            side.
        block_overlap: context in pixels around each block of a streamed image: three-class
            and distance objects up to block_overlap / 2 across come out as on the whole image
            (the limits are in `pixelwise.inference.blocks`).
        log: called with one line per image (written or failed) and per note; None: silent.
        **overrides: `PredictOptions` fields replacing those of `options` (tile_size=...,
            tta=..., device=..., progress=...). Without `options`, progress defaults to True
            here: one tile bar per image, shown only on a terminal.

    Returns:
        The summary of this rank's share; `exit_status` is 1 when any input failed.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        ValueError: an option that would fail every image (the message names the fix), an
            out_dir that is a file, is not writable or would overwrite an input, or `instances`
            for a model that makes no objects. Raised before any file is read or written.
        TypeError: an unknown option name.
    """
    check_rank(rank, world_size)
    check_choice("output_format", output_format, OUTPUT_FORMATS)
    check_positive_int("stream_pixels", stream_pixels)
    check_positive_int("block_overlap", block_overlap)
    check_selection(channel=channel, level=level)
    out = check_output_folder(out_dir, "out_dir")
    if options is None:
        overrides.setdefault("progress", True)
    options = PredictOptions.build(options, **overrides)
    settings = dict(postprocessing=postprocessing, precision=precision, diameter=diameter)
    if isinstance(checkpoint, nn.Module):  # where it runs: the precision depends on it
        checkpoint.to(select_device(options.device))
        segmenter = Segmenter(checkpoint, options=options, **settings)
    else:
        segmenter = Segmenter.from_checkpoint(checkpoint, options=options, **settings)
    if instances and not segmenter.is_instance_model:
        raise ValueError(_not_instance_model(checkpoint))
    files, missing = expand_inputs(inputs)
    names = output_names(files)
    _check_not_inputs(files, out, names)

    log_to = RunLog(PredictSummary(rank=rank, world_size=world_size), log)
    if rank == 0:  # every rank expands the same inputs; report missing ones once
        for failure in missing:
            log_to.fail(failure.source, failure.message)
    block_size = max(math.isqrt(stream_pixels), block_overlap)
    selected = dict(
        probs=probs,
        overlay=overlay,
        objects=objects,
        instances=instances,
        output_format=output_format,
        postprocessing=segmenter.postprocessing,
        block_size=block_size,
        block_overlap=block_overlap,
    )
    run = replace(
        _start_run(segmenter, out, stream_pixels, log_to, selected), channel=channel, level=level
    )
    mine = list(zip(files, names, strict=True))[rank::world_size]
    for number, (path, name) in enumerate(mine, 1):
        _predict_file(run, path, name, f"[{number}/{len(mine)}]", log_to)
    return log_to.summary


def _not_instance_model(checkpoint: str | os.PathLike | nn.Module) -> str:
    if isinstance(checkpoint, nn.Module):
        return (
            f"this {type(checkpoint).__name__} is not an instance model (no checkpoint "
            f"metadata); pass postprocessing=PostProcessing(target=...), or use objects=True "
            f"for connected components"
        )
    return (
        f"checkpoint {checkpoint} is not an instance model (no target in its metadata); train "
        f"with --instances, or use --objects for connected components"
    )


def _start_run(
    segmenter: Segmenter,
    out: Path,
    stream_pixels: int,
    log: RunLog,
    selected: dict[str, Any],
) -> _Run:
    """The run's settings; the model moved to its device (`select_device(options.device)`)."""
    model, meta = segmenter.model, segmenter.meta
    config = getattr(model, "hparams", {})
    num_classes = config["num_classes"]
    palette, palette_note = checkpoint_palette(meta, num_classes)
    if palette_note:
        log.note(palette_note)
    names = meta.get("class_names")
    outputs = Outputs(
        out_dir=out,
        num_classes=num_classes,
        palette=palette,
        class_names=tuple(names) if names else None,
        **selected,
    )
    model.to(select_device(segmenter.options.device))
    return _Run(
        segmenter=segmenter,
        in_channels=config["in_channels"],
        stream_pixels=stream_pixels,
        outputs=outputs,
    )


def _check_not_inputs(files: Sequence[Path], out_dir: Path, names: Sequence[str]) -> None:
    """Refuse an out_dir where a class map would replace one of the inputs."""
    inputs = {f.resolve() for f in files}
    for name in names:
        for suffix in ("png", "tif", "ome.zarr"):
            target = (out_dir / f"{name}.{suffix}").resolve()
            if target in inputs:
                raise ValueError(
                    f"output folder {out_dir} (--out; out_dir= in Python) would overwrite the "
                    f"input {target}; choose another output folder"
                )


def _predict_file(run: _Run, path: Path, name: str, counter: str, log: RunLog) -> None:
    """Predict every page of one file; failures are logged, not raised (user errors only)."""
    try:
        numbers = pages(path)
    except DataError as e:
        log.fail(str(path), one_line(e))
        return
    for page in numbers:
        here = where(path, page)
        page_name = name if page is None else f"{name}_p{page:04d}"
        start = time.perf_counter()
        try:
            written = _predict_image(run, path, page, page_name, log)
        except DataError as e:
            log.fail(here, one_line(e))
            continue
        except torch.cuda.OutOfMemoryError:
            log.fail(here, f"{here}: out of GPU memory; pass a smaller tile size or batch size")
            continue
        except OSError as e:
            log.fail(
                here,
                f"{here}: cannot write the results ({one_line(e)}); check that "
                f"{run.outputs.out_dir} and its subfolders are writable folders with free space",
            )
            continue
        names = ", ".join(str(p.relative_to(run.outputs.out_dir)) for p in written)
        log.done(f"{counter} {here} → {names} ({time.perf_counter() - start:.1f} s)", written)


def _predict_image(run: _Run, path: Path, page: int | None, name: str, log: RunLog) -> list[Path]:
    """Read, check and predict one image (one page); return the files written."""
    here = where(path, page)
    image = open_image(path, page, channel=run.channel, level=run.level)
    check_image(image, here, run.in_channels)
    if image.shape[0] * image.shape[1] <= run.stream_pixels:
        return _predict_in_memory(
            run, np.asarray(image), here, name, path.name, page, pixel_size=image.pixel_size
        )
    if run.segmenter.scale != 1.0:
        raise DataError(
            f"{here}: {image.shape[0]}×{image.shape[1]} pixels exceed stream_pixels="
            f"{run.stream_pixels}, and a streamed image cannot be resized for --diameter; "
            f"resize it to the model's object size beforehand (scale "
            f"{run.segmenter.scale:.3g}), or leave --diameter out"
        )
    outputs = run.outputs
    if run.segmenter.auto_diameter:
        log.note(
            f"{here}: predicted as is: {image.shape[0]}×{image.shape[1]} pixels exceed "
            f"stream_pixels={run.stream_pixels}, and diameter auto measures the objects of a "
            f"whole image held in memory; if its objects are not about "
            f"{run.segmenter.meta['object_diameter']:.0f} px across, resize it beforehand "
            f"(--diameter auto on a crop measures them)"
        )
    wanted = (
        ("overlay", outputs.overlay),
        ("objects", outputs.objects and not outputs.streams_instances),
    )
    skipped = [output for output, on in wanted if on]
    if skipped:
        log.note(
            f"{here}: {' and '.join(skipped)} skipped: {image.shape[0]}×{image.shape[1]} "
            f"pixels exceed stream_pixels={run.stream_pixels}, so the maps stay on disk; crop "
            f"the image to get them"
        )
    return _predict_streamed(run, image, here, name, path.name, page, log)


def _predict_in_memory(
    run: _Run,
    image: np.ndarray,
    here: str,
    name: str,
    file_name: str,
    page: int | None,
    *,
    pixel_size: PixelSize | None = None,
) -> list[Path]:
    """Predict an image held in memory and write every requested output."""
    outputs, segmenter = run.outputs, run.segmenter
    if not outputs.wants_probs and segmenter.scale == 1.0 and not segmenter.auto_diameter:
        x = segmenter.to_input(image, source=here)  # (C, H, W)
        labels = tiling.predict(segmenter.model, x, options=segmenter.options, output="labels")
        return outputs.write(
            name, image, labels, None, file_name=file_name, page=page, pixel_size=pixel_size
        )
    result = segmenter.predict(image, source=here)
    return outputs.write(
        name,
        image,
        result.labels,
        result.probabilities,
        file_name=file_name,
        page=page,
        objects=result.instances,
        scores=result.scores,
        pixel_size=pixel_size,
    )


def _predict_streamed(
    run: _Run, image: Any, here: str, name: str, file_name: str, page: int | None, log: RunLog
) -> list[Path]:
    """Predict a large image tile by tile, read region by region, into chunked outputs (class
    map, probabilities, and an instance model's objects; `Outputs.write_streamed`)."""
    segmenter = run.segmenter
    view = NormalizedImage(image, segmenter.normalization, here)
    view[:, :1, :1]  # checks dtype and normalisation on one pixel before any work
    channels, height, width = view.shape
    model = segmenter.model
    options = _streamed_options(model, segmenter.options, run.outputs, channels, (height, width))

    def fill(labels: np.ndarray, probs: np.ndarray | None) -> None:
        if probs is None:
            tiling.predict(model, view, options=options, output="labels", out=labels)
            return
        tiling.predict(model, view, options=options, output="probs", out=probs)
        rows = max(1, 2**24 // (4 * probs.shape[0] * width))  # argmax ~16 MB at a time
        for r in range(0, height, rows):
            labels[r : r + rows] = probs[:, r : r + rows].argmax(axis=0)  # (rows, W)

    return run.outputs.write_streamed(
        name,
        (height, width),
        fill,
        file_name=file_name,
        page=page,
        note=lambda line: log.note(f"{here}: {line}"),
        pixel_size=getattr(image, "pixel_size", None),
    )


def _streamed_options(
    model: nn.Module,
    options: PredictOptions,
    outputs: Outputs,
    channels: int,
    shape: tuple[int, int],
) -> PredictOptions:
    """`options` with a streamed image's automatic tile size: the one that computes the fewest
    pixels while the tile batch and the rows its outputs' row bands hold fit the budget
    (`memory_budget_mb`, or `STREAM_MEMORY_BUDGET_MB`); one tile per batch unless one was
    given. A tile size that was given is kept."""
    if options.tile_size is not None:
        return options
    budget = options.memory_budget_mb or STREAM_MEMORY_BUDGET_MB
    batch_size = options.batch_size or 1
    tile_size = tiling.choose_tile_size(
        shape,
        model,
        bytes_per_pixel=tiling.tile_bytes_per_pixel(
            model, channels, element_size=options.element_size
        ),
        budget_bytes=budget * 2**20,
        halo=options.halo,
        batch_size=batch_size,
        row_bytes=shape[1] * outputs.streamed_bytes_per_pixel,
        band_rows=outputs.chunk_size,
    )
    return replace(options, tile_size=tile_size, batch_size=batch_size)
