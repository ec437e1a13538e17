"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2): predict images of any size in tiles.

A valid-padding U-Net (margin m > 0) maps an input tile of a valid size n to an output of n − 2m
pixels. To segment an image of any size, the image is extended by mirroring by m on every side
(plus what the right/bottom edges need to reach a valid size) and cut into input tiles that
overlap by 2m, so that their outputs tile the image. Tiles start on multiples of the pooling
stride, so every pooling layer of every tile sits on the grid of the whole extended image: the
stitched result equals the network applied to the whole mirror-extended image, up to float
rounding, for every image size.

A same-padding network (FCN, U-Net with padding="same"; margin 0) keeps the image size, but its
zero padding at tile borders differs from whole-image inference. Tiles then overlap by a halo on
each side, which is cropped away; the image border is treated as in whole-image inference (the
image is only padded right/bottom to a size the model accepts, then cropped).

All sizes come from the models' geometry API (`pixelwise.models.Geometry`: `margin`, `stride`,
`receptive_radius`, `output_size`, `valid_input_sizes`), the single source of the size
arithmetic. The package, in the order data flows through it:

* `plan`: mirror index maps (`source_index`) and tile plans (`plan_axis`, `plan_tiles`), pure;
* `memory`: the memory estimate of a tile (`tile_bytes_per_pixel`) and the automatic tile size
  (`choose_tile_size`);
* `options`: `PredictOptions`, the one options object, validated once;
* `engine`: `predict`, which reads, runs and stitches the tiles (`iter_predict`: the same as a
  generator of `Progress`, for progress bars and cancellation).

It does not read or write files: `pixelwise.inference` does, on top of `predict`.
"""

from pixelwise.tiling.engine import OUTPUTS, Progress, iter_predict, predict
from pixelwise.tiling.memory import (
    DEFAULT_MEMORY_BUDGET_MB,
    activation_bytes_per_pixel,
    choose_tile_size,
    tile_bytes_per_pixel,
)
from pixelwise.tiling.options import TTA_MODES, PredictOptions
from pixelwise.tiling.plan import (
    MAX_DEFAULT_HALO,
    PAD_MODES,
    Tile,
    default_halo,
    plan_axis,
    plan_tiles,
    source_index,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET_MB",
    "MAX_DEFAULT_HALO",
    "OUTPUTS",
    "PAD_MODES",
    "TTA_MODES",
    "PredictOptions",
    "Progress",
    "Tile",
    "activation_bytes_per_pixel",
    "choose_tile_size",
    "default_halo",
    "iter_predict",
    "plan_axis",
    "plan_tiles",
    "predict",
    "source_index",
    "tile_bytes_per_pixel",
]
