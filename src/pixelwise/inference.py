"""Predict files: the library behind `pixelwise predict`.

`predict_files` reads images (files, folders, multi-page TIFF stacks), normalises them as the
checkpoint records, runs overlap-tile inference (`pixelwise.tiling.predict`) and writes, under
`out_dir`:

    <name>.png            class map: palette PNG whose pixel values are the class ids (0..K-1)
                          and whose palette colours them (the checkpoint's "palette", else the
                          PASCAL VOC map: 0 black, 1 dark red, 2 green, ...); readers that
                          honour palettes show colours, `pixelwise.data.read_image` and
                          `PIL.Image.open(...)` + `np.array` give the ids. A binary map is
                          written the same way, so 1 shows as red, not as a near-black grey.
    <name>.tif            the class map instead, as a grayscale uint8/uint16 TIFF of class ids,
                          when output_format="tif", the model has more than 256 classes, or
                          the image has more than `stream_pixels` pixels (streamed, below).
    probs/<name>.tif      with probs=True: float32 softmax probabilities, K pages of (H, W).
    overlays/<name>.png   with overlay=True: the class colours blended over the image.
    objects/<name>.csv    with objects=True: one row per connected object of every class except
                          0 (`pixelwise.instances.label` / `object_table`).

`<name>` is the input's stem; page i of a multi-page TIFF is an image of its own named
`<stem>_p0003` (i = 3, four digits), so `out_dir` pairs with the input folder by stem as a mask
folder does (`pixelwise.data`). Stems given twice (a.png and a.tif) get their suffix appended
(`a_png`, `a_tif`). Every file is written to a temporary file beside its destination and renamed
over it, so an interrupted run never leaves a truncated file under a final name.

Bad inputs (unreadable file, empty image, NaN values, channel count the model does not take,
dtype unlike the training data) cost one line through `log` and an entry in the summary; the
other files are still processed. Options that would fail every file (bad tile size, unknown
output format) raise ValueError before any work.

Large images (more than `stream_pixels`, 4096² by default) are streamed: an uncompressed TIFF is
memory-mapped and read by region, the network input is normalised tile by tile
(`NormalizedImage`), and the outputs go straight into memory-mapped TIFFs, so memory stays
bounded by the tile batch. Overlays and object tables, which need the whole map in memory, are
skipped for such images (with a note).

Distributed: with `world_size` processes (e.g. `torchrun --nproc-per-node 4 -m pixelwise predict
...`), rank r processes files[r::world_size]; no process group is needed. `distributed_context`
reads RANK / WORLD_SIZE / LOCAL_RANK and `select_device` picks `cuda:{LOCAL_RANK}`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from torch import nn

from pixelwise import instances, report, tiling
from pixelwise.checkpoint import atomic_write, load_state
from pixelwise.data import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    DataError,
    as_palette,
    page_count,
    read_image,
    to_chw_float,
    write_image_atomic,
)

OUTPUT_FORMATS = ("png", "tif")
STREAM_PIXELS = 4096 * 4096
"""Images with more pixels than this are streamed (memory-mapped input and outputs)."""
OVERLAY_ALPHA = 0.4
PROBS_DIR, OVERLAYS_DIR, OBJECTS_DIR = "probs", "overlays", "objects"

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Distributed context and device
# --------------------------------------------------------------------------------------------


def distributed_context(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's RANK, WORLD_SIZE and LOCAL_RANK.

    Missing variables mean a single process: (0, 1, 0).

    Raises:
        ValueError: a variable is not an integer, or rank is outside [0, world_size).
    """
    env = os.environ if environ is None else environ
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = env.get(name, "")
        try:
            values.append(int(text) if text.strip() else default)
        except ValueError:
            raise ValueError(
                f"environment variable {name} must be an integer, got {text!r}; launch with "
                f"torchrun or unset it"
            ) from None
    rank, world_size, local_rank = values
    _check_rank(rank, world_size)
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must be >= 0, got {local_rank}")
    return rank, world_size, local_rank


