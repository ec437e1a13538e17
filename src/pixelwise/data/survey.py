"""The dataset survey: read every file once, collect every problem, measure what training needs.

:func:`survey_dataset` reads each image and mask of a :class:`~pixelwise.data.DatasetIndex` once
and returns a :class:`SurveyReport` holding

* every problem, each with its file and fix (size mismatches, labels outside the classes, lossy
  masks, unknown colours, unreadable or unpaired files, NaNs, mixed channels or dtypes, mixed
  0/255 and multi-class masks) instead of stopping at the first;
* what training needs and the data alone tell: the class count (``num_classes`` inferred from
  the mask values when not given) and the per-channel normalisation of the images;
* the statistics :func:`check_dataset` prints for ``pixelwise data check`` (sizes, channels,
  dtypes, class pixel shares).

Refusing to train on a report with problems is :func:`pixelwise.data.load_dataset`'s job;
finding the files is :mod:`pixelwise.data.layouts`'.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelwise.data.errors import DataError, Problem, StrPath, location
from pixelwise.data.io import read_image
from pixelwise.data.layouts import DatasetIndex, Sample, open_dataset
from pixelwise.data.masks import DecodedMask, MaskEncoding, decode_mask
from pixelwise.data.normalization import ChannelMoments, checked_chw, dtype_scale


@dataclass
class SurveyReport:
    """Everything :func:`survey_dataset` found.

    Attributes:
        problems: every blocking problem as (path, message, fix).
        notices: non-blocking remarks (0/255 masks read as 0/1, inferred class count, ...).
        encoding: the mask encoding with ``num_classes`` resolved (inferred when not given).
        n_samples: number of samples checked.
        sizes: image (H, W) → count.
        channels: image channel count → count.
        dtypes: image dtype name → count.
        class_pixels: (num_classes,) int64 pixel count per class over all readable masks.
        ignore_pixels: pixels equal to ``ignore_index``.
        normalization: per-channel ``{"mean", "std", "scale"}`` of the images, measured over every
            pixel after dtype scaling (``None`` when no image could be read).
        object_diameters: (N,) float64 equivalent-circle diameter √(4·area/π) in pixels of
            every object of the instance masks (empty for class masks); e.g. an object of 314
            pixels is 20.0 px across.
    """

    problems: list[Problem]
    notices: list[str]
    encoding: MaskEncoding
    n_samples: int = 0
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    channels: Counter[int] = field(default_factory=Counter)
    dtypes: Counter[str] = field(default_factory=Counter)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ignore_pixels: int = 0
    normalization: dict[str, Any] | None = None
    object_diameters: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def ok(self) -> bool:
        """True when there is no problem."""
        return not self.problems

    def format(self) -> str:
        """Problems grouped by file, each with its fix; notices after them."""
        if not self.problems:
            lines = ["no problems found"]
        else:
            by_path: dict[str, list[Problem]] = {}
            for problem in self.problems:
                by_path.setdefault(problem.path, []).append(problem)
            lines = [f"{len(self.problems)} problem(s) in {len(by_path)} file(s):"]
            for path, problems in by_path.items():
                lines.append(f"  {path}")
                for problem in problems:
                    lines.append(f"    - {problem.message}")
                    lines.append(f"      fix: {problem.fix}")
        lines += [f"notice: {notice}" for notice in self.notices]
        return "\n".join(lines)


@dataclass
class _Checked:
    """What reading one sample produced (fields stay None when a file could not be read)."""

    problems: list[Problem]
    size: tuple[int, int] | None = None
    channels: int | None = None
    dtype: str | None = None
    chw: np.ndarray | None = None  # (C, H, W) view of the raw image
    mask: DecodedMask | None = None
    mask_dtype: str | None = None


def _check_sample(sample: Sample, encoding: MaskEncoding) -> _Checked:
    """Read and decode one sample's image and mask, collecting its problems."""
    checked = _Checked([])
    problems = checked.problems
    image_where = location(sample.image_path, sample.page)
    try:
        image = read_image(sample.image_path, page=sample.page)
        checked.size = (image.shape[0], image.shape[1])
        checked.channels = 1 if image.ndim == 2 else image.shape[2]
        checked.dtype = image.dtype.name
        checked.chw = checked_chw(image, image_where)
    except DataError as exc:
        problems.extend(exc.problems)
    if sample.mask_path is None:
        problems.append(
            Problem(image_where, "image has no mask", "add a mask with the same stem or remove it")
        )
        return checked
    mask_where = location(sample.mask_path, sample.page)
    try:
        raw = read_image(sample.mask_path, page=sample.page)
        checked.mask_dtype = raw.dtype.name
        checked.mask = decode_mask(raw, encoding, path=sample.mask_path, page=sample.page)
    except DataError as exc:
        problems.extend(exc.problems)
        return checked
    mask_size = checked.mask.mask.shape
    if checked.size is not None and mask_size != checked.size:
        problems.append(
            Problem(
                mask_where,
                f"size mismatch: mask is {mask_size[0]}x{mask_size[1]} (HxW) but image "
                f"{sample.image_path.name} is {checked.size[0]}x{checked.size[1]}",
                "save the mask at its image's size (same height and width)",
            )
        )
    return checked


