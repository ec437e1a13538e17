"""Fixtures and paths shared by the test files.

* `ROOT`, `BENCHMARKS`, `SHARED_DATA`: the repository, its benchmarks/ folder and the real
  datasets beside it (../shared/data, absent on some machines).
* benchmarks/ goes on sys.path, so a test imports a recipe as a module (`import camvid_fcn as
  recipe`) and the shared references as `from references import weight_map_bruteforce`
  (benchmarks/references.py: the brute-force references the benchmarks time too).
* `shared_data`: `shared_data("isbi2012")` is the real dataset folder, or the test is skipped.
* `tiny_unet`: a seeded, narrow U-Net in eval mode for tests that need a real network fast.
* `write_disc_dataset`: a folder-pairs dataset (images/ + masks/ PNGs) of bright discs, for
  the command-line tests.
* `LogitsAsInput`: a same-size "network" (stride 1, margin 0, 3 classes) that returns its input
  as logits, so a test controls the predicted probabilities exactly.
* `random_fcn()`: a seeded narrow FCN-8s (3 channels, 3 classes) whose score layers are
  randomised (they start at zero), so its outputs vary.
* `reference_cpu` (every test): precision "auto" resolves as on the reference machine (AVX2,
  no native bf16: fp32), whatever CPU runs the suite, so a test comparing a default prediction
  or training run with the fp32 engine holds on an AVX-512 BF16 machine too. Tests of the
  automatic choice fake their own flags (tests/test_precision.py); `@pytest.mark.real_cpu`
  sees the machine's.
* `instance_checkpoint`: a saved three-class instance checkpoint of `instance_unet()` (random
  weights that make tens of objects of a textured image) with `INSTANCE_NORM` normalisation and
  the default post-processing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from pixelwise import precision
from pixelwise.models import FCN, UNet
from pixelwise.precision import cpu_flags as machine_cpu_flags  # the real one, before the patch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SHARED_DATA = ROOT.parent / "shared" / "data"

if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

REFERENCE_CPU_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma"})
"""The flags precision "auto" sees in the tests: the reference machine's AVX2 CPU."""


@pytest.fixture(autouse=True, scope="session")
def reference_cpu() -> Iterator[None]:
    """Precision "auto" as on the reference CPU (module doc); session-wide, so that module and
    session fixtures (trained runs, predicted folders) see it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_flags", lambda: REFERENCE_CPU_FLAGS)
        yield


@pytest.fixture(autouse=True)
def real_cpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test marked `real_cpu` sees this machine's CPU flags."""
    if request.node.get_closest_marker("real_cpu") is not None:
        monkeypatch.setattr(precision, "cpu_flags", machine_cpu_flags)


@pytest.fixture
def shared_data() -> Callable[[str], Path]:
    """`shared_data(name)`: the folder ../shared/data/<name>, or skip when it is absent."""

    def folder(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.exists():
            pytest.skip(f"real data not found at {path}")
        return path

    return folder


@pytest.fixture
def tiny_unet() -> Callable[..., UNet]:
    """`tiny_unet(in_channels=1, num_classes=3, *, base_channels=4, depth=3, padding="valid",
    seed=0)`: a U-Net with weights from `torch.manual_seed(seed)`, in eval mode."""

    def build(
        in_channels: int = 1,
        num_classes: int = 3,
        *,
        base_channels: int = 4,
        depth: int = 3,
        padding: str = "valid",
        seed: int = 0,
    ) -> UNet:
        torch.manual_seed(seed)
        return UNet(
            in_channels, num_classes, base_channels=base_channels, depth=depth, padding=padding
        ).eval()

    return build


INSTANCE_NORM = {"mean": [0.45], "std": [0.1], "scale": 1 / 255}
"""The normalisation `instance_checkpoint` records (uint8 input)."""


def instance_unet() -> UNet:
    """The tiny three-class U-Net of `instance_checkpoint` (seed 3), in eval mode."""
    torch.manual_seed(3)
    return UNet(1, 3, base_channels=4, depth=3).eval()


@pytest.fixture(scope="session")
def instance_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a three-class instance checkpoint of `instance_unet()` (see the module doc)."""
    path = tmp_path_factory.mktemp("instance-checkpoint") / "instance.safetensors"
    return save_instance_unet(path, class_names=["background", "interior", "boundary"])


def save_instance_unet(path: Path, *, postprocessing: Any = None, **meta: Any) -> Path:
    """Save `instance_unet()` to `path` as `instance_checkpoint` is (INSTANCE_NORM, three-class,
    `postprocessing` or the default record), with more metadata `meta`; returns `path`."""
    import pixelwise
    from pixelwise.instances import PostProcessing

    pixelwise.save(
        instance_unet(),
        path,
        normalization=INSTANCE_NORM,
        target="three-class",
        postprocessing=(postprocessing or PostProcessing()).to_dict(),
        **meta,
    )
    return path


def write_disc_dataset(
    folder: Path,
    *,
    n: int = 3,
    size: int = 48,
    seed: int = 0,
    scale: int = 255,
    empty: bool = False,
) -> Path:
    """`folder`/images and /masks: n size × size uint8 images of a bright disc in noise (seeded),
    masks 0/`scale` (all 0 when `empty`). Returns `folder`."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        mask = ((yy - 24 - i) ** 2 + (xx - 20 - 2 * i) ** 2 < 150).astype(np.uint8)
        image = (mask * 140 + rng.normal(50, 10, mask.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"im{i}.png")
        Image.fromarray(mask * scale * (not empty)).save(folder / "masks" / f"im{i}.png")
    return folder


class LogitsAsInput(nn.Module):
    """Returns its input as logits: an image of K log-probabilities is predicted as those
    probabilities. Geometry of a same-size network without pooling (stride 1, margin 0)."""

    stride = 1
    margin = receptive_radius = 0
    hparams: ClassVar[dict[str, int]] = {"in_channels": 3, "num_classes": 3}

    def output_size(self, n: int) -> int:
        return n

    def input_size(self, m: int) -> int:
        return m

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
        return list(range(max(lo, 1), hi + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def random_fcn() -> FCN:
    """A seeded FCN-8s, 3 channels → 3 classes, width 1/16, in eval mode, score layers random."""
    torch.manual_seed(0)
    model = FCN("8s", 3, 3, width=1 / 16).eval()
    with torch.no_grad():  # the score layers start at zero: randomise them so outputs vary
        for layer in (model.score_fr, model.score_pool4, model.score_pool3):
            layer.weight.normal_(0, 0.5)
            layer.bias.normal_(0, 0.5)
    return model
