"""Write a checkpoint as a bioimage.io model package (spec 0.5): `export_bioimageio`.

A package is a folder, or a .zip of it, holding:

    rdf.yaml                 the model description (format_version 0.5.x)
    README.md                documentation (`pixelwise.bioimageio.documentation`)
    cover.png                the test input beside its predicted classes or objects
    test_input.npy           (1, C, H, W) raw pixels, the checkpoint's input dtype
    test_output.npy          (1, K, H, W) float32 probabilities the packaged weights compute
    weights_state_dict.pt    pytorch_state_dict of `PackagedModel` (a dict of tensors only)
    architecture.py          the standalone network source it loads into
    weights_torchscript.pt   the traced `PackagedModel`
    weights.onnx             the same graph in ONNX (when onnx is installed)

How pixelwise's records map onto the spec:

* normalisation `{"mean", "std", "scale"}` ((x·scale − mean) / std per channel) is one
  `scale_linear` step with gain = scale / std and offset = −mean / std along the channel axis,
  exactly; the input's dtype is the one whose range `scale` maps onto [0, 1] (uint8 for 1/255).
  `fixed_zero_mean_unit_variance` is not used: consumers divide by std + 1e-6. A per-image
  percentile record (`--normalize percentile`) is one `scale_range` step per sample and channel;
  its dark-on-bright inversion has no spec step (the package's documentation says so);
* sizes and halo come from `pixelwise.bioimageio.sizes` (a valid U-Net is mirrored by its margin
  inside the packaged model, so the output has the input's size; the halo is the margin rounded
  up to the stride, and consumers mirror the border as pixelwise does: input `pad` "reflect");
* class names are the output channel names (as identifiers) and, verbatim with the target,
  post-processing and normalisation, `config.pixelwise`.

The package is built in a temporary folder beside `out` and validated with bioimageio.spec
(`load_description`, which also checks the test tensors' shapes and the files' sha256) before
`pixelwise.atomic` renames it to `out` (`atomic_folder`) or zips it into `out` (`scratch_folder`
and `atomic_write`, a .zip), so `out` is either complete or absent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import yaml
from torch import nn

from pixelwise.atomic import atomic_folder, atomic_write, scratch_folder
from pixelwise.bioimageio.architecture import CALLABLE, architecture_source
from pixelwise.bioimageio.documentation import PackageFacts, readme
from pixelwise.bioimageio.network import PackagedModel
from pixelwise.bioimageio.sizes import PackageSizes, UnsupportedModelError, package_sizes
from pixelwise.checkpoint import load_state
from pixelwise.data import dtype_scale, is_percentile, read_image, to_chw_float
from pixelwise.models import model_config

__all__ = ["WEIGHT_FORMATS", "BioimageioError", "PackageInfo", "export_bioimageio"]

WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
RDF_NAME = "rdf.yaml"
TOLERANCE = 1e-4
"""Absolute and relative tolerance of the test output, recorded for the core model test."""

_DTYPES = ("uint8", "uint16", "int8", "int16", "uint32", "int32")
_CITE = {
    "unet": (
        "Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for Biomedical Image "
        "Segmentation (MICCAI 2015)",
        "10.1007/978-3-319-24574-4_28",
    ),
    "fcn": (
        "Long, Shelhamer, Darrell: Fully Convolutional Networks for Semantic Segmentation "
        "(CVPR 2015)",
        "10.1109/CVPR.2015.7298965",
    ),
}
_TEST_SIDE = 256
"""Default side of the test input (raised to the smallest valid size above it)."""
_COVER_HEIGHT = 256
"""Covers of smaller test inputs are enlarged (nearest neighbour) to at least this height."""
_MAX_TEST_SIDE = 512
"""A given test image is cropped to the largest valid size at most this."""


class BioimageioError(ValueError):
    """A package that cannot be written: bad options, an existing output, an invalid package."""


@dataclass(frozen=True, kw_only=True)
class PackageInfo:
    """The package's descriptive fields; None or empty: a default from the checkpoint.

    Attributes:
        name: the model's name (default e.g. "pixelwise U-Net three-class").
        description: one sentence (default from the model and its classes).
        authors: "Name" or "Name <email>" strings (default: the login name).
        license: an SPDX identifier (default CC-BY-4.0, the model zoo's usual licence).
        cite: (text, DOI or URL) pairs (default: the architecture's paper).
        tags: added to the default tags (segmentation, 2d, pytorch, the model, pixelwise).
        git_repo: the URL of the code that trained the model, if public.
        version: the package's version (default 0.1.0).
    """

    name: str | None = None
    description: str | None = None
    authors: tuple[str, ...] = ()
    license: str = "CC-BY-4.0"
    cite: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    git_repo: str | None = None
    version: str = "0.1.0"
    extra_config: dict[str, Any] = field(default_factory=dict)


def _spec():
    try:
        import bioimageio.spec as spec
        import bioimageio.spec.model.v0_5  # noqa: F401  (the format version it writes)
    except ImportError:
        raise BioimageioError(
            "bioimage.io export needs bioimageio.spec: pip install 'pixelwise[bioimageio]'"
        ) from None
    return spec


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise BioimageioError(
            f"--bioimageio {out} exists: pass a new folder or .zip path, or remove it first"
        )
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BioimageioError(f"--bioimageio {out}: cannot write into {parent}")


def _input_scaling(
    normalization: dict[str, Any] | None, channels: int, input_dtype: str | None
) -> tuple[str, list[float] | None, list[float] | None]:
    """(input dtype, per-channel gain, per-channel offset) with x·gain + offset = pixelwise's
    normalised input; gain None: no scaling (float input used as it is)."""
    _check_input_dtype(input_dtype)
    if normalization is None:
        dtype = input_dtype or "float32"
        scale = dtype_scale(dtype)
        if scale == 1.0:
            return dtype, None, None
        return dtype, [scale] * channels, [0.0] * channels
    scale = normalization.get("scale")
    if scale is None:
        dtype = input_dtype or "float32"
        scale = dtype_scale(dtype)
    else:
        matches = [d for d in _DTYPES if np.isclose(dtype_scale(d), scale, rtol=1e-6, atol=0)]
        dtype = matches[0] if matches else "float32"
        if not matches and not np.isclose(scale, 1.0):
            raise BioimageioError(
                f"the checkpoint's normalisation scale {scale} is no integer dtype's (uint8: "
                "1/255, uint16: 1/65535); export supports the scales pixelwise records"
            )
        if input_dtype is not None and input_dtype != dtype:
            raise BioimageioError(
                f"--input-dtype {input_dtype} contradicts the checkpoint, whose normalisation "
                f"was measured on {dtype} images (scale {scale}); leave --input-dtype out"
            )
    mean = np.asarray(normalization["mean"], np.float64)
    std = np.asarray(normalization["std"], np.float64)
    if len(mean) != channels or len(std) != channels:
        raise BioimageioError(
            f"the checkpoint's normalisation has {len(mean)} means for {channels} channels"
        )
    return dtype, (scale / std).tolist(), (-mean / std).tolist()


def _preprocessing(gain: list[float] | None, offset: list[float] | None) -> list[dict]:
    steps: list[dict[str, Any]] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    if gain is not None:
        if len(gain) == 1:
            kwargs: dict[str, Any] = {"gain": gain[0], "offset": offset[0]}
        else:
            kwargs = {"axis": "channel", "gain": gain, "offset": offset}
        steps.append({"id": "scale_linear", "kwargs": kwargs})
    steps.append({"id": "ensure_dtype", "kwargs": {"dtype": "float32"}})
    return steps


def _check_input_dtype(input_dtype: str | None) -> None:
    if input_dtype is not None and input_dtype not in ("float32", *_DTYPES):
        raise BioimageioError(
            f"--input-dtype {input_dtype}: choose from float32, {', '.join(_DTYPES)}"
        )


def _percentile_dtype(input_dtype: str | None) -> str:
    """The input dtype of a package normalising by percentiles: any works; float32 unless
    `--input-dtype` says otherwise."""
    _check_input_dtype(input_dtype)
    return input_dtype or "float32"


def _percentile_preprocessing(normalization: dict[str, Any]) -> list[dict]:
    """The spec's `scale_range` per sample and channel for a percentile record. Its
    dark-on-bright inversion ("invert") has no spec operation: consumers of the package get
    bright-on-dark images normalised, dark-on-bright ones not inverted (the documentation
    says so)."""
    kwargs = {
        "axes": ["y", "x"],
        "min_percentile": float(normalization.get("low", 1.0)),
        "max_percentile": float(normalization.get("high", 99.8)),
        "eps": 1e-6,
    }
    return [
        {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
        {"id": "scale_range", "kwargs": kwargs},
        {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
    ]


def _apply_scaling(raw: np.ndarray, gain: list[float] | None, offset: list[float] | None):
    """The spec's preprocessing of a (1, C, H, W) raw array, in float32 as consumers run it."""
    x = raw.astype(np.float32)
    if gain is None:
        return x
    g = np.asarray(gain, np.float32)[None, :, None, None]
    o = np.asarray(offset, np.float32)[None, :, None, None]
    return x * g + o


def _as_dtype(image01: np.ndarray, dtype: str) -> np.ndarray:
    """A [0, 1] float image as `dtype` pixels (uint8: round(255·x))."""
    if np.dtype(dtype).kind == "f":
        return image01.astype(dtype)
    top = np.iinfo(dtype).max
    return np.round(np.clip(image01, 0, 1) * top).astype(dtype)


def _test_input(
    test_image: str | os.PathLike | np.ndarray | None,
    sizes: PackageSizes,
    channels: int,
    dtype: str,
) -> np.ndarray:
    """The (1, C, H, W) raw test input: `test_image` cropped to a valid size, or synthetic cells."""
    if test_image is None:
        from pixelwise.synthetic import touching_cells

        side = sizes.at_least(_TEST_SIDE)
        image, _ = touching_cells((side, side), rng=0)  # (H, W) float32 in [0, 1]
        chw = np.repeat(_as_dtype(image, dtype)[None], channels, axis=0)
        return chw[None]
    source = "test image" if isinstance(test_image, np.ndarray) else str(test_image)
    image = np.asarray(test_image) if isinstance(test_image, np.ndarray) else read_image(test_image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] != channels:
        raise BioimageioError(
            f"{source}: shape {image.shape} is not an (H, W) or (H, W, {channels}) image of the "
            f"model's {channels} channel(s)"
        )
    if str(image.dtype) != dtype:
        raise BioimageioError(
            f"{source}: dtype {image.dtype}, but the model takes {dtype} images (its "
            "normalisation's scale); pass an image like its training images"
        )
    h, w = (sizes.at_most(min(n, _MAX_TEST_SIDE)) for n in image.shape[:2])
    if h is None or w is None:
        raise BioimageioError(
            f"{source}: {image.shape[0]}×{image.shape[1]} pixels is smaller than the model's "
            f"smallest package input {sizes.min}×{sizes.min}; pass a larger image"
        )
    return np.ascontiguousarray(np.moveaxis(image[:h, :w], -1, 0)[None])


def _identifier(name: str, index: int, seen: set[str]) -> str:
    ident = re.sub(r"\W+", "_", str(name)).strip("_").lower() or f"class{index}"
    if ident[0].isdigit():
        ident = f"c{ident}"
    while ident in seen:
        ident = f"{ident}_{index}"
    seen.add(ident)
    return ident


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file(folder: Path, name: str) -> dict[str, str]:
    """The spec's file description of package file `name`: its source and sha256."""
    return {"source": name, "sha256": _sha256(folder / name)}


def _quiet_trace(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace `module` at `example`, without the TracerWarnings of the U-Net's size checks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module, example, check_trace=False)


def _check_close(what: str, got: np.ndarray, expected: np.ndarray) -> None:
    if got.shape != expected.shape or not np.allclose(got, expected, atol=TOLERANCE, rtol=0):
        diff = np.abs(got - expected).max() if got.shape == expected.shape else "shape"
        raise BioimageioError(
            f"the {what} weights disagree with PyTorch on the test input "
            f"(max difference {diff}); please report this model"
        )


def _write_weights(
    folder: Path,
    packaged: PackagedModel,
    formats: Sequence[str],
    x: torch.Tensor,
    sizes: PackageSizes,
    opset: int,
) -> tuple[dict[str, dict], np.ndarray]:
    """Write the weight files; return (the rdf's `weights`, the test output they compute)."""
    name, model_args = model_config(packaged.network)
    torch_version = torch.__version__.split("+")[0]
    with torch.no_grad():
        reference = packaged(x).numpy()  # (1, K, H, W)
    entries: dict[str, dict] = {}
    parent = {"parent": "pytorch_state_dict"} if "pytorch_state_dict" in formats else {}
    if "pytorch_state_dict" in formats:
        (folder / "architecture.py").write_text(architecture_source(name), encoding="utf-8")
        state = {k: v.detach().cpu().contiguous() for k, v in packaged.state_dict().items()}
        torch.save(state, folder / "weights_state_dict.pt")
        entries["pytorch_state_dict"] = {
            "source": "weights_state_dict.pt",
            "architecture": {
                "source": "architecture.py",
                "callable": CALLABLE,
                "kwargs": {"pad": sizes.pad, "extra": sizes.extra, **model_args},
            },
            "pytorch_version": torch_version,
        }
    output = reference
    if "torchscript" in formats:
        traced = _quiet_trace(packaged, x)
        second = torch.zeros(1, x.shape[1], sizes.min, sizes.min + sizes.step)
        with torch.no_grad():
            output = traced(x).numpy()
            _check_close("TorchScript", traced(second).numpy(), packaged(second).numpy())
        _check_close("TorchScript", output, reference)
        with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated; the spec not
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(traced, str(folder / "weights_torchscript.pt"))
        entries["torchscript"] = {
            "source": "weights_torchscript.pt",
            "pytorch_version": torch_version,
            **parent,
        }
    if "onnx" in formats:
        import onnx

        from pixelwise.export import onnx_proto, rename_io

        h, w = x.shape[-2:]
        checks = [(1, h, w), (2, sizes.min, sizes.min + sizes.step)]
        proto, _ = onnx_proto(
            packaged, x, margin=0, checks=checks, opset=opset, exporter="torchscript"
        )
        rename_io(proto, "input", "output")
        onnx.save(proto, str(folder / "weights.onnx"))
        entries["onnx"] = {"source": "weights.onnx", "opset_version": opset, **parent}
    for entry in entries.values():
        entry["sha256"] = _sha256(folder / entry["source"])
        if "architecture" in entry:
            entry["architecture"]["sha256"] = _sha256(folder / "architecture.py")
    return entries, output.astype(np.float32)


def _cover(path: Path, raw: np.ndarray, probs: np.ndarray, meta: dict) -> None:
    """cover.png: the test input (first channel, or RGB) beside the predicted classes, or the
    objects of an instance model (2:1, the zoo's cover aspect)."""
    from PIL import Image

    from pixelwise.instances import objects_from_probabilities, postprocessing_from_metadata
    from pixelwise.report import overlay

    chw = raw[0]
    image = np.moveaxis(chw, 0, -1) if chw.shape[0] == 3 else chw[0]
    pp = postprocessing_from_metadata(meta)
    labels = probs[0].argmax(axis=0).astype(np.int32)
    if pp is not None and pp.num_classes == probs.shape[1]:
        labels = objects_from_probabilities(probs[0], pp)
    shown = overlay(image, np.zeros_like(labels), alpha=0.0)  # (H, W, 3) uint8
    picture = np.concatenate([shown, overlay(image, labels)], axis=1)  # (H, 2W, 3)
    factor = -(-_COVER_HEIGHT // picture.shape[0])  # small test inputs: enlarge, pixels kept
    if factor > 1:
        picture = picture.repeat(factor, axis=0).repeat(factor, axis=1)
    Image.fromarray(picture).save(path)


def _validate(rdf_path: Path):
    """Load the package with bioimageio.spec; BioimageioError unless its status is not failed."""
    spec = _spec()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        descr = spec.load_description(rdf_path, perform_io_checks=True)
    summary = descr.validation_summary
    if summary.status == "failed":
        errors = "; ".join(
            f"{'.'.join(map(str, e.loc))}: {e.msg}" if e.loc else e.msg for e in summary.errors[:5]
        )
        raise BioimageioError(f"the package does not validate with bioimageio.spec: {errors}")
    return descr


def _authors(authors: Sequence[str]) -> list[dict[str, str]]:
    """The spec's authors from "Name [<email>] [@github_user]" strings (default: the login)."""
    if not authors:
        import getpass

        try:
            authors = (getpass.getuser(),)
        except Exception:  # no login name (some containers)
            authors = ("pixelwise user",)
    out = []
    for text in authors:
        match = re.fullmatch(
            r"\s*([^<>@]*?)\s*(?:<([^<>\s]+@[^<>\s]+)>)?\s*(?:@([\w-]+))?\s*", text
        )
        if match is None or not match.group(1):
            raise BioimageioError(
                f"--author {text!r}: write it as 'Name [<email>] [@github_user]', e.g. "
                "'Ada Lovelace <ada@example.org> @ada'"
            )
        name, email, github = match.groups()
        entry = {"name": name}
        if email:
            entry["email"] = email
        if github:
            entry["github_user"] = github
        out.append(entry)
    return out


def _cite(cite: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    out = []
    for text, ref in cite:
        ref = ref.strip()
        if ref.startswith(("http://", "https://")):
            out.append({"text": text, "url": ref})
        elif re.fullmatch(r"10\.\d{4,9}/\S+", ref):
            out.append({"text": text, "doi": ref})
        else:
            raise BioimageioError(
                f"--cite {text!r}: {ref!r} is neither a DOI (10.xxxx/...) nor an http(s) URL"
            )
    return out


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """The folder the package is built in: `out` itself (written atomically), or for a .zip a
    scratch folder zipped into `out` atomically when the block succeeds."""
    if out.suffix.lower() != ".zip":
        with atomic_folder(out) as folder:
            yield folder
        return

    with scratch_folder(out) as folder:
        yield folder

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(folder.iterdir()):
                    zf.write(path, path.name)

        atomic_write(out, write)


def export_bioimageio(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    info: PackageInfo | None = None,
    weights: Sequence[str] | None = None,
    test_image: str | os.PathLike | np.ndarray | None = None,
    input_dtype: str | None = None,
    opset: int = 17,
) -> Path:
    """Write `checkpoint` as a bioimage.io model package at `out` (a folder, or a .zip).

    Args:
        checkpoint: a pixelwise `.safetensors` checkpoint (or a run folder).
        out: the package: a new folder, or a path ending in .zip. Must not exist.
        info: name, description, authors, licence, citations, tags (`PackageInfo`).
        weights: formats from WEIGHT_FORMATS; default all (onnx only if onnx is installed).
        test_image: an (H, W) or (H, W, C) image (or its file) like the training images,
            cropped to a valid size as the test input; default synthetic cells (256 × 256 or
            the smallest valid size above).
        input_dtype: the input dtype when the checkpoint records no normalisation scale
            (default float32: values used as they are); must agree with the scale otherwise.
        opset: the ONNX opset.

    Returns:
        `out`.

    Raises:
        BioimageioError: `out` exists, bioimageio.spec is missing, an unsupported model or
            weight format, a bad test image, or a package that fails validation.
        CheckpointError: the checkpoint cannot be read.
    """
    out = Path(out)
    info = info or PackageInfo()
    _check_out(out)
    _spec()
    formats = _weight_formats(weights)
    _authors(info.authors), _cite(info.cite)  # their errors before any work
    model, meta, _ = load_state(checkpoint)
    name, model_args = model_config(model)
    try:
        sizes = package_sizes(model)
    except UnsupportedModelError as e:
        raise BioimageioError(str(e)) from None
    channels, classes = model_args["in_channels"], model_args["num_classes"]
    normalization = meta.get("normalization")
    if is_percentile(normalization):
        dtype = _percentile_dtype(input_dtype)
        raw = _test_input(test_image, sizes, channels, dtype)
        # pixelwise's own normalisation of the test input gives the expected output.
        x = torch.from_numpy(
            to_chw_float(np.moveaxis(raw[0], 0, -1), normalization=normalization)[None]
        )
        preprocessing = _percentile_preprocessing(normalization)
    else:
        dtype, gain, offset = _input_scaling(normalization, channels, input_dtype)
        raw = _test_input(test_image, sizes, channels, dtype)
        x = torch.from_numpy(_apply_scaling(raw, gain, offset))
        preprocessing = _preprocessing(gain, offset)
    packaged = PackagedModel(model.cpu().eval(), pad=sizes.pad, extra=sizes.extra).eval()

    class_names = list(meta.get("class_names") or [f"class {i}" for i in range(classes)])
    seen: set[str] = set()
    channel_ids = [_identifier(n, i, seen) for i, n in enumerate(class_names)]
    kind = "U-Net" if name == "unet" else f"FCN-{name[3:]}"
    target = meta.get("target")
    default_name = f"pixelwise {kind} {target or f'{classes}-class'}"
    description = info.description or (
        f"{kind} trained with pixelwise: per-pixel probabilities of "
        f"{', '.join(class_names)}{' (instance segmentation)' if target else ''}."
    )
    parameters = sum(p.numel() for p in model.parameters())
    cite = list(info.cite) or [_CITE["unet" if name == "unet" else "fcn"]]

    with _staging(out) as folder:
        entries, test_output = _write_weights(folder, packaged, formats, x, sizes, opset)
        np.save(folder / "test_input.npy", raw)
        np.save(folder / "test_output.npy", test_output)
        sample = raw[0, 0] if channels == 1 else raw[0]  # (H, W) or (C, H, W)
        tifffile.imwrite(folder / "sample_input.tif", sample, photometric="minisblack")
        tifffile.imwrite(folder / "sample_output.tif", test_output[0], photometric="minisblack")
        _cover(folder / "cover.png", raw, test_output, meta)
        facts = PackageFacts(
            name=info.name or default_name,
            description=description,
            model=name,
            model_args=model_args,
            parameters=parameters,
            margin=int(model.margin),
            stride=int(model.stride),
            receptive_radius=int(model.receptive_radius),
            sizes=sizes,
            class_names=class_names,
            input_dtype=dtype,
            preprocessing=preprocessing,
            meta=meta,
            weights=list(entries),
            test_shape=tuple(raw.shape),
            cite=cite,
        )
        (folder / "README.md").write_text(readme(facts), encoding="utf-8")
        rdf = _rdf(facts, info, entries, channel_ids, folder)
        (folder / RDF_NAME).write_text(
            yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        _validate(folder / RDF_NAME)
    return out


def _weight_formats(weights: Sequence[str] | None) -> list[str]:
    has_onnx = importlib.util.find_spec("onnx") is not None
    if weights is None:
        return [f for f in WEIGHT_FORMATS if has_onnx or f != "onnx"]
    unknown = [w for w in weights if w not in WEIGHT_FORMATS]
    if unknown or not weights:
        raise BioimageioError(
            f"--weights {','.join(weights)}: choose from {', '.join(WEIGHT_FORMATS)}"
        )
    if "onnx" in weights and not has_onnx:
        raise BioimageioError("onnx weights need the onnx package: pip install 'pixelwise[export]'")
    return [f for f in WEIGHT_FORMATS if f in weights]


def _rdf(
    facts: PackageFacts,
    info: PackageInfo,
    weights: dict[str, dict],
    channel_ids: list[str],
    folder: Path,
) -> dict[str, Any]:
    """The rdf.yaml content."""
    sizes, meta = facts.sizes, facts.meta
    channels = facts.model_args["in_channels"]
    space_in = [
        {"type": "space", "id": axis, "size": {"min": sizes.min, "step": sizes.step}}
        for axis in ("y", "x")
    ]
    space_out = [
        {
            "type": "space",
            "id": axis,
            "size": {"tensor_id": "input", "axis_id": axis},
            "halo": sizes.halo,
        }
        for axis in ("y", "x")
    ]
    tags = ["segmentation", "2d", "pytorch", facts.model, "pixelwise"]
    if meta.get("target"):
        tags.append("instance-segmentation")
    tags += [t for t in info.tags if t not in tags]
    pixelwise_config = {
        "model": facts.model,
        "model_args": facts.model_args,
        "class_names": facts.class_names,
        "target": meta.get("target"),
        "postprocessing": meta.get("postprocessing"),
        "normalization": meta.get("normalization"),
        "margin": facts.margin,
        "stride": facts.stride,
        "receptive_radius": facts.receptive_radius,
        "mirrored_border": sizes.pad,
        "mirrored_extra": sizes.extra,
        "halo": sizes.halo,
        "ignore_index": meta.get("ignore_index"),
    }
    return {
        "format_version": _spec().model.v0_5.ModelDescr.implemented_format_version,
        "type": "model",
        "name": facts.name,
        "description": facts.description,
        "authors": _authors(info.authors),
        "cite": _cite(facts.cite),
        "license": info.license,
        "documentation": _file(folder, "README.md"),
        "covers": [_file(folder, "cover.png")],
        "tags": tags,
        "version": info.version,
        **({"git_repo": info.git_repo} if info.git_repo else {}),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": [
            {
                "id": "input",
                "description": "raw image, as the training images",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": [f"c{i}" for i in range(channels)]},
                    *space_in,
                ],
                "data": {"type": facts.input_dtype},
                "pad": {"mode": "reflect"},  # how consumers extend the border by the halo
                "preprocessing": facts.preprocessing,
                "test_tensor": _file(folder, "test_input.npy"),
                "sample_tensor": _file(folder, "sample_input.tif"),
            }
        ],
        "outputs": [
            {
                "id": "output",
                "description": "class probabilities (softmax over the channel axis)",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": channel_ids},
                    *space_out,
                ],
                "data": {"type": "float32", "range": [0.0, 1.0]},
                "test_tensor": _file(folder, "test_output.npy"),
                "sample_tensor": _file(folder, "sample_output.tif"),
            }
        ],
        "weights": weights,
        "config": {
            "bioimageio": {
                "reproducibility_tolerance": [
                    {"absolute_tolerance": TOLERANCE, "relative_tolerance": TOLERANCE}
                ]
            },
            "pixelwise": pixelwise_config | info.extra_config,
        },
    }
