"""Start-up costs: what the command line imports, and the tile-size probe (the empty-batch probe
gives the meta-device probe's estimate, without importing torch's symbolic shapes and dynamo)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.func import functional_call

from pixelwise.models import FCN, UNet
from pixelwise.tiling import activation_bytes_per_pixel
from pixelwise.tiling.plan import smallest_valid

HEAVY = ("matplotlib", "skimage", "onnx", "onnxruntime", "sympy", "torch._dynamo")
"""Modules no command needs before it runs (plotting, scikit-image, export, torch.compile)."""


def _imported(code: str, modules: tuple[str, ...] = (*HEAVY, "torch")) -> set[str]:
    """The `modules` (default: HEAVY and torch) a fresh interpreter has imported after `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_import_pixelwise_loads_nothing_heavy():
    assert _imported("import pixelwise") == set()  # names load on first use


def test_the_command_line_parser_imports_no_plotting_or_image_libraries():
    assert _imported("from pixelwise.cli import build_parser\nbuild_parser()") == {"torch"}


def test_only_the_train_command_builds_the_training_options():
    # TrainConfig's import loads the training stack and scipy (0.3-0.4 s): predict skips it
    parse = "build_parser('{0}').parse_args(['{0}', 'run/best.safetensors', 'a.png', '--out', 'o'])"
    code = "from pixelwise.cli import build_parser\n"
    stack = ("pixelwise.train", "scipy")
    assert _imported(code + parse.format("predict"), stack) == set()
    assert _imported(code + "build_parser()", stack) == set(stack)  # --help and the like


def test_the_predict_path_imports_no_plotting_library():
    # pixelwise predict's library, with its writers and the report module (plots on first use)
    code = "import pixelwise.inference, pixelwise.report\nimport pixelwise.inference.run"
    assert "matplotlib" not in _imported(code)


def test_automatic_tile_size_imports_no_symbolic_shapes():
    code = (
        "import numpy as np\nfrom pixelwise.models import UNet\nfrom pixelwise.tiling import "
        "predict\nmodel = UNet(1, 3, base_channels=4, depth=3, padding='same', batch_norm=True)"
        "\npredict(model, np.zeros((40, 40), np.float32))"
    )
    assert _imported(code) == {"torch"}


def _meta_estimate(model: nn.Module, in_channels: int, element_size: int = 4) -> float:
    """The estimate as pixelwise computed it before the empty-batch probe: the convolutions'
    output shapes from forward passes on the meta device (reference for equality)."""
    n1 = smallest_valid(model, 1)
    n2 = next(
        n
        for n in model.valid_input_sizes(n1 + 1, n1 + 64 * model.stride)
        if (n - n1) % model.stride == 0
    )
    shapes: dict[int, list[tuple[int, int, int]]] = {n1: [], n2: []}
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
    }
    current: list[tuple[int, int, int]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, y: current.append(tuple(y.shape[1:])))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for n in (n1, n2):
            current = shapes[n]
            functional_call(model, state, (torch.empty(1, in_channels, n, n, device="meta"),))
    model.train(was_training)
    for h in hooks:
        h.remove()
    channels = float(in_channels)
    for (c, h1, w1), (_, h2, w2) in zip(shapes[n1], shapes[n2], strict=True):
        channels += c * ((h2 - h1) / (n2 - n1)) * ((w2 - w1) / (n2 - n1))
    return channels * element_size


class _NeedsABatch(UNet):
    """A U-Net whose forward refuses an empty batch: the estimate falls back to the meta probe."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            raise RuntimeError("empty batch")
        return super().forward(x)


@pytest.mark.parametrize(
    "build",
    [
        lambda: UNet(1, 2, base_channels=4, depth=3),
        lambda: UNet(3, 5, base_channels=8, depth=5, padding="same", batch_norm=True),
        lambda: UNet(1, 3, base_channels=4, depth=4, padding="same", batch_norm=True).train(),
        lambda: FCN("8s", num_classes=3, in_channels=1, width=1 / 16),
        lambda: FCN("32s", num_classes=2, in_channels=3, width=1 / 16),
        lambda: _NeedsABatch(1, 2, base_channels=4, depth=2),
    ],
    ids=["unet-valid", "unet-same-bn", "unet-training-mode", "fcn8s", "fcn32s", "fallback"],
)
def test_empty_batch_probe_equals_the_meta_probe(build):
    model = build()
    was_training = model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    channels = model.hparams["in_channels"]
    for element_size in (4, 2):
        estimate = activation_bytes_per_pixel(model, channels, element_size=element_size)
        assert estimate == _meta_estimate(model, channels, element_size)
    assert model.training is was_training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm stats untouched
