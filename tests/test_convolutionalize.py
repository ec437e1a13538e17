"""Convolutionalization: the converted net equals the classifier, window by window."""

import pytest
import torch
from torch import nn

from pixelwise.models import convolutionalize


def _classifier() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 3 * 3, 32),  # input 12×12 → 10 → 5 → 3
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(32, 10),
    )
    net[7].running_mean.normal_()
    net[7].running_var.uniform_(0.5, 2)
    return net.eval()


def test_equal_on_the_training_size():
    clf = _classifier()
    fcn = convolutionalize(clf, (3, 12, 12)).eval()
    x = torch.randn(4, 3, 12, 12)
    out = fcn(x)
    assert out.shape == (4, 10, 1, 1)
    torch.testing.assert_close(out[:, :, 0, 0], clf(x), rtol=1e-5, atol=1e-5)
    assert isinstance(fcn[6], nn.BatchNorm2d)  # Flatten is gone: the head starts at 5


def test_every_position_is_the_classifier_on_its_window():
    clf = _classifier()
    fcn = convolutionalize(clf, (3, 12, 12)).eval()
    x = torch.randn(2, 3, 20, 17)
    scores = fcn(x)
    stride = 2  # one 2×2 pooling
    assert scores.shape == (2, 10, (20 - 12) // stride + 1, (17 - 12) // stride + 1)
    for i in range(scores.shape[2]):
        for j in range(scores.shape[3]):
            window = x[:, :, stride * i : stride * i + 12, stride * j : stride * j + 12]
            torch.testing.assert_close(scores[:, :, i, j], clf(window), rtol=1e-5, atol=1e-5)


def test_classifier_is_left_unchanged():
    clf = _classifier()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    convolutionalize(clf, (3, 12, 12))
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())


def test_clear_errors():
    with pytest.raises(ValueError, match="exactly one nn.Flatten"):
        convolutionalize(nn.Sequential(nn.Conv2d(1, 1, 1)), (1, 4, 4))
    with pytest.raises(ValueError, match=r"cannot convolutionalize layer 1 after Flatten \(LSTM\)"):
        convolutionalize(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.LSTM(4, 4)), (1, 4, 4))
    with pytest.raises(ValueError, match="expects 10 inputs but the features give 16"):
        convolutionalize(nn.Sequential(nn.Flatten(), nn.Linear(10, 4)), (1, 4, 4))
