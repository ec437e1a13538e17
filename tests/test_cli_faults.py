"""Bad input at the command line (issue 12): each gets one clear message naming the flag or file
and the fix, a non-zero exit and no traceback; input that runs but is probably not what was meant
gets one warning line.

Driven in-process through `pixelwise.cli.main`. Covered: --out that is a file or not writable
(train, predict, evaluate), --device this machine lacks, --patch-size too large for memory or the
images, messages worded for the command line, an 8-class model scored on 2-class data, masks
without any object.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixelwise
from conftest import write_disc_dataset
from pixelwise.checks import InputWarning, check_output_folder
from pixelwise.cli import main
from pixelwise.distributed import select_device
from pixelwise.inference import predict_files
from pixelwise.models import UNet

TRAIN = [
    "--steps", "2", "--val-every", "2", "--batch-size", "2", "--patch-size", "16",
    "--model-arg", "base_channels=4", "--model-arg", "depth=3", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-faults")


@pytest.fixture(scope="module")
def data(root) -> Path:
    return write_disc_dataset(root / "data")


@pytest.fixture(scope="module")
def data01(root) -> Path:
    """Two classes stored as 0/1 (so that a model of more classes can read them)."""
    return write_disc_dataset(root / "data01", scale=1)


def _checkpoint(path: Path, num_classes: int) -> Path:
    torch.manual_seed(0)
    pixelwise.save(UNet(1, num_classes, base_channels=4, depth=3), path)
    return path


@pytest.fixture(scope="module")
def model2(root) -> Path:
    return _checkpoint(root / "two.safetensors", 2)


@pytest.fixture(scope="module")
def model8(root) -> Path:
    return _checkpoint(root / "eight.safetensors", 8)


def _error(capsys) -> str:
    """stderr of the command just run; asserts it is one error line without a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.count("error: ") == 1, err
    return err


def _commands(data: Path, checkpoint: Path, out: Path) -> dict[str, list[str]]:
    return {
        "train": ["train", str(data), "--out", str(out), *TRAIN],
        "predict": ["predict", str(checkpoint), str(data / "images"), "--out", str(out)],
        "evaluate": ["evaluate", str(checkpoint), str(data), "--out", str(out)],
    }


# --- item 4: --out --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_out_that_is_a_file_is_refused(command, data, model2, tmp_path, capsys):
    existing = tmp_path / "results"
    existing.write_text("not a folder")
    assert main(_commands(data, model2, existing)[command]) == 2
    err = _error(capsys)
    assert f"--out {existing}: is an existing file, not a folder" in err
    assert "give --out a folder" in err
    assert main(_commands(data, model2, existing / "sub")[command]) == 2
    err = _error(capsys)
    assert f"--out {existing / 'sub'}: cannot create the folder, {existing} is a file" in err
    assert existing.read_text() == "not a folder"


@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_out_that_is_not_writable_is_refused(command, data, model2, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and access(p, mode))
    assert main(_commands(data, model2, locked / "run")[command]) == 2
    err = _error(capsys)
    assert f"--out {locked / 'run'}: it would be created in {locked}, which is not writable" in err
    assert "give --out a folder you can write to" in err
    assert not list(locked.iterdir())


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_folder_for_real(data, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["train", str(data), "--out", str(locked / "run"), *TRAIN]) == 2
    finally:
        locked.chmod(0o755)
    assert "not writable" in _error(capsys)


def test_library_entry_points_name_their_own_argument(data, model2, tmp_path):
    existing = tmp_path / "file"
    existing.write_text("")
    with pytest.raises(ValueError, match="^out_dir .*: is an existing file"):
        predict_files(model2, [data / "images"], existing, log=None)
    from pixelwise.evaluate import evaluate

    with pytest.raises(ValueError, match="^out .*: is an existing file"):
        evaluate(model2, data, existing)
    assert check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"


