"""Tests for pixelwise.losses: the U-Net weight map, weighted cross-entropy and soft Dice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

from pixelwise.losses import (
    SegmentationLoss,
    soft_dice_loss,
    weight_map,
    weighted_cross_entropy,
)
from references import voronoi_cells, weight_map_bruteforce


def random_instances(rng: np.random.Generator, shape=(64, 80), n=12, gaps=True) -> np.ndarray:
    """Voronoi cells of `n` random seeds (touching), some gaps and dropped cells."""
    labels = voronoi_cells(shape, n, rng).astype(np.int64)  # (H, W) ids 1..n
    ids = np.concatenate([[0], rng.permutation(np.arange(1, n + 1)) * 7])
    labels = ids[labels]  # non-contiguous labels
    if gaps:
        edge = ndi.grey_dilation(labels, 3) != ndi.grey_erosion(labels, 3)
        labels[edge & (rng.random(shape) < 0.5)] = 0
        labels[labels == labels.max()] = 0
    return labels


def two_squares() -> np.ndarray:
    """Two 4×4 squares in a row, 3 background columns apart (cols 6..9 and 13..16)."""
    instances = np.zeros((12, 24), np.int32)
    instances[4:8, 6:10] = 1
    instances[4:8, 13:17] = 2
    return instances


# --------------------------------------------------------------------------------------------
# weight_map
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_weight_map_matches_bruteforce_on_random_touching_cells(seed):
    rng = np.random.default_rng(seed)
    instances = random_instances(rng, gaps=seed % 2 == 0)
    fast = weight_map(instances)
    reference = weight_map_bruteforce(instances)
    assert fast.dtype == np.float32
    assert np.abs(fast - reference).max() <= 1e-3


@pytest.mark.parametrize(
    ("w0", "sigma", "class_weights"),
    [(10.0, 5.0, None), (25.0, 3.0, [0.5, 2.0]), (10.0, 12.0, "balanced"), (0.0, 5.0, None)],
)
def test_weight_map_matches_bruteforce_for_parameters(w0, sigma, class_weights):
    instances = random_instances(np.random.default_rng(11), shape=(96, 96), n=20)
    fast = weight_map(instances, w0=w0, sigma=sigma, class_weights=class_weights)
    reference = weight_map_bruteforce(instances, w0=w0, sigma=sigma, class_weights=class_weights)
    assert np.abs(fast - reference).max() <= 1e-3


@pytest.mark.parametrize(("seed", "w0"), [(0, 10.0), (1, 10.0), (2, 1000.0)])
def test_weight_map_matches_bruteforce_on_scattered_dots(seed, w0):
    # Small objects 10-30 px apart: many pixels have d1 + d2 near the cutoff distance, where a
    # too-small crop or a too-loose tolerance would show.
    rng = np.random.default_rng(seed)
    instances = np.zeros((96, 96), np.int32)
    for label, (row, col) in enumerate(rng.integers(0, 96, (14, 2)), start=1):
        instances[row : row + 2, col : col + 3] = label
    fast = weight_map(instances, w0=w0, class_weights=None)
    assert np.abs(fast - weight_map_bruteforce(instances, w0=w0, class_weights=None)).max() <= 1e-3


def test_weight_map_huge_label_values_match_bruteforce():
    instances = random_instances(np.random.default_rng(3))
    instances[instances > 0] += 10**12  # forces the relabelling path
    assert np.abs(weight_map(instances) - weight_map_bruteforce(instances)).max() <= 1e-3


def test_weight_map_midpoint_between_two_squares_by_hand():
    # Squares at columns 6..9 and 13..16; background pixel (5, 11) is 2 columns from each square
    # (cols 9 and 13), so d1 = d2 = 2 and the border term is 10 · exp(-(2 + 2)² / (2 · 5²)).
    instances = two_squares()
    w = weight_map(instances, w0=10.0, sigma=5.0, class_weights="balanced")
    n_fg, n_total = 32, 12 * 24
    wc_background = n_total / (2 * (n_total - n_fg))  # 288 / 512 = 0.5625
    expected = wc_background + 10.0 * math.exp(-16.0 / 50.0)
    assert w[5, 11] == pytest.approx(expected, abs=1e-5)
    # Object pixels carry only their class weight 288 / (2 · 32) = 4.5.
    assert w[5, 7] == pytest.approx(4.5)
    assert w[4:8, 6:10] == pytest.approx(np.full((4, 4), 4.5))


def test_weight_map_without_objects_is_uniform_class_weight():
    w = weight_map(np.zeros((10, 12), np.int32))
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, np.ones((10, 12), np.float32))


def test_weight_map_single_object_has_no_border_term():
    instances = np.zeros((10, 10), np.uint16)
    instances[2:5, 2:5] = 9
    w = weight_map(instances, class_weights=None)
    np.testing.assert_array_equal(w, np.ones((10, 10), np.float32))
    balanced = weight_map(instances)
    # 9 object pixels of 100: background 100 / (2 · 91), object 100 / (2 · 9).
    assert np.unique(balanced) == pytest.approx([100 / 182, 100 / 18])
    np.testing.assert_allclose(balanced, weight_map_bruteforce(instances), atol=1e-6)


def test_weight_map_border_term_only_on_background():
    instances = two_squares()
    with_border = weight_map(instances, class_weights=None)
    np.testing.assert_array_equal(with_border[instances > 0], 1.0)
    assert with_border[instances == 0].max() > 5.0


def test_weight_map_semantic_classes_and_sequence_weights():
    instances = two_squares()
    classes = np.zeros_like(instances)
    classes[instances == 2] = 3  # classes 0 and 3 present, 1 and 2 absent
    w = weight_map(instances, w0=0.0, classes=classes)
    # 272 pixels of class 0 → 288 / (2 · 272); 16 pixels of class 3 → 288 / (2 · 16) = 9.
    assert w[instances == 2] == pytest.approx(np.full(16, 9.0))
    assert w[instances == 1] == pytest.approx(np.full(16, 288 / 544))
    w = weight_map(instances, w0=0.0, class_weights=[1.0, 2.0, 3.0, 4.0], classes=classes)
    assert w[instances == 2] == pytest.approx(np.full(16, 4.0))
    assert w[0, 0] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instances": np.zeros((2, 3, 4), int)}, r"instances must be a 2-D \(H, W\) label image"),
        ({"instances": np.zeros((4, 4), np.float32)}, "instances must have an integer dtype"),
        ({"instances": -np.ones((4, 4), int)}, "instances must be non-negative, got minimum -1"),
        ({"w0": -1.0}, r"w0 must be finite and >= 0, got -1.0; pass e.g. w0=10.0"),
        ({"sigma": 0.0}, r"sigma must be > 0, got 0.0; pass a positive distance in pixels"),
        ({"class_weights": "uniform"}, r"class_weights must be \"balanced\", None or a sequence"),
        ({"class_weights": [1.0, -2.0]}, "class_weights must be a 1-D sequence of finite positive"),
        (
            {"class_weights": [1.0], "instances": two_squares()},
            r"class_weights has 1 entries but the class map holds class 1; pass at least 2",
        ),
        ({"classes": np.zeros((3, 3), int)}, r"classes must have the shape of instances \(4, 4\)"),
    ],
)
def test_weight_map_rejects_bad_input(kwargs, message):
    arguments = {"instances": np.zeros((4, 4), np.int32), **kwargs}
    with pytest.raises(ValueError, match=message):
        weight_map(**arguments)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def manual_ce(logits, target, weight, ignore_index=None):
    """Per-pixel weighted CE from log_softmax gathered by hand, and the weights used."""
    n, _, h, w = logits.shape
    logp = torch.log_softmax(logits, dim=1)
    per_pixel = torch.zeros(n, h, w, dtype=logits.dtype)
    used = torch.zeros(n, h, w, dtype=logits.dtype)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t == ignore_index:
                    continue
                per_pixel[i, y, x] = -logp[i, t, y, x] * weight[i, y, x]
                used[i, y, x] = weight[i, y, x]
    return per_pixel, used


def test_weighted_cross_entropy_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 5), generator=gen)
    target[0, 0, :3] = 255
    weight = torch.rand(2, 4, 5, generator=gen, dtype=torch.float64) + 0.5
    per_pixel, used = manual_ce(logits, target, weight, ignore_index=255)
    mean = weighted_cross_entropy(logits, target, weight, ignore_index=255)
    total = weighted_cross_entropy(logits, target, weight, ignore_index=255, reduction="sum")
    assert mean.item() == pytest.approx((per_pixel.sum() / used.sum()).item(), rel=1e-12)
    assert total.item() == pytest.approx(per_pixel.sum().item(), rel=1e-12)
    # Changing an ignored pixel's logits or weight changes nothing.
    logits[0, :, 0, 0] += 5.0
    weight[0, 0, 0] = 100.0
    assert weighted_cross_entropy(logits, target, weight, ignore_index=255).item() == (
        pytest.approx(mean.item(), rel=1e-12)
    )


def test_weighted_cross_entropy_without_weight_equals_torch_mean():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, 6, generator=gen)
    target = torch.randint(0, 4, (2, 6, 6), generator=gen)
    target[1, 2:4] = 7
    expected = F.cross_entropy(logits, target, ignore_index=7)
    assert weighted_cross_entropy(logits, target, ignore_index=7).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_weighted_cross_entropy_all_ignored_is_zero_with_gradient():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    target = torch.full((1, 3, 3), 9, dtype=torch.long)
    loss = weighted_cross_entropy(logits, target, ignore_index=9)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_soft_dice_perfect_prediction_is_zero():
    target = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    logits = 50.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).double()
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-12)


def test_soft_dice_known_case():
    # Two classes, two pixels, both predicted 50/50 (zero logits); targets class 0 and class 1.
    # Per class: intersection 0.5, Σp = 1, Σg = 1 → dice = (2·0.5 + 1) / (2 + 1) = 2/3.
    logits = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    target = torch.tensor([[[0, 1]]])
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 / 3)
    # Ignoring the second pixel: class 0: (2·0.5 + 1) / (1.5 + 1) = 0.8; class 1: 1 / 1.5.
    loss = soft_dice_loss(logits, target, ignore_index=1)
    assert loss.item() == pytest.approx(1 - (0.8 + 2 / 3) / 2)


def test_segmentation_loss_kinds():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, 5, generator=gen)
    target = torch.randint(0, 3, (2, 5, 5), generator=gen)
    weight = torch.rand(2, 5, 5, generator=gen)
    ce = weighted_cross_entropy(logits, target, weight)
    dice = soft_dice_loss(logits, target)
    assert SegmentationLoss("ce")(logits, target, weight).item() == pytest.approx(ce.item())
    assert SegmentationLoss("dice")(logits, target).item() == pytest.approx(dice.item())
    combined = SegmentationLoss("ce+dice")(logits, target, weight)
    assert combined.item() == pytest.approx((ce + dice).item())
    summed = SegmentationLoss("ce", reduction="sum")(logits, target, weight)
    assert summed.item() == pytest.approx(
        (weight * F.cross_entropy(logits, target, reduction="none")).sum().item()
    )


def test_losses_reject_bad_input():
    logits = torch.zeros(1, 2, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(
        ValueError,
        match=r"logits \(N, C, H, W\) = \(1, 2, 4, 4\) and target \(N, H, W\) = \(1, 3, 3\)",
    ):
        weighted_cross_entropy(logits, target[:, :3, :3])
    with pytest.raises(ValueError, match=r"target must be an \(N, H, W\) int64 tensor"):
        soft_dice_loss(logits, target.float())
    with pytest.raises(ValueError, match=r"weight must have the target's shape \(1, 4, 4\)"):
        weighted_cross_entropy(logits, target, torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum'\)"):
        weighted_cross_entropy(logits, target, reduction="none")
    with pytest.raises(ValueError, match=r"kind must be one of \('ce', 'dice', 'ce\+dice'\)"):
        SegmentationLoss("focal")
    with pytest.raises(ValueError, match="kind='dice' does not use a weight map"):
        SegmentationLoss("dice")(logits, target, torch.ones(1, 4, 4))
