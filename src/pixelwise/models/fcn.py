"""FCN-32s/16s/8s (Long, Shelhamer, Darrell 2015) on a VGG16 backbone, as the reference release.

The classifier's fully connected layers become convolutions (fc6: 7×7, fc7: 1×1), so the net
takes any input size and outputs a coarse score map (stride 32). Transposed convolutions
initialised to bilinear interpolation upsample it; skips from pool4 (16s) and pool3 (8s) add finer
scores. As in the reference Caffe nets, conv1_1 pads the input by 100 pixels and pooling rounds
up (ceil mode), so that fc6 always has at least one output; fixed crops then align each map with
the one it is added to and the final scores with the input. Crop offsets of the reference:

    32s: upscore (64×64, stride 32) cropped at 19
    16s: score_pool4 cropped at 5; upscore16 (32×32, stride 16) cropped at 27
    8s:  score_pool4 at 5; score_pool3 at 9; upscore8 (16×16, stride 8) cropped at 31

Worked example (8s, input n = 1): conv1 → 1 + 198 = 199, pools (ceil) → 100, 50, 25, 13, 7,
fc6 → 1; upscore2 → 4 ≤ 13 − 5 (pool4 crop fits); upscore_pool4 → 10 ≤ 25 − 9; upscore8 → 88,
and 31 + 1 ≤ 88. The same inequalities hold for every n ≥ 1, so the output is always H × W.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pixelwise.checks import check_positive_int

VARIANTS = ("32s", "16s", "8s")

# VGG16 configuration: channels of each 3×3 conv, "M" for a 2×2 max-pooling. The index of each
# layer in `FCN.features` matches torchvision's `vgg16().features`, so ImageNet weights load 1:1.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
POOL3, POOL4, POOL5 = 17, 24, 31  # slice ends in `features` after pool3, pool4 and pool5

# (kernel, stride, crop offset) of every upsampling/crop, per variant, from the reference nets.
_CROP_POOL4, _CROP_POOL3 = 5, 9
_FINAL = {"32s": (64, 32, 19), "16s": (32, 16, 27), "8s": (16, 8, 31)}


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """(channels, channels, k, k) transposed-convolution weight performing bilinear upsampling.

    Each channel is upsampled independently (off-diagonal filters are zero), as the reference's
    `surgery.interp`. For k = 2·f − f % 2 and stride f this reproduces bilinear interpolation.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = np.ogrid[:kernel_size, :kernel_size]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = torch.from_numpy(filt).float()
    return weight


def _upsample(channels: int, kernel: int, stride: int, learn: bool) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, kernel, stride=stride, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, kernel))
    up.weight.requires_grad_(learn)
    return up


def _crop(x: torch.Tensor, offset: int, h: int, w: int) -> torch.Tensor:
    return x[..., offset : offset + h, offset : offset + w]