def select_device(
    device: str | torch.device | None = None, local_rank: int | None = None
) -> torch.device:
    """`device` when given, else `cuda:{local_rank}` when CUDA is available, else the CPU.

    `local_rank` defaults to the LOCAL_RANK environment variable (0 when unset), so each process
    of `torchrun` takes its own GPU.
    """
    if device is not None:
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank is None:
        local_rank = distributed_context()[2]
    return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size) with world_size >= 1, got rank {rank} and "
            f"world_size {world_size}"
        )


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One input that could not be predicted.

    Attributes:
        source: the file (and page) concerned.
        message: one line: the file, the problem and the fix.
    """

    source: str
    message: str


@dataclass
class PredictSummary:
    """What one `predict_files` call (one rank) did.

    Attributes:
        images: images (pages count one each) predicted and written.
        written: every file written, in order.
        failures: inputs that failed, one line each.
        notes: remarks that are not failures (e.g. an overlay skipped for a streamed image).
        rank, world_size: the share of the inputs this summary covers (files[rank::world_size]).
    """

    images: int = 0
    written: list[Path] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exit_status(self) -> int:
        """0 when every input was predicted, else 1 (what the CLI should exit with)."""
        return 0 if self.ok else 1

    def report(self) -> str:
        """A few lines for the end of a run: counts, then every failure again."""
        share = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        head = f"{share}predicted {self.images} image(s), wrote {len(self.written)} file(s)"
        if self.ok:
            return head
        lines = [f"{head}; {len(self.failures)} input(s) failed:"]
        lines += [f"  {f.message}" for f in self.failures]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Inputs and output names
# --------------------------------------------------------------------------------------------


def _folder_images(folder: Path) -> list[Path]:
    """PNG/TIFF/JPEG files directly inside `folder` (not recursive, no hidden files), by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Failure]]:
    """Files to predict: each file as given, each folder's image files (sorted by name).

    A file named twice (also through its folder) is kept once, at its first position.

    Returns:
        (files, failures): failures for paths that do not exist and folders without images.
    """
    files: list[Path] = []
    failures: list[Failure] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                failures.append(
                    Failure(
                        str(path),
                        f"{path}: folder has no image files ({', '.join(IMAGE_SUFFIXES)}); "
                        f"point at the folder holding the images",
                    )
                )
        elif path.is_file():
            found = [path]
        else:
            failures.append(Failure(str(path), f"{path}: no such file or folder; check the path"))
            found = []
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    return files, failures


def output_names(files: Sequence[Path]) -> list[str]:
    """Output base name of each file: its stem; stems that repeat get their suffix appended,
    then their folder's name prepended, then a counter, until every name is unique.

    Worked example: [x/a.png, x/a.tif, x/b.png, y/b.png] → [a_png, a_tif, x_b_png, y_b_png].
    """
    candidates = [
        lambda p: p.stem,
        lambda p: f"{p.stem}_{p.suffix.lstrip('.').lower()}",
        lambda p: f"{p.parent.name}_{p.stem}_{p.suffix.lstrip('.').lower()}",
    ]
    names = [candidates[0](p) for p in files]
    for make in candidates[1:]:
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        names = [make(p) if counts[n] > 1 else n for p, n in zip(files, names, strict=True)]
    seen: dict[str, int] = {}
    unique = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return unique


# --------------------------------------------------------------------------------------------
# Lazily normalised image
# --------------------------------------------------------------------------------------------


