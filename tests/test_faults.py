"""Fault injection: kill -9, SIGTERM and Ctrl-C during training and prediction.

Each fault runs `pixelwise train` / `pixelwise predict` in a subprocess (the command line's
`main`, behind a small driver that injects the fault) and then checks what a user relies on:

* every file under a final name is complete and readable (checkpoints load, images read, tables
  parse), whatever the moment of the kill;
* a killed run resumed with --resume (or started again, when it died before its first
  checkpoint) ends with weights, optimiser state and RNG state bit-identical to an uninterrupted
  run of the same steps, and the same log;
* no temporary file survives a rerun into the same folder;
* SIGTERM (what schedulers send) and SIGINT (Ctrl-C) finish the step in flight, save the last
  checkpoint and exit 128 + the signal (143, 130), as `pixelwise.train.loop` documents.

The kill points are drawn from seeded generators: an optimiser step, or the k-th rename of a
temporary file onto its final name (optionally after cutting the temporary file to half, a
crash in the middle of a write), or a delay after training starts (a kill from outside).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image
from safetensors.torch import load_file

import pixelwise
from conftest import write_disc_dataset
from pixelwise.atomic import current_umask
from pixelwise.cli import main

DRIVER = r"""
import functools, json, os, signal, sys
spec = json.loads(sys.argv[1])
fault = spec.get("fault") or {}
sig = getattr(signal, fault.get("signal", "SIGKILL"))
calls = []
if fault.get("at") == "step":  # the k-th optimiser step: signal, then finish the step
    import torch
    step = torch.optim.SGD.step
    def faulty_step(self, *a, **k):
        calls.append(1)
        if len(calls) == fault["k"]:
            os.kill(os.getpid(), sig)
        return step(self, *a, **k)
    torch.optim.SGD.step = faulty_step
