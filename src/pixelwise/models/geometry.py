"""The geometry contract every pixelwise model satisfies, declared once.

Overlap-tile inference (`pixelwise.tiling`), training patches (`pixelwise.train`) and ONNX
export plan sizes from these six members alone, so any network that provides them (UNet, FCN,
the test suite's toy models) can be tiled exactly:

* `margin`: context lost per side, (input − output) / 2; 92 for the paper's U-Net, 0 for
  same-size networks (FCN, `UNet(padding="same")`).
* `stride`: the total downsampling; tiles start on multiples of it so that every pooling of a
  tile sits on the grid of the whole image (16 for the paper's U-Net, 32 for FCN).
* `receptive_radius`: how far, in input pixels, an output pixel sees on each side.
* `output_size(n)`, `input_size(m)`: the output size for input n, and the smallest input whose
  output is at least m.
* `valid_input_sizes(lo, hi)`: the input sizes in [lo, hi] the network accepts.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Geometry(Protocol):
    """Size arithmetic of a dense-prediction network (see the module docstring)."""

    @property
    def margin(self) -> int: ...

    @property
    def stride(self) -> int: ...

    @property
    def receptive_radius(self) -> int: ...

    def output_size(self, n: int) -> int: ...

    def input_size(self, m: int) -> int: ...

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]: ...