class NormalizedImage:
    """(C, H, W) float32 view of an (H, W) or (H, W, C) image, normalised when read.

    Reading `view[:, r0:r1, c0:c1]` reads only that region of the underlying array (a
    memory-mapped TIFF stays on disk), then applies `pixelwise.data.to_chw_float`: dtype scaling
    (uint8 / 255, ...), the per-channel standardisation (x − mean) / std, and the NaN check. So
    `tiling.predict(model, view)` equals `tiling.predict(model, to_chw_float(image, ...))` while
    holding only one tile batch in memory.

    Args:
        image: (H, W) or (H, W, C) array-like supporting 2-D slicing (numpy array, np.memmap).
        normalization: the checkpoint's {"mean", "std", "scale"} record, or None (dtype scaling
            only).
        source: name used in error messages.
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, image: Any, normalization: dict | None, source: str) -> None:
        if image.ndim not in (2, 3):
            raise DataError(f"{source}: expected an (H, W) or (H, W, C) image, got {image.shape}")
        channels = 1 if image.ndim == 2 else image.shape[2]
        self.shape = (channels, *image.shape[:2])
        self._image, self._normalization, self._source = image, normalization, source

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        channels, rows, cols = key
        if not (isinstance(rows, slice) and isinstance(cols, slice)):
            raise TypeError(f"NormalizedImage supports slices for rows and columns, got {key}")
        block = np.asarray(self._image[rows, cols])
        x = to_chw_float(block, normalization=self._normalization, source=self._source)
        return x[channels]


# --------------------------------------------------------------------------------------------
# Settings shared by every image of a run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    model: nn.Module
    num_classes: int
    in_channels: int
    normalization: dict | None
    palette: np.ndarray  # (max(K, 2), 3) uint8
    out_dir: Path
    probs: bool
    overlay: bool
    objects: bool
    output_format: str
    stream_pixels: int
    predict_options: dict

    @property
    def label_dtype(self) -> type:
        return np.uint8 if self.num_classes <= 256 else np.uint16

    def class_map_path(self, name: str, *, streamed: bool) -> Path:
        tif = self.output_format == "tif" or self.num_classes > 256 or streamed
        return self.out_dir / f"{name}.{'tif' if tif else 'png'}"


def _resolve_palette(meta: dict, num_classes: int) -> tuple[np.ndarray, str | None]:
    """(colours, note): the checkpoint's palette completed by the VOC map, at least 2 rows.

    A palette that is not (n, 3) RGB is ignored with a note; a short one is extended.
    """
    n = min(max(num_classes, 2), 256)
    colours = report.palette(n)
    recorded = meta.get("palette")
    if recorded is None:
        return colours, None
    try:
        given = as_palette(recorded)
    except (ValueError, TypeError) as e:
        return colours, f"checkpoint palette ignored ({e}); using the PASCAL VOC colours"
    rows = min(len(given), n)
    colours[:rows] = given[:rows]
    return colours, None


def _check_options(model: nn.Module, fmt: Any, options: Mapping[str, Any]) -> None:
    """Raise ValueError for options that would fail every image, before any work."""
    tile_size, batch_size = options["tile_size"], options["batch_size"]
    tta, pad_mode, autocast = options["tta"], options["pad_mode"], options["autocast"]
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    if autocast not in (None, *tiling.AUTOCAST_DTYPES):
        raise ValueError(
            f"autocast must be None or one of {tuple(tiling.AUTOCAST_DTYPES)}, got {autocast!r}"
        )
    if not options["memory_budget_mb"] > 0:
        raise ValueError(
            f"memory_budget_mb must be > 0, got {options['memory_budget_mb']}; it bounds the "
            f"activations of one tile batch"
        )
    if pad_mode not in tiling.PAD_MODES:
        raise ValueError(f"pad_mode must be one of {tiling.PAD_MODES}, got {pad_mode!r}")
    if tta not in (None, *tiling.TTA_MODES):
        raise ValueError(f"tta must be None or one of {tiling.TTA_MODES}, got {tta!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if tile_size is not None:
        tiling.plan_tiles((1, 1), model, tile_size)  # raises naming the nearest valid sizes


def _check_not_inputs(files: Sequence[Path], out_dir: Path, names: Sequence[str]) -> None:
    """Refuse an out_dir where a class map would replace one of the inputs."""
    inputs = {f.resolve() for f in files}
    for name in names:
        for suffix in OUTPUT_FORMATS:
            target = (out_dir / f"{name}.{suffix}").resolve()
            if target in inputs:
                raise ValueError(
                    f"out_dir {out_dir} would overwrite the input {target}; choose another "
                    f"output folder"
                )


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------


def _where(path: Path, page: int | None) -> str:
    return str(path) if page is None else f"{path} [page {page}]"


def _open_image(path: Path, page: int | None) -> np.ndarray:
    """(H, W) or (H, W, C) pixels: a read-only memory map for uncompressed TIFF pages, else
    the decoded array (`pixelwise.data.read_image`)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tif:
                keyframe = tif.pages[page or 0]
                separate = keyframe.samplesperpixel > 1 and keyframe.planarconfig == 2
            image = tifffile.memmap(path, page=page or 0, mode="r")
            return np.moveaxis(image, 0, -1) if separate else image
        except (ValueError, OSError, IndexError, KeyError):
            pass  # compressed, tiled or corrupt: decode (read_image reports corrupt files)
    return read_image(path, page=page)


