"""Export a model to ONNX with dynamic batch, height and width.

The graph has one input "image" (N, C, H, W) float32 and one output "logits" (N, K, H', W'),
where H' = H − 2·margin for a valid-padding U-Net and H' = H otherwise. N, H and W are symbolic,
so one file serves every valid input size: any H, W ≥ 1 for FCN, the sizes of
`UNet.valid_input_sizes` for a U-Net (the exported graph does not check them; an invalid size
fails inside the runtime or yields a misaligned crop, so tile with the recorded stride).

What another tool needs to tile and normalise lies in the model's `metadata_props`, each value a
JSON string (read them back with `read_onnx_metadata`):

    model, model_args, in_channels, num_classes, margin, stride, receptive_radius,
    normalization (null when the checkpoint has none), class_names, palette,
    exporter ("dynamo" or "torchscript": which one wrote the graph)

`onnx_proto` exports any module (a model or one wrapping it, as the bioimage.io package's
`PackagedModel`) to a checked in-memory model; `rename_io` names its input and output.

Exporters: torch's dynamo exporter (`torch.export` + onnxscript) is tried first; if it raises, or
the model it writes disagrees with PyTorch at a second input size, the TorchScript exporter is
used. Each result is checked with onnxruntime (when installed) at the example size and at a second
size, so a graph that silently fixed its shape to the example is never written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pixelwise.atomic import atomic_write
from pixelwise.checkpoint import load_state
from pixelwise.checks import check_choice, check_positive_int
from pixelwise.models import Geometry, UNet, model_config

if TYPE_CHECKING:  # onnx is an optional dependency, imported where it is used
    import onnx

Exporter = Callable[[nn.Module, torch.Tensor, str, int], None]
"""Writes (model, example input, path, opset) to an ONNX file."""

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
EXPORTERS = ("auto", "dynamo", "torchscript")
_ATOL = 1e-4


class ExportError(RuntimeError):
    """No exporter produced an ONNX model that matches PyTorch at two input sizes."""


def default_example_size(model: Geometry) -> int:
    """Smallest valid input side that gives an output of at least 2·stride pixels.

    Worked example (paper U-Net, margin 92, stride 16): the search starts at 2·92 + 2·16 = 216;
    the first valid size from there is 220, whose output is 220 − 184 = 36 pixels. For FCN
    (margin 0, stride 32) it is 64.
    """
    margin, stride = int(model.margin), int(model.stride)
    lo = 2 * margin + 2 * stride
    return model.valid_input_sizes(lo, lo + 8 * stride + 8)[0]


def _second_size(model: Geometry, n: int) -> int:
    """A valid input side different from `n` (the next valid one above it), for verification."""
    stride = int(model.stride)
    return model.valid_input_sizes(n + 1, n + 8 * stride + 8)[0]


def onnx_metadata(model: nn.Module, meta: dict | None = None) -> dict[str, str]:
    """The `metadata_props` written into the ONNX file: name → JSON string.

    Args:
        model: a pixelwise model (UNet, FCN).
        meta: checkpoint metadata; its "normalization", "class_names" and "palette" are copied.
    """
    meta = meta or {}
    name, kwargs = model_config(model)
    values = {
        "model": name,
        "model_args": kwargs,
        "in_channels": kwargs["in_channels"],
        "num_classes": kwargs["num_classes"],
        "margin": int(model.margin),
        "stride": int(model.stride),
        "receptive_radius": int(model.receptive_radius),
        "normalization": meta.get("normalization"),
        "class_names": meta.get("class_names"),
        "palette": meta.get("palette"),
    }
    return {k: json.dumps(v) for k, v in values.items()}


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The pixelwise `metadata_props` of an exported file, JSON-decoded (see module docstring)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out = {}
    for prop in model.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            out[prop.key] = prop.value
    return out


def _resolve(checkpoint_or_model: str | os.PathLike | nn.Module) -> tuple[nn.Module, dict]:
    if isinstance(checkpoint_or_model, nn.Module):
        model = getattr(checkpoint_or_model, "module", checkpoint_or_model)
        return getattr(model, "_orig_mod", model), {}
    model, meta, _ = load_state(checkpoint_or_model)
    return model, meta


def _check_example_size(model: nn.Module, size: int | Sequence[int] | None) -> tuple[int, int]:
    """(height, width) of the example input: `size`, checked, or `default_example_size`."""
    if size is None:
        n = default_example_size(model)
        return n, n
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    for side, what in ((h, "example height"), (w, "example width")):
        check_positive_int(what, side)
        if not model.valid_input_sizes(side, side):
            geometry = getattr(model, "geometry", None)
            if geometry is not None:
                geometry.check(side, what=what)  # raises, naming the nearest valid sizes
            raise ValueError(f"{what} {side} is not a valid input size for this model")
    return h, w


@contextlib.contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    """Silence the exporters' warnings and log lines (torchvision not installed, opset notes)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _dynamo_dims(model: nn.Module, h: int, w: int) -> dict:
    """`dynamic_shapes` for torch.export: batch, height and width free.

    A U-Net only takes sizes n = stride·k + r (r fixed by the depth and padding; the paper's
    valid sizes are 16·k + 12: 572 = 16·35 + 12), and torch.export refuses a free height whose
    guards say so; the derived dimension `stride·k + r` states exactly that. FCN takes any size.
    """
    batch = torch.export.Dim("batch")
    if not isinstance(model, UNet):
        return {"x": {0: batch, 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}}
    s = model.stride
    height = s * torch.export.Dim("_height", min=1) + h % s
    width = s * torch.export.Dim("_width", min=1) + w % s
    return {"x": {0: batch, 2: height, 3: width}}


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: str, opset: int) -> None:
    import onnx
    from onnx import version_converter

    # The dynamo exporter builds opset >= 18; convert down here rather than inside the exporter,
    # which announces its own conversion on stdout.
    with _quiet_torch_onnx():
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=max(opset, 18),
            dynamo=True,
            dynamic_shapes=_dynamo_dims(model, *example.shape[-2:]),
            verbose=False,
        )
        program.save(path)
        if opset < 18:
            proto = version_converter.convert_version(onnx.load(path), opset)
            onnx.save(proto, path)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: str, opset: int) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    out_axes = {0: "batch", 2: "out_height", 3: "out_width"}
    with _quiet_torch_onnx():  # TracerWarnings from the U-Net's size checks
        torch.onnx.export(
            model,
            (example,),
            path,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=False,
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: out_axes},
        )


