"""Training: exact resume, DDP equivalence, patches, configuration, logs."""

import dataclasses
import itertools
import json
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
    with pytest.raises(ValueError, match=r"zoom must be in \[1, 4\] \(1 = none, 1.5 = from"):
        TrainConfig(data="x", zoom=0.8).check()
    with pytest.raises(ValueError, match=r"dim must be in \[0.01, 1\] \(1 = none, 0.3 = down"):
        TrainConfig(data="x", dim=0.0).check()
    with pytest.raises(ValueError, match=r"blur must be in \[0, 10\] pixels \(0 = none"):
        TrainConfig(data="x", blur=-0.5).check()
    with pytest.raises(ValueError, match=r"noise must be in \[0, 1\] \(0 = none, 0.05 = up"):
        TrainConfig(data="x", noise=1.5).check()
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="a config must be a mapping"):
        TrainConfig.from_yaml(bad)


def test_resume_without_checkpoint(blobs, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_cfg(blobs, tmp_path / "none"), resume=True, progress=False, log=lambda _: None)


def test_resuming_a_run_saved_before_blur_and_noise_existed_says_they_changed(
    tmp_path, monkeypatch
):
    """A checkpoint whose config lacks blur and noise trained without them; resuming it as an
    instance run, whose defaults now add them, logs both changes."""
    from pixelwise.train import setup

    last = tmp_path / "last.safetensors"
    last.write_bytes(b"")  # only its existence is checked; the metadata comes from below
    cfg = TrainConfig(data="x", out=str(tmp_path), instances=True)
    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    del saved["blur"], saved["noise"]
    monkeypatch.setattr(setup.checkpoint, "read_metadata", lambda path: {"config": saved})
    lines: list[str] = []
    setup.check_resume(cfg, last, allow_new_data=False, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("resuming with changed settings: ")
    assert "--blur 0.0 → 1.0" in lines[0] and "--noise 0.0 → 0.05" in lines[0], lines
    # A semantic run's defaults are the old values: nothing to say.
    plain = TrainConfig(data="x", out=str(tmp_path))
    saved = json.loads(json.dumps(dataclasses.asdict(plain)))
    del saved["blur"], saved["noise"]
    lines.clear()
    setup.check_resume(plain, last, allow_new_data=False, log=lines.append)
    assert lines == []


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
        # fp32: under bf16 autocast (auto on a CPU with native bf16) a batch of 2 and two of 1
        # round differently
        cfg = _cfg(blobs, out, steps=3, batch_size=batch, val_every=100, weighted=False,
                   precision="fp32")  # fmt: skip
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


# --------------------------------------------------------------------------------------------
# Instance runs: targets, object scores, tuning, instance defaults
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    from pixelwise.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("cells") / "data", 6, (64, 64), seed=0)


def _instance_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        instances=True,
        target="three-class",
        model_args=dict(base_channels=4, depth=3),  # + the instance padding and batch norm
        steps=6,
        batch_size=2,
        patch_size=32,
        val_every=2,
        seed=3,
    )
    return TrainConfig(**(base | kw))


def _silent(_message: str) -> None:
    pass


def test_patch_targets_are_derived_after_rotation_and_zoom(cells):
    from pixelwise.augment import Augment
    from pixelwise.data import load_dataset
    from pixelwise.train.patches import PatchDataset

    base = load_dataset(cells, instances=True, target="three-class")
    augment = Augment(zoom=2.0, rotation=180.0, out_size=(48, 48))
    patches = PatchDataset(base, tile=48, margin=0, augment=augment, repeats=4)
    for i in range(len(patches)):
        mask = patches[i]["mask"].numpy()  # (48, 48) classes of the transformed patch
        # Each object's boundary is whole: no interior pixel has a background 4-neighbour (a
        # resampled one-pixel boundary breaks up under turns and zooms, letting such pixels by).
        inner = mask == 1
        background = mask == 0
        touching = (inner[1:] & background[:-1]) | (inner[:-1] & background[1:])
        assert not touching.any(), i
        touching = (inner[:, 1:] & background[:, :-1]) | (inner[:, :-1] & background[:, 1:])
        assert not touching.any(), i


