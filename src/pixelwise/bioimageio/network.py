"""The network a bioimage.io package runs: a pixelwise model with its border handling and softmax.

`PackagedModel` maps a normalised (N, C, H, W) input to (N, K, H, W) class probabilities of
the same height and width, as `pixelwise predict` does for a whole image:

* a valid-padding U-Net loses `margin` pixels per side; the package mirrors the input by that
  margin first (reflection without repeating the edge pixel, `torch.nn.functional.pad(...,
  mode="reflect")`, the paper's and `pixelwise.tiling`'s extrapolation), so its output pixel
  (i, j) is the network's prediction for input pixel (i, j). `extra` more rows and columns are
  mirrored at the bottom and right, and their outputs dropped, where the network's valid sizes
  are not H + 2·margin itself (`pixelwise.bioimageio.sizes`);
* same-size networks (FCN, `UNet(padding="same")`) run as they are (`pad` = `extra` = 0);
* the logits go through a softmax over the class axis.

This module imports nothing from pixelwise: its source is copied verbatim into the package's
architecture file (`pixelwise.bioimageio.architecture`), which must run without pixelwise.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PackagedModel(nn.Module):
    """(N, C, H, W) normalised input → (N, K, H, W) class probabilities.

    Args:
        network: a pixelwise network returning (N, K, H' − 2·pad, W' − 2·pad) logits for an
            (N, C, H', W') input.
        pad: pixels mirrored on each side before the network: the margin of a valid-padding
            U-Net, 0 for same-size networks.
        extra: pixels mirrored after the bottom and right edges besides `pad`, whose outputs
            are dropped. H and W must exceed pad + extra (a reflection needs them).
    """

    def __init__(self, network: nn.Module, *, pad: int = 0, extra: int = 0) -> None:
        super().__init__()
        for name, value in (("pad", pad), ("extra", extra)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.network = network
        self.pad = pad
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → (N, K, H, W) softmax probabilities."""
        height, width = x.shape[-2], x.shape[-1]
        if self.pad > 0 or self.extra > 0:
            last = self.pad + self.extra
            x = F.pad(x, (self.pad, last, self.pad, last), mode="reflect")
        logits = self.network(x)  # (N, K, H + extra, W + extra)
        if self.extra > 0:
            logits = logits[..., :height, :width]  # (N, K, H, W)
        return torch.softmax(logits, dim=1)
