"""The outputs of `predict_files`: where each file goes and how it is written.

Owns the output layout under `out_dir` (class map, probs/, overlays/, instances/, objects/),
the class-map and instance-map formats (palette PNG, TIFF, OME-Zarr), the objects' tables, and
the writers: in memory (`Outputs.write`) and streamed (`Outputs.write_streamed`, whose objects
come from `pixelwise.inference.blocks`). Streamed maps are written region by region: the
tiles go through row bands (`pixelwise.inference.bands`) into chunked, compressed zarr arrays,
the NGFF image itself for OME-Zarr (`pixelwise.inference.ome_zarr`), else scratch arrays then
copied band by band into tiled, zlib-compressed (Big)TIFFs; so memory holds a few chunk rows,
never a whole map. The input's physical pixel size goes into every map (TIFF resolution tags,
PNG dpi, NGFF scale). Every file goes through `pixelwise.atomic` and every OME-Zarr folder
through `pixelwise.atomic.atomic_folder` (a temporary beside its destination, renamed over it), so
an interrupted run never leaves a truncated output under a final name and outputs get the
umask's permissions (0644 under umask 022); scratch files and folders are temporaries of the
same kind, deleted after use.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from pixelwise import instances, report
from pixelwise.atomic import atomic_path, atomic_write
from pixelwise.data import write_image
from pixelwise.data.lazy import PixelSize
from pixelwise.inference.bands import BandWriter
from pixelwise.inference.blocks import (
    BLOCK_OVERLAP,
    object_rles,
    object_rows,
    objects_in_blocks,
)
from pixelwise.inference.ome_zarr import (
    CHUNK,
    LabelInfo,
    chunked_array,
    ngff_image,
    open_scratch_group,
    write_ngff,
)
from pixelwise.instances import PostProcessing
from pixelwise.instances.tables import coco_annotation

OUTPUT_FORMATS = ("png", "tif", "ome-zarr")
OME_ZARR_SUFFIX = ".ome.zarr"
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
        output_format: "png" (palette PNG class maps), "tif" (grayscale TIFF class ids) or
            "ome-zarr" (NGFF label images; probabilities as an NGFF channel image).
        postprocessing: an instance model's post-processing: its objects are then its
            instances (for `objects` too); None: objects are connected components of classes.
        block_size, block_overlap: the blocks in which streamed images get their instances
            (`pixelwise.inference.blocks.objects_in_blocks`).
        chunk_size: side of the chunks of streamed maps and OME-Zarr arrays, and of the tiles
            of streamed TIFFs (a multiple of 16); one chunk row per map is held in memory.
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
    chunk_size: int = CHUNK

    def __post_init__(self) -> None:
        if self.chunk_size < 16 or self.chunk_size % 16:
            raise ValueError(f"chunk_size must be a multiple of 16, got {self.chunk_size}")

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

    @property
    def streamed_bytes_per_pixel(self) -> int:
        """Bytes per pixel of the map a streamed image's tiles are written into, through row
        bands: the float32 probabilities when they are written or made into objects (the
        class map is then made from them band by band), else the class map."""
        if self.probs or self.streams_instances:
            return 4 * self.num_classes
        return np.dtype(self.label_dtype).itemsize

    @property
    def ome_zarr(self) -> bool:
        return self.output_format == "ome-zarr"

    def class_map_path(self, name: str, *, streamed: bool) -> Path:
        if self.ome_zarr:
            return self.out_dir / f"{name}{OME_ZARR_SUFFIX}"
        tif = self.output_format == "tif" or self.num_classes > 256 or streamed
        return self.out_dir / f"{name}.{'tif' if tif else 'png'}"

    def _map_path(self, folder: str, name: str) -> Path:
        """probs/ or instances/ path of an image: .ome.zarr for OME-Zarr, else .tif."""
        suffix = OME_ZARR_SUFFIX if self.ome_zarr else ".tif"
        return self.out_dir / folder / f"{name}{suffix}"

    def _class_labels(self) -> LabelInfo:
        """The class map's NGFF label metadata: the palette's colours, the class names."""
        names = [c["name"] for c in self.categories()]
        background = self.class_names[0] if self.class_names else "background"
        return LabelInfo(colors=self.palette[: self.num_classes], names=[background, *names])

    def _channel_names(self) -> list[str]:
        names = [c["name"] for c in self.categories()]
        return [self.class_names[0] if self.class_names else "class_0", *names]

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
        pixel_size: PixelSize | None = None,
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
            pixel_size: the input's physical pixel size, recorded in the maps.
        """
        target = self.class_map_path(name, streamed=False)
        ngff = dict(name=name, pixel_size=pixel_size, chunk=self.chunk_size)
        if self.ome_zarr:
            write_ngff(target, labels.astype(self.label_dtype), label=self._class_labels(), **ngff)
        else:
            palette = self.palette if target.suffix == ".png" else None
            write_image(target, labels, palette=palette, pixel_size=pixel_size)
        written = [target]
        if self.probs:
            target = self._map_path(PROBS_DIR, name)
            if self.ome_zarr:
                data = probs.astype(np.float32)
                write_ngff(target, data, channel_names=self._channel_names(), **ngff)
                written.append(target)
            else:
                written.append(self._write_probs(target, probs, pixel_size))
        if self.overlay:
            target = self.out_dir / OVERLAYS_DIR / f"{name}.png"
            rgb = report.overlay(_display(image), labels, alpha=OVERLAY_ALPHA, palette=self.palette)
            write_image(target, rgb, pixel_size=pixel_size)
            written.append(target)
        if self.instances:
            target = self._map_path(INSTANCES_DIR, name)
            ids = objects.astype(instance_dtype(int(objects.max(initial=0))))
            if self.ome_zarr:
                write_ngff(target, ids, label=LabelInfo(), **ngff)
            else:
                write_image(target, ids, pixel_size=pixel_size)
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
        pixel_size: PixelSize | None = None,
    ) -> list[Path]:
        """Stream one image's class map (and probabilities, and objects) into chunked,
        compressed outputs, region by region.

        `fill(labels, probs)` writes the (H, W) class map and, when they are written or made
        into objects, the (K, H, W) float32 probabilities (else None) tile by tile in row order
        (`BandWriter`s over zarr arrays: the OME-Zarr outputs' level 0, else scratch arrays);
        the maps are then finished (OME-Zarr: pyramid levels and metadata; TIFF: copied band by
        band into tiled, zlib-compressed BigTIFFs) and renamed to their final names only when
        every output is written, deleted if any step raises. An instance model's objects are
        made in blocks (`objects_in_blocks`) from the probabilities written. `note` receives
        remarks (objects cut at block edges). Returns the paths.
        """
        height, width = shape
        paths = [self.class_map_path(name, streamed=True)]
        tiffs: list[tuple[Path, Any]] = []
        with contextlib.ExitStack() as stack:
            scratch_file = stack.enter_context(_scratch(self.out_dir / f"{name}.scratch.zip"))
            scratch = open_scratch_group(scratch_file)  # TIFF maps, probabilities for objects
            stack.callback(scratch.store.close)  # before the scratch file is deleted

            def output(
                path: Path, key: str, shape: tuple[int, ...], dtype: Any, **meta: Any
            ) -> BandWriter:
                """The level-0 array of an output map (scratch array `key` for a TIFF), as a
                band writer."""
                if self.ome_zarr:
                    array = stack.enter_context(
                        ngff_image(
                            path,
                            shape,
                            dtype,
                            name=name,
                            pixel_size=pixel_size,
                            chunk=self.chunk_size,
                            **meta,
                        )
                    )
                else:
                    array = chunked_array(scratch, key, shape, dtype, chunk=self.chunk_size)
                    tiffs.append((path, array))
                return BandWriter(array, rows=self.chunk_size)

            def temporary(key: str, shape: tuple[int, ...], dtype: Any) -> BandWriter:
                array = chunked_array(scratch, key, shape, dtype, chunk=self.chunk_size)
                return BandWriter(array, rows=self.chunk_size)

            labels = output(
                paths[0], "labels", (height, width), self.label_dtype, label=self._class_labels()
            )
            probs = None
            map_shape = (self.num_classes, height, width)
            if self.probs:
                paths.append(self._map_path(PROBS_DIR, name))
                probs = output(
                    paths[-1], "probs", map_shape, np.float32, channel_names=self._channel_names()
                )  # (K, H, W)
            elif self.streams_instances:
                probs = temporary("probs", map_shape, np.float32)
            fill(labels, probs)
            labels.flush()
            if probs is not None:
                probs.flush()
            if self.streams_instances:
                made = self._streamed_objects(
                    stack, name, probs, file_name, page, note, output, scratch
                )
                paths += made
            for path, array in tiffs:
                atomic_write(path, lambda tmp, a=array: _write_tiled_tiff(
                    tmp, a, tile=self.chunk_size, pixel_size=pixel_size
                ))  # fmt: skip
        return paths

    def _streamed_objects(
        self,
        stack: contextlib.ExitStack,
        name: str,
        probs: BandWriter,
        file_name: str,
        page: int | None,
        note: Note | None,
        output: Callable[..., BandWriter],
        scratch: Any,
    ) -> list[Path]:
        """Objects of a streamed image, made in blocks: the instance map (instances/<name>.tif
        or .ome.zarr with `instances`, else a scratch array) and the tables; returns the
        paths."""
        shape = probs.shape[1:]
        folder = self._scratch_dir()
        ids = _memmap(stack, _scratch(folder / f"{name}.ids"), shape, np.uint32)
        target = self._map_path(INSTANCES_DIR, name)
        final: list[BandWriter] = []

        def out(count: int) -> BandWriter:
            dtype = instance_dtype(count)
            if self.instances:
                final.append(output(target, "instances", shape, dtype, label=LabelInfo()))
            else:
                array = chunked_array(scratch, "objects", shape, dtype, chunk=self.chunk_size)
                final.append(BandWriter(array, rows=array.chunks[0]))
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
    def _write_probs(path: Path, probs: np.ndarray, pixel_size: PixelSize | None) -> Path:
        """(K, H, W) float32 probabilities as a K-page TIFF."""
        data = probs.astype(np.float32)
        return atomic_write(
            path,
            lambda tmp: tifffile.imwrite(
                tmp, data, photometric="minisblack", **tiff_resolution(pixel_size)
            ),
        )

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