class FCN(nn.Module):
    """Fully convolutional network with a VGG16 backbone.

    Args:
        variant: "32s", "16s" or "8s".
        num_classes: output channels (21 for PASCAL VOC).
        in_channels: image channels.
        width: multiplies every channel count (1.0 = VGG16; 1/16 trains in minutes on a CPU).
        learn_upsampling: make the bilinear-initialised transposed convolutions trainable
            (fixed by default, as the reference's final upsampling).
        at_once: the all-at-once training variant: pool4 and pool3 features are scaled by 0.01
            and 0.0001 before scoring (16s and 8s only).

    Shapes:
        input (N, in_channels, H, W), any H, W ≥ 1; output (N, num_classes, H, W) logits.
    """

    margin = 0
    stride = 32

    def __init__(
        self,
        variant: str = "8s",
        num_classes: int = 21,
        in_channels: int = 3,
        *,
        width: float = 1.0,
        learn_upsampling: bool = False,
        at_once: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(
                f"variant must be one of {VARIANTS}, got {variant!r}; pass '8s' for the finest "
                "skips (the paper's best)"
            )
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}; 1.0 is VGG16's channel counts")
        if at_once and variant == "32s":
            raise ValueError(
                "at_once scales the pool3/pool4 skips, which variant '32s' does not have; "
                "use variant '16s' or '8s'"
            )
        self.variant = variant
        self.registry_name = f"fcn{variant}"
        self.hparams = dict(
            num_classes=num_classes,
            in_channels=in_channels,
            width=width,
            learn_upsampling=learn_upsampling,
            at_once=at_once,
        )

        def ch(c: int) -> int:
            return max(1, round(c * width))

        layers: list[nn.Module] = []
        cin = in_channels
        for i, v in enumerate(VGG16):
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(cin, ch(v), 3, padding=100 if i == 0 else 1), nn.ReLU(True)]
                cin = ch(v)
        self.features = nn.Sequential(*layers)
        fc = ch(4096)
        self.fc6 = nn.Conv2d(cin, fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop6 = nn.Dropout(0.5)
        self.drop7 = nn.Dropout(0.5)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        if variant in ("16s", "8s"):
            self.score_pool4 = nn.Conv2d(ch(512), num_classes, 1)
            self.upscore2 = _upsample(num_classes, 4, 2, learn_upsampling)
        if variant == "8s":
            self.score_pool3 = nn.Conv2d(ch(256), num_classes, 1)
            self.upscore_pool4 = _upsample(num_classes, 4, 2, learn_upsampling)
        kernel, stride, _ = _FINAL[variant]
        self.upscore = _upsample(num_classes, kernel, stride, learn_upsampling)
        self.scale_pool4 = 0.01 if at_once else 1.0
        self.scale_pool3 = 0.0001 if at_once else 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Backbone: He init (replaced by ImageNet weights in practice); scores: zeros."""
        for m in [*self.features, self.fc6, self.fc7]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for name in ("score_fr", "score_pool4", "score_pool3"):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).weight)
                nn.init.zeros_(getattr(self, name).bias)

    # -- geometry API, shared with UNet ---------------------------------------------------
    @property
    def receptive_radius(self) -> int:
        """Half-width of the receptive field of one fc7 unit (202 for VGG16)."""
        rf, jump = 1, 1
        for m in [*self.features, self.fc6]:
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
                k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
                s = m.stride if isinstance(m.stride, int) else m.stride[0]
                rf += (k - 1) * jump
                jump *= s
        return rf // 2

    def output_size(self, n: int) -> int:
        return n

    def input_size(self, m: int) -> int:
        return m

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
        return list(range(max(lo, 1), hi + 1))

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) → (N, num_classes, H, W) logits."""
        if x.dim() != 4 or x.shape[1] != self.hparams["in_channels"]:
            raise ValueError(
                f"FCN expects an (N, {self.hparams['in_channels']}, H, W) tensor, got shape "
                f"{tuple(x.shape)}; pass a batch of {self.hparams['in_channels']}-channel images "
                "(x[None] adds the batch dimension)"
            )
        h, w = x.shape[-2:]
        pool3 = self.features[:POOL3](x)  # (N, 256w, ~(H+198)/8, ...)
        pool4 = self.features[POOL3:POOL4](pool3)  # (N, 512w, ~(H+198)/16, ...)
        pool5 = self.features[POOL4:POOL5](pool4)  # (N, 512w, ~(H+198)/32, ...)
        f = self.drop6(torch.relu(self.fc6(pool5)))  # (N, 4096w, h5 − 6, w5 − 6)
        f = self.drop7(torch.relu(self.fc7(f)))
        score = self.score_fr(f)  # (N, K, h5 − 6, w5 − 6)
        if self.variant in ("16s", "8s"):
            score = self.upscore2(score)  # (N, K, 2·h + 2, ...)
            skip = self.score_pool4(pool4 * self.scale_pool4)
            score = score + _crop(skip, _CROP_POOL4, *score.shape[-2:])
        if self.variant == "8s":
            score = self.upscore_pool4(score)  # (N, K, 2·h + 2, ...)
            skip = self.score_pool3(pool3 * self.scale_pool3)
            score = score + _crop(skip, _CROP_POOL3, *score.shape[-2:])
        score = self.upscore(score)
        return _crop(score, _FINAL[self.variant][2], h, w)  # (N, K, H, W)


def load_vgg16_weights(fcn: FCN, path: str) -> None:
    """Load ImageNet VGG16 classifier weights (torchvision's state-dict layout) into `fcn`.

    `features.N.*` go to the backbone unchanged; `classifier.0.weight` (4096 × 25088) is reshaped
    to fc6 (4096 × 512 × 7 × 7) and `classifier.3.weight` (4096 × 4096) to fc7 (4096 × 4096 × 1 ×
    1): the convolutionalization of the paper. The file is read with safetensors when it ends in
    `.safetensors`, else with `torch.load(weights_only=True)`, which refuses pickled code.

    Raises:
        ValueError: the file lacks a key or a shape does not match (e.g. width != 1.0).
    """
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # any unreadable file gets the same clear message
            raise ValueError(f"{path}: cannot read a VGG16 state dict ({e})") from e
    ours: dict[str, torch.Tensor] = {}
    for i, m in enumerate(fcn.features):
        if isinstance(m, nn.Conv2d):
            ours[f"features.{i}.weight"] = m.weight
            ours[f"features.{i}.bias"] = m.bias
    ours |= {
        "classifier.0.weight": fcn.fc6.weight,
        "classifier.0.bias": fcn.fc6.bias,
        "classifier.3.weight": fcn.fc7.weight,
        "classifier.3.bias": fcn.fc7.bias,
    }
    missing = [k for k in ours if k not in state]
    if missing:
        raise ValueError(
            f"{path}: not a VGG16 state dict in torchvision's layout; missing {missing[:4]}"
            f"{'...' if len(missing) > 4 else ''}"
        )
    with torch.no_grad():
        for key, param in ours.items():
            src = state[key]
            if src.numel() != param.numel():
                raise ValueError(
                    f"{path}: {key} has shape {tuple(src.shape)}, the FCN expects "
                    f"{tuple(param.shape)}; ImageNet VGG16 weights need width=1.0 and "
                    f"in_channels=3"
                )
            param.copy_(src.reshape(param.shape))
