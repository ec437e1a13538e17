"""Finding the image/mask pairs of a dataset folder: :func:`open_dataset` and its layouts.

Layouts: folder pairs (``images/`` + ``masks/`` and their usual other names, SegNet CamVid's
``<split>/`` + ``<split>annot/``, per-split pairs), PASCAL VOC (``JPEGImages/`` +
``SegmentationClass/`` with ``ImageSets`` split lists) and multi-page TIFF stacks (ISBI 2012's
``train-volume.tif`` + ``train-labels.tif``). The result is a :class:`DatasetIndex` of
:class:`Sample` rows plus the listing problems found on the way (unpaired, duplicate or missing
files); nothing but page counts is read here. Reading every file and checking its contents is
the survey's job (:mod:`pixelwise.data.survey`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelwise.data.errors import DataError, Problem, StrPath, data_error
from pixelwise.data.io import IMAGE_SUFFIXES, TIFF_SUFFIXES, page_count
from pixelwise.data.masks import MaskEncoding

LAYOUTS = ("auto", "folder", "voc", "tiff-stack")
# Folder names recognised as the image / mask halves of a pair (first match wins).
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "inputs", "input", "raw")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "gt", "annotations", "annot", "targets")
# Multi-page TIFF pairs such as ISBI 2012's train-volume.tif + train-labels.tif.
_STACK_NAME = re.compile(
    r"^(?P<prefix>.*?)[-_]?(?P<role>volume|images?|raw|labels?|masks?|gt)$", re.IGNORECASE
)
_MASK_ROLES = ("label", "mask", "gt")
_LAYOUT_FIX = (
    "expected images/ + masks/ folders (also image/label, img/gt, <split>/ + <split>annot/, "
    "<split>/images + <split>/masks), a PASCAL VOC folder (JPEGImages/, SegmentationClass/) or "
    "TIFF stacks (<name>-volume.tif + <name>-labels.tif); rename the folders or files to one of "
    "these (from Python, open_dataset(images_dir=, masks_dir=) also takes any two folders)"
)


@dataclass(frozen=True)
class Sample:
    """One image/mask pair.

    Attributes:
        image_path: image file.
        mask_path: mask file, ``None`` when no mask exists (unlabelled image).
        name: unique display name (``stem``, or ``split/stem``, or ``stack/page``).
        page: page of a multi-page TIFF (same page in image and mask), else ``None``.
    """

    image_path: Path
    mask_path: Path | None
    name: str
    page: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_path", Path(self.image_path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))


@dataclass
class DatasetIndex:
    """What :func:`open_dataset` found: samples, mask encoding and listing problems.

    Attributes:
        root: dataset folder.
        layout: ``"folder"``, ``"voc"`` or ``"tiff-stack"``.
        samples: image/mask pairs in natural-sort order.
        encoding: mask encoding to decode them with.
        problems: listing problems (unpaired or duplicate stems, empty folders, page mismatch).
        notices: remarks that do not block training (e.g. pairing by trailing number).
    """

    root: Path
    layout: str
    samples: list[Sample]
    encoding: MaskEncoding
    problems: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _natural_key(text: str) -> tuple[Any, ...]:
    """Sort key putting "2" before "10": alternating (text, number) parts."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(part) if i % 2 else part.lower() for i, part in enumerate(parts))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: _natural_key(p.name),
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        ),
        key=lambda p: _natural_key(p.name),
    )


def _files_by_stem(folder: Path, problems: list[Problem], *, explicit: bool) -> dict[str, Path]:
    """Image files of a folder keyed by stem; empty folders and duplicate stems are problems.

    For a duplicated stem the first file (natural order) stays in the index so that its pair is
    still checked; the duplicate itself is reported. `explicit`: the folder was named by the
    caller (images_dir=/masks_dir=, Python only), not discovered.
    """
    groups: dict[str, list[Path]] = {}
    for path in _image_files(folder):
        groups.setdefault(path.stem, []).append(path)
    if not groups:
        problems.append(
            Problem(
                str(folder),
                f"folder has no image files ({', '.join(IMAGE_SUFFIXES)})",
                "put the files there, or point images_dir= / masks_dir= at the right folders"
                if explicit
                else f"put the {folder.name}/ files there, named like their pairs' files",
            )
        )
    for stem, paths in groups.items():
        if len(paths) == 1:
            continue
        problems.append(
            Problem(
                str(paths[0]),
                f"duplicate stem {stem!r}: {', '.join(p.name for p in paths)}",
                "keep one file per stem (remove or rename the others)",
            )
        )
    return {stem: paths[0] for stem, paths in groups.items()}