elif fault.get("at") == "rename":  # the k-th temporary file renamed onto its final name
    rename = os.replace
    def faulty_rename(src, dst, *a, **k):
        if str(dst).endswith(tuple(fault.get("suffixes") or [""])):
            calls.append(dst)
            if len(calls) == fault["k"]:
                if fault.get("truncate"):  # a crash in the middle of the write
                    os.truncate(src, os.path.getsize(src) // 2)
                os.kill(os.getpid(), sig)
        return rename(src, dst, *a, **k)
    os.replace = faulty_rename
if spec.get("stream_pixels"):  # stream every image (memory-mapped outputs)
    import pixelwise.inference as inference
    inference.predict_files = functools.partial(
        inference.predict_files, stream_pixels=spec["stream_pixels"]
    )
from pixelwise.cli import main
sys.exit(main(spec["argv"]))
"""


def _run(argv: list[str], fault: dict | None = None, **spec) -> subprocess.CompletedProcess:
    """`pixelwise ARGV` in a subprocess with `fault` injected (see DRIVER)."""
    payload = json.dumps({"argv": argv, "fault": fault, **spec})
    return subprocess.run(
        [sys.executable, "-c", DRIVER, payload], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_disc_dataset(tmp_path_factory.mktemp("faults") / "data")


def _train_argv(data: Path, out: Path, *, steps: int = 6) -> list[str]:
    return [
        "train", str(data), "--out", str(out), "--steps", str(steps), "--val-every", "2",
        "--batch-size", "2", "--patch-size", "16", "--model-arg", "base_channels=4",
        "--model-arg", "depth=3", "--model-arg", "dropout=0.2", "--optimizer", "sgd",
        "--momentum", "0.9", "--lr", "0.05", "--seed", "3", "--no-progress",
        "--precision", "fp32",  # the subprocesses see this CPU, not conftest's reference_cpu
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted run of `_train_argv` (in-process)."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    assert main(_train_argv(data, out)) == 0
    return out


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _temporaries(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and _is_temporary(p))


def _check_final_files(out: Path) -> list[Path]:
    """Open every file under a final name in `out`; fail on one that is not complete."""
    finals = sorted(p for p in out.rglob("*") if p.is_file() and not _is_temporary(p))
    for path in finals:
        suffix = path.suffix
        if suffix == ".safetensors":
            pixelwise.load(path)
            load_file(path)  # every tensor, optimiser state included
        elif suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif suffix == ".tif":
            tifffile.imread(path)
        elif suffix == ".csv":
            assert next(csv.reader(path.open())), path
        elif suffix == ".json":
            json.loads(path.read_text())
        elif suffix == ".yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict), path
        else:
            pytest.fail(f"unexpected file {path}")
    return finals


def _assert_same_run(out: Path, reference: Path) -> None:
    """Bit-identical checkpoints (every tensor: weights, optimiser, RNG) and the same log."""
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(out / name), load_file(reference / name)
        assert a.keys() == b.keys()
        different = [k for k in a if not np.array_equal(a[k].numpy(), b[k].numpy())]
        assert not different, (name, different)
    rows = [r.split(",")[:4] for r in (out / "log.csv").read_text().splitlines()]
    assert rows == [r.split(",")[:4] for r in (reference / "log.csv").read_text().splitlines()]


def _finish(data: Path, out: Path, capsys) -> None:
    """Resume a killed run; one killed before its first checkpoint is started again."""
    if (out / "last.safetensors").exists():
        assert main([*_train_argv(data, out), "--resume"]) == 0
    else:
        assert main([*_train_argv(data, out), "--resume"]) == 2
        assert "nothing to resume" in capsys.readouterr().err
        assert main(_train_argv(data, out)) == 0


_RNG = random.Random(12)
# The 6 steps validate and checkpoint at steps 2, 4, 6; each checkpoint writes log.csv,
# curves.png, best.safetensors (when it improves) and last.safetensors.
_TRAIN_FAULTS = [
    pytest.param({"at": "step", "k": _RNG.randint(3, 5)}, id="kill-at-a-step"),
    pytest.param(
        {"at": "rename", "k": _RNG.randint(1, 4), "suffixes": [".safetensors"], "truncate": True},
        id="kill-mid-checkpoint-write",
    ),
]


@pytest.mark.parametrize("fault", _TRAIN_FAULTS)
def test_training_killed_leaves_complete_files_and_resumes_exactly(
    fault, data, reference, tmp_path, capsys
):
    out = tmp_path / "run"
    done = _run(_train_argv(data, out), fault)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    _check_final_files(out)
    _finish(data, out, capsys)
    _assert_same_run(out, reference)
    assert not _temporaries(out)
    assert "Traceback" not in capsys.readouterr().err


def test_training_killed_from_outside_at_a_random_moment(data, reference, tmp_path, capsys):
    """kill -9 from another process, a seeded delay after training starts."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "pixelwise", *_train_argv(data, out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the "training" line as it is printed
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        for line in proc.stdout:
            if line.startswith("training "):
                break
        time.sleep(random.Random(5).uniform(0.0, 0.5))
        proc.kill()
    finally:
        proc.communicate(timeout=300)
    assert proc.returncode in (-signal.SIGKILL, 0)  # 0: it finished before the kill
    _check_final_files(out)
    _finish(data, out, capsys)
    _assert_same_run(out, reference)
    assert not _temporaries(out)


@pytest.mark.parametrize(("signame", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_and_ctrl_c_save_and_exit(signame, status, data, reference, tmp_path, capsys):
    out = tmp_path / "run"
    done = _run(_train_argv(data, out), {"at": "step", "k": 3, "signal": signame})
    assert done.returncode == status, done.stdout + done.stderr
    assert f"interrupted ({signame}) at step 3" in done.stdout
    assert "continue with --resume" in done.stdout and "Traceback" not in done.stderr
    assert pixelwise.read_metadata(out / "last.safetensors")["step"] == 3
    _check_final_files(out)
    assert main([*_train_argv(data, out), "--resume"]) == 0
    _assert_same_run(out, reference)
    assert not _temporaries(out)


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = write_disc_dataset(tmp_path_factory.mktemp("faults") / "predict", n=4, size=64)
    return folder / "images"


def _predict_argv(reference: Path, images: Path, out: Path) -> list[str]:
    return [
        "predict", str(reference / "best.safetensors"), str(images), "--out", str(out),
        "--overlay", "--probs", "--no-progress",
    ]  # fmt: skip


def _arrays(out: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for path in sorted(out.rglob("*")):
        if path.suffix == ".png":
            arrays[path.relative_to(out).as_posix()] = np.asarray(Image.open(path))
        elif path.suffix == ".tif":
            arrays[path.relative_to(out).as_posix()] = tifffile.imread(path)
    return arrays


_PREDICT_RNG = random.Random(7)
# 4 images × 3 files (class map, probabilities, overlay); streamed: 2 files each.
_PREDICT_FAULTS = [
    pytest.param(
        {"at": "rename", "k": _PREDICT_RNG.randint(2, 11), "truncate": True},
        None,
        id="in-memory-mid-write",
    ),
    pytest.param(
        {"at": "rename", "k": _PREDICT_RNG.randint(2, 7), "truncate": True},
        32 * 32,
        id="streamed-mid-write",
    ),
]


@pytest.mark.parametrize(("fault", "stream_pixels"), _PREDICT_FAULTS)
def test_prediction_killed_leaves_complete_files_and_a_rerun_cleans_up(
    fault, stream_pixels, reference, images, tmp_path, monkeypatch
):
    if stream_pixels is not None:
        import functools

        import pixelwise.inference as inference

        streamed = functools.partial(inference.predict_files, stream_pixels=stream_pixels)
        monkeypatch.setattr(inference, "predict_files", streamed)
    clean = tmp_path / "clean"
    assert main(_predict_argv(reference, images, clean)) == 0
    out = tmp_path / "out"
    done = _run(_predict_argv(reference, images, out), fault, stream_pixels=stream_pixels)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert _temporaries(out)  # the file being written when the kill came
    finals = _check_final_files(out)
    assert len(finals) == fault["k"] - 1  # the files renamed before the kill, all complete
    assert main(_predict_argv(reference, images, out)) == 0  # the rerun
    assert not _temporaries(out)
    expected, got = _arrays(clean), _arrays(out)
    assert expected.keys() == got.keys()
    assert all(np.array_equal(expected[k], got[k]) for k in expected)
    mode = 0o666 & ~current_umask()  # outputs are readable as a plain open() makes them
    assert {oct(p.stat().st_mode & 0o777) for p in _check_final_files(out)} == {oct(mode)}
