"""Predict files: the library behind `pixelwise predict`.

`predict_files` reads images (files, folders, multi-page TIFF stacks), normalises them as the
checkpoint records, runs overlap-tile inference (`pixelwise.tiling.predict`, with one
`pixelwise.tiling.PredictOptions`) and writes, under `out_dir`:

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
    instances/<name>.tif  with instances=True (instance models: a "target" or a "postprocessing"
                          record in the checkpoint): the objects, a uint16 TIFF (uint32 above
                          65,535 objects) of ids 1..N, 0 = background, made by
                          `pixelwise.Segmenter` (the recorded post-processing, overridable).
    objects/<name>.csv    with objects=True or instances=True: one row per object
                          (`pixelwise.instances.object_table` columns): an instance model's
                          instances, of class 1 with `mean_probability` = its score (mean
                          foreground probability, `object_scores`); for other models the
                          connected objects of every class except 0 (`instances.label`).
    objects/<name>.json   the same objects in COCO format (one image, id 1; uncompressed RLE
                          masks; a `score` per object: the score above, or the mean probability
                          of the object's class; categories 1..K-1 named by the checkpoint's
                          class names, or one category "object" for instance models),
                          `pixelwise.instances.to_coco`.

`<name>` is the input's stem; page i of a multi-page TIFF is an image of its own named
`<stem>_p0003` (i = 3, four digits), so `out_dir` pairs with the input folder by stem as a mask
folder does (`pixelwise.data`). Stems given twice (a.png and a.tif) get their suffix appended
(`a_png`, `a_tif`). Every file is written through `pixelwise.atomic` (a temporary file beside its
destination, renamed over it), so an interrupted run never leaves a truncated file under a final
name, and files get the umask's permissions (0644 under umask 022).

Bad inputs (unreadable file, empty image, NaN values, channel count the model does not take,
dtype unlike the training data) cost one line through `log` and an entry in the summary; the
other files are still processed. Options that would fail every file (bad tile size, unknown
output format) raise ValueError before any file is read.

Large images (more than `stream_pixels`, 4096² by default) are streamed: the image is opened
lazily (`pixelwise.data.lazy`: an uncompressed TIFF memory-mapped, a compressed tiled or strip
TIFF / OME-TIFF / BigTIFF through tifffile's zarr store, an OME-Zarr image; `channel` and
`level` pick a channel and a pyramid level) and read by region, the network input is normalised
tile by tile (`NormalizedImage`), and the outputs are written region by region in row bands
(`bands`) into tiled, compressed (Big)TIFFs or OME-Zarr groups (`ome_zarr`, with
output_format="ome-zarr"), so memory stays bounded by the tile batch and the bands: without
a tile size, a streamed image's tile is the one whose batch and held band rows fit its budget
(`STREAM_MEMORY_BUDGET_MB`, 512 MiB, unless `memory_budget_mb` is given), so memory is flat as
the image grows; the input's physical pixel size is carried to the outputs. An instance
model's objects are then made from the probabilities on disk in overlapping blocks
(`pixelwise.inference.blocks`: equal to the whole-image objects for objects up to
`block_overlap` / 2 pixels across) and their tables read in row bands. Overlays, and the
connected-component tables of semantic models, need the whole map in memory and are skipped
for such images (with a note).

Distributed: with `world_size` processes (e.g. `torchrun --nproc-per-node 4 -m pixelwise predict
...`), rank r processes files[r::world_size]; no process group is needed.
`pixelwise.distributed.distributed_context` reads RANK / WORLD_SIZE / LOCAL_RANK and
`select_device` picks `cuda:{LOCAL_RANK}`.

Modules: `inputs` (which files, their names, reading and checking images), `outputs` (the
output layout and writers), `bands` (row bands written once, in order), `ome_zarr` (the NGFF
layout), `blocks` (objects of streamed images, in overlapping blocks), `summary` (failures and
the run summary), `run` (`predict_files`).
"""

from pixelwise.inference.blocks import BLOCK_OVERLAP, BlockObjects, objects_in_blocks
from pixelwise.inference.inputs import NormalizedImage, expand_inputs, output_names
from pixelwise.inference.outputs import (
    INSTANCES_DIR,
    OBJECTS_DIR,
    OUTPUT_FORMATS,
    OVERLAY_ALPHA,
    OVERLAYS_DIR,
    PROBS_DIR,
    instance_dtype,
)
from pixelwise.inference.run import STREAM_MEMORY_BUDGET_MB, STREAM_PIXELS, predict_files
from pixelwise.inference.summary import Failure, PredictSummary
from pixelwise.tiling import PredictOptions

__all__ = [
    "BLOCK_OVERLAP",
    "INSTANCES_DIR",
    "OBJECTS_DIR",
    "OUTPUT_FORMATS",
    "OVERLAYS_DIR",
    "OVERLAY_ALPHA",
    "PROBS_DIR",
    "STREAM_MEMORY_BUDGET_MB",
    "STREAM_PIXELS",
    "BlockObjects",
    "Failure",
    "NormalizedImage",
    "PredictOptions",
    "PredictSummary",
    "expand_inputs",
    "instance_dtype",
    "objects_in_blocks",
    "output_names",
    "predict_files",
]