def _trailing_number(stem: str) -> int | None:
    match = re.search(r"(\d+)\D*$", stem)
    return int(match.group(1)) if match else None


def _pairing_keys(
    images: dict[str, Path], masks: dict[str, Path]
) -> tuple[dict[Any, str], dict[Any, str], bool]:
    """Keys to pair stems by: the stem itself, or, when no stems match, the trailing number.

    Worked example (Cell Tracking Challenge): ``t01.tif`` and ``man_seg01.tif`` share no stem but
    both end in 1, so they pair by number. Numbers are used only when they are unique per side.
    """
    if set(images) & set(masks) or not images or not masks:
        return {s: s for s in images}, {s: s for s in masks}, False
    by_number = []
    for stems in (images, masks):
        numbers = {stem: _trailing_number(stem) for stem in stems}
        if None in numbers.values() or len(set(numbers.values())) != len(numbers):
            return {s: s for s in images}, {s: s for s in masks}, False
        by_number.append({number: stem for stem, number in numbers.items()})
    if not set(by_number[0]) & set(by_number[1]):
        return {s: s for s in images}, {s: s for s in masks}, False
    return by_number[0], by_number[1], True


def _unpaired(path: Path, missing: str, folder: Path, present: str) -> Problem:
    """`path` (a `present` file) has no `missing` file of the same stem in `folder`."""
    return Problem(
        str(path),
        f"no {missing} with stem {path.stem!r} in {folder}",
        f"add the {missing} or remove the {present}",
    )


def _index_folder_pair(
    image_dir: Path, mask_dir: Path, prefix: str, index: DatasetIndex, *, explicit: bool = False
) -> None:
    """Add the pairs of two folders (matched by stem) to `index`, and their problems.

    `explicit`: the folders were named by the caller (images_dir=/masks_dir=).
    """
    for folder, what in ((image_dir, "images_dir"), (mask_dir, "masks_dir")):
        if not folder.is_dir():
            raise data_error(folder, "folder does not exist", f"check {what}")
    images = _files_by_stem(image_dir, index.problems, explicit=explicit)
    masks = _files_by_stem(mask_dir, index.problems, explicit=explicit)
    image_keys, mask_keys, by_number = _pairing_keys(images, masks)
    if by_number:
        example = min(set(image_keys) & set(mask_keys))
        index.notices.append(
            f"{image_dir.parent}: no file stems match between {image_dir.name}/ and "
            f"{mask_dir.name}/, paired files by trailing number (e.g. "
            f"{images[image_keys[example]].name} <-> {masks[mask_keys[example]].name})"
        )
    keys = sorted(
        set(image_keys) | set(mask_keys),
        key=lambda k: k if isinstance(k, int) else _natural_key(k),
    )
    for key in keys:
        image_stem, mask_stem = image_keys.get(key), mask_keys.get(key)
        if image_stem is None:
            index.problems.append(_unpaired(masks[mask_stem], "image", image_dir, "mask"))
        elif mask_stem is None:
            index.problems.append(_unpaired(images[image_stem], "mask", mask_dir, "image"))
        else:
            name = f"{prefix}/{image_stem}" if prefix else image_stem
            index.samples.append(Sample(images[image_stem], masks[mask_stem], name))


def _pair_halves(folder: Path) -> tuple[Path | None, Path | None]:
    """(image folder, mask folder) among the subfolders of `folder`, by name; None if absent."""
    children = {p.name.lower(): p for p in _subdirs(folder)}
    image_dir = next((children[n] for n in IMAGE_DIR_NAMES if n in children), None)
    mask_dir = next((children[n] for n in MASK_DIR_NAMES if n in children), None)
    return image_dir, mask_dir


def _pair_in(folder: Path) -> tuple[Path, Path] | None:
    image_dir, mask_dir = _pair_halves(folder)
    return (image_dir, mask_dir) if image_dir and mask_dir else None


def _find_folder_pairs(root: Path) -> list[tuple[Path, Path, str]]:
    """(image_dir, mask_dir, split) triples: root-level pair, else one per split subfolder."""
    direct = _pair_in(root)
    if direct:
        return [(*direct, "")]
    pairs = []
    for sub in _subdirs(root):
        annot = root / f"{sub.name}annot"  # SegNet CamVid: train/ + trainannot/
        if annot.is_dir():
            pairs.append((sub, annot, sub.name))
        elif inner := _pair_in(sub):
            pairs.append((*inner, sub.name))
    return pairs