def _export_with(
    method: Exporter, model: nn.Module, example: torch.Tensor, opset: int, margin: int
) -> onnx.ModelProto:
    """Run one exporter into a temporary folder; return the loaded `onnx.ModelProto`."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "model.onnx")
        method(model, example, raw, opset)
        proto = onnx.load(raw)  # also loads external weight files, before tmp is removed
    _name_dims(proto, margin)
    return proto


def _name_dims(proto: onnx.ModelProto, margin: int) -> None:
    """Name the symbolic axes of the graph's input and output the same way for every exporter.

    Input (batch, C, height, width); output (batch, K, height, width) when margin = 0, else
    (batch, K, out_height, out_width) with out_height = height − 2·margin.
    """
    out = ("height", "width") if margin == 0 else ("out_height", "out_width")
    for value, names in ((proto.graph.input[0], ("height", "width")), (proto.graph.output[0], out)):
        dims = value.type.tensor_type.shape.dim
        for axis, name in zip((0, 2, 3), ("batch", *names), strict=True):
            dims[axis].dim_param = name


def rename_io(proto: onnx.ModelProto, input_name: str, output_name: str) -> None:
    """Rename the graph's one input and one output (and every node reference to them)."""
    renames = {proto.graph.input[0].name: input_name, proto.graph.output[0].name: output_name}
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    proto.graph.input[0].name = input_name
    proto.graph.output[0].name = output_name