def tiff_resolution(pixel_size: PixelSize | None) -> dict[str, Any]:
    """tifffile's resolution arguments for a pixel size (pixels per cm), {} for None."""
    if pixel_size is None:
        return {}
    return {
        "resolution": (1e4 / pixel_size.x, 1e4 / pixel_size.y),
        "resolutionunit": "CENTIMETER",
    }


def _write_tiled_tiff(
    path: Path, array: Any, *, tile: int, pixel_size: PixelSize | None, level: int = 1
) -> None:
    """Copy a (H, W) or (K, H, W) chunked array into a tiled, zlib-compressed TIFF (BigTIFF
    above 2 GiB uncompressed; K pages), reading one band of `tile` rows at a time. zlib level
    1: several times faster than the default 6 on class maps, files about 1.4× larger."""
    shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    height, width = shape[-2:]

    def tiles() -> Iterator[np.ndarray]:
        for index in np.ndindex(*shape[:-2]):
            for top in range(0, height, tile):
                band = np.asarray(array[(*index, slice(top, top + tile), slice(None))])
                for left in range(0, width, tile):
                    yield band[:, left : left + tile]

    tifffile.imwrite(
        path,
        tiles(),
        shape=shape,
        dtype=dtype,
        tile=(tile, tile),
        compression="zlib",
        compressionargs={"level": level},
        photometric="minisblack",
        bigtiff=math.prod(shape) * dtype.itemsize > 2**31,
        **tiff_resolution(pixel_size),
    )


def _display(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) version of an image for the overlay (RGBA → RGB, else channel 0)."""
    if image.ndim == 2 or image.shape[2] == 3:
        return image
    return image[..., :3] if image.shape[2] == 4 else image[..., 0]