def _half_pair(root: Path) -> tuple[Path, str, str] | None:
    """(folder, found, missing) for the first of `root` and its subfolders holding only one half
    of a folder pair: images/ without masks/ (or masks/ without images/)."""
    for folder in (root, *_subdirs(root)):
        image_dir, mask_dir = _pair_halves(folder)
        if image_dir and not mask_dir:
            return folder, image_dir.name, "masks"
        if mask_dir and not image_dir:
            return folder, mask_dir.name, "images"
    return None


def _no_layout_error(root: Path, layout: str) -> DataError:
    """No layout found: name the missing half of a pair when there is one, else list layouts."""
    half = _half_pair(root) if layout in ("auto", "folder") else None
    if half is None:
        kind = "" if layout == "auto" else f"{layout} "
        return data_error(root, f"no {kind}dataset layout found", _LAYOUT_FIX)
    folder, found, missing = half
    what = "one mask per image" if missing == "masks" else "the image of each mask"
    return data_error(
        folder,
        f"no dataset layout found: {found}/ is there but {missing}/ is missing",
        f"create {folder / missing}/ holding {what}, with the same file name stem "
        f"({found}/a.png <-> {missing}/a.png)",
    )


def _find_voc_root(root: Path) -> Path | None:
    candidates = [root, *sorted(root.glob("VOC*")), *sorted(root.glob("VOCdevkit/VOC*"))]
    for candidate in candidates:
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    return None


def _find_stack_pairs(root: Path) -> list[tuple[Path, Path, str]]:
    roles: dict[str, dict[str, Path]] = {}
    for path in sorted(root.iterdir()):
        match = _STACK_NAME.match(path.stem)
        if path.is_file() and path.suffix.lower() in TIFF_SUFFIXES and match:
            role = "mask" if match["role"].lower().startswith(_MASK_ROLES) else "image"
            roles.setdefault(match["prefix"], {})[role] = path
    return [
        (found["image"], found["mask"], prefix)
        for prefix, found in sorted(roles.items())
        if len(found) == 2
    ]


def _select_split(
    pairs: list[tuple[Path, Path, str]], split: str | None, root: Path, index: DatasetIndex
) -> list[tuple[Path, Path, str]]:
    names = [prefix for _, _, prefix in pairs]
    if split is not None:
        chosen = [pair for pair in pairs if pair[2] == split]
        if not chosen:
            available = ", ".join(repr(n) for n in names if n) or "none"
            raise data_error(
                root,
                f"split {split!r} not found (available: {available})",
                "choose one of the available splits, or give no split to use them all",
            )
        return chosen
    if len(pairs) > 1:
        index.notices.append(
            f"using all splits: {', '.join(names)} (pass split= / --split to choose one)"
        )
    return pairs


def _index_voc(voc: Path, split: str | None, index: DatasetIndex) -> None:
    image_dir, mask_dir = voc / "JPEGImages", voc / "SegmentationClass"
    if split is None:
        stems = [p.stem for p in _image_files(mask_dir)]
        source = f"{mask_dir.name}/"
    else:
        split_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            available = sorted(p.stem for p in split_file.parent.glob("*.txt"))
            raise data_error(
                split_file,
                f"split file not found (available splits: {', '.join(available) or 'none'})",
                "choose one of the available splits, or give no split to use every mask",
            )
        stems = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        source = split_file.name
    for stem in stems:
        image = next(
            (
                image_dir / f"{stem}{s}"
                for s in IMAGE_SUFFIXES
                if (image_dir / f"{stem}{s}").is_file()
            ),
            image_dir / f"{stem}.jpg",
        )
        mask = mask_dir / f"{stem}.png"
        missing = [p for p in (image, mask) if not p.is_file()]
        for path in missing:
            index.problems.append(
                Problem(
                    str(path),
                    f"listed in {source} but the file is missing",
                    f"restore the file or remove {stem!r} from {source}",
                )
            )
        if not missing:
            index.samples.append(Sample(image, mask, stem))


def _index_stacks(pairs: list[tuple[Path, Path, str]], index: DatasetIndex) -> None:
    for image_path, mask_path, _ in pairs:
        try:
            n_images, n_masks = page_count(image_path), page_count(mask_path)
        except DataError as exc:
            index.problems.extend(exc.problems)
            continue
        if n_images != n_masks:
            index.problems.append(
                Problem(
                    str(mask_path),
                    f"label stack has {n_masks} pages but image stack {image_path.name} has "
                    f"{n_images}",
                    "use stacks with exactly one label page per image page",
                )
            )
        for page in range(min(n_images, n_masks)):
            index.samples.append(Sample(image_path, mask_path, f"{image_path.stem}/{page}", page))


