"""Training: exact resume, DDP equivalence, patches, configuration, logs."""

import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import pixelwise
from pixelwise.models import UNet
from pixelwise.train import (
    TrainConfig,
    initialize_from,
    patch_geometry,
    schedule_factor,
    train,
)


def _write_blobs(folder: Path, n: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Folder pairs of noisy bright discs on a dark background (masks 0/255)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(4):
            cy, cx = rng.integers(8, size - 8, 2)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 64)] = 1
        image = (mask * 120 + rng.normal(60, 15, mask.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"{i}.png")
        Image.fromarray(mask * 255).save(folder / "masks" / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return _write_blobs(tmp_path_factory.mktemp("blobs") / "data")


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        model_args=dict(base_channels=4, depth=3, dropout=0.3),
        steps=6,
        batch_size=2,
        patch_size=16,
        val_every=3,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weighted=True,
        seed=3,
    )
    return TrainConfig(**(base | kw))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return pixelwise.load(path).state_dict()


def test_resumed_run_equals_uninterrupted_run(blobs, tmp_path):
    # dropout, elastic augmentation, momentum and the poly schedule all carry state
    whole = train(_cfg(blobs, tmp_path / "whole"), progress=False, log=lambda _: None)
    assert whole.step == 6
    first = train(_cfg(blobs, tmp_path / "split"), stop_after=4, progress=False, log=lambda _: None)
    assert first.step == 4
    second = train(_cfg(blobs, tmp_path / "split"), resume=True, progress=False, log=lambda _: None)
    assert second.step == 6
    a, b = (
        _weights(tmp_path / "whole/last.safetensors"),
        _weights(tmp_path / "split/last.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and training did change the weights
    c = _weights(tmp_path / "split/best.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a) or whole.best["step"] == 6
    # the log of the resumed run is the log of the whole run
    log_whole = (tmp_path / "whole/log.csv").read_text().splitlines()
    log_split = (tmp_path / "split/log.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in log_whole] == [r.split(",")[:4] for r in log_split]


def test_outputs_and_metadata(blobs, tmp_path):
    result = train(_cfg(blobs, tmp_path / "run", steps=3), progress=False, log=lambda _: None)
    names = sorted(p.name for p in result.out.iterdir())
    assert {"best.safetensors", "last.safetensors", "log.csv", "curves.png", "config.yaml"} <= set(
        names
    )
    assert not [n for n in names if n.endswith(".tmp")]
    meta = pixelwise.read_metadata(result.out / "best.safetensors")
    assert meta["normalization"]["scale"] == pytest.approx(1 / 255)
    assert meta["class_names"] == ["class 0", "class 1"]
    saved = yaml.safe_load((result.out / "config.yaml").read_text())
    assert saved["steps"] == 3 and saved["weighted"] is True
    assert TrainConfig.from_yaml(result.out / "config.yaml") == _cfg(
        blobs, tmp_path / "run", steps=3
    )
    assert 0 <= result.best["val_mean_iou"] <= 1


def test_patch_geometry_paper_network():
    net = UNet(base_channels=2)
    assert patch_geometry(net, 100) == (284, 100)
    assert patch_geometry(net, 101) == (300, 116)
    assert patch_geometry(net, 388) == (572, 388)
    same = UNet(base_channels=2, padding="same", depth=3)
    assert patch_geometry(same, 30) == (32, 32)


def test_schedules():
    cfg = TrainConfig(data="x", steps=100, schedule="poly")
    assert schedule_factor(cfg, 0, 1.0) == 1.0
    assert schedule_factor(cfg, 50, 1.0) == pytest.approx(0.5**0.9)
    cfg.schedule = "cosine"
    assert schedule_factor(cfg, 50, 1.0) == pytest.approx(0.5)
    cfg.schedule = "plateau"
    assert schedule_factor(cfg, 50, 0.01) == 0.01
    # with a time budget the schedule follows whichever is further along, steps or time
    cfg = TrainConfig(data="x", steps=100, schedule="cosine", max_minutes=2.0)
    assert schedule_factor(cfg, 10, 1.0, elapsed=60.0) == pytest.approx(0.5)
    assert schedule_factor(cfg, 50, 1.0, elapsed=6.0) == pytest.approx(0.5)
    assert schedule_factor(cfg, 10, 1.0, elapsed=500.0) == pytest.approx(0.0)


def test_time_budget_ends_the_run_validated_and_checkpointed(blobs, tmp_path):
    messages = []
    cfg = _cfg(blobs, tmp_path / "timed", steps=10_000, val_every=10_000, max_minutes=1e-4)
    result = train(cfg, progress=False, log=messages.append)
    assert 1 <= result.step < 10_000 and not result.interrupted
    assert any("time budget of 0.0001 min spent" in m for m in messages)
    meta = pixelwise.read_metadata(result.out / "last.safetensors")
    assert meta["step"] == result.step and meta["seconds"] >= 0.006
    assert result.history[-1]["step"] == result.step  # validated at the last step
    assert (result.out / "best.safetensors").exists()
    with pytest.raises(ValueError, match="max_minutes must be > 0"):
        TrainConfig(data="x", max_minutes=0).check()


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['epochs'\\]"):
        TrainConfig.from_dict({"data": "x", "epochs": 3})
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(data="x", optimizer="lbfgs").check()
    with pytest.raises(ValueError, match="data is required"):
        TrainConfig().check()
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="a config must be a mapping"):
        TrainConfig.from_yaml(bad)


def test_resume_without_checkpoint(blobs, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_cfg(blobs, tmp_path / "none"), resume=True, progress=False, log=lambda _: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, cfg: Path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        "-m", "pixelwise", "train", "--config", str(cfg), "--no-progress",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ddp_two_ranks_batch_1_equals_one_process_batch_2(blobs, tmp_path):
    """gloo on CPU: DDP averages the two ranks' gradients = the mean loss over a batch of 2."""
    runs = {}
    for nproc, batch in ((2, 1), (1, 2)):
        out = tmp_path / f"ddp{nproc}"
        cfg = _cfg(blobs, out, steps=3, batch_size=batch, val_every=100, weighted=False)
        cfg.model_args = dict(base_channels=4, depth=3)  # no dropout, no batch norm
        path = tmp_path / f"cfg{nproc}.yaml"
        path.write_text(yaml.safe_dump(cfg.__dict__))
        _torchrun(nproc, path)
        runs[nproc] = _weights(out / "last.safetensors")
    for k in runs[1]:
        torch.testing.assert_close(runs[2][k], runs[1][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_a_resumable_checkpoint(blobs, tmp_path, signame):
    """Ctrl-C, and SIGTERM (what cluster schedulers send), save the last checkpoint and stop."""
    import signal

    out = tmp_path / "sigint"
    cfg = _cfg(blobs, out, steps=50, val_every=100)
    # Deterministic Ctrl-C: the 5th optimiser step sends the signal to the process itself.
    script = (
        "import os, signal, sys, torch\n"
        "from pixelwise.train import TrainConfig, train\n"
        "step, calls = torch.optim.SGD.step, []\n"
        "def interrupting_step(self, *a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 5:\n"
        f"        os.kill(os.getpid(), signal.{signame})\n"
        "    return step(self, *a, **k)\n"
        "torch.optim.SGD.step = interrupting_step\n"
        f"cfg = TrainConfig.from_yaml({str(tmp_path / 'c.yaml')!r})\n"
        "r = train(cfg, progress=False)\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL\n"
        f"assert r.signal == signal.{signame}\n"
        "sys.exit(130 if r.interrupted else 0)\n"
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.__dict__))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 130, done.stdout + done.stderr
    assert "continue with --resume" in done.stdout
    step = pixelwise.read_metadata(out / "last.safetensors")["step"]
    assert step == 5  # the step in flight when Ctrl-C came is finished, then saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_fcn16s_initialised_from_fcn32s_as_the_paper_stages(tmp_path):
    from pixelwise.models import build

    fcn32 = build("fcn32s", num_classes=3, width=0.0625)
    torch.nn.init.normal_(fcn32.score_fr.weight)  # not the zero init, so a copy is visible
    pixelwise.save(fcn32, tmp_path / "32s.safetensors")
    fcn16 = build("fcn16s", num_classes=3, width=0.0625)
    message = initialize_from(fcn16, tmp_path / "32s.safetensors")
    source = fcn32.state_dict()
    for name, value in fcn16.state_dict().items():
        if name.startswith(("features", "fc6", "fc7", "score_fr")):
            torch.testing.assert_close(value, source[name], rtol=0, atol=0)
    assert not fcn16.score_pool4.weight.any()  # the new skip starts at zero: 16s == 32s path
    assert "new: score_pool4, upscore, upscore2" in message
    assert message.startswith(f"initialised {len(source) - 1} of {len(fcn16.state_dict())}")

    with pytest.raises(ValueError, match="no parameter matches UNet by name and shape"):
        initialize_from(UNet(base_channels=2, depth=2), tmp_path / "32s.safetensors")


def test_time_budget_anneals_the_schedule_over_the_steps_it_allows(blobs, tmp_path, monkeypatch):
    """`--steps 4000 --max-minutes` stops early; the cosine must end there, its rate near 0.

    A fake clock advanced one second per optimiser step: the 30 s budget allows 30 steps.
    """
    import pixelwise.train.state

    now = [0.0]
    monkeypatch.setattr(pixelwise.train.state, "clock", lambda: now[0])
    lrs, sgd_step = [], torch.optim.SGD.step

    def one_second_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        now[0] += 1.0
        return sgd_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", one_second_step)
    cfg = _cfg(blobs, tmp_path / "timed", steps=4000, val_every=4000, schedule="cosine",
               max_minutes=0.5)  # fmt: skip
    result = train(cfg, progress=False, log=lambda _: None)
    assert result.step == len(lrs) == 30 and not result.interrupted
    assert lrs[0] == cfg.lr
    assert lrs[15] == pytest.approx(cfg.lr * 0.5)  # 15 of 30 s spent: half-way down the cosine
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] < 0.01 * cfg.lr  # annealed to ~0 at the end of the budget
    assert result.history[-1]["lr"] == lrs[-1] and result.history[-1]["step"] == 30


def test_progress_lines_every_log_every_steps_off_a_terminal(blobs, tmp_path, monkeypatch):
    import pixelwise.train.logs as logs

    monkeypatch.setattr(logs.os, "isatty", lambda fd: False)  # as in a cluster job's log
    messages = []
    cfg = _cfg(blobs, tmp_path / "lines", steps=6, log_every=2)
    train(cfg, progress=True, log=messages.append)
    lines = [m for m in messages if "img/s" in m]
    assert [m.split(" | ")[0] for m in lines] == ["step 2/6", "step 4/6", "step 6/6"]
    assert all(" | loss " in m and " | lr " in m for m in lines)
    quiet = []
    train(_cfg(blobs, tmp_path / "quiet", steps=2), progress=False, log=quiet.append)
    assert not [m for m in quiet if "img/s" in m]
    with pytest.raises(ValueError, match="log_every must be >= 1, got 0"):
        TrainConfig(data="x", log_every=0).check()


def test_every_option_has_its_help_in_the_config_and_the_cli_shows_it(capsys):
    from dataclasses import fields

    from pixelwise.cli import main
    from pixelwise.train import option_help

    helps = option_help()
    assert set(helps) == {f.name for f in fields(TrainConfig)} and all(helps.values())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = "".join(capsys.readouterr().out.split())  # without argparse's line wrapping
    for name in ("patch_size", "max_minutes", "log_every", "weighted"):
        assert "".join(helps[name].split()) in shown
    assert "(default:128)" in shown and "--no-augment" in shown