def test_predict_failing_to_write_names_the_folder_not_the_disk(data, model2, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlays").write_text("a file where the overlays folder goes")
    argv = ["predict", str(model2), str(data / "images"), "--out", str(out), "--overlay"]
    assert main([*argv, "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "cannot write the results" in captured.out + captured.err
    assert f"check that {out} and its subfolders are writable folders" in captured.out + (
        captured.err
    )


def test_predict_into_its_input_folder_names_the_flag(data, model2, capsys):
    images = data / "images"
    assert main(["predict", str(model2), str(images), "--out", str(images)]) == 2
    err = _error(capsys)
    assert f"output folder {images} (--out; out_dir= in Python) would overwrite the input" in err
    assert "choose another output folder" in err


def test_a_malicious_pickle_is_never_unpickled(data, tmp_path, capsys):
    import pickle

    flag = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (flag,))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Payload()))
    assert main(["predict", str(evil), str(data / "images"), "--out", str(tmp_path / "p")]) == 2
    assert "evil.safetensors: not a pixelwise checkpoint" in _error(capsys)
    assert not flag.exists()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--steps", "0"], "steps must be >= 1, got 0"),
        (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
        (["--lr", "-1"], "lr must be > 0, got -1.0"),
        (["--config", "missing.yaml"], "missing.yaml: cannot read the YAML config"),
    ],
)
def test_nonsense_training_flags_are_one_line(flags, words, data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), *TRAIN, *flags]) == 2
    assert words in _error(capsys)
    assert not (tmp_path / "run").exists()


# --- item 5: --device -----------------------------------------------------------------------


def _missing_devices() -> list[str]:
    """Device names this machine lacks: always 'banana'; cuda / cuda:7 where absent."""
    missing = ["banana"]
    if not torch.cuda.is_available():
        missing.append("cuda")
    if torch.cuda.device_count() < 8:
        missing.append("cuda:7")
    return missing


@pytest.mark.parametrize("device", _missing_devices())
@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_device_the_machine_lacks_is_refused(command, device, data, model2, tmp_path, capsys):
    argv = _commands(data, model2, tmp_path / "out")[command]
    assert main([*argv, "--device", device]) == 2
    err = _error(capsys)
    assert f"--device {device}: " in err
    assert "available: cpu" in err and "pass one of these to --device" in err
    assert not (tmp_path / "out").exists()