def _index_explicit(image_path: Path, mask_path: Path, index: DatasetIndex) -> None:
    """The pair named by images_dir= / masks_dir=: two stack files, else two folders."""
    if image_path.is_file() and mask_path.is_file():
        index.layout = "tiff-stack"
        _index_stacks([(image_path, mask_path, "")], index)
    else:
        index.layout = "folder"
        _index_folder_pair(image_path, mask_path, "", index, explicit=True)


def _voc_encoding(given: MaskEncoding) -> MaskEncoding:
    """PASCAL VOC defaults where not given: 21 classes, boundary value 255 ignored."""
    return MaskEncoding(
        21 if given.num_classes is None else given.num_classes,
        255 if given.ignore_index is None else given.ignore_index,
        given.palette,
        given.instances,
    )


def open_dataset(
    path: StrPath,
    *,
    layout: str = "auto",
    split: str | None = None,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    palette: Any = None,
    instances: bool = False,
    images_dir: StrPath | None = None,
    masks_dir: StrPath | None = None,
) -> DatasetIndex:
    """Find the image/mask pairs of a dataset folder.

    Layouts (``layout="auto"`` tries them in this order):

    * ``"voc"``: ``JPEGImages/`` + ``SegmentationClass/`` (palette PNGs) in ``path``,
      ``path/VOC*`` or ``path/VOCdevkit/VOC*``; ``split`` reads
      ``ImageSets/Segmentation/{split}.txt`` (``None``: every mask). Defaults: 21 classes,
      ``ignore_index=255``.
    * ``"tiff-stack"``: ``<name>-volume.tif`` + ``<name>-labels.tif`` (ISBI 2012 style, also
      ``-images``/``-masks``); every page is a sample; ``split`` selects ``<name>``.
    * ``"folder"``: image and mask folders matched by file stem — ``images/`` + ``masks/`` (also
      ``image``/``label``, ``img``/``gt``, ...) in ``path``; else per split subfolder:
      ``<split>/`` + ``<split>annot/`` (SegNet CamVid) or ``<split>/images`` + ``<split>/masks``.
      ``split=None`` uses every split found. When no stems match at all, files pair by their
      trailing number (``t01.tif`` ↔ ``man_seg01.tif``).

    ``images_dir`` / ``masks_dir`` (relative to ``path`` or absolute) name the pair explicitly:
    two folders (folder layout) or two multi-page TIFF files (stack layout).

    Args:
        path: dataset folder.
        layout: one of ``"auto"``, ``"folder"``, ``"voc"``, ``"tiff-stack"``.
        split: split name (see above).
        num_classes: number of classes; ``None``: :func:`pixelwise.data.survey_dataset` infers
            it from the mask values.
        ignore_index: label value to ignore (kept in masks).
        palette: (n, 3) colours for RGB masks; ``None`` = VOC colours.
        instances: masks are instance labels (0 = background, 1..K = objects).
        images_dir: explicit image folder or stack file.
        masks_dir: explicit mask folder or stack file.

    Returns:
        :class:`DatasetIndex`; unpaired/duplicate/missing files are in ``.problems`` (not raised).

    Raises:
        DataError: path missing, no recognisable layout, or unknown split.
        ValueError: invalid arguments.
    """
    root = Path(path)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if (images_dir is None) != (masks_dir is None):
        raise ValueError(
            f"pass both images_dir and masks_dir or neither, got images_dir={images_dir!r}, "
            f"masks_dir={masks_dir!r}"
        )
    if not root.is_dir():
        raise data_error(root, "dataset folder does not exist", "check the path")
    encoding = MaskEncoding(num_classes, ignore_index, palette, instances)
    index = DatasetIndex(root, layout, [], encoding)
    voc = _find_voc_root(root) if layout in ("auto", "voc") and images_dir is None else None
    if images_dir is not None and masks_dir is not None:
        _index_explicit(root / images_dir, root / masks_dir, index)
    elif voc is not None:
        index.layout = "voc"
        index.encoding = _voc_encoding(encoding)
        _index_voc(voc, split, index)
    elif layout in ("auto", "tiff-stack") and (stacks := _find_stack_pairs(root)):
        index.layout = "tiff-stack"
        _index_stacks(_select_split(stacks, split, root, index), index)
    elif layout in ("auto", "folder") and (pairs := _find_folder_pairs(root)):
        index.layout = "folder"
        for image_dir, mask_dir, prefix in _select_split(pairs, split, root, index):
            _index_folder_pair(image_dir, mask_dir, prefix, index)
    else:
        raise _no_layout_error(root, layout)
    return index
