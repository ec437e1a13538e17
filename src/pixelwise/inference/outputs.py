"""The outputs of `predict_files`: where each file goes and how it is written.

Owns the output layout under `out_dir` (class map, probs/, overlays/, objects/), the class-map
format, and the writers: in memory (`Outputs.write`) and streamed into memory-mapped TIFFs
(`Outputs.write_streamed`). Every file goes through `pixelwise.atomic` (a temporary file beside
its destination, renamed over it), so an interrupted run never leaves a truncated file under a
final name and files get the umask's permissions (0644 under umask 022).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from pixelwise import instances, report
from pixelwise.atomic import atomic_path, atomic_write
from pixelwise.data import write_image

OUTPUT_FORMATS = ("png", "tif")
OVERLAY_ALPHA = 0.4
PROBS_DIR, OVERLAYS_DIR, OBJECTS_DIR = "probs", "overlays", "objects"

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
        probs, overlay, objects: which optional outputs to write.
        output_format: "png" (palette PNG class maps) or "tif" (grayscale TIFF class ids).
    """

    out_dir: Path
    num_classes: int
    palette: np.ndarray
    class_names: tuple[str, ...] | None = None
    probs: bool = False
    overlay: bool = False
    objects: bool = False
    output_format: str = "png"

    @property
    def label_dtype(self) -> type:
        return np.uint8 if self.num_classes <= 256 else np.uint16

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
    ) -> list[Path]:
        """Write the outputs of one image predicted in memory; return the paths, in order.

        Args:
            name: the output base name.
            image: (H, W) or (H, W, C) input pixels, for the overlay.
            labels: (H, W) class map.
            probs: (K, H, W) float32 probabilities; needed with `probs` or `objects`.
            file_name, page: the input's file name (and page), recorded in the COCO file.
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
        if self.objects:
            written += self._write_objects(name, labels, probs, file_name=file_name, page=page)
        return written

    def write_streamed(self, name: str, shape: tuple[int, int], fill: Fill) -> list[Path]:
        """Stream one image's class map (and probabilities) into memory-mapped TIFFs.

        `fill(labels, probs)` writes the (H, W) class map and, with `probs`, the (K, H, W)
        float32 probabilities (else None) in place; they are renamed to their final names only
        when it returns, and deleted if it raises. Returns the paths written.
        """
        height, width = shape
        paths = [self.class_map_path(name, streamed=True)]
        layouts = [((height, width), self.label_dtype)]  # (H, W) class ids
        if self.probs:
            paths.append(self.out_dir / PROBS_DIR / f"{name}.tif")
            layouts.append(((self.num_classes, height, width), np.float32))  # (K, H, W)
        with contextlib.ExitStack() as stack:
            maps = [
                tifffile.memmap(
                    stack.enter_context(atomic_path(path)),
                    shape=layout,
                    dtype=dtype,
                    photometric="minisblack",
                )
                for path, (layout, dtype) in zip(paths, layouts, strict=True)
            ]
            fill(maps[0], maps[1] if self.probs else None)
            for array in maps:
                array.flush()
            del maps  # close the memory maps before the renames
        return paths

    @staticmethod
    def _write_probs(path: Path, probs: np.ndarray) -> Path:
        """(K, H, W) float32 probabilities as a K-page TIFF."""
        data = probs.astype(np.float32)
        return atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, photometric="minisblack"))

    def _write_objects(
        self,
        name: str,
        labels: np.ndarray,
        probs: np.ndarray | None,
        *,
        file_name: str,
        page: int | None,
    ) -> list[Path]:
        """objects/<name>.csv (one row per connected object of every class but 0) and
        objects/<name>.json (the same objects in COCO format, uncompressed RLE masks)."""
        folder = self.out_dir / OBJECTS_DIR
        objects = instances.label(labels)  # (H, W) int32 instance ids
        rows = instances.object_table(objects, class_map=labels, probs=probs)
        table = instances.write_object_csv(rows, folder / f"{name}.csv")
        coco = instances.to_coco(
            objects,
            image_id=1,
            file_name=file_name,
            class_map=labels,
            categories=self.categories(),
        )
        if page is not None:
            coco["images"][0]["page"] = page
        return [table, instances.write_coco_json(coco, folder / f"{name}.json")]


def _display(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) version of an image for the overlay (RGBA → RGB, else channel 0)."""
    if image.ndim == 2 or image.shape[2] == 3:
        return image
    return image[..., :3] if image.shape[2] == 4 else image[..., 0]