def _consistency_problems(
    files: list[tuple[str, tuple[int, str]]],
) -> tuple[list[Problem], tuple[int, str] | None]:
    """Images whose (channels, dtype) differ from the most common one."""
    counts = Counter(key for _, key in files)
    if not counts:
        return [], None
    common, n_common = counts.most_common(1)[0]
    problems = [
        Problem(
            where,
            f"image has {key[0]} channel(s) of {key[1]} but most images ({n_common}) have "
            f"{common[0]} of {common[1]}",
            "convert all images to the same number of channels and dtype",
        )
        for where, key in files
        if key != common
    ]
    return problems, common


@dataclass
class _Tally:
    """What the survey adds up over the masks before it resolves the class count."""

    pixels: Counter[int] = field(default_factory=Counter)  # label value -> pixels
    binary_files: int = 0  # masks stored as 0/255 and read as 0/1
    multi_class_files: list[tuple[str, int]] = field(default_factory=list)  # (where, top label)
    objects: list[int] = field(default_factory=list)  # instances per instance mask
    object_sizes: list[np.ndarray] = field(default_factory=list)  # their pixels, per mask
    max_label_dtype: tuple[int, str] = (-1, "")  # highest label and its mask's dtype

    def add(self, sample: Sample, decoded: DecodedMask, dtype: str, encoding: MaskEncoding) -> None:
        """Count one decoded mask (stored with `dtype`) of `sample`."""
        self.pixels.update(dict(zip(decoded.values.tolist(), decoded.counts.tolist(), strict=True)))
        labels = decoded.values
        if encoding.ignore_index is not None:
            labels = labels[labels != encoding.ignore_index]
        top = int(labels.max()) if labels.size else -1
        self.max_label_dtype = max(self.max_label_dtype, (top, dtype))
        self.binary_files += decoded.binary_255
        if not decoded.binary_255 and top >= 2 and sample.mask_path is not None:
            self.multi_class_files.append((location(sample.mask_path, sample.page), top))
        if encoding.instances:
            self.objects.append(decoded.n_objects)
            self.object_sizes.append(decoded.object_sizes)


def _start(
    samples: DatasetIndex | Sequence[Sample],
    *,
    num_classes: int | None,
    ignore_index: int | None,
    palette: Any,
    instances: bool | None,
) -> tuple[list[Sample], SurveyReport, str]:
    """(samples, empty report with the overriding encoding, name of the whole for messages)."""
    if isinstance(samples, DatasetIndex):
        base, items = samples.encoding, list(samples.samples)
        problems, notices = list(samples.problems), list(samples.notices)
        where = str(samples.root)
    else:
        base, items, problems, notices, where = MaskEncoding(), list(samples), [], [], "dataset"
    encoding = MaskEncoding(
        base.num_classes if num_classes is None else num_classes,
        base.ignore_index if ignore_index is None else ignore_index,
        base.palette if palette is None else palette,
        base.instances if instances is None else instances,
    )
    return items, SurveyReport(problems, notices, encoding, n_samples=len(items)), where


def _measure_normalization(
    image_keys: list[tuple[str, tuple[int, str]]],
    moments: dict[tuple[int, str], ChannelMoments],
    report: SurveyReport,
) -> None:
    """Flag images unlike the most common (channels, dtype); record that group's normalisation."""
    mixed, common = _consistency_problems(image_keys)
    report.problems.extend(mixed)
    if common is not None:
        report.normalization = moments[common].normalization(dtype_scale(common[1]))


