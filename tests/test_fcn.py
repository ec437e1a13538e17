"""FCN: VGG16 layout, exact output size for every input size, bilinear upsampling, skips."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pixelwise.models import FCN, Geometry, load_vgg16_weights
from pixelwise.models.fcn import bilinear_kernel


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_output_matches_input_for_every_size_1_to_600(variant):
    # The meta device runs the same forward (pads, ceil pooling, crops) on shapes alone.
    net = FCN(variant, num_classes=2, width=1 / 64).eval().to("meta")
    for n in range(1, 601):
        y = net(torch.empty(1, 3, n, 1, device="meta"))
        assert y.shape == (1, 2, n, 1), n
    real = FCN(variant, num_classes=2, width=1 / 64).eval()
    with torch.no_grad():
        for n in (1, 2, 31, 32, 33, 97):
            assert real(torch.zeros(1, 3, n, 1)).shape == (1, 2, n, 1)


def test_odd_sizes_2d():
    net = FCN("8s", num_classes=5, in_channels=1, width=1 / 32).eval()
    for h, w in [(1, 1), (17, 331), (255, 3)]:
        assert net(torch.randn(2, 1, h, w)).shape == (2, 5, h, w)


def test_full_width_matches_reference_vgg16_layout():
    net = FCN("8s")
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert convs[0].padding == (100, 100)
    assert net.fc6.weight.shape == (4096, 512, 7, 7)
    assert net.fc7.weight.shape == (4096, 4096, 1, 1)
    assert net.receptive_radius == 202  # VGG16's fc6 sees 404 × 404 pixels
    pools = [m for m in net.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.ceil_mode for p in pools)


def test_score_layers_start_at_zero_and_upsampling_is_fixed_by_default():
    net = FCN("8s", width=1 / 16)
    for layer in (net.score_fr, net.score_pool4, net.score_pool3):
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    ups = (net.upscore2, net.upscore_pool4, net.upscore)
    assert not any(u.weight.requires_grad for u in ups)
    assert all(
        u.weight.requires_grad for u in (FCN("8s", width=1 / 16, learn_upsampling=True).upscore2,)
    )


def test_bilinear_kernel_reproduces_bilinear_interpolation_of_a_ramp():
    for f in (2, 8, 32):
        up = nn.ConvTranspose2d(1, 1, 2 * f, stride=f, padding=f // 2, bias=False)
        up.weight.data = bilinear_kernel(1, 2 * f)
        ramp = torch.arange(12.0).reshape(1, 1, 1, 12).expand(1, 1, 12, 12) * 3 + 1
        with torch.no_grad():
            ours = up(ramp)
        ref = F.interpolate(ramp, scale_factor=f, mode="bilinear", align_corners=False)
        # Away from the border (where the transposed conv sees implicit zeros) they agree, and
        # the ramp is upsampled to a ramp of slope 3 / f.
        inner = (slice(None), slice(None), slice(f, -f), slice(f, -f))
        torch.testing.assert_close(ours[inner], ref[inner])
        row = ours[0, 0, 6 * f, f:-f]
        torch.testing.assert_close(row.diff(), torch.full_like(row.diff(), 3 / f))


def test_bilinear_kernel_is_per_channel():
    w = bilinear_kernel(3, 4)
    assert w[0, 1].abs().sum() == 0 and w[1, 1].sum() == pytest.approx(4.0)


def test_skips_change_the_output():
    torch.manual_seed(0)
    net = FCN("8s", num_classes=3, width=1 / 16).eval()
    x = torch.randn(1, 3, 64, 64)
    nn.init.normal_(net.score_pool3.weight)
    with_skip = net(x)
    nn.init.zeros_(net.score_pool3.weight)
    nn.init.zeros_(net.score_pool3.bias)
    assert not torch.allclose(with_skip, net(x))


def test_at_once_scales_the_pool_features():
    net = FCN("8s", width=1 / 16, at_once=True)
    assert (net.scale_pool4, net.scale_pool3) == (0.01, 0.0001)
    with pytest.raises(ValueError, match="use variant '16s' or '8s'"):
        FCN("32s", at_once=True)


def test_every_trainable_parameter_receives_a_gradient():
    torch.manual_seed(0)
    net = FCN("8s", num_classes=3, width=1 / 16, learn_upsampling=True)
    for layer in (net.score_fr, net.score_pool4, net.score_pool3):
        nn.init.normal_(layer.weight, std=0.1)  # zero-initialised scores block the backbone
    net(torch.randn(2, 3, 40, 40)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_load_vgg16_weights_transplants_the_classifier(tmp_path):
    from safetensors.torch import save_file

    net = FCN("32s", width=1 / 64)
    # a fake "VGG16" in torchvision's layout at the same narrow width
    state = {}
    for i, m in enumerate(net.features):
        if isinstance(m, nn.Conv2d):
            state[f"features.{i}.weight"] = torch.randn_like(m.weight)
            state[f"features.{i}.bias"] = torch.randn_like(m.bias)
    c, k = net.fc6.in_channels, net.fc6.out_channels
    state["classifier.0.weight"] = torch.randn(k, c * 49)  # Linear over the flattened 7×7 map
    state["classifier.0.bias"] = torch.randn(k)
    state["classifier.3.weight"] = torch.randn(k, k)
    state["classifier.3.bias"] = torch.randn(k)
    path = tmp_path / "vgg.safetensors"
    save_file(state, path)
    load_vgg16_weights(net, path)
    torch.testing.assert_close(net.features[28].weight, state["features.28.weight"])
    torch.testing.assert_close(net.fc6.weight.reshape(k, -1), state["classifier.0.weight"])
    torch.testing.assert_close(net.fc7.weight[:, :, 0, 0], state["classifier.3.weight"])

    pt = tmp_path / "vgg.pth"
    torch.save(state, pt)
    load_vgg16_weights(FCN("32s", width=1 / 64), pt)

    with pytest.raises(ValueError, match=r"has shape .* need width=1.0"):
        load_vgg16_weights(FCN("32s", width=1 / 32), path)
    del state["classifier.3.bias"]
    save_file(state, path)
    with pytest.raises(ValueError, match=r"not a VGG16 state dict.*classifier.3.bias"):
        load_vgg16_weights(net, path)
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="cannot read a VGG16 state dict"):
        load_vgg16_weights(net, tmp_path / "junk.pth")


def test_bad_variant():
    with pytest.raises(ValueError, match=r"variant must be one of \('32s', '16s', '8s'\)"):
        FCN("4s")


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_fcn_satisfies_the_geometry_protocol(variant):
    net = FCN(variant, num_classes=2, width=1 / 64)
    assert isinstance(net, Geometry)
    assert (net.margin, net.stride) == (0, 32)
    assert net.output_size(37) == net.input_size(37) == 37
    assert net.valid_input_sizes(0, 3) == [1, 2, 3]
