"""U-Net (Ronneberger, Fischer, Brox 2015) and the arithmetic of its sizes.

The paper network has `depth=5` levels: four times (two unpadded 3×3 convolutions + ReLU, then a
2×2 max-pooling), two convolutions at the bottom, and four times (a 2×2 up-convolution halving the
channels, concatenation with the centre-cropped encoder map, two convolutions), then a 1×1
convolution to the class scores: 23 convolution layers in all.

Size arithmetic (valid padding, k = depth − 1 poolings, each double convolution loses 4 pixels):

    572 -conv-> 568 -pool-> 284 -conv-> 280 -pool-> 140 -conv-> 136 -pool-> 68 -conv-> 64
        -pool-> 32 -conv-> 28 (bottom) -up-> 56 -conv-> 52 -up-> 104 -conv-> 100 -up-> 200
        -conv-> 196 -up-> 392 -conv-> 388

Every pooling must meet an even size, so not every input size is valid. The geometry functions
below are the single source of this arithmetic: the forward pass checks its input with them and
the overlap-tile engine (`pixelwise.tiling`) plans its tiles with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pixelwise.checks import check_positive_int, is_int

PADDINGS = ("valid", "same")
UP_MODES = ("transpose", "bilinear")


# --------------------------------------------------------------------------------------------
# Geometry: pure functions of (depth, padding)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UNetGeometry:
    """Size arithmetic of a U-Net with `depth` levels and the given padding.

    Attributes:
        depth: number of resolution levels (poolings = depth − 1).
        padding: "valid" (unpadded convolutions, output smaller than input) or "same".
    """

    depth: int
    padding: str

    @property
    def loss(self) -> int:
        """Pixels lost by one double convolution: 4 for valid, 0 for same."""
        return 4 if self.padding == "valid" else 0

    @property
    def stride(self) -> int:
        """Total downsampling 2^(depth−1); tiles must start on multiples of it."""
        return 2 ** (self.depth - 1)

    @property
    def margin(self) -> int:
        """Context lost per side: (input − output) / 2.

        Each double convolution loses `loss` pixels at its level's scale 2^i (in input pixels):
        encoder levels 0..k−1, the bottom at 2^k, decoder levels k−1..0. Worked example for the
        paper (k = 4, loss = 4): 4·(1+2+4+8) + 4·16 + 4·(8+4+2+1) = 184 = 572 − 388, margin 92.
        """
        k = self.depth - 1
        return self.loss * (3 * 2**k - 2) // 2

    @property
    def receptive_radius(self) -> int:
        """Half-width of the receptive field of one output pixel, in input pixels.

        For valid padding this is exactly the margin; a same-padding network of the same depth
        sees the same context, so it is also the halo a tiler needs to reproduce whole-image
        inference in the interior.
        """
        return UNetGeometry(self.depth, "valid").margin

    def trace(self, n: int) -> list[int] | None:
        """Sizes along one axis: encoder maps (before pooling), bottom, decoder outputs.

        Returns None when the size is invalid: a pooling meets an odd size, or a map shrinks to
        zero or less.
        """
        sizes = []
        s = n
        for _ in range(self.depth - 1):
            s -= self.loss
            if s <= 0 or s % 2:
                return None
            sizes.append(s)
            s //= 2
        s -= self.loss  # bottom double convolution
        if s <= 0:
            return None
        sizes.append(s)
        for _ in range(self.depth - 1):
            s = 2 * s - self.loss
            if s <= 0:
                return None
            sizes.append(s)
        return sizes

    def is_valid(self, n: int) -> bool:
        return n >= 1 and self.trace(n) is not None

    def nearest_valid(self, n: int) -> tuple[int | None, int]:
        """The largest valid size below `n` (None if there is none) and the smallest above."""
        below = next((m for m in range(n - 1, 0, -1) if self.is_valid(m)), None)
        above = next(
            m
            for m in range(max(n + 1, 1), n + 4 * self.stride + 8 * self.margin + 8)
            if self.is_valid(m)
        )
        return below, above

    def check(self, n: int, *, what: str = "input size") -> None:
        """Raise ValueError naming the two nearest valid sizes if `n` is not a valid input size."""
        if self.is_valid(n):
            return
        below, above = self.nearest_valid(n)
        near = f"{below} or {above}" if below is not None else f"{above}"
        raise ValueError(
            f"U-Net (depth={self.depth}, padding={self.padding!r}) cannot take {what} {n}: a 2×2 "
            f"pooling would meet an odd size or a map would vanish; use {near} (see "
            f"valid_input_sizes), or predict through pixelwise.tiling.predict, which pads for you"
        )

    def output_size(self, n: int) -> int:
        self.check(n)
        return n - 2 * self.margin

    def input_size(self, m: int) -> int:
        """The input size whose output has size `m`; ValueError if no input gives exactly `m`."""
        n = m + 2 * self.margin
        if m < 1 or not self.is_valid(n):
            valid = [v - 2 * self.margin for v in self.nearest_valid(max(n, 1)) if v is not None]
            valid = [v for v in valid if v >= 1]
            raise ValueError(
                f"no input size gives output size {m} for U-Net (depth={self.depth}, "
                f"padding={self.padding!r}); nearest output sizes: {valid}"
            )
        return n

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
        """All valid input sizes in [lo, hi]."""
        return [n for n in range(max(lo, 1), hi + 1) if self.is_valid(n)]


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def _double_conv(cin: int, cout: int, *, pad: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers.append(nn.Conv2d(c, cout, 3, padding=pad, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Up(nn.Module):
    """2× upsampling that halves the channels: 2×2 up-convolution, or bilinear + 1×1 conv."""

    def __init__(self, cin: int, cout: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "transpose":
            self.conv = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        else:
            self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "bilinear":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop the centre (h, w) window of an (N, C, H, W) map.

    Worked example (paper, level 4): the encoder map is 64×64 and the upsampled decoder map is
    56×56, so the offset is (64 − 56) / 2 = 4 on each side. The geometry guarantees H − h is even.
    """
    top = (x.shape[-2] - h) // 2
    left = (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


class UNet(nn.Module):
    """U-Net for 2-D images.

    Args:
        in_channels: image channels.
        num_classes: output channels (class scores; 2 for the paper's foreground/background).
        base_channels: channels of the first level (64 in the paper); level i has base·2^i.
        depth: number of resolution levels (5 in the paper), ≥ 2.
        padding: "valid" (paper: unpadded convolutions, output smaller than input by
            2·margin) or "same" (output size = input size).
        up_mode: "transpose" (paper: 2×2 up-convolution) or "bilinear" (bilinear upsampling
            followed by a 1×1 convolution).
        batch_norm: add BatchNorm after every 3×3 convolution.
        dropout: dropout probability at the end of the contracting path (paper: 0.5).

    Shapes:
        input (N, in_channels, H, W) with H, W valid sizes (see `valid_input_sizes`);
        output (N, num_classes, H − 2·margin, W − 2·margin) logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        base_channels: int = 64,
        depth: int = 5,
        padding: str = "valid",
        up_mode: str = "transpose",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        check_positive_int("base_channels", base_channels)
        if not is_int(depth) or depth < 2:
            raise ValueError(f"depth must be an integer >= 2, got {depth!r}; the paper uses 5")
        if padding not in PADDINGS:
            raise ValueError(
                f"padding must be one of {PADDINGS}, got {padding!r}; pass 'valid' (the "
                "paper's unpadded convolutions) or 'same'"
            )
        if up_mode not in UP_MODES:
            raise ValueError(
                f"up_mode must be one of {UP_MODES}, got {up_mode!r}; pass 'transpose' (the "
                "paper's 2×2 up-convolution) or 'bilinear'"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}; the paper uses 0.5")
        self.hparams = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            base_channels=base_channels,
            depth=depth,
            padding=padding,
            up_mode=up_mode,
            batch_norm=batch_norm,
            dropout=dropout,
        )
        self.geometry = UNetGeometry(depth, padding)
        pad = 1 if padding == "same" else 0
        chans = [base_channels * 2**i for i in range(depth)]

        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(_double_conv(cin, c, pad=pad, batch_norm=batch_norm))
            cin = c
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.up.append(_Up(chans[i + 1], chans[i], up_mode))
            self.dec.append(_double_conv(2 * chans[i], chans[i], pad=pad, batch_norm=batch_norm))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        self.reset_parameters()

    # -- geometry API (delegates to UNetGeometry, the single source of the arithmetic) -------
    @property
    def margin(self) -> int:
        """Context lost per side: 92 for the paper network, 0 for padding="same"."""
        return self.geometry.margin

    @property
    def stride(self) -> int:
        """Total downsampling; tiles must start on multiples of it."""
        return self.geometry.stride

    @property
    def receptive_radius(self) -> int:
        return self.geometry.receptive_radius

    def output_size(self, n: int) -> int:
        """Output size along one axis for input size `n` (ValueError if `n` is invalid)."""
        return self.geometry.output_size(n)

    def input_size(self, m: int) -> int:
        """The input size that yields output size `m`."""
        return self.geometry.input_size(m)

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
        """All valid input sizes in [lo, hi]."""
        return self.geometry.valid_input_sizes(lo, hi)

    # -- initialisation ------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """He initialisation as in the paper: N(0, √(2/N)), N = incoming connections."""
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                # kernel = stride: every output pixel receives exactly one tap per input channel.
                fan_in = m.in_channels
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            else:
                continue
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) → (N, num_classes, H − 2·margin, W − 2·margin) logits."""
        if x.dim() != 4:
            raise ValueError(
                f"UNet expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}; x[None] adds "
                "the batch dimension"
            )
        if x.shape[1] != self.hparams["in_channels"]:
            raise ValueError(
                f"UNet was built for {self.hparams['in_channels']} input channels, got "
                f"{x.shape[1]} (input shape {tuple(x.shape)}); convert the images or build "
                f"UNet(in_channels={x.shape[1]})"
            )
        self.geometry.check(x.shape[-2], what="input height")
        self.geometry.check(x.shape[-1], what="input width")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)  # (N, base·2^i, h_i, w_i)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)  # (N, base·2^i, h_i/2, w_i/2); h_i is even by geometry
        x = self.dropout(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = up(x)  # (N, C, 2h, 2w), C halved
            skip = center_crop(skip, x.shape[-2], x.shape[-1])  # (N, C, 2h, 2w)
            x = dec(torch.cat([skip, x], dim=1))  # cat → (N, 2C, 2h, 2w) → (N, C, 2h−4, 2w−4)
        return self.head(x)  # (N, num_classes, H − 2·margin, W − 2·margin)
