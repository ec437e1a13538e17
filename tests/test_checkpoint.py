"""Checkpoints: safetensors + JSON, rebuilt from the file alone, clear errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

import pixelwise
from pixelwise.checkpoint import CheckpointError, load_state
from pixelwise.models import build


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("unet", dict(base_channels=4, depth=3, batch_norm=True), (1, 1, 60, 60)),
        ("unet", dict(base_channels=2, padding="same", up_mode="bilinear"), (1, 1, 32, 48)),
        ("fcn8s", dict(num_classes=3, width=1 / 16), (1, 3, 37, 41)),
        ("fcn32s", dict(num_classes=2, in_channels=1, width=1 / 32), (1, 1, 20, 9)),
    ],
)
def test_round_trip_gives_identical_outputs(tmp_path, name, kwargs, shape):
    torch.manual_seed(0)
    model = build(name, **kwargs)
    for p in model.parameters():  # make score layers non-zero so outputs are informative
        p.data.normal_(0, 0.1)
    model.eval()
    path = tmp_path / "m.safetensors"
    pixelwise.save(model, path, class_names=["a", "b"], normalization={"mean": [0.5]})
    loaded = pixelwise.load(path)
    x = torch.randn(shape)
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    meta = pixelwise.read_metadata(path)
    assert meta["model"] == name and meta["class_names"] == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left


def test_extra_tensors_round_trip(tmp_path):
    model = build("unet", base_channels=2, depth=2)
    path = tmp_path / "m.safetensors"
    pixelwise.save(model, path, extra_tensors={"optim/0/exp_avg": torch.ones(3)}, step=7)
    _, meta, extra = load_state(path)
    assert meta["step"] == 7 and torch.equal(extra["optim/0/exp_avg"], torch.ones(3))


def test_truncated_file(tmp_path):
    path = tmp_path / "m.safetensors"
    pixelwise.save(build("unet", base_channels=2, depth=2), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        pixelwise.load(path)


def test_foreign_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk.safetensors: not a pixelwise checkpoint"):
        pixelwise.load(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, other, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a pixelwise checkpoint"):
        pixelwise.load(other)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign, metadata={"pixelwise": json.dumps({"x": 1})})
    with pytest.raises(CheckpointError, match="format None"):
        pixelwise.load(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        pixelwise.load(tmp_path / "missing.safetensors")


def test_registry_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'segnet'; known models: unet, fcn32s"):
        build("segnet")
    assert build("fcn16s", width=1 / 16).variant == "16s"


def test_written_files_get_normal_permissions(tmp_path):
    import os
    import stat

    path = tmp_path / "m.safetensors"
    pixelwise.save(build("unet", base_channels=2, depth=2), path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
