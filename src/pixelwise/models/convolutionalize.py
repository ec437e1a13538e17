"""Convolutionalization: turn a classifier's fully connected layers into convolutions (FCN §3.1).

A Linear layer that reads a flattened (C, h, w) feature map is the same function as a Conv2d
with a (C, h, w) kernel: on an input of the training size it produces a 1×1 map equal to the
classifier's output, and on a larger input it slides, producing the classifier's answer for every
window — a spatial score map, computed with shared work.
"""

from __future__ import annotations

import torch
from torch import nn

_PASS_THROUGH = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Identity)


def convolutionalize(model: nn.Sequential, input_shape: tuple[int, int, int]) -> nn.Sequential:
    """Return the fully convolutional equivalent of a classifier.

    Args:
        model: `nn.Sequential(features..., nn.Flatten(), head...)`: a convolutional feature
            extractor, one Flatten, then Linear layers with activations, Dropout and
            BatchNorm1d between them.
        input_shape: (C, H, W) the classifier was built for.

    Returns:
        An `nn.Sequential` that maps (N, C, H', W') with H' ≥ H, W' ≥ W to (N, K, h, w) scores
        (h = w = 1 at the training size). Weights are copied; `model` is left unchanged.

    Raises:
        ValueError: no single Flatten, a layer after Flatten that has no convolutional
            equivalent, or an input_shape that the feature extractor cannot take.
    """
    layers = list(model)
    flat = [i for i, m in enumerate(layers) if isinstance(m, nn.Flatten)]
    if len(flat) != 1:
        raise ValueError(
            f"convolutionalize needs exactly one nn.Flatten between the features and the "
            f"classifier head, found {len(flat)}"
        )
    features, head = layers[: flat[0]], layers[flat[0] + 1 :]
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}")
    with torch.no_grad():
        fmap = nn.Sequential(*features).eval()(torch.zeros(1, *input_shape))  # (1, C, h, w)
    if fmap.dim() != 4:
        raise ValueError(f"the features must output an (N, C, h, w) map, got {tuple(fmap.shape)}")
    _, c, h, w = fmap.shape

    converted: list[nn.Module] = []
    first_linear = True
    for i, m in enumerate(head):
        if isinstance(m, nn.Linear):
            kernel = (h, w) if first_linear else (1, 1)
            cin = c * h * w if first_linear else m.in_features
            if m.in_features != cin:
                raise ValueError(
                    f"Linear layer {i} after Flatten expects {m.in_features} inputs but the "
                    f"features give {cin} at input_shape {tuple(input_shape)}"
                )
            conv = nn.Conv2d(
                m.in_features // (kernel[0] * kernel[1]),
                m.out_features,
                kernel,
                bias=m.bias is not None,
            )
            with torch.no_grad():
                # Flatten is row-major over (C, h, w), so the reshape lines up weight and window.
                conv.weight.copy_(m.weight.reshape(conv.weight.shape))  # (K, C, h, w)
                if m.bias is not None:
                    conv.bias.copy_(m.bias)
            converted.append(conv)
            first_linear = False
        elif isinstance(m, nn.BatchNorm1d):
            bn = nn.BatchNorm2d(
                m.num_features,
                eps=m.eps,
                momentum=m.momentum,
                affine=m.affine,
                track_running_stats=m.track_running_stats,
            )
            bn.load_state_dict(m.state_dict())
            converted.append(bn)
        elif isinstance(m, nn.Dropout):
            converted.append(nn.Dropout(m.p))
        elif isinstance(m, _PASS_THROUGH):
            converted.append(m)
        else:
            raise ValueError(
                f"cannot convolutionalize layer {i} after Flatten ({type(m).__name__}); supported: "
                f"Linear, BatchNorm1d, Dropout and element-wise activations"
            )
    if first_linear:
        raise ValueError("no nn.Linear after the Flatten: nothing to convolutionalize")
    return nn.Sequential(*features, *converted)
