"""Training faults through the CLI: resume with changed settings, bad model arguments, a run
that diverges. Each exits non-zero with one `error:` line naming the flag and the fix, without a
traceback, and leaves no checkpoint that is not whole and finite."""

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import pixelwise
from conftest import write_disc_dataset
from pixelwise.cli import main
from pixelwise.train import loop


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_disc_dataset(tmp_path_factory.mktemp("resume") / "data")


OPTIONS = ["--batch-size", "2", "--patch-size", "16", "--val-every", "2", "--optimizer", "adam",
           "--lr", "0.01", "--model-arg", "base_channels=4", "--model-arg", "depth=3",
           "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def saved_run(data, tmp_path_factory) -> Path:
    """A run stopped after 2 of 4 steps (its last checkpoint at step 2)."""
    out = tmp_path_factory.mktemp("saved") / "run"
    assert main(["train", str(data), "--out", str(out), "--steps", "2", *OPTIONS]) == 0
    return out


@pytest.fixture
def run(saved_run, tmp_path) -> Path:
    """A copy of `saved_run` for one test to resume."""
    return Path(shutil.copytree(saved_run, tmp_path / "run"))


def _resume(data: Path, run: Path, *extra: str) -> int:
    return main(["train", str(data), "--out", str(run), "--resume", *OPTIONS, *extra])


@pytest.mark.parametrize(
    ("flags", "difference"),
    [
        (["--model-arg", "base_channels=8"], "--model-arg base_channels 4 → 8"),
        (["--model-arg", "depth=4"], "--model-arg depth 3 → 4"),
        (["--model-arg", "batch_norm=true"], "--model-arg batch_norm not set → True"),
        (["--num-classes", "3"], "--num-classes not set → 3"),
        (["--model", "fcn8s"], "--model unet → fcn8s"),
        (["--optimizer", "sgd"], "--optimizer adam → sgd"),
    ],
    ids=["base_channels", "depth", "batch_norm", "num_classes", "model", "optimizer"],
)
def test_resume_refuses_changed_model_settings(data, run, capsys, flags, difference):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert _resume(data, run, "--steps", "4", *flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert f"error: cannot resume {run}: the model settings differ" in err
    assert difference in err and f"--config {run / 'config.yaml'}" in err
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before  # config.yaml and the checkpoints untouched


def test_resume_accepts_changes_of_steps_time_workers_device_logging(data, run, capsys):
    code = _resume(data, run, "--steps", "3", "--max-minutes", "5", "--workers", "0",
                   "--device", "cpu", "--log-every", "5", "--val-every", "3")  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "changed settings" not in out
    assert pixelwise.read_metadata(run / "last.safetensors")["step"] == 3


def test_resume_logs_a_changed_learning_rate(data, run, capsys):
    assert _resume(data, run, "--steps", "3", "--lr", "0.001") == 0
    assert "resuming with changed settings: --lr 0.01 → 0.001" in capsys.readouterr().out


def test_resume_on_other_data_needs_allow_new_data(data, run, tmp_path, capsys):
    other = write_disc_dataset(tmp_path / "other", seed=1)
    before = (run / "config.yaml").read_text()
    assert _resume(other, run, "--steps", "3") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"cannot resume {run} on other data" in err
    assert f"the dataset folder {data} → {other}" in err and "pass --allow-new-data" in err
    assert (run / "config.yaml").read_text() == before

    assert _resume(Path(f"{data}/"), run, "--steps", "3") == 0  # the same folder, spelt otherwise
    assert _resume(other, run, "--steps", "4", "--allow-new-data") == 0
    assert f"resuming on new data: the dataset folder {data} → {other}" in capsys.readouterr().out
    assert str(other) in (run / "config.yaml").read_text()


def test_new_data_that_changes_the_model_is_refused(data, run, tmp_path, capsys):
    rgb = tmp_path / "rgb"
    shutil.copytree(data, rgb)
    for path in (rgb / "images").iterdir():
        Image.open(path).convert("RGB").save(path)
    assert _resume(rgb, run, "--steps", "3", "--allow-new-data") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"cannot resume from {run / 'last.safetensors'}: the model built now differs" in err
    assert "the images' channels 1 → 3" in err


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--model-arg", "bogus=1"], ["model 'unet' has no argument(s) bogus", "depth=5"]),
        (
            ["--model", "fcn8s", "--model-arg", "base_channels=4"],
            ["model 'fcn8s' has no argument(s) base_channels", "width=1.0, learn_upsampling"],
        ),
        (["--model-arg", "dropout=lots"], ["argument dropout must be a number, got 'lots'"]),
    ],
    ids=["unknown", "other-model", "type"],
)
def test_bad_model_arguments_list_the_valid_ones(data, tmp_path, capsys, flags, words):
    code = main(["train", str(data), "--out", str(tmp_path / "o"), "--steps", "1",
                 "--patch-size", "16", "--no-progress", *flags])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: --model-arg (model_args): ")
    for word in words:
        assert word in err


def _checkpoints_are_finite(out: Path) -> None:
    for path in out.glob("*.safetensors"):
        for name, tensor in pixelwise.load(path).state_dict().items():  # refuses NaN itself
            assert torch.isfinite(tensor).all(), (path, name)


def test_a_diverging_run_stops_and_keeps_the_last_finite_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "diverged"
    options = ["--steps", "30", "--batch-size", "2", "--patch-size", "16", "--val-every", "1",
               "--optimizer", "sgd", "--lr", "1e8", "--model-arg", "base_channels=4",
               "--model-arg", "depth=3", "--no-progress"]  # fmt: skip
    code = main(["train", str(data), "--out", str(out), *options])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: training diverged at step ")
    assert "is NaN or infinite at --lr 1e+08" in err
    assert "lower the learning rate, e.g. train again with --lr 1e+07" in err
    _checkpoints_are_finite(out)
    if (out / "last.safetensors").exists():
        step = pixelwise.read_metadata(out / "last.safetensors")["step"]
        assert f"keeps the last finite weights (step {step})" in err


def test_nan_weights_are_never_saved(data, tmp_path, capsys, monkeypatch):
    """Weights that turn NaN while the loss of their step is still finite: the next save
    refuses, so the checkpoints keep the weights of the step before."""
    real_step = loop.train_step

    def step_then_poison(run, state, batch):
        real_step(run, state, batch)
        if state.step == 4:
            with torch.no_grad():
                next(run.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(loop, "train_step", step_then_poison)
    out = tmp_path / "poisoned"
    assert main(["train", str(data), "--out", str(out), "--steps", "6", *OPTIONS]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "training diverged at step 4: a weight of the model is NaN or infinite" in err
    assert f"{out / 'last.safetensors'} keeps the last finite weights (step 2)" in err
    assert pixelwise.read_metadata(out / "last.safetensors")["step"] == 2
    assert pixelwise.read_metadata(out / "best.safetensors")["step"] <= 2
    _checkpoints_are_finite(out)
