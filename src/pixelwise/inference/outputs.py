"""The outputs of `predict_files`: where each file goes and how it is written.

Owns the output layout under `out_dir` (class map, probs/, overlays/, instances/, objects/),
the class-map and instance-map formats, the objects' tables, and the writers: in memory
(`Outputs.write`) and streamed into memory-mapped TIFFs (`Outputs.write_streamed`, whose
objects come from `pixelwise.inference.blocks`). Every file goes through `pixelwise.atomic` (a
temporary file beside its destination, renamed over it), so an interrupted run never leaves a
truncated file under a final name and files get the umask's permissions (0644 under umask
022); the scratch files of streamed objects are temporaries of the same kind, deleted after use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from pixelwise import instances, report
from pixelwise.atomic import atomic_path, atomic_write
from pixelwise.data import write_image
from pixelwise.inference.blocks import (
    BLOCK_OVERLAP,
    object_rles,
    object_rows,
    objects_in_blocks,
)
from pixelwise.instances import PostProcessing
from pixelwise.instances.tables import coco_annotation

OUTPUT_FORMATS = ("png", "tif")
OVERLAY_ALPHA = 0.4
PROBS_DIR, OVERLAYS_DIR, OBJECTS_DIR = "probs", "overlays", "objects"
INSTANCES_DIR = "instances"
OBJECT_CATEGORIES = ({"id": 1, "name": "object"},)
"""COCO categories of an instance model's objects: one, every object is of class 1."""

Note = Callable[[str], None]

Fill = Callable[[np.ndarray, "np.ndarray | None"], None]
"""Fills a streamed (H, W) class map and, with probs, the (K, H, W) probabilities in place."""


