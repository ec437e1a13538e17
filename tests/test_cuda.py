"""The CUDA code paths: training with automatic mixed precision (bf16, or fp16 with its gradient
scaler) from pinned batches, and prediction on the GPU against the CPU. Every test skips on a
machine without a CUDA device (CI has none); they run where a GPU is lent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pixelwise
from conftest import write_disc_dataset
from pixelwise.distributed import distributed_context
from pixelwise.train import TrainConfig, train, train_step
from pixelwise.train.setup import set_up

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def discs(tmp_path: Path) -> Path:
    return write_disc_dataset(tmp_path / "discs", n=4, size=48)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        model_args=dict(base_channels=4, depth=2),
        steps=3,
        batch_size=2,
        patch_size=16,
        val_every=3,
        val_fraction=0.25,
        device="cuda",
    )
    return TrainConfig(**(base | kw))


def test_training_on_cuda_pins_batches_and_runs_autocast(discs, tmp_path):
    lines: list[str] = []
    cfg = _cfg(discs, tmp_path / "auto")
    run, state = set_up(
        cfg, distributed_context(), torch.device("cuda"), resume=False, log=lines.append
    )
    assert run.loader.pin_memory
    batch = next(run.loader.batches(0))
    assert batch["image"].is_pinned() and batch["mask"].is_pinned()
    dtypes: set[torch.dtype] = set()
    hooks = [
        m.register_forward_hook(lambda _m, _i, y: dtypes.add(y.dtype))
        for m in run.model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    train_step(run, state, batch)
    for h in hooks:
        h.remove()
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert dtypes == {expected}
    assert f"device cuda, precision {'bf16' if expected == torch.bfloat16 else 'fp16'}" in lines[-1]
    assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_fp16_training_on_cuda_scales_its_gradients(discs, tmp_path):
    result = train(
        _cfg(discs, tmp_path / "fp16", precision="fp16"), progress=False, log=lambda _l: None
    )
    assert result.step == 3
    model = pixelwise.load(result.out / "last.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_prediction_on_cuda_equals_the_cpu(instance_checkpoint):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 80), dtype=np.uint8)
    on_cpu = pixelwise.Segmenter.from_checkpoint(
        instance_checkpoint, device="cpu", precision="fp32"
    )
    on_gpu = pixelwise.Segmenter.from_checkpoint(
        instance_checkpoint, device="cuda", precision="fp32"
    )
    reference = on_cpu.predict(image)
    exact = on_gpu.predict(image)
    np.testing.assert_allclose(exact.probabilities, reference.probabilities, atol=1e-4)
    mixed = pixelwise.Segmenter.from_checkpoint(instance_checkpoint, device="cuda").predict(image)
    assert mixed.probabilities.dtype == np.float32
    assert np.abs(mixed.probabilities - reference.probabilities).max() < 0.05


def test_resumed_cuda_run_equals_the_uninterrupted_one(discs, tmp_path):
    # the restored optimiser state must follow the parameters onto the GPU
    cfg = dict(steps=4, val_every=2, precision="fp32")
    whole = train(_cfg(discs, tmp_path / "whole", **cfg), progress=False, log=lambda _l: None)
    train(_cfg(discs, tmp_path / "split", **cfg), stop_after=2, progress=False, log=lambda _l: None)
    resumed = train(
        _cfg(discs, tmp_path / "split", **cfg), resume=True, progress=False, log=lambda _l: None
    )
    assert whole.step == resumed.step == 4
    a, b = (
        pixelwise.load(tmp_path / p / "last.safetensors").state_dict() for p in ("whole", "split")
    )
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