def verify_onnx(
    onnx_model: onnx.ModelProto,
    model: nn.Module,
    sizes: Sequence[tuple[int, int, int]],
    *,
    atol: float = _ATOL,
    in_channels: int | None = None,
) -> str | None:
    """Run an in-memory ONNX model with onnxruntime and compare with `model` (CPU, float32).

    Args:
        onnx_model: an `onnx.ModelProto`.
        model: the PyTorch model it was exported from, in eval mode.
        sizes: (N, H, W) inputs to try, each filled with a seeded standard normal.
        atol: largest allowed absolute difference of the outputs.
        in_channels: channels of the inputs; default the pixelwise model's `in_channels` (pass
            it for any other module, e.g. a bioimage.io package's `PackagedModel`).

    Returns:
        None when every size agrees (or onnxruntime is not installed), else a one-line reason.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(
        onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    if in_channels is None:
        in_channels = model_config(model)[1]["in_channels"]
    generator = torch.Generator().manual_seed(0)
    for n, h, w in sizes:
        x = torch.randn(n, in_channels, h, w, generator=generator)
        with torch.no_grad():
            ref = model(x).numpy()
        try:
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        except Exception as e:  # any runtime failure is a failed verification
            return f"onnxruntime failed at input {(n, in_channels, h, w)}: {e}"
        if got.shape != ref.shape:
            return f"output shape {got.shape} != PyTorch {ref.shape} at input {(n, h, w)}"
        diff = float(np.abs(got - ref).max())
        if diff > atol:
            return f"max |ONNX − PyTorch| = {diff:.3g} > {atol} at input {(n, h, w)}"
    return None


def onnx_proto(
    module: nn.Module,
    example: torch.Tensor,
    *,
    margin: int,
    checks: Sequence[tuple[int, int, int]],
    opset: int = 17,
    exporter: str = "auto",
) -> tuple[onnx.ModelProto, str]:
    """Export an eval-mode CPU module to an in-memory ONNX model, checked with onnxruntime.

    Args:
        module: a pixelwise model, or a module wrapping one (a bioimage.io `PackagedModel`).
        example: (N, C, H, W) input to trace, of a valid size.
        margin: pixels the output loses per side ((H − H') / 2), naming the output's axes.
        checks: (N, H, W) inputs `verify_onnx` compares with PyTorch; empty: no check.
        opset: ONNX opset.
        exporter: "auto" (dynamo, falling back to TorchScript), "dynamo" or "torchscript".

    Returns:
        (the model, the name of the exporter that wrote it).

    Raises:
        ExportError: no exporter produced a model that matches PyTorch (the reasons are listed).
    """
    check_choice("exporter", exporter, EXPORTERS)
    methods = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    failures = []
    for name in order:
        try:
            proto = _export_with(methods[name], module, example, opset, margin)
        except Exception as e:  # try the next exporter; report every failure
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            failures.append(f"{name}: export failed ({type(e).__name__}: {first})")
            continue
        reason = (
            verify_onnx(proto, module, checks, in_channels=int(example.shape[1]))
            if checks
            else None
        )
        if reason is None:
            return proto, name
        failures.append(f"{name}: {reason}")
    raise ExportError("ONNX export failed; " + "; ".join(failures))


def export_onnx(
    checkpoint_or_model: str | os.PathLike | nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    example_size: int | tuple[int, int] | None = None,
    exporter: str = "auto",
    verify: bool = True,
) -> Path:
    """Export a checkpoint (or model) to ONNX, atomically.

    Args:
        checkpoint_or_model: a `.safetensors` checkpoint path or a pixelwise model. The
            checkpoint's normalisation, class names and palette go into the metadata; a bare
            model records `normalization: null`.
        path: destination `.onnx` file.
        opset: ONNX opset (17 by default; the dynamo exporter builds opset 18 and converts).
        example_size: side (or (H, W)) of the example input traced; must be a valid input size.
            Default `default_example_size(model)`.
        exporter: "auto" (dynamo, falling back to TorchScript), "dynamo" or "torchscript".
        verify: check the result with onnxruntime at the example size and at a second size
            (batch 2), within 1e-4 (skipped when onnxruntime is not installed).

    Returns:
        The written path.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        ValueError: bad exporter or example size (the message names the nearest valid sizes).
        ExportError: no exporter produced a model that matches PyTorch (the reasons are listed).
    """
    try:
        import onnx
    except ImportError:
        raise ExportError(
            "ONNX export needs the onnx package: pip install 'pixelwise[export]' "
            "(onnx, onnxscript, and onnxruntime for the check against PyTorch)"
        ) from None

    check_choice("exporter", exporter, EXPORTERS)
    model, meta = _resolve(checkpoint_or_model)
    h, w = _check_example_size(model, example_size)
    checks = [(2, h, w), (2, _second_size(model, h), _second_size(model, w))]
    param = next(model.parameters())
    was_training, device = model.training, param.device
    model.eval().cpu()
    try:
        example = torch.zeros(2, model_config(model)[1]["in_channels"], h, w)
        proto, name = onnx_proto(
            model,
            example,
            margin=int(model.margin),
            checks=checks if verify else (),
            opset=opset,
            exporter=exporter,
        )
    finally:
        model.train(was_training).to(device)
    props = onnx_metadata(model, meta) | {"exporter": json.dumps(name)}
    for key, value in props.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))
    return Path(path)
