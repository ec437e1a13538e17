"""Precision: the automatic choice from the CPU flags, the run headers, autocast really running,
the exact engine's fp32 default, the older --amp / --autocast names and the resume rule."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pixelwise
from conftest import REFERENCE_CPU_FLAGS, write_disc_dataset
from pixelwise import precision as precision_module
from pixelwise.checks import InputWarning
from pixelwise.cli import build_parser, main, train_config_from_args
from pixelwise.data import to_chw_float
from pixelwise.distributed import distributed_context
from pixelwise.precision import (
    Precision,
    cpu_flags,
    native_bf16,
    native_fp16,
    resolve_precision,
)
from pixelwise.tiling import predict
from pixelwise.train import TrainConfig, train, train_step
from pixelwise.train.setup import set_up

AVX2 = REFERENCE_CPU_FLAGS
"""The flags of a CPU without native bf16 (this project's 2-core EPYC)."""
AVX512_BF16 = AVX2 | {"avx512f", "avx512bw", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8", "avx512_fp16"}


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, flags: frozenset[str]) -> None:
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: flags)


# --------------------------------------------------------------------------------------------
# Detection: a pure function of the flags
# --------------------------------------------------------------------------------------------


def test_native_bf16_and_fp16_from_flag_sets():
    assert native_bf16(AVX2) is None
    assert native_bf16(AVX512_BF16) == "AVX512_BF16"
    assert native_bf16({"amx_bf16", "amx_tile"}) == "AMX"
    assert native_bf16({"AVX512_BF16"}) == "AVX512_BF16"  # case as some tools print it
    assert native_bf16(SAPPHIRE_RAPIDS) == "AVX512_BF16 and AMX"  # the header names both
    assert native_bf16({"avx512f", "avx512_vnni"}) is None  # AVX-512 alone is not bf16
    assert native_fp16(AVX512_BF16) is None
    assert native_fp16(SAPPHIRE_RAPIDS) == "AVX512_FP16"


def test_auto_resolves_per_device_with_its_reason():
    cases = [
        ("cpu", dict(flags=AVX2), Precision("fp32", "auto: CPU lacks AVX512_BF16 and AMX")),
        ("cpu", dict(flags=AVX512_BF16), Precision("bf16", "auto: CPU has AVX512_BF16")),
        ("cpu", dict(flags={"amx_bf16"}), Precision("bf16", "auto: CPU has AMX")),
        ("cuda", dict(cuda_bf16=True), Precision("bf16", "auto: CUDA GPU with bf16")),
        (
            "cuda:1",
            dict(cuda_bf16=False),
            Precision("fp16", "auto: CUDA GPU without bf16; training scales the loss"),
        ),
        ("mps", {}, Precision("fp32", "auto: no mixed precision measured on mps")),
    ]
    for device, kwargs, expected in cases:
        assert resolve_precision("auto", device, **kwargs) == expected, device
    assert resolve_precision("auto", "cpu", flags=AVX512_BF16).describe() == (
        "precision bf16 (auto: CPU has AVX512_BF16)"
    )
    assert resolve_precision("auto", "cpu", flags=AVX2).autocast is None
    assert resolve_precision("auto", "cpu", flags=AVX512_BF16).dtype is torch.bfloat16


def test_explicit_precision_is_kept_and_emulated_cpu_precision_warns():
    with pytest.warns(InputWarning, match=r"precision bf16 on a CPU without native bf16 "):
        slow = resolve_precision("bf16", "cpu", flags=AVX2)
    assert slow == Precision("bf16", "as asked; emulated on this CPU, slow")
    with pytest.warns(InputWarning, match=r"emulated and slow \(up to 25× slower"):
        resolve_precision("fp16", "cpu", flags=AVX512_BF16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # native, or not on a CPU: no warning
        assert resolve_precision("bf16", "cpu", flags=AVX512_BF16).name == "bf16"
        assert resolve_precision("fp16", "cpu", flags=SAPPHIRE_RAPIDS).name == "fp16"
        assert resolve_precision("fp32", "cpu", flags=AVX512_BF16).name == "fp32"
        assert resolve_precision("bf16", "cuda", cuda_bf16=False) == Precision("bf16", "as asked")
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'fp32', 'bf16', 'fp16'"):
        resolve_precision("int8", "cpu")


@pytest.mark.real_cpu
def test_cpu_flags_hold_what_torch_reports():
    reported = {k for k, v in torch.cpu.get_capabilities().items() if v is True}
    assert reported <= cpu_flags()
    assert resolve_precision("auto", "cpu").name == ("bf16" if native_bf16(cpu_flags()) else "fp32")


# --------------------------------------------------------------------------------------------
# Training: the header, autocast really running, --amp, resume
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def discs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_disc_dataset(tmp_path_factory.mktemp("discs") / "data", n=2, size=32)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        model_args=dict(base_channels=4, depth=2),
        steps=2,
        batch_size=2,
        patch_size=16,
        val_every=2,
        val_fraction=0.0,
        device="cpu",
    )
    return TrainConfig(**(base | kw))