def _channel_problem(channels: int, expected: int) -> str | None:
    if channels == expected:
        return None
    kind = {1: "grayscale, 1 channel", 3: "RGB, 3 channels", 4: "RGBA, 4 channels"}
    have = kind.get(channels, f"{channels} channels")
    if expected == 1 and channels in (3, 4):
        fix = (
            f"convert it to grayscale (e.g. PIL's Image.convert('L')) or use a model trained "
            f"on {channels}-channel images"
        )
    elif expected == 3 and channels == 1:
        fix = "convert it to RGB or use a model trained on 1-channel images"
    else:
        fix = (
            f"convert it to {expected} channel(s) or use a model trained on {channels}-channel "
            f"images"
        )
    return f"image is {have} but the model takes {expected} channel(s); {fix}"


def _check_image(image: np.ndarray, where: str, expected_channels: int) -> None:
    """DataError for an empty image, a shape that is not (H, W[, C]), or the wrong channels."""
    if image.size == 0:
        raise DataError(
            f"{where}: image is empty ({' × '.join(map(str, image.shape))}, 0 pixels); "
            f"remove the file or replace it with a real image"
        )
    if image.ndim not in (2, 3):
        raise DataError(
            f"{where}: expected an (H, W) or (H, W, C) image, got shape {image.shape}; "
            f"save one 2-D image per file or page"
        )
    channels = 1 if image.ndim == 2 else image.shape[2]
    problem = _channel_problem(channels, expected_channels)
    if problem:
        raise DataError(f"{where}: {problem}")