def test_device_check_lists_the_gpus_there_are(monkeypatch):
    """Two GPUs (simulated): cuda:1 is accepted, cuda:7 names both."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda:1") == torch.device("cuda:1")
    assert select_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"--device cuda:7: there is no cuda:7; available: cpu, "):
        select_device("cuda:7")
    with pytest.raises(ValueError, match="available: cpu, cuda:0, cuda:1"):
        select_device("banana")
    with pytest.raises(ValueError, match="pixelwise runs on cpu, cuda, mps or xpu devices"):
        select_device("meta")
    assert select_device(None, local_rank=3) == torch.device("cuda:1")  # 3 % 2


# --- item 7: --patch-size -------------------------------------------------------------------


def test_patch_size_beyond_memory_is_refused_before_allocating(data, tmp_path, capsys):
    argv = ["train", str(data), "--out", str(tmp_path / "run"), *TRAIN, "--patch-size", "100000"]
    assert main(argv) == 2
    err = _error(capsys)
    assert "patch size 100000 px (--patch-size" in err and "GiB of memory" in err
    assert "the images are at most 48 px a side: pass --patch-size 48 or less" in err


def test_patch_memory_limit_is_the_largest_that_fits(data):
    from pixelwise.data import load_dataset
    from pixelwise.train.patches import check_patch_memory, patch_bytes

    dataset = load_dataset(data)
    margin = 20
    available = patch_bytes((48, 48), 36 + 2 * margin, margin, channels=1, batch_size=2)
    check_patch_memory(dataset, 36 + 2 * margin, margin, batch_size=2, available=available)
    with pytest.raises(ValueError, match="pass --patch-size 36 or less"):
        check_patch_memory(dataset, 40 + 2 * margin, margin, batch_size=2, available=available)
    with pytest.raises(ValueError, match="even the smallest patch does not fit: free memory"):
        check_patch_memory(dataset, 40 + 2 * margin, margin, available=1000)
    with pytest.warns(InputWarning, match=r"patch size 60 px \(--patch-size\) is larger than"):
        check_patch_memory(dataset, 60 + 2 * margin, margin, available=2**40)


# --- item 11: messages worded for the command line ------------------------------------------


def test_images_without_masks_says_masks_is_missing(tmp_path, capsys):
    (tmp_path / "d" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "d" / "images" / "a.png")
    assert main(["train", str(tmp_path / "d"), "--out", str(tmp_path / "run"), *TRAIN]) == 2
    err = _error(capsys)
    assert "images/ is there but masks/ is missing" in err
    assert f"create {tmp_path / 'd' / 'masks'}/" in err and "images_dir" not in err


def test_rgb_mask_fix_names_what_the_command_line_can_do(tmp_path, capsys):
    folder = write_disc_dataset(tmp_path / "rgb", n=2)
    for path in (folder / "masks").iterdir():
        Image.fromarray(np.full((48, 48, 3), (10, 200, 30), np.uint8)).save(path)
    assert main(["train", str(folder), "--out", str(tmp_path / "run"), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    assert "save masks as single-channel integer labels" in err
    assert "from Python, pass palette=" in err  # the palette is an option of Python only


def test_evaluate_labels_beyond_the_model_name_its_fix_not_num_classes(
    data, model8, model2, tmp_path, capsys
):
    # 0/255 masks read with the 8-class model's classes: 255 is outside 0..7
    assert main(["evaluate", str(model8), str(data), "--out", str(tmp_path / "e")]) == 2
    err = _error(capsys)
    assert "outside classes 0..7" in err and "the model has 8 classes (0..7)" in err
    assert "--ignore-index" in err and "--num-classes" not in err
    assert main(["evaluate", str(model8), str(data), "--out", str(tmp_path / "e"), "--isbi"]) == 2
    err = _error(capsys)
    assert "--isbi (isbi=True) needs a 2-class" in err and "leave --isbi out" in err


def test_num_classes_zero_names_the_flag(data, capsys):
    assert main(["data", "check", str(data), "--num-classes", "0"]) == 2
    err = _error(capsys)
    assert "pass --num-classes N with N >= 1, or leave it out" in err


# --- item 12: warnings ----------------------------------------------------------------------


def test_evaluate_warns_of_model_classes_absent_from_the_data(
    data01, model8, model2, tmp_path, capsys
):
    assert main(["evaluate", str(model8), str(data01), "--out", str(tmp_path / "e8")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, err
    assert "the model predicts 8 classes but the masks of" in warnings[0]
    assert "hold only 2 of them (0, 1); the 6 others never occur" in warnings[0]
    assert "check that the checkpoint was trained on data like these" in warnings[0]
    # a model of the data's classes: no warning
    assert main(["evaluate", str(model2), str(data01), "--out", str(tmp_path / "e2")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_training_on_masks_without_objects_warns_once(tmp_path, capsys):
    empty = write_disc_dataset(tmp_path / "empty", empty=True)
    assert main(["train", str(empty), "--out", str(tmp_path / "run"), *TRAIN]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: every mask of {empty} is background (class 0) only: the model can only learn "
        f"to predict background, and its validation scores say nothing (Dice of an absent class "
        f"is NaN, mean IoU 1.0); check that these are the right masks (`pixelwise data check "
        f"{empty}` shows the pixels of each class)"
    ]


def test_all_background_check_leaves_data_with_objects_alone():
    import warnings

    from pixelwise.train.datasets import warn_if_all_background

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_all_background(np.array([100, 1]), "d")
        warn_if_all_background(np.array([0, 0]), "d")  # no pixels at all: nothing to say
    with pytest.warns(InputWarning, match="every mask of d is background"):
        warn_if_all_background(np.array([100, 0, 0]), "d")