def _conv_output_dtypes(cfg: TrainConfig) -> tuple[list[str], set[torch.dtype]]:
    """The set-up's log and the dtypes of the convolution outputs of one training step."""
    lines: list[str] = []
    run, state = set_up(
        cfg, distributed_context(), torch.device("cpu"), resume=False, log=lines.append
    )
    dtypes: set[torch.dtype] = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, y: dtypes.add(y.dtype))
        for m in run.model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    batches = run.loader.batches(0)
    train_step(run, state, next(batches))
    for h in hooks:
        h.remove()
    assert state.step == 1
    return lines, dtypes


def test_auto_trains_in_bf16_on_a_cpu_with_native_bf16(discs, tmp_path, monkeypatch):
    _fake_cpu(monkeypatch, AVX512_BF16)
    lines, dtypes = _conv_output_dtypes(_cfg(discs, tmp_path / "bf16"))
    assert dtypes == {torch.bfloat16}  # the autocast really runs
    assert lines[-1].startswith("training unet (")
    assert ", precision bf16 (auto: CPU has AVX512_BF16)" in lines[-1]


def test_auto_trains_in_fp32_without_native_bf16(discs, tmp_path, monkeypatch):
    _fake_cpu(monkeypatch, AVX2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lines, dtypes = _conv_output_dtypes(_cfg(discs, tmp_path / "fp32"))
    assert dtypes == {torch.float32}
    assert ", precision fp32 (auto: CPU lacks AVX512_BF16 and AMX)" in lines[-1]


def test_explicit_bf16_without_native_bf16_runs_and_warns(discs, tmp_path, monkeypatch):
    _fake_cpu(monkeypatch, AVX2)
    with pytest.warns(InputWarning, match="emulated and slow"):
        lines, dtypes = _conv_output_dtypes(_cfg(discs, tmp_path / "slow", precision="bf16"))
    assert dtypes == {torch.bfloat16}
    assert ", precision bf16 (as asked; emulated on this CPU, slow)" in lines[-1]


def test_amp_and_autocast_are_older_names_of_precision(tmp_path):
    parser = build_parser()
    for flag in ("--precision", "--amp", "--autocast"):
        args = parser.parse_args(["train", "data", "--out", str(tmp_path), flag, "bf16"])
        assert train_config_from_args(args).precision == "bf16"
    assert TrainConfig(data="x", amp="fp16").precision == "fp16"
    assert TrainConfig.from_dict({"data": "x", "amp": None}).precision == "auto"  # old yaml
    assert "amp" not in TrainConfig(data="x", amp="bf16").to_yaml()
    with pytest.raises(ValueError, match="precision fp32 and amp bf16 disagree; give precision"):
        TrainConfig(data="x", amp="bf16", precision="fp32")
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'fp32', 'bf16'"):
        TrainConfig(data="x", precision="half").check()


def test_precision_may_change_on_resume(discs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    lines: list[str] = []
    first = train(
        _cfg(discs, out, precision="fp32"), stop_after=1, progress=False, log=lines.append
    )
    assert first.step == 1 and "precision fp32 (as asked)" in lines[-1]
    _fake_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    lines.clear()
    second = train(_cfg(discs, out), resume=True, progress=False, log=lines.append)
    assert second.step == 2
    assert not any("changed settings" in line for line in lines), lines
    assert any("precision bf16 (auto: CPU has AVX512_BF16 and AMX)" in line for line in lines)
    assert "precision: auto" in (out / "config.yaml").read_text()


# --------------------------------------------------------------------------------------------
# Prediction: tiling.predict stays fp32; Segmenter and the command line choose
# --------------------------------------------------------------------------------------------


def _dtypes_of_predict(model: torch.nn.Module, call) -> set[torch.dtype]:
    """The dtypes of the convolution outputs of `call()` (not of the tile-size probe's empty
    batches, run outside autocast)."""
    dtypes: set[torch.dtype] = set()

    def record(_module: torch.nn.Module, _inputs: object, y: torch.Tensor) -> None:
        if y.shape[0] > 0 and y.device.type != "meta":
            dtypes.add(y.dtype)

    hooks = [
        m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        call()
    finally:
        for h in hooks:
            h.remove()
    return dtypes


def test_tiling_predict_stays_fp32_where_segmenter_chooses_bf16(tiny_unet, monkeypatch):
    _fake_cpu(monkeypatch, AVX512_BF16)
    model = tiny_unet(padding="same")
    image = np.random.default_rng(0).random((40, 40), dtype=np.float32)
    assert _dtypes_of_predict(model, lambda: predict(model, image)) == {torch.float32}
    segmenter = pixelwise.Segmenter(model)
    assert segmenter.options.autocast == "bf16"
    assert segmenter.precision.describe() == "precision bf16 (auto: CPU has AVX512_BF16)"
    raw = (image * 255).astype(np.uint8)
    assert _dtypes_of_predict(model, lambda: segmenter.predict(raw)) == {torch.bfloat16}
    exact = pixelwise.Segmenter(model, precision="fp32")
    assert exact.options.autocast is None
    np.testing.assert_array_equal(
        exact.predict(raw).probabilities,
        predict(model, to_chw_float(raw), output="probs"),
    )


def test_segmenter_takes_autocast_as_an_explicit_precision(tiny_unet, monkeypatch):
    _fake_cpu(monkeypatch, AVX2)
    model = tiny_unet()
    assert pixelwise.Segmenter(model).precision.name == "fp32"
    with pytest.warns(InputWarning, match="emulated and slow"):
        assert pixelwise.Segmenter(model, autocast="bf16").precision.name == "bf16"
    with pytest.raises(ValueError, match="precision fp32 and autocast bf16 disagree"):
        pixelwise.Segmenter(model, autocast="bf16", precision="fp32")


def test_predict_command_says_what_precision_it_chose(instance_checkpoint, tmp_path, capsys):
    image = tmp_path / "cells.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40), np.uint8)).save(image)
    argv = ["predict", str(instance_checkpoint), str(image), "--no-progress", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "auto")]) == 0
    expected = resolve_precision("auto", "cpu")
    assert capsys.readouterr().out.splitlines()[0] == f"predicting on cpu, {expected.describe()}"
    assert main([*argv, "--out", str(tmp_path / "fp32"), "--precision", "fp32"]) == 0
    assert capsys.readouterr().out.startswith("predicting on cpu, precision fp32 (as asked)\n")
    auto = np.array(Image.open(tmp_path / "auto" / "cells.png"))
    if expected.name == "fp32":  # same numbers on a CPU without native bf16
        np.testing.assert_array_equal(auto, np.array(Image.open(tmp_path / "fp32" / "cells.png")))
    assert main([*argv, "--out", str(tmp_path / "x"), "--precision", "fp32", "--amp", "bf16"]) == 2
    assert capsys.readouterr().err == (
        "error: --precision fp32 and --autocast bf16 disagree; give --precision alone "
        "(--autocast is its older spelling)\n"
    )


def test_workers_default_to_none_on_a_cpu_and_some_on_a_gpu(monkeypatch):
    from pixelwise.train.config import default_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    assert (default_workers("cpu"), default_workers("cuda:0")) == (0, 4)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert default_workers("cuda") == 1
    assert TrainConfig(data="x", device="cpu").workers == 0
    assert TrainConfig(data="x", device="cuda", workers=3).workers == 3


def test_evaluate_takes_the_precision_and_says_what_it_chose(
    tiny_unet, tmp_path, capsys, monkeypatch
):
    """evaluate resolves --precision as predict does: on a CPU without native bf16, auto is
    fp32 and scores exactly as --precision fp32; bf16 asked for is used (emulated)."""
    from conftest import write_disc_dataset
    from pixelwise.evaluate import evaluate

    data = write_disc_dataset(tmp_path / "discs", n=2, size=48)
    checkpoint = tmp_path / "discs.safetensors"
    pixelwise.save(tiny_unet(1, 2, padding="same"), checkpoint)
    argv = ["evaluate", str(checkpoint), str(data), "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "auto")]) == 0
    expected = resolve_precision("auto", "cpu")
    assert capsys.readouterr().out.splitlines()[0] == f"evaluating on cpu, {expected.describe()}"
    _fake_cpu(monkeypatch, AVX2)
    quiet = dict(device="cpu", log=lambda line: None)
    auto = evaluate(checkpoint, data, tmp_path / "a", **quiet)
    fp32 = evaluate(checkpoint, data, tmp_path / "f", precision="fp32", **quiet)
    assert auto["per_image"] == fp32["per_image"]
    with pytest.warns(InputWarning, match="emulated and slow"):
        bf16 = evaluate(checkpoint, data, tmp_path / "b", precision="bf16", **quiet)
    assert bf16["pixel_accuracy"] == pytest.approx(fp32["pixel_accuracy"], abs=0.05)