def _display(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) version of an image for the overlay (RGBA → RGB, else channel 0)."""
    if image.ndim == 2 or image.shape[2] == 3:
        return image
    return image[..., :3] if image.shape[2] == 4 else image[..., 0]


def _write_probs(path: Path, probs: np.ndarray) -> None:
    """(K, H, W) float32 probabilities as a K-page TIFF, atomically."""
    atomic_write(
        path, lambda tmp: tifffile.imwrite(tmp, probs.astype(np.float32), photometric="minisblack")
    )


def _predict_in_memory(run: _Run, image: np.ndarray, where: str, name: str) -> list[Path]:
    """Predict an image held in memory and write every requested output."""
    x = to_chw_float(image, normalization=run.normalization, source=where)  # (C, H, W)
    probs = None
    if run.probs or run.objects:
        probs = tiling.predict(run.model, x, output="probs", **run.predict_options)  # (K, H, W)
        labels = probs.argmax(axis=0).astype(run.label_dtype)
    else:
        labels = tiling.predict(run.model, x, output="labels", **run.predict_options)  # (H, W)
    written = []
    target = run.class_map_path(name, streamed=False)
    palette = run.palette if target.suffix == ".png" else None
    write_image_atomic(target, labels, palette=palette)
    written.append(target)
    if run.probs:
        target = run.out_dir / PROBS_DIR / f"{name}.tif"
        _write_probs(target, probs)
        written.append(target)
    if run.overlay:
        target = run.out_dir / OVERLAYS_DIR / f"{name}.png"
        rgb = report.overlay(_display(image), labels, alpha=OVERLAY_ALPHA, palette=run.palette)
        write_image_atomic(target, rgb)
        written.append(target)
    if run.objects:
        target = run.out_dir / OBJECTS_DIR / f"{name}.csv"
        objects = instances.label(labels)
        rows = instances.object_table(objects, class_map=labels, probs=probs)
        instances.write_object_csv(rows, target)
        written.append(target)
    return written


@contextmanager
def _staged(paths: Sequence[Path]) -> Iterator[list[str]]:
    """Temporary files beside `paths`; renamed over them if the block succeeds, else deleted."""
    temps: list[str] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            temps.append(tmp)
        yield temps
        for tmp, path in zip(temps, paths, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        raise


def _predict_streamed(run: _Run, image: Any, where: str, name: str) -> list[Path]:
    """Predict a large image tile by tile into memory-mapped TIFFs (class map, probabilities)."""
    view = NormalizedImage(image, run.normalization, where)
    view[:, :1, :1]  # checks dtype and normalisation on one pixel before any work
    _, height, width = view.shape
    k = run.num_classes
    paths = [run.class_map_path(name, streamed=True)]
    if run.probs:
        paths.append(run.out_dir / PROBS_DIR / f"{name}.tif")
    with _staged(paths) as temps:
        labels = tifffile.memmap(
            temps[0], shape=(height, width), dtype=run.label_dtype, photometric="minisblack"
        )
        if run.probs:
            probs = tifffile.memmap(
                temps[1], shape=(k, height, width), dtype=np.float32, photometric="minisblack"
            )
            tiling.predict(run.model, view, output="probs", out=probs, **run.predict_options)
            rows = max(1, 2**24 // (4 * k * width))  # argmax ~16 MB of probabilities at a time
            for r in range(0, height, rows):
                labels[r : r + rows] = probs[:, r : r + rows].argmax(axis=0)
            probs.flush()
            del probs
        else:
            tiling.predict(run.model, view, output="labels", out=labels, **run.predict_options)
        labels.flush()
        del labels
    return paths


def _predict_image(
    run: _Run, path: Path, page: int | None, name: str, note: Callable[[str], None]
) -> list[Path]:
    """Read, check and predict one image (one page); return the files written."""
    where = _where(path, page)
    image = _open_image(path, page)
    _check_image(image, where, run.in_channels)
    if image.shape[0] * image.shape[1] <= run.stream_pixels:
        return _predict_in_memory(run, np.asarray(image), where, name)
    skipped = [o for o, on in (("overlay", run.overlay), ("objects", run.objects)) if on]
    if skipped:
        note(
            f"{where}: {' and '.join(skipped)} skipped: {image.shape[0]}×{image.shape[1]} "
            f"pixels exceed stream_pixels={run.stream_pixels}, so the maps stay on disk; crop "
            f"the image to get them"
        )
    return _predict_streamed(run, image, where, name)


def _pages(path: Path) -> list[int | None]:
    """[None] for a single image, [0, 1, ...] for a multi-page TIFF."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return [None]
    n = page_count(path)
    return [None] if n == 1 else list(range(n))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def predict_files(
    checkpoint: str | os.PathLike | nn.Module,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    tile_size: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
    tta: str | None = None,
    pad_mode: str = "reflect",
    probs: bool = False,
    overlay: bool = False,
    objects: bool = False,
    output_format: str = "png",
    device: str | torch.device | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    stream_pixels: int = STREAM_PIXELS,
    memory_budget_mb: float = tiling.DEFAULT_MEMORY_BUDGET_MB,
    autocast: str | None = None,
    log: Log | None = print,
) -> PredictSummary:
    """Segment image files with a checkpoint and write the results (see the module docstring).

    Args:
        checkpoint: `.safetensors` checkpoint (its "normalization" record is applied: dtype
            scaling, then (x − mean) / std per channel; without one, dtype scaling only), or a
            model (no normalisation beyond dtype scaling).
        inputs: image files (PNG, TIFF, JPEG; multi-page TIFFs are one image per page) and
            folders (their image files, sorted by name, not recursive).
        out_dir: output folder (created).
        tile_size, batch_size, tta, pad_mode: passed to `pixelwise.tiling.predict`
            (defaults: tiles and batch chosen to fit its memory budget; no TTA; mirroring).
        probs: also write (K, H, W) float32 probabilities to probs/<name>.tif.
        overlay: also write a colour overlay to overlays/<name>.png.
        objects: also write an object table to objects/<name>.csv.
        output_format: "png" (palette PNG class maps) or "tif" (grayscale TIFF class ids).
        device: where to run; default `select_device()`: cuda:LOCAL_RANK, else the CPU.
        progress: per-image tile progress bar (only on a terminal).
        rank, world_size: this process takes files[rank::world_size].
        stream_pixels: images with more pixels are streamed (see the module docstring).
        memory_budget_mb, autocast: passed to `pixelwise.tiling.predict` (bound on one tile
            batch's activations; None, "bf16" or "fp16").
        log: called with one line per image (written or failed) and per note; None: silent.

    Returns:
        The summary of this rank's share; `exit_status` is 1 when any input failed.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        ValueError: an option that would fail every image (the message names the fix), or an
            out_dir that would overwrite an input.
    """
    _check_rank(rank, world_size)
    if isinstance(checkpoint, nn.Module):
        model, meta = checkpoint, {}
    else:
        model, meta, _ = load_state(checkpoint)
    options = dict(
        tile_size=tile_size,
        batch_size=batch_size,
        tta=tta,
        pad_mode=pad_mode,
        progress=progress,
        memory_budget_mb=memory_budget_mb,
        autocast=autocast,
    )
    _check_options(model, output_format, options)
    out = Path(out_dir)
    files, missing = expand_inputs(inputs)
    names = output_names(files)
    _check_not_inputs(files, out, names)

    log_to = _Log(PredictSummary(rank=rank, world_size=world_size), log)
    if rank == 0:  # every rank expands the same inputs; report missing ones once
        for failure in missing:
            log_to.fail(failure.source, failure.message)
    config = getattr(model, "hparams", {})
    palette, palette_note = _resolve_palette(meta, config["num_classes"])
    if palette_note:
        log_to.note(palette_note)
    run = _Run(
        model=model.to(select_device(device)),
        num_classes=config["num_classes"],
        in_channels=config["in_channels"],
        normalization=meta.get("normalization"),
        palette=palette,
        out_dir=out,
        probs=probs,
        overlay=overlay,
        objects=objects,
        output_format=output_format,
        stream_pixels=stream_pixels,
        predict_options=options,
    )
    mine = list(zip(files, names, strict=True))[rank::world_size]
    for number, (path, name) in enumerate(mine, 1):
        _predict_file(run, path, name, f"[{number}/{len(mine)}]", log_to)
    return log_to.summary


