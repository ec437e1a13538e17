"""Checkpoints as untrusted input: edited metadata, NaN weights and run folders, through the CLI.

Every case exits with status 2 and one `error:` line that names the file and the fix, without a
traceback, and an edited checkpoint is refused before any model memory is allocated.
"""

import json
from pathlib import Path

import pytest
import torch

import pixelwise
from conftest import write_disc_dataset
from pixelwise import checkpoint
from pixelwise.checkpoint import CheckpointError
from pixelwise.cli import main
from pixelwise.train import initialize_from


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder-pairs dataset of two 48 × 48 images with 0/255 masks."""
    return write_disc_dataset(tmp_path_factory.mktemp("faults") / "data", n=2)


@pytest.fixture
def saved(tmp_path, tiny_unet) -> Path:
    """A sound two-class checkpoint of the tiny U-Net."""
    path = tmp_path / "m.safetensors"
    pixelwise.save(tiny_unet(1, 2), path, class_names=["bg", "fg"])
    return path


def _edit_metadata(path: Path, edit) -> None:
    """Rewrite the pixelwise metadata of the safetensors file `path` with `edit(meta)`, keeping
    its tensors (as someone editing the JSON header by hand would)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["pixelwise"])
    edit(meta)
    header["__metadata__"]["pixelwise"] = json.dumps(meta)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])


def _predict(path: Path, images: Path, out: Path, capsys) -> tuple[int, str]:
    code = main(["predict", str(path), str(images / "images"), "--out", str(out), "--no-progress"])
    return code, capsys.readouterr().err


def _assert_one_clean_error(code: int, err: str, *words: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            lambda m: m["model_args"].update(bogus_arg=1),
            ["has no argument(s) bogus_arg", "unet takes in_channels=1", "base_channels=64"],
        ),
        (
            lambda m: m.update(model_args="base_channels=4"),
            ["model_args must be a mapping", "got str 'base_channels=4'"],
        ),
        (lambda m: m.pop("model"), ["records no model name ('model')"]),
        (lambda m: m.update(model="segnet"), ["unknown model 'segnet'", "known models: unet"]),
        (lambda m: m["model_args"].update(dropout="high"), ["dropout must be a number"]),
        (lambda m: m["model_args"].update(depth=1), ["depth must be an integer >= 2"]),
    ],
    ids=["unknown-argument", "args-a-string", "no-model", "unknown-model", "bad-type", "range"],
)
def test_edited_metadata_is_one_clear_error(saved, images, tmp_path, capsys, edit, words):
    _edit_metadata(saved, edit)
    code, err = _predict(saved, images, tmp_path / "out", capsys)
    _assert_one_clean_error(code, err, "m.safetensors", *words, "use the file as")
    with pytest.raises(CheckpointError, match="m.safetensors"):
        pixelwise.load(saved)


@pytest.mark.parametrize("base_channels", [100_000, 3000, 10**9])
def test_metadata_that_disagrees_with_the_header_allocates_nothing(
    saved, images, tmp_path, capsys, monkeypatch, base_channels
):
    """base_channels=100000 would need hundreds of GB: the check builds on the meta device
    only and refuses before reading a tensor."""
    _edit_metadata(saved, lambda m: m["model_args"].update(base_channels=base_channels))
    devices = []
    real_build = checkpoint.build

    def spy(name, **kwargs):
        devices.append(torch.empty(0).device.type)  # the default device where it builds
        return real_build(name, **kwargs)

    def no_read(*args, **kwargs):
        raise AssertionError("tensors read before the header was checked")

    monkeypatch.setattr(checkpoint, "build", spy)
    monkeypatch.setattr(checkpoint, "load_file", no_read)
    code, err = _predict(saved, images, tmp_path / "out", capsys)
    _assert_one_clean_error(code, err, "m.safetensors", "use the file as")
    assert set(devices) <= {"meta"}
    if base_channels != 10**9:  # 10**9 overflows even the meta device's size arithmetic
        assert "do not fit the model its metadata records" in err
        assert f"down.0.0.weight is (4, 1, 3, 3) in the file but ({base_channels}, 1, 3, 3)" in err


def test_nan_weights_are_refused_at_load(tmp_path, images, capsys, tiny_unet):
    model = tiny_unet(1, 2)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    path = tmp_path / "diverged.safetensors"
    pixelwise.save(model, path)
    code, err = _predict(path, images, tmp_path / "out", capsys)
    _assert_one_clean_error(
        code, err, "diverged.safetensors", "NaN or infinite", "head.weight", "lower learning rate"
    )
    assert not (tmp_path / "out" / "im0.png").exists()


def _run_folder(folder: Path, model) -> Path:
    folder.mkdir(parents=True)
    for name in ("best.safetensors", "last.safetensors"):
        pixelwise.save(model, folder / name, class_names=["bg", "fg"])
    return folder


def test_a_run_folder_stands_for_its_best_checkpoint(tmp_path, images, capsys, tiny_unet):
    model = tiny_unet(1, 2)
    run = _run_folder(tmp_path / "runs" / "base", model)
    code, err = _predict(run, images, tmp_path / "p", capsys)
    assert code == 0 and "Traceback" not in err
    assert f"note: {run} is a folder: using {run / 'best.safetensors'}" in err
    assert (tmp_path / "p" / "im0.png").exists()

    code = main(["evaluate", str(run), str(images), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 0 and f"using {run / 'best.safetensors'}" in err
    assert (tmp_path / "e" / "metrics.json").exists()

    x = torch.randn(1, 1, 44, 44)
    assert torch.equal(pixelwise.load(run)(x), model(x))
    assert pixelwise.read_metadata(run)["class_names"] == ["bg", "fg"]
    summary = initialize_from(tiny_unet(1, 2, seed=1), run)  # train --init runs/base
    assert str(run / "best.safetensors") in summary


def test_train_init_accepts_a_run_folder(tmp_path, images, capsys, tiny_unet):
    run = _run_folder(tmp_path / "runs" / "base", tiny_unet(1, 2))
    code = main(
        ["train", str(images), "--out", str(tmp_path / "next"), "--init", str(run),
         "--steps", "1", "--batch-size", "1", "--patch-size", "16", "--model-arg",
         "base_channels=4", "--model-arg", "depth=3", "--no-progress"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert f"initialised 26 of 26 tensors from {run / 'best.safetensors'}" in out


def test_ambiguous_folders_list_what_to_pass(tmp_path, images, capsys, tiny_unet):
    model = tiny_unet(1, 2)
    runs = tmp_path / "runs"
    _run_folder(runs / "base", model)
    _run_folder(runs / "big", model)
    code, err = _predict(runs, images, tmp_path / "p", capsys)
    _assert_one_clean_error(
        code, err, f"{runs} is a folder of run folders", str(runs / "base" / "best.safetensors"),
        str(runs / "big" / "best.safetensors"),
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="folder of run folders"):
        pixelwise.load(runs)

    several = tmp_path / "several"
    several.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        pixelwise.save(model, several / name)
    code, err = _predict(several, images, tmp_path / "p", capsys)
    _assert_one_clean_error(
        code, err, "folder of 2 checkpoints and no best.safetensors", "a.safetensors, b.safetensors"
    )

    only = tmp_path / "only"
    only.mkdir()
    pixelwise.save(model, only / "last.safetensors")
    assert checkpoint.resolve(only) == only / "last.safetensors"

    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _predict(empty, images, tmp_path / "p", capsys)
    _assert_one_clean_error(code, err, "no .safetensors checkpoint", "RUN/best.safetensors")
