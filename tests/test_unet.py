"""U-Net: the paper's numbers, the geometry API and its agreement with the forward pass."""

import pytest
import torch
from torch import nn

from pixelwise.models import Geometry, UNet, UNetGeometry


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_network_numbers():
    net = UNet()  # 1 input channel, 2 classes, the paper's defaults
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in convs) == 4
    assert _n_params(net) == 31_030_658
    assert net.margin == 92
    assert net.output_size(572) == 388
    assert net.input_size(388) == 572
    # every 3×3 convolution is unpadded
    assert all(m.padding == (0, 0) for m in convs if isinstance(m, nn.Conv2d))


def test_paper_forward_shape_with_narrow_width():
    net = UNet(base_channels=2)
    with torch.no_grad():
        y = net(torch.randn(1, 1, 572, 572))
    assert y.shape == (1, 2, 388, 388)


def test_paper_trace_matches_figure_1():
    # Figure 1 of the paper: encoder 568, 280, 136, 64; bottom 28; decoder 52, 100, 196, 388.
    assert UNetGeometry(5, "valid").trace(572) == [568, 280, 136, 64, 28, 52, 100, 196, 388]


@pytest.mark.parametrize("depth", [2, 3, 4, 5])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_geometry_agrees_with_forward(depth, padding):
    net = UNet(1, 3, base_channels=2, depth=depth, padding=padding).eval()
    sizes = net.valid_input_sizes(1, 200)
    assert sizes, "some input size must be valid"
    for h, w in zip(sizes[:3], sizes[-3:], strict=True):
        with torch.no_grad():
            y = net(torch.randn(1, 1, h, w))
        assert y.shape == (1, 3, net.output_size(h), net.output_size(w))
        assert net.input_size(net.output_size(h)) == h
        assert h - net.output_size(h) == 2 * net.margin
    if padding == "same":
        assert net.margin == 0
        assert sizes == list(range(net.stride, 201, net.stride))


def test_valid_sizes_brute_force():
    """A size is valid iff every pooling meets an even size: simulate it step by step."""
    geo = UNetGeometry(4, "valid")

    def brute(n):
        s = n
        for _ in range(3):
            s -= 4
            if s <= 0 or s % 2:
                return False
            s //= 2
        s -= 4  # bottom
        for _ in range(3):
            if s <= 0:
                return False
            s = 2 * s - 4  # up-convolution, then two convolutions
        return s > 0

    assert geo.valid_input_sizes(1, 400) == [n for n in range(1, 401) if brute(n)]
    assert geo.valid_input_sizes(1, 400)[:3] == [92, 100, 108]  # stride 8 apart


def test_invalid_size_names_two_nearest():
    net = UNet(base_channels=2)
    with pytest.raises(ValueError, match=r"cannot take input size 570.*use 556 or 572"):
        net.output_size(570)
    with pytest.raises(ValueError, match=r"input height 570.*use 556 or 572"):
        net(torch.zeros(1, 1, 570, 572))
    with pytest.raises(ValueError, match=r"use 188\b"):  # nothing valid below 188
        net.output_size(100)
    with pytest.raises(ValueError, match=r"no input size gives output size 387"):
        net.input_size(387)


def test_same_padding_preserves_size_and_rejects_odd():
    net = UNet(1, 2, base_channels=2, padding="same", depth=3).eval()
    assert net(torch.zeros(1, 1, 36, 44)).shape == (1, 2, 36, 44)
    with pytest.raises(ValueError, match=r"input width 37.*use 36 or 40"):
        net(torch.zeros(1, 1, 36, 37))


def test_options_build_and_run():
    for kw in (
        dict(batch_norm=True),
        dict(up_mode="bilinear"),
        dict(dropout=0.5),
        dict(depth=2, base_channels=3),
    ):
        net = UNet(2, 4, base_channels=kw.pop("base_channels", 4), **kw).eval()
        n = net.valid_input_sizes(1, 200)[0]
        assert net(torch.randn(2, 2, n, n)).shape[:2] == (2, 4)


def test_every_parameter_receives_a_gradient():
    net = UNet(1, 2, base_channels=4, depth=3, batch_norm=True, dropout=0.2)
    n = net.valid_input_sizes(1, 100)[0]
    net(torch.randn(2, 1, n, n)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_he_initialisation():
    torch.manual_seed(0)
    net = UNet()
    conv = net.down[3][2]  # 3×3, 512 → 512: N = 9·512
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 512)) ** 0.5, rel=0.01)
    up = net.up[0].conv  # 2×2 up-convolution 1024 → 512: one tap per input channel
    assert up.weight.std().item() == pytest.approx((2 / 1024) ** 0.5, rel=0.01)
    assert all(
        float(m.bias.detach().abs().max()) == 0 for m in net.modules() if isinstance(m, nn.Conv2d)
    )


def test_dropout_sits_at_the_end_of_the_contracting_path():
    net = UNet(base_channels=2, dropout=0.5)
    assert isinstance(net.dropout, nn.Dropout2d) and net.dropout.p == 0.5
    assert isinstance(UNet(base_channels=2).dropout, nn.Identity)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(depth=1), r"depth must be an integer >= 2, got 1"),
        (dict(padding="full"), r"padding must be one of \('valid', 'same'\), got 'full'"),
        (dict(up_mode="nearest"), r"up_mode must be one of"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (dict(base_channels=0), r"base_channels must be a positive integer, got 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)


def test_wrong_channel_count_is_reported():
    net = UNet(base_channels=2)
    with pytest.raises(ValueError, match=r"built for 1 input channels, got 3"):
        net(torch.zeros(1, 3, 572, 572))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_unet_and_its_geometry_satisfy_the_geometry_protocol(padding, tiny_unet):
    net = tiny_unet(padding=padding)
    assert isinstance(net, Geometry)
    assert isinstance(net.geometry, Geometry)  # UNetGeometry: the arithmetic alone
    assert not isinstance(nn.Conv2d(1, 1, 3), Geometry)