class _Log:
    """Records failures, notes and written files in the summary and emits one line for each."""

    def __init__(self, summary: PredictSummary, log: Log | None) -> None:
        self.summary = summary
        self._emit = log or (lambda _line: None)
        self._prefix = f"[rank {summary.rank}] " if summary.world_size > 1 else ""

    def note(self, line: str) -> None:
        self.summary.notes.append(line)
        self._emit(f"{self._prefix}note: {line}")

    def fail(self, source: str, message: str) -> None:
        self.summary.failures.append(Failure(source, message))
        self._emit(f"{self._prefix}failed: {message}")

    def done(self, line: str, written: list[Path]) -> None:
        self.summary.images += 1
        self.summary.written += written
        self._emit(f"{self._prefix}{line}")


def _predict_file(run: _Run, path: Path, name: str, counter: str, log: _Log) -> None:
    """Predict every page of one file; failures are logged, not raised (user errors only)."""
    try:
        pages = _pages(path)
    except DataError as e:
        log.fail(str(path), _one_line(e))
        return
    for page in pages:
        where = _where(path, page)
        page_name = name if page is None else f"{name}_p{page:04d}"
        start = time.perf_counter()
        try:
            written = _predict_image(run, path, page, page_name, log.note)
        except DataError as e:
            log.fail(where, _one_line(e))
            continue
        except torch.cuda.OutOfMemoryError:
            log.fail(where, f"{where}: out of GPU memory; pass a smaller tile size or batch size")
            continue
        except OSError as e:
            log.fail(where, f"{where}: cannot write the results ({_one_line(e)}); check the disk")
            continue
        names = ", ".join(str(p.relative_to(run.out_dir)) for p in written)
        log.done(f"{counter} {where} → {names} ({time.perf_counter() - start:.1f} s)", written)