def _label_encoding_remarks(tally: _Tally, report: SurveyReport) -> None:
    """Problems of masks mixing 0/255 and multi-class labels; notices on 0/255 and instances."""
    if tally.binary_files and tally.multi_class_files:
        report.problems.extend(
            Problem(
                where_mask,
                f"mask has labels up to {top} while {tally.binary_files} other mask(s) are 0/255 "
                "binary",
                "use one label encoding for all masks (pass num_classes= / --num-classes to stop "
                "reading 0/255 as 0/1)",
            )
            for where_mask, top in tally.multi_class_files
        )
    if tally.binary_files:
        report.notices.append(
            f"{tally.binary_files} of {report.n_samples} mask(s) stored as 0/255 were read as "
            "0/1 (255 -> class 1)"
        )
    if tally.objects:
        report.notices.append(
            f"instance masks: {min(tally.objects)}-{max(tally.objects)} objects per mask"
        )


def _resolve_classes(tally: _Tally, report: SurveyReport) -> None:
    """Infer ``num_classes`` when not given (max label + 1; 2 for 0/255 or instance masks),
    then count the pixels of each class and of ``ignore_index``."""
    given = report.encoding
    resolved = given.num_classes
    top, dtype = tally.max_label_dtype
    if resolved is None and top >= 0:
        resolved = 2 if given.instances or tally.binary_files else max(2, top + 1)
        report.notices.append(
            f"num_classes not given: using {resolved} (from the mask values; pass "
            "num_classes= / --num-classes to set it)"
        )
        if not given.instances and resolved > 2 and dtype in ("uint16", "int32"):
            report.notices.append(
                f"masks are {dtype} with labels up to {top}; if they are instance labels "
                "(0 = background, 1..K = objects) pass instances=True / --instances"
            )
    report.encoding = MaskEncoding(resolved, given.ignore_index, given.palette, given.instances)
    if resolved is not None:
        report.class_pixels = np.array(
            [tally.pixels.get(label, 0) for label in range(resolved)], dtype=np.int64
        )
    if given.ignore_index is not None:
        report.ignore_pixels = int(tally.pixels.get(given.ignore_index, 0))


def equivalent_diameters(areas: np.ndarray) -> np.ndarray:
    """(N,) float64 diameters √(4·area/π) of circles of the given (N,) pixel areas: the size
    of objects of any shape (314 pixels → 20.0 px)."""
    return np.sqrt(4.0 * np.asarray(areas, np.float64) / np.pi)


def survey_dataset(
    samples: DatasetIndex | Sequence[Sample],
    *,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    palette: Any = None,
    instances: bool | None = None,
) -> SurveyReport:
    """Read every image and mask once: collect every problem, infer the class count, measure the
    image normalisation.

    Checks: unreadable files, NaN/inf images, image/mask size mismatch, mask values outside
    ``0..num_classes-1`` (``ignore_index`` allowed), lossy (JPEG) masks, RGB colours not in the
    palette, masks mixing 0/255 binary and multi-class encodings, images with differing channel
    count or dtype, no samples at all — plus, for a :class:`DatasetIndex`, its listing problems
    (unpaired/duplicate stems, empty folders).

    Infers: ``num_classes`` when neither given here nor in the index (max label + 1, or 2 for
    0/255 and instance masks; said in a notice), and the per-channel image normalisation of the
    most common (channels, dtype) group. Also gathers the statistics shown by
    :func:`check_dataset`.

    Args:
        samples: a :class:`DatasetIndex` (its encoding and listing problems are used) or samples.
        num_classes: overrides the index's value; ``None`` keeps it (or infers max label + 1).
        ignore_index: overrides the index's value when given.
        palette: overrides the index's palette when given.
        instances: overrides the index's instance flag when given.

    Returns:
        :class:`SurveyReport` (``.ok`` false when any problem was found) with the resolved
        ``.encoding`` and the measured ``.normalization``.
    """
    items, report, where = _start(
        samples,
        num_classes=num_classes,
        ignore_index=ignore_index,
        palette=palette,
        instances=instances,
    )
    encoding = report.encoding
    image_keys: list[tuple[str, tuple[int, str]]] = []  # (where, (channels, dtype)) per image
    moments: dict[tuple[int, str], ChannelMoments] = {}
    tally = _Tally()
    for sample in items:
        checked = _check_sample(sample, encoding)
        report.problems.extend(checked.problems)
        if checked.size is not None and checked.channels is not None and checked.dtype:
            key = (checked.channels, checked.dtype)
            image_keys.append((location(sample.image_path, sample.page), key))
            report.sizes[checked.size] += 1
            report.channels[checked.channels] += 1
            report.dtypes[checked.dtype] += 1
            if checked.chw is not None:
                moments.setdefault(key, ChannelMoments()).add(checked.chw, dtype_scale(key[1]))
        if checked.mask is not None:
            tally.add(sample, checked.mask, checked.mask_dtype or "", encoding)
    _measure_normalization(image_keys, moments, report)
    if tally.object_sizes:
        report.object_diameters = equivalent_diameters(np.concatenate(tally.object_sizes))
    _label_encoding_remarks(tally, report)
    _resolve_classes(tally, report)
    if not items and not report.problems:
        report.problems.append(
            Problem(where, "no image/mask pairs found", "check the dataset layout and file names")
        )
    return report


