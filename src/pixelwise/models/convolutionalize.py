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
            f"classifier head, found {len(flat)}; pass nn.Sequential(features..., nn.Flatten(), "
            "head...)"
        )
    features, head = layers[: flat[0]], layers[flat[0] + 1 :]
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (C, H, W), got {input_shape!r}; pass the size the classifier "
            "was trained at, e.g. (3, 224, 224)"
        )
    with torch.no_grad():
        fmap = nn.Sequential(*features).eval()(torch.zeros(1, *input_shape))  # (1, C, h, w)
    if fmap.dim() != 4:
        raise ValueError(
            f"the features must output an (N, C, h, w) map, got {tuple(fmap.shape)}; the layers "
            "before Flatten must be 2-D (convolutions, pooling)"
        )
    _, c, h, w = fmap.shape

    converted: list[nn.Module] = []
    for i, m in enumerate(head):
        first_linear = not any(isinstance(c, nn.Conv2d) for c in converted)
        converted.append(_convert_layer(m, i, (c, h, w) if first_linear else None, input_shape))
    if not any(isinstance(c, nn.Conv2d) for c in converted):
        raise ValueError(
            "no nn.Linear after the Flatten: nothing to convolutionalize; the head needs at "
            "least one nn.Linear"
        )
    return nn.Sequential(*features, *converted)


def _convert_layer(
    m: nn.Module,
    i: int,
    window: tuple[int, int, int] | None,
    input_shape: tuple[int, int, int],
) -> nn.Module:
    """The convolutional equivalent of head layer `i`.

    Args:
        m: the layer after Flatten.
        i: its position in the head, for messages.
        window: (C, h, w) of the feature map when `m` would be the first Linear (it becomes a
            (C, h, w) convolution); None after the first Linear (Linear → 1×1 convolution).
        input_shape: the classifier's input shape, for messages.
    """
    if isinstance(m, nn.Linear):
        return _linear_to_conv(m, i, window, input_shape)
    if isinstance(m, nn.BatchNorm1d):
        bn = nn.BatchNorm2d(
            m.num_features,
            eps=m.eps,
            momentum=m.momentum,
            affine=m.affine,
            track_running_stats=m.track_running_stats,
        )
        bn.load_state_dict(m.state_dict())
        return bn
    if isinstance(m, nn.Dropout):
        return nn.Dropout(m.p)
    if isinstance(m, _PASS_THROUGH):
        return m
    raise ValueError(
        f"cannot convolutionalize layer {i} after Flatten ({type(m).__name__}); supported: "
        f"Linear, BatchNorm1d, Dropout and element-wise activations"
    )


def _linear_to_conv(
    m: nn.Linear,
    i: int,
    window: tuple[int, int, int] | None,
    input_shape: tuple[int, int, int],
) -> nn.Conv2d:
    """A Linear layer as the convolution computing it: a (C, h, w) kernel over the feature map
    for the first Linear (`window` = (C, h, w)), a 1×1 kernel for the later ones."""
    c, h, w = window if window is not None else (m.in_features, 1, 1)
    if m.in_features != c * h * w:
        raise ValueError(
            f"Linear layer {i} after Flatten expects {m.in_features} inputs but the "
            f"features give {c * h * w} at input_shape {tuple(input_shape)}; pass the "
            "input_shape the classifier was built for"
        )
    conv = nn.Conv2d(c, m.out_features, (h, w), bias=m.bias is not None)
    with torch.no_grad():
        # Flatten is row-major over (C, h, w), so the reshape lines up weight and window.
        conv.weight.copy_(m.weight.reshape(conv.weight.shape))  # (K, C, h, w)
        if m.bias is not None:
            conv.bias.copy_(m.bias)
    return conv