def test_instance_run_records_target_object_scores_and_tuned_postprocessing(cells, tmp_path):
    import csv

    from pixelwise.instances import PostProcessing, postprocessing_from_metadata

    messages = []
    result = train(_instance_cfg(cells, tmp_path / "run"), progress=False, log=messages.append)
    best = pixelwise.read_metadata(result.out / "best.safetensors")
    assert best["target"] == "three-class"
    assert best["class_names"] == ["background", "interior", "boundary"]
    assert pixelwise.load(result.out / "best.safetensors").hparams["num_classes"] == 3
    tuned = postprocessing_from_metadata(best)
    assert tuned == PostProcessing.from_dict(best["postprocessing"])
    assert tuned.target == "three-class"
    scores = best["postprocessing_scores"]
    assert 0 <= scores["dsb_score"] <= 1 and "accuracy@0.5" in scores and "f1@0.5" in scores
    assert scores["dsb_score"] >= best["best"]["val_dsb_score"]  # tuning starts at the defaults
    last = pixelwise.read_metadata(result.out / "last.safetensors")
    assert last["target"] == "three-class" and "postprocessing" not in last
    with open(result.out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2", "4", "6"]
    for column in ("val_dsb_score", "val_accuracy_50", "val_f1_50"):
        assert all(0 <= float(r[column]) <= 1 for r in rows)
    assert any("objects: DSB score" in m for m in messages)
    assert any(m.startswith("post-processing tuned on 2 validation images") for m in messages)
    assert result.best["metric"] == result.best["val_dsb_score"]
    # The training objects' size, brute force over every mask (validation images included):
    # an object of A pixels is √(4A/π) across.
    from pixelwise.data.io import read_image

    masks = [read_image(path) for path in sorted((cells / "masks").iterdir())]
    areas = np.concatenate([np.bincount(m.ravel())[1:] for m in masks])
    diameters = np.sqrt(4 * areas[areas > 0] / np.pi)
    assert best["object_diameter"] == pytest.approx(np.median(diameters))
    low, high = best["object_diameter_range"]
    assert (low, high) == pytest.approx(tuple(np.percentile(diameters, [5, 95])))
    assert last["object_diameter"] == best["object_diameter"]
    # ... which is what a Segmenter's diameter rescales to: objects twice that size → images
    # halved.
    segmenter = pixelwise.Segmenter.from_checkpoint(
        result.out / "best.safetensors", diameter=2 * best["object_diameter"]
    )
    assert segmenter.scale == pytest.approx(0.5)


def test_distance_target_run_learns_the_bands_and_tunes_their_seeds(cells, tmp_path):
    cfg = _instance_cfg(cells, tmp_path / "run", target=None, num_classes=5, steps=4)
    assert cfg.target == "distance" and cfg.weighted is False  # five classes choose it
    result = train(cfg, progress=False, log=_silent)
    best = pixelwise.read_metadata(result.out / "best.safetensors")
    assert best["target"] == "distance"
    assert best["class_names"] == ["background", "edge", "outer", "inner", "core"]
    assert pixelwise.load(result.out / "best.safetensors").hparams["num_classes"] == 5
    tuned = best["postprocessing"]
    assert tuned["target"] == "distance" and tuned["seed_distance"] == 4  # not tuned: unused


def test_best_checkpoint_is_chosen_by_the_object_score(cells, tmp_path, monkeypatch):
    """A scorer returning a known sequence: the best checkpoint is the step of its maximum,
    and tuning reuses that validation's probabilities instead of predicting again."""
    import pixelwise.train.objects as objects

    sequence = iter([0.6, 0.2, 0.4])  # steps 2, 4, 6: the first is best

    def scorer(params, probabilities, ground_truth):
        assert params.target == "three-class" and len(probabilities) == len(ground_truth) == 2
        assert all(p.shape[0] == 3 for p in probabilities)
        score = next(sequence)
        return {"dsb_score": score, "accuracy@0.5": score, "f1@0.5": score}

    def no_prediction(*args, **kwargs):
        raise AssertionError("the best validation's probabilities should be reused")

    monkeypatch.setattr(objects, "score_postprocessing", scorer)
    monkeypatch.setattr(objects, "predict", no_prediction)
    result = train(_instance_cfg(cells, tmp_path / "run"), progress=False, log=_silent)
    assert result.best["step"] == 2 and result.best["val_dsb_score"] == 0.6
    assert [row["val_dsb_score"] for row in result.history] == [0.6, 0.2, 0.4]
    meta = pixelwise.read_metadata(result.out / "best.safetensors")
    assert meta["step"] == 2 and "postprocessing" in meta


def test_improves_treats_nan_as_worst():
    from pixelwise.train.loop import _improves

    assert _improves(float("nan"), None)
    assert _improves(0.1, {"metric": float("nan")})
    assert not _improves(float("nan"), {"metric": 0.1})
    assert not _improves(0.1, {"metric": 0.1}) and _improves(0.2, {"metric": 0.1})


@pytest.mark.parametrize("channels_last", [False, True])
def test_resumed_instance_run_equals_uninterrupted_run_and_is_tuned(cells, tmp_path, channels_last):
    """Border weights with the three-class target; the resumed session tunes by predicting the
    validation images with the best checkpoint. channels_last: the validation at step 3 must
    leave the model in its training format (it did not: the run went on in NCHW, 2e-7 away
    from the resumed one)."""
    cfg = dict(weighted=True, steps=6, val_every=3, channels_last=channels_last)
    whole = train(_instance_cfg(cells, tmp_path / "whole", **cfg), progress=False, log=_silent)
    first = train(
        _instance_cfg(cells, tmp_path / "split", **cfg), stop_after=4, progress=False, log=_silent
    )
    assert first.step == 4
    assert "postprocessing" not in pixelwise.read_metadata(tmp_path / "split/best.safetensors")
    assert pixelwise.read_metadata(tmp_path / "split/last.safetensors")["target"] == "three-class"
    second = train(
        _instance_cfg(cells, tmp_path / "split", **cfg), resume=True, progress=False, log=_silent
    )
    assert whole.step == second.step == 6
    a, b = (_weights(tmp_path / p / "last.safetensors") for p in ("whole", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    best = [pixelwise.read_metadata(tmp_path / p / "best.safetensors") for p in ("whole", "split")]
    assert best[0]["step"] == best[1]["step"]
    assert best[0]["postprocessing"] == best[1]["postprocessing"]
    log_whole = (tmp_path / "whole/log.csv").read_text().splitlines()
    log_split = (tmp_path / "split/log.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in log_whole] == [r.split(",")[:4] for r in log_split]


def test_instance_run_without_validation_keeps_the_defaults(cells, tmp_path):
    messages = []
    cfg = _instance_cfg(cells, tmp_path / "run", val_fraction=0.0, steps=2, target="two-class")
    result = train(cfg, progress=False, log=messages.append)
    meta = pixelwise.read_metadata(result.out / "best.safetensors")
    assert meta["target"] == "two-class" and "postprocessing" not in meta
    assert meta["class_names"] == ["background", "object"]
    assert any(m.startswith("no validation images: the post-processing keeps") for m in messages)
    with open(result.out / "log.csv") as f:
        assert f.readline().strip().split(",")[8:11] == [
            "val_dsb_score", "val_accuracy_50", "val_f1_50"
        ]  # fmt: skip


def test_interrupted_instance_run_is_not_tuned(cells, tmp_path):
    result = train(_instance_cfg(cells, tmp_path / "run"), stop_after=2, progress=False,
                   log=_silent)  # fmt: skip
    assert result.step == 2
    meta = pixelwise.read_metadata(result.out / "best.safetensors")
    assert meta["target"] == "three-class" and "postprocessing" not in meta


def test_instance_defaults_fill_in_what_is_not_given():
    from pixelwise.train.config import INSTANCE_DEFAULTS, PLAIN_DEFAULTS

    plain = TrainConfig(data="x")
    assert {k: getattr(plain, k) for k in PLAIN_DEFAULTS} == PLAIN_DEFAULTS
    assert plain.model_args == {} and plain.target is None
    objects = TrainConfig(data="x", instances=True)
    objects.check()
    for name, value in INSTANCE_DEFAULTS.items():
        expected = value.get("three-class") if name == "weighted" else value
        assert getattr(objects, name) == expected, name
    # explicit options win; model arguments are completed key by key
    given = TrainConfig(data="x", instances=True, lr=0.05, model_args={"depth": 3}, steps=50)
    assert given.lr == 0.05 and given.optimizer == INSTANCE_DEFAULTS["optimizer"]
    assert given.model_args == INSTANCE_DEFAULTS["model_args"] | {"depth": 3}
    assert given.steps == 50 and given.max_minutes is None  # given steps decide alone
    timed = TrainConfig(data="x", instances=True, max_minutes=5.0)
    assert timed.max_minutes == 5.0 and timed.steps == INSTANCE_DEFAULTS["steps"]
    # the two-class target: from the class count, border weights on; fcn keeps its arguments
    two = TrainConfig(data="x", instances=True, num_classes=2)
    assert two.target == "two-class" and two.weighted is True
    named = TrainConfig(data="x", instances=True, class_names=["bg", "nucleus"], weighted=False)
    assert named.target == "two-class" and named.weighted is False
    assert TrainConfig(data="x", instances=True, model="fcn8s").model_args == {}
    # resolving again changes nothing (a saved config.yaml reads back equal)
    assert TrainConfig.from_dict(dataclasses.asdict(objects)) == objects
    # every instance default names an option that is resolved
    from pixelwise.train.config import AUTO_FIELDS

    assert set(INSTANCE_DEFAULTS) <= {*AUTO_FIELDS, "model_args"}


def test_cli_instances_alone_takes_the_instance_defaults_and_flags_win(tmp_path):
    from pixelwise.cli import build_parser, train_config_from_args
    from pixelwise.train.config import INSTANCE_DEFAULTS

    def cfg(*argv):
        return train_config_from_args(build_parser().parse_args(["train", *argv]))

    objects = cfg("DATA", "--instances")
    assert objects.target == "three-class" and objects.patch_size == INSTANCE_DEFAULTS["patch_size"]
    assert objects.max_minutes == INSTANCE_DEFAULTS["max_minutes"]
    assert objects.model_args == INSTANCE_DEFAULTS["model_args"]
    given = cfg("DATA", "--instances", "--target", "two-class", "--patch-size", "64",
                "--model-arg", "base_channels=8", "--no-weighted")  # fmt: skip
    assert given.target == "two-class" and given.patch_size == 64 and given.weighted is False
    assert given.model_args["base_channels"] == 8 and given.model_args["padding"] == "same"
    # a saved config.yaml holds the resolved values: read back with a flag, the rest stays
    path = tmp_path / "config.yaml"
    path.write_text(objects.to_yaml())
    again = cfg("--config", str(path), "--lr", "0.002")
    assert again.lr == 0.002 and again.model_args == objects.model_args
    assert dataclasses.replace(again, lr=objects.lr) == objects
    assert cfg("DATA").patch_size == 128  # without --instances: the plain defaults


def test_instance_run_config_yaml_records_the_resolved_values(cells, tmp_path):
    cfg = _instance_cfg(cells, tmp_path / "run", steps=2, target=None)
    train(cfg, progress=False, log=_silent)
    saved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert saved["target"] == "three-class" and saved["optimizer"] == "adam"
    assert saved["model_args"]["padding"] == "same" and saved["max_minutes"] is None
    assert TrainConfig.from_yaml(tmp_path / "run/config.yaml") == cfg


def test_target_errors():
    with pytest.raises(ValueError, match="pass --instances"):
        TrainConfig(data="x", target="three-class").check()
    with pytest.raises(ValueError, match="target must be one of 'two-class', 'three-class'"):
        TrainConfig(data="x", instances=True, target="edges").check()
    with pytest.raises(ValueError, match="has 3 classes, got num_classes 2"):
        TrainConfig(data="x", instances=True, target="three-class", num_classes=2).check()
    with pytest.raises(ValueError, match="has 2 classes, got 3 class_names"):
        TrainConfig(data="x", instances=True, num_classes=2, class_names=["a", "b", "c"]).check()
    late = TrainConfig(data="x")
    late.instances = True  # set after the config was built: nothing is resolved again
    with pytest.raises(ValueError, match="instances=True needs a target"):
        late.check()
    unset = TrainConfig(data="x")
    unset.lr = None
    with pytest.raises(ValueError, match="lr not set"):
        unset.check()


def test_progress_lines_show_the_minutes_of_a_time_budget(monkeypatch):
    import pixelwise.train.logs as logs

    monkeypatch.setattr(logs.os, "isatty", lambda fd: False)
    lines = []
    shown = logs.Progress(total=10, initial=0, every=1, enabled=True, log=lines.append,
                          budget_minutes=30)  # fmt: skip
    shown.update(1, [0.5], 8.0, 1e-3, seconds=90.0)
    shown.close()
    assert lines == ["step 1/10 | 1.5/30 min | loss 0.5000 | 8.0 img/s | lr 0.001"]


@pytest.mark.parametrize(
    ("capability", "device", "expected"),
    [("AVX512", "cpu", True), ("AVX2", "cpu", False), ("AVX512", "cuda", False)],
)
def test_channels_last_defaults_to_the_faster_format(monkeypatch, capability, device, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert TrainConfig(data="x", device=device).channels_last is expected
    assert TrainConfig(data="x", device=device, channels_last=not expected).channels_last is (
        not expected
    )


def test_unknown_model_is_refused_with_the_options():
    with pytest.raises(ValueError, match=r"model must be one of 'unet', 'fcn32s'.*'nosuch'"):
        TrainConfig(data="x", model="nosuch").check()
