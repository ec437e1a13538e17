"""The size arithmetic of a bioimage.io package: input sizes, the mirrored border and the halo.

The packaged network (`pixelwise.bioimageio.network.PackagedModel`) returns probabilities of the
input's height and width. Consumers (bioimageio.core, deepImageJ) tile an image into blocks of a
valid input size that overlap by the output `halo`, mirror the image by the halo at its border
(the package's input `pad` mode is "reflect", as pixelwise's), and crop the halo from every
block's output. The sizes below make those blocks start on the network's pooling grid, so a
tiled result equals `pixelwise predict`'s whole-image result wherever the network is exact:

* valid-padding U-Net (margin m > 0, stride s, valid sizes r + k·s): the package mirrors m
  pixels per side (and `extra` = (r − 2m) mod s more at the bottom and right, outputs dropped),
  so every output pixel sees its full context. The halo is m rounded up to the stride, so that
  the consumer's padding keeps the grid; package inputs are multiples of s above 2·halo.
  Worked example (paper U-Net: m = 92, s = 16, valid sizes 16k + 12): halo 96; inputs 208,
  224, 240, ... (the first multiple of 16 above 2·96); extra (12 − 184) mod 16 = 4, so an input
  of 208 is a network input of 208 + 184 + 4 = 396 = 16·24 + 12, whose first 208 outputs are
  kept. A depth-3 U-Net (m = 20, s = 4, valid sizes 44 + 4k): halo 20, inputs 44, 48, ..., extra 0.
* same-size networks (FCN, `UNet(padding="same")`; margin 0): no mirroring inside; their tile
  borders see padding, so the halo is pixelwise's default tiling halo (`pixelwise.tiling.plan.
  default_halo`: the receptive radius capped at 128 and rounded up to the stride; 128 for FCN,
  inputs 288, 320, ...; 96 for a depth-5 U-Net, inputs 208, 224, ...). A consumer mirrors the
  halo at the image border where pixelwise's whole-image inference zero-pads inside the
  network, so border pixels within the receptive radius differ slightly; tiles are exact.

The spec writes this as `size: {min, step}` on the input axes, `size: {tensor_id: input, axis_id:
y}` (offset 0) and `halo` on the output axes.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixelwise.models import Geometry
from pixelwise.tiling.plan import ceil_to, default_halo

_CHECKED_STEPS = 16
"""How many sizes of the progression `package_sizes` checks against the model's geometry."""


@dataclass(frozen=True)
class PackageSizes:
    """The sizes of a package along each spatial axis.

    Attributes:
        pad: pixels the packaged network mirrors per side (the margin of a valid U-Net, else 0).
        extra: pixels it mirrors after the bottom and right edges besides `pad` (outputs
            dropped), so that input + 2·pad + extra is a valid network size.
        halo: output pixels per side that a consumer crops between neighbouring tiles.
        min: the smallest package input size (> 2·halo).
        step: the increment between valid package input sizes (the model's stride).
    """

    pad: int
    extra: int
    halo: int
    min: int
    step: int

    def is_valid(self, n: int) -> bool:
        """Whether `n` = min + k·step for some k ≥ 0."""
        return n >= self.min and (n - self.min) % self.step == 0

    def at_least(self, n: int) -> int:
        """The smallest valid package size ≥ `n`."""
        k = max(0, -(-(n - self.min) // self.step))
        return self.min + k * self.step

    def at_most(self, n: int) -> int | None:
        """The largest valid package size ≤ `n`, or None when `n` < min."""
        if n < self.min:
            return None
        return self.min + (n - self.min) // self.step * self.step


class UnsupportedModelError(ValueError):
    """A model whose valid input sizes are not r + k·stride (the spec's parameterised size)."""


def package_sizes(model: Geometry) -> PackageSizes:
    """The `PackageSizes` of a pixelwise model (see the module docstring).

    Raises:
        UnsupportedModelError: the model's valid input sizes do not form a progression
            r + k·stride that the spec can state (checked for 16 steps).
    """
    margin, stride = int(model.margin), int(model.stride)
    halo = ceil_to(margin, stride) if margin > 0 else default_halo(model)
    first = ceil_to(2 * halo + 1, stride)
    extra = 0
    if margin > 0:
        found = model.valid_input_sizes(first + 2 * margin, first + 2 * margin + stride - 1)
        extra = found[0] - first - 2 * margin if found else -1
    sizes = PackageSizes(pad=margin, extra=max(extra, 0), halo=halo, min=first, step=stride)
    network = [first + 2 * margin + sizes.extra + k * stride for k in range(_CHECKED_STEPS)]
    invalid = [n for n in network if not model.valid_input_sizes(n, n)]
    if extra < 0 or invalid:
        raise UnsupportedModelError(
            f"{type(model).__name__} (margin {margin}, stride {stride}) has no valid input sizes "
            f"r + k·{stride} near {network[0]} (e.g. {(invalid or network)[0]} is not valid), "
            "which a bioimage.io package must state; export a UNet or FCN"
        )
    return sizes