@dataclass(frozen=True, kw_only=True)
class Outputs:
    """What `predict_files` writes for each image, and where.

    Attributes:
        out_dir: the output folder.
        num_classes: K, the model's classes.
        palette: (max(K, 2), 3) uint8 class colours of palette PNGs and overlays.
        class_names: the checkpoint's K class names (COCO category names), or None.
        probs, overlay, objects, instances: which optional outputs to write (`instances`:
            the instance map, and the objects' tables with it).
        output_format: "png" (palette PNG class maps) or "tif" (grayscale TIFF class ids).
        postprocessing: an instance model's post-processing: its objects are then its
            instances (for `objects` too); None: objects are connected components of classes.
        block_size, block_overlap: the blocks in which streamed images get their instances
            (`pixelwise.inference.blocks.objects_in_blocks`).
    """

    out_dir: Path
    num_classes: int
    palette: np.ndarray
    class_names: tuple[str, ...] | None = None
    probs: bool = False
    overlay: bool = False
    objects: bool = False
    instances: bool = False
    output_format: str = "png"
    postprocessing: PostProcessing | None = None
    block_size: int = 4096
    block_overlap: int = BLOCK_OVERLAP

    @property
    def label_dtype(self) -> type:
        return np.uint8 if self.num_classes <= 256 else np.uint16

    @property
    def wants_objects(self) -> bool:
        """Whether objects are listed (objects/<name>.csv and .json)."""
        return self.objects or self.instances

    @property
    def streams_instances(self) -> bool:
        """Whether a streamed image's objects are made (an instance model's, in blocks)."""
        return self.wants_objects and self.postprocessing is not None

    @property
    def wants_probs(self) -> bool:
        """Whether the probabilities are needed (written, or made into objects)."""
        return self.probs or self.wants_objects

    def class_map_path(self, name: str, *, streamed: bool) -> Path:
        tif = self.output_format == "tif" or self.num_classes > 256 or streamed
        return self.out_dir / f"{name}.{'tif' if tif else 'png'}"

    def categories(self) -> list[dict[str, Any]]:
        """COCO categories: every class but 0, named by the checkpoint (else `class_<id>`)."""
        names = self.class_names
        return [
            {"id": c, "name": names[c] if names and c < len(names) else f"class_{c}"}
            for c in range(1, self.num_classes)
        ]

    def write(
        self,
        name: str,
        image: np.ndarray,
        labels: np.ndarray,
        probs: np.ndarray | None,
        *,
        file_name: str,
        page: int | None = None,
        objects: np.ndarray | None = None,
        scores: np.ndarray | None = None,
    ) -> list[Path]:
        """Write the outputs of one image predicted in memory; return the paths, in order.

        Args:
            name: the output base name.
            image: (H, W) or (H, W, C) input pixels, for the overlay.
            labels: (H, W) class map.
            probs: (K, H, W) float32 probabilities; needed with `probs`, `objects`, `instances`.
            file_name, page: the input's file name (and page), recorded in the COCO file.
            objects, scores: an instance model's (H, W) objects 1..N and their (N,) scores
                (`pixelwise.Segmentation.instances` / `.scores`); needed with `instances`.
        """
        target = self.class_map_path(name, streamed=False)
        write_image(target, labels, palette=self.palette if target.suffix == ".png" else None)
        written = [target]
        if self.probs:
            written.append(self._write_probs(self.out_dir / PROBS_DIR / f"{name}.tif", probs))
        if self.overlay:
            target = self.out_dir / OVERLAYS_DIR / f"{name}.png"
            rgb = report.overlay(_display(image), labels, alpha=OVERLAY_ALPHA, palette=self.palette)
            write_image(target, rgb)
            written.append(target)
        if self.instances:
            target = self.out_dir / INSTANCES_DIR / f"{name}.tif"
            write_image(target, objects.astype(instance_dtype(int(objects.max(initial=0)))))
            written.append(target)
        if self.wants_objects:
            if objects is None:  # a semantic model: connected components of each class
                rows, coco = self._components(labels, probs, file_name)
            else:
                rows, coco = _instance_tables(objects, scores, file_name)
            written += self._write_tables(name, rows, coco, page)
        return written

    def write_streamed(
        self,
        name: str,
        shape: tuple[int, int],
        fill: Fill,
        *,
        file_name: str,
        page: int | None = None,
        note: Note | None = None,
    ) -> list[Path]:
        """Stream one image's class map (and probabilities, and objects) into memory-mapped
        TIFFs.

        `fill(labels, probs)` writes the (H, W) class map and, when they are written or made
        into objects, the (K, H, W) float32 probabilities (else None) in place; they are
        renamed to their final names only when every output is written, and deleted if any
        step raises. An instance model's objects are then made in blocks
        (`objects_in_blocks`) from the probabilities on disk (a scratch file when they are not
        an output). `note` receives remarks (objects cut at block edges). Returns the paths.
        """
        height, width = shape
        paths = [self.class_map_path(name, streamed=True)]
        with contextlib.ExitStack() as stack:
            labels = _memmap(stack, atomic_path(paths[0]), (height, width), self.label_dtype)
            probs = None
            if self.probs:
                paths.append(self.out_dir / PROBS_DIR / f"{name}.tif")
                probs = _memmap(
                    stack, atomic_path(paths[-1]), (self.num_classes, height, width), np.float32
                )  # (K, H, W)
            elif self.streams_instances:
                scratch = _scratch(self._scratch_dir() / f"{name}.probs")
                probs = _memmap(stack, scratch, (self.num_classes, height, width), np.float32)
            fill(labels, probs)
            labels.flush()
            if self.streams_instances:
                paths += self._streamed_objects(stack, name, probs, file_name, page, note)
            if probs is not None:
                probs.flush()
            del labels, probs  # close the memory maps before the renames
        return paths

    def _streamed_objects(
        self,
        stack: contextlib.ExitStack,
        name: str,
        probs: np.ndarray,
        file_name: str,
        page: int | None,
        note: Note | None,
    ) -> list[Path]:
        """Objects of a streamed image, made in blocks: the instance map (instances/<name>.tif
        with `instances`, else a scratch file) and the tables; returns the paths."""
        shape = probs.shape[1:]
        folder = self._scratch_dir()
        ids = _memmap(stack, _scratch(folder / f"{name}.ids"), shape, np.uint32)
        target = self.out_dir / INSTANCES_DIR / f"{name}.tif"
        final: list[np.ndarray] = []

        def out(count: int) -> np.ndarray:
            where = atomic_path(target) if self.instances else _scratch(folder / f"{name}.map")
            final.append(_memmap(stack, where, shape, instance_dtype(count)))
            return final[0]

        made = objects_in_blocks(
            probs,
            self.postprocessing,
            scratch=ids,
            out=out,
            block_size=self.block_size,
            overlap=self.block_overlap,
        )
        objects = final[0]
        objects.flush()
        if (made.cut or made.conflicts) and note is not None:
            note(
                f"{made.cut} object(s) reach the edge of their "
                f"{self.block_size + 2 * self.block_overlap} px block and {made.conflicts} "
                f"pixel(s) were claimed by two blocks; objects over {self.block_overlap // 2} "
                f"px across need a larger block_overlap (now {self.block_overlap})"
            )
        rows = object_rows(objects, probs, made.count)
        annotations = [
            coco_annotation(row, rle, annotation_id=k, image_id=1, score=row["mean_probability"])
            for k, (row, rle) in enumerate(zip(rows, object_rles(objects, rows), strict=True), 1)
        ]
        coco = _coco_document(file_name, shape, annotations, list(OBJECT_CATEGORIES))
        written = [target] if self.instances else []
        return written + self._write_tables(name, rows, coco, page)

    def _scratch_dir(self) -> Path:
        """Where the scratch files of streamed objects go (beside the instance maps or the
        tables, so on the output's filesystem)."""
        return self.out_dir / (INSTANCES_DIR if self.instances else OBJECTS_DIR)

    @staticmethod
    def _write_probs(path: Path, probs: np.ndarray) -> Path:
        """(K, H, W) float32 probabilities as a K-page TIFF."""
        data = probs.astype(np.float32)
        return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, photometric="minisblack"))

    def _components(
        self, labels: np.ndarray, probs: np.ndarray, file_name: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Rows and COCO dict of the connected objects of every class but 0 (a semantic model);
        each object's COCO score is the mean probability of its class."""
        objects = instances.label(labels)  # (H, W) int32 instance ids
        rows = instances.object_table(objects, class_map=labels, probs=probs)
        coco = instances.to_coco(
            objects,
            image_id=1,
            file_name=file_name,
            class_map=labels,
            categories=self.categories(),
            scores=[row["mean_probability"] for row in rows],
        )
        return rows, coco

    def _write_tables(
        self, name: str, rows: list[dict[str, Any]], coco: dict[str, Any], page: int | None
    ) -> list[Path]:
        """objects/<name>.csv (one row per object) and objects/<name>.json (the same objects in
        COCO format, uncompressed RLE masks, a score each)."""
        folder = self.out_dir / OBJECTS_DIR
        if page is not None:
            coco["images"][0]["page"] = page
        table = instances.write_object_csv(rows, folder / f"{name}.csv")
        return [table, instances.write_coco_json(coco, folder / f"{name}.json")]


def instance_dtype(count: int) -> type:
    """The dtype of an instance map with `count` objects: uint16, or uint32 above 65,535."""
    return np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32


def _instance_tables(
    objects: np.ndarray, scores: np.ndarray, file_name: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and COCO dict of an instance model's objects 1..N: class 1 ("object"), mean
    probability and COCO score = the object's score (mean foreground probability)."""
    rows = instances.object_table(objects)
    for row, score in zip(rows, scores, strict=True):
        row["class"], row["mean_probability"] = 1, float(score)
    coco = instances.to_coco(
        objects,
        image_id=1,
        file_name=file_name,
        categories=list(OBJECT_CATEGORIES),
        scores=scores,
    )
    return rows, coco


def _coco_document(
    file_name: str,
    shape: tuple[int, int],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
) -> dict[str, Any]:
    """The COCO dict of one image (id 1), as `pixelwise.instances.to_coco` lays it out."""
    height, width = shape
    image = {"id": 1, "file_name": file_name, "height": int(height), "width": int(width)}
    return {"images": [image], "annotations": annotations, "categories": categories}


class _Discard(Exception):
    """Raised inside `atomic_path` to delete its temporary file instead of renaming it."""


@contextlib.contextmanager
def _scratch(path: Path) -> Iterator[Path]:
    """A scratch file beside `path`, deleted when the block ends however it ends.

    It is an `atomic_path` temporary that is never renamed, so it is named and cleaned up as
    every temporary is (a killed run's scratch is removed by the next write of `path`)."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
            raise _Discard
    except _Discard:
        pass


def _memmap(
    stack: contextlib.ExitStack,
    where: contextlib.AbstractContextManager[Path],
    shape: tuple[int, ...],
    dtype: Any,
) -> np.ndarray:
    """A zero-filled memory-mapped TIFF of `shape` at the temporary path `where` yields, kept
    open (and the path's renaming or deletion pending) until `stack` closes."""
    path = stack.enter_context(where)
    return tifffile.memmap(path, shape=shape, dtype=dtype, photometric="minisblack")


def _display(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) version of an image for the overlay (RGBA → RGB, else channel 0)."""
    if image.ndim == 2 or image.shape[2] == 3:
        return image
    return image[..., :3] if image.shape[2] == 4 else image[..., 0]
