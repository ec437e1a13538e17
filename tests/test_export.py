"""pixelwise.export: ONNX with dynamic batch/height/width matches PyTorch at other sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pixelwise
from conftest import random_fcn
from pixelwise import export
from pixelwise.export import ExportError, export_onnx, read_onnx_metadata, verify_onnx
from pixelwise.models import UNet

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
onnx = pytest.importorskip("onnx", reason="onnx is not installed")


def _unet(padding: str, depth: int = 3) -> UNet:
    torch.manual_seed(0)
    return UNet(2, 3, base_channels=4, depth=depth, padding=padding).eval()


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": x.numpy()})[0]


def _check_sizes(path: Path, model: torch.nn.Module, sizes: list[tuple[int, int, int]]) -> None:
    generator = torch.Generator().manual_seed(1)
    for n, h, w in sizes:
        x = torch.randn(n, model.hparams["in_channels"], h, w, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = _run_onnx(path, x)
        assert got.shape == expected.shape
        assert np.abs(expected).max() > 1e-2  # not a trivially zero output
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# Valid sizes of the depth-3 valid U-Net are 44, 48, 52, ... (4k, k >= 11): the example is 44.
CASES = {
    "unet_valid": (lambda: _unet("valid"), [(1, 48, 60), (3, 76, 52)]),
    "unet_same": (lambda: _unet("same"), [(1, 24, 40), (2, 36, 28)]),
    "fcn8s": (random_fcn, [(1, 37, 45), (2, 70, 33)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_torchscript_export_runs_at_other_sizes(case: str, tmp_path: Path) -> None:
    make, sizes = CASES[case]
    model = make()
    path = export_onnx(model, tmp_path / "m.onnx", exporter="torchscript")
    _check_sizes(path, model, sizes)
    graph = onnx.load(str(path)).graph
    dims = [
        [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (graph.input[0], graph.output[0])
    ]
    out = ["height", "width"] if model.margin == 0 else ["out_height", "out_width"]
    assert dims == [["batch", model.hparams["in_channels"], "height", "width"], ["batch", 3, *out]]
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left


def test_dynamo_export_of_a_valid_unet_runs_at_other_sizes(tmp_path: Path) -> None:
    """torch.export needs the derived height 2·k + r for a U-Net (a free height fails its
    guards); the graph still runs at every valid size."""
    model = _unet("valid", depth=2)  # valid sizes 20, 22, 24, ...
    path = export_onnx(model, tmp_path / "m.onnx", exporter="dynamo")
    assert read_onnx_metadata(path)["exporter"] == "dynamo"
    assert onnx.load(str(path)).opset_import[0].version == 17
    _check_sizes(path, model, [(1, 22, 30), (3, 40, 26)])


def test_metadata_records_geometry_and_normalisation(tmp_path: Path) -> None:
    norm = {"mean": [0.5, 0.25], "std": [0.2, 0.1], "scale": 1 / 255}
    ckpt = tmp_path / "c.safetensors"
    pixelwise.save(_unet("valid"), ckpt, normalization=norm, class_names=["a", "b", "c"])
    path = export_onnx(ckpt, tmp_path / "m.onnx", exporter="torchscript")
    meta = read_onnx_metadata(path)
    assert meta["margin"] == 20 and meta["stride"] == 4  # depth 3: 4·(1+2) + 4·4 + 4·(2+1) = 40
    assert meta["normalization"] == norm
    assert meta["class_names"] == ["a", "b", "c"]
    assert meta["model"] == "unet" and meta["model_args"]["padding"] == "valid"
    assert (meta["in_channels"], meta["num_classes"], meta["exporter"]) == (2, 3, "torchscript")
    _check_sizes(path, _unet("valid"), [(2, 52, 44)])  # the checkpoint's weights were exported


def test_auto_falls_back_to_torchscript_when_dynamo_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo unavailable")

    monkeypatch.setattr(export, "_export_dynamo", broken)
    model = _unet("same")
    path = export_onnx(model, tmp_path / "m.onnx")
    assert read_onnx_metadata(path)["exporter"] == "torchscript"
    with pytest.raises(ExportError, match=r"dynamo: export failed \(RuntimeError: dynamo unava"):
        export_onnx(model, tmp_path / "n.onnx", exporter="dynamo")
    assert not (tmp_path / "n.onnx").exists()


def test_verify_reports_a_mismatch(tmp_path: Path) -> None:
    path = export_onnx(_unet("same"), tmp_path / "m.onnx", exporter="torchscript")
    other = _unet("same")
    with torch.no_grad():
        other.head.bias.add_(1.0)
    reason = verify_onnx(onnx.load(str(path)), other, [(1, 16, 16)])
    assert reason is not None and reason.startswith("max |ONNX − PyTorch| = 1 > 0.0001")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot take example height 45.*use 44 or 48"):
        export_onnx(_unet("valid"), tmp_path / "m.onnx", example_size=45)
    with pytest.raises(ValueError, match=r"exporter must be one of"):
        export_onnx(_unet("valid"), tmp_path / "m.onnx", exporter="tf")
    assert list(tmp_path.iterdir()) == []


def test_onnx_proto_of_a_wrapping_module_with_renamed_io() -> None:
    """A module around a model (softmax over the U-Net's logits) exports, is checked at two
    sizes, and runs under the names `rename_io` gives it."""
    from pixelwise.export import onnx_proto, rename_io

    unet = _unet("valid")
    wrapped = torch.nn.Sequential(unet, torch.nn.Softmax(dim=1)).eval()
    example = torch.zeros(1, 2, 44, 48)
    proto, name = onnx_proto(
        wrapped, example, margin=unet.margin, checks=[(1, 48, 52)], exporter="torchscript"
    )
    assert name == "torchscript"
    rename_io(proto, "input", "output")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 2, 52, 44)
    (got,) = session.run(["output"], {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, wrapped(x).numpy(), atol=1e-5)
    assert got.shape == (2, 3, 52 - 40, 44 - 40)