# ---- the summary of `pixelwise data check` ----


def _counted(counter: Counter[Any], show: Callable[[Any], str] = str) -> str:
    """``"a (3), b (1)"``: the keys of `counter`, most common first."""
    return ", ".join(f"{show(k)} ({n})" for k, n in counter.most_common())


def _summary_lines(index: DatasetIndex, report: SurveyReport, split: str | None) -> list[str]:
    """Dataset, sample count, sizes, channels, dtypes, normalisation and the class table."""
    lines = [
        f"Dataset: {index.root} (layout: {index.layout}, split: {split or 'all'})",
        f"Samples: {report.n_samples} image/mask pair(s)",
        f"Image sizes (HxW): {_counted(report.sizes, lambda s: f'{s[0]}x{s[1]}') or '-'}",
        f"Channels: {_counted(report.channels) or '-'}",
        f"Dtype: {_counted(report.dtypes) or '-'}",
    ]
    if report.normalization is not None:
        norm = report.normalization
        scale = norm["scale"]
        shown_scale = f"1/{round(1 / scale)}" if scale < 1 else f"{scale:g}"
        lines.append(
            f"Normalization: mean {[round(m, 4) for m in norm['mean']]}, std "
            f"{[round(s, 4) for s in norm['std']]} (scale {shown_scale})"
        )
    encoding = report.encoding
    lines.append(f"Classes: {encoding.num_classes or '-'} (ignore_index: {encoding.ignore_index})")
    total = int(report.class_pixels.sum()) + report.ignore_pixels
    if total:
        lines.append(f"  {'class':>6} {'pixels':>14} {'share':>7}")
        rows = [(str(label), int(n)) for label, n in enumerate(report.class_pixels)]
        if encoding.ignore_index is not None:
            rows.append(("ignore", report.ignore_pixels))
        lines += [f"  {label:>6} {n:>14,} {100 * n / total:>6.1f}%" for label, n in rows]
    return lines


def check_dataset(path: StrPath, **kwargs: Any) -> tuple[str, list[Problem]]:
    """Survey a dataset folder and describe it (``pixelwise data check DIR``).

    Args:
        path: dataset folder.
        **kwargs: :func:`open_dataset` keyword arguments (layout, split, num_classes, ...).

    Returns:
        (printable report, problems): image count, sizes, channels, dtype, normalisation, class
        pixel shares, notices and every problem with its fix; the data are fine when
        ``problems`` is empty.
    """
    try:
        index = open_dataset(path, **kwargs)
    except DataError as exc:
        report = SurveyReport(exc.problems, [], MaskEncoding())
        return f"Dataset: {path}\n{report.format()}", exc.problems
    report = survey_dataset(index)
    lines = _summary_lines(index, report, kwargs.get("split"))
    lines.append(f"Problems: {report.format()}" if report.ok else report.format())
    lines.append("Status: OK" if report.ok else f"Status: FAILED ({len(report.problems)} problems)")
    return "\n".join(lines), report.problems
