"""pixelwise.bioimageio: packages that validate, run in bioimageio.core, and equal `predict`.

Four packages are written once per session (`packages`): the instance checkpoint of conftest
(valid depth-3 U-Net, uint8 input, three classes) and a valid depth-5 U-Net (the paper's margin
92, float input) as .zips, a 3-channel FCN-8s with a normalisation and a same-padding U-Net
without normalisation as folders.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import pixelwise
from conftest import random_fcn
from pixelwise.bioimageio import (
    BioimageioError,
    PackagedModel,
    PackageInfo,
    UnsupportedModelError,
    export_bioimageio,
    package_sizes,
)
from pixelwise.bioimageio.package import RDF_NAME
from pixelwise.cli import main
from pixelwise.data import PERCENTILE_NORMALIZATION, read_stack, to_chw_float
from pixelwise.models import UNet, build
from pixelwise.tiling.plan import default_halo

spec = pytest.importorskip("bioimageio.spec", reason="pip install 'pixelwise[bioimageio]'")

FCN_NORM = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "scale": 1 / 255}


@pytest.fixture(scope="session")
def packages(instance_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name → (checkpoint, package path) for "unet", "deep" (zips), "fcn", "same" and "pct"
    (a percentile-normalised three-class U-Net) (folders)."""
    root = tmp_path_factory.mktemp("bioimageio")
    fcn_ckpt = root / "fcn.safetensors"
    pixelwise.save(random_fcn(), fcn_ckpt, normalization=FCN_NORM, class_names=["bg", "a", "b c"])
    torch.manual_seed(1)
    same_ckpt = root / "same.safetensors"
    pixelwise.save(UNet(1, 2, base_channels=4, depth=3, padding="same"), same_ckpt)
    torch.manual_seed(2)
    deep_ckpt = root / "deep.safetensors"
    pixelwise.save(UNet(1, 2, base_channels=2, depth=5), deep_ckpt)
    torch.manual_seed(4)
    pct_ckpt = root / "pct.safetensors"
    pixelwise.save(
        UNet(1, 3, base_channels=4, depth=3, padding="same"),
        pct_ckpt,
        normalization=PERCENTILE_NORMALIZATION,
        target="three-class",
    )
    out = {
        "unet": (instance_checkpoint, root / "unet.zip"),
        "deep": (deep_ckpt, root / "deep.zip"),
        "fcn": (fcn_ckpt, root / "fcn"),
        "same": (same_ckpt, root / "same"),
        "pct": (pct_ckpt, root / "pct"),
    }
    info = PackageInfo(authors=("Ada Lovelace <ada@example.org>",))
    for name, (checkpoint, path) in out.items():  # ONNX (slow to export) in two of them
        weights = None if name in ("unet", "fcn") else ["pytorch_state_dict", "torchscript"]
        weights = ["pytorch_state_dict"] if name == "pct" else weights
        export_bioimageio(checkpoint, path, info=info, weights=weights)
    return out


def _rdf_path(package: Path, tmp_path: Path) -> Path:
    """The rdf.yaml of a folder package, or of a zip package unpacked into `tmp_path`."""
    if package.suffix == ".zip":
        with zipfile.ZipFile(package) as zf:
            zf.extractall(tmp_path / "unzipped")
        return tmp_path / "unzipped" / RDF_NAME
    return package / RDF_NAME


# -- sizes and halo ------------------------------------------------------------------------


def test_paper_unet_sizes_and_halo() -> None:
    """The sizes module's worked example: margin 92 mirrored (and 4 more at the bottom and
    right), halo 96 (92 on the stride-16 grid), inputs 208 + 16k."""
    with torch.device("meta"):
        model = UNet()
    sizes = package_sizes(model)
    assert (sizes.pad, sizes.extra, sizes.halo, sizes.min, sizes.step) == (92, 4, 96, 208, 16)
    assert model.geometry.is_valid(208 + 184 + 4) and not model.geometry.is_valid(208 + 184)


GEOMETRY_CASES = {
    "valid depth 2": lambda: UNet(1, 2, base_channels=2, depth=2),
    "valid depth 3": lambda: UNet(1, 2, base_channels=2, depth=3),
    "valid depth 4": lambda: UNet(1, 2, base_channels=2, depth=4),
    "same depth 3": lambda: UNet(1, 2, base_channels=2, depth=3, padding="same"),
    "fcn8s": random_fcn,
}


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_sizes_follow_the_geometry(case: str) -> None:
    """Every size min + k·step runs and keeps its size; min is the smallest valid size with
    room for the halo; the halo is the valid margin (or the tiler's same-padding halo)."""
    model = GEOMETRY_CASES[case]().eval()
    sizes = package_sizes(model)
    stride = model.stride
    if model.margin > 0:  # full context, on the pooling grid
        assert sizes.pad == model.margin and model.margin <= sizes.halo < model.margin + stride
    else:
        assert sizes.pad == sizes.extra == 0 and sizes.halo == default_halo(model)
    assert sizes.step == stride and sizes.min % stride == 0 and sizes.halo % stride == 0
    assert sizes.min - 2 * sizes.halo >= 1 > sizes.min - stride - 2 * sizes.halo  # the smallest
    assert 0 <= sizes.extra < stride
    packaged = PackagedModel(model, pad=sizes.pad, extra=sizes.extra).eval()
    for k in (0, 1, 3):
        n = sizes.min + k * sizes.step
        with torch.no_grad():
            y = packaged(torch.randn(1, model.hparams["in_channels"], n, n + sizes.step))
        assert y.shape == (1, 2 if case != "fcn8s" else 3, n, n + sizes.step)
        torch.testing.assert_close(y.sum(dim=1), torch.ones(1, n, n + sizes.step))


def test_model_whose_sizes_are_no_progression_is_refused() -> None:
    class PowersOfTwo:  # valid only at 2^k: not min + k·stride
        margin, stride, receptive_radius = 3, 4, 3

        def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
            return [n for n in range(max(lo, 1), hi + 1) if n & (n - 1) == 0]

    with pytest.raises(UnsupportedModelError, match="r \\+ k·4"):
        package_sizes(PowersOfTwo())


# -- the package ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unet", "deep", "fcn", "same"])
def test_package_validates_with_the_spec(name: str, packages: dict, tmp_path: Path) -> None:
    _, package = packages[name]
    descr = spec.load_description(package, perform_io_checks=True)
    summary = descr.validation_summary
    assert summary.status in ("passed", "valid-format"), summary.format()
    assert not summary.errors
    # the one warning left: no author with a GitHub name (checking one online needs a network)
    assert [w.msg for w in summary.warnings] == [
        "Missing `maintainers` or any author in `authors` with a specified `github_user` name."
    ]
    rdf = yaml.safe_load(_rdf_path(package, tmp_path).read_text())
    fmt = spec.validate_format(rdf, context=spec.ValidationContext(perform_io_checks=False))
    assert fmt.status in ("passed", "valid-format")
    assert descr.format_version.startswith("0.5")


def test_rdf_states_sizes_halo_preprocessing_and_classes(packages: dict, tmp_path: Path) -> None:
    checkpoint, package = packages["unet"]
    rdf = yaml.safe_load(_rdf_path(package, tmp_path).read_text())
    model = pixelwise.load(checkpoint)
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert [a["type"] for a in inp["axes"]] == ["batch", "channel", "space", "space"]
    assert inp["axes"][2]["size"] == {"min": 44, "step": 4}  # depth-3 valid: margin 20
    assert out["axes"][2] == {
        "type": "space",
        "id": "y",
        "size": {"tensor_id": "input", "axis_id": "y"},
        "halo": model.margin,
    }
    assert out["axes"][1]["channel_names"] == ["background", "interior", "boundary"]
    assert inp["data"] == {"type": "uint8"}
    (scale,) = [p for p in inp["preprocessing"] if p["id"] == "scale_linear"]
    # (x/255 − 0.45) / 0.1 = x · (1/25.5) − 4.5
    assert scale["kwargs"]["gain"] == pytest.approx(1 / 25.5)
    assert scale["kwargs"]["offset"] == pytest.approx(-4.5)
    config = rdf["config"]["pixelwise"]
    assert config["target"] == "three-class"
    assert config["postprocessing"]["target"] == "three-class"
    assert config["class_names"] == ["background", "interior", "boundary"]
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert rdf["authors"] == [{"name": "Ada Lovelace", "email": "ada@example.org"}]


def test_fcn_preprocessing_is_the_checkpoint_normalisation(packages: dict, tmp_path: Path) -> None:
    """The spec's per-channel scale_linear of the raw test input equals pixelwise's
    normalisation of the same pixels."""
    _, package = packages["fcn"]
    rdf = yaml.safe_load((package / RDF_NAME).read_text())
    (scale,) = [p for p in rdf["inputs"][0]["preprocessing"] if p["id"] == "scale_linear"]
    assert scale["kwargs"]["axis"] == "channel"
    raw = np.load(package / "test_input.npy")  # (1, 3, H, W) uint8
    gain = np.asarray(scale["kwargs"]["gain"])[:, None, None]
    offset = np.asarray(scale["kwargs"]["offset"])[:, None, None]
    expected = to_chw_float(np.moveaxis(raw[0], 0, -1), normalization=FCN_NORM)
    np.testing.assert_allclose(raw[0] * gain + offset, expected, atol=1e-5)
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["bg", "a", "b_c"]
    assert rdf["outputs"][0]["axes"][2]["halo"] == 128


def test_percentile_record_is_one_scale_range_step(packages: dict, tmp_path: Path) -> None:
    """A per-image percentile record becomes the spec's scale_range per sample and channel; its
    test output is pixelwise's prediction (checked with `predict` below and by core)."""
    _, package = packages["pct"]
    rdf = yaml.safe_load((package / RDF_NAME).read_text())
    inp = rdf["inputs"][0]
    assert inp["data"] == {"type": "float32"}
    (step,) = [p for p in inp["preprocessing"] if p["id"] == "scale_range"]
    assert step["kwargs"] == {"axes": ["y", "x"], "min_percentile": 1.0,
                              "max_percentile": 99.8, "eps": 1e-6}  # fmt: skip
    assert not [p for p in inp["preprocessing"] if p["id"] == "scale_linear"]
    assert rdf["config"]["pixelwise"]["normalization"] == PERCENTILE_NORMALIZATION
    assert "invert such images" in (package / "README.md").read_text()


@pytest.mark.parametrize("name", ["unet", "fcn", "pct"])
def test_test_output_equals_pixelwise_predict(name: str, packages: dict, tmp_path: Path) -> None:
    """The package's test output = `pixelwise predict --probs` of its test input."""
    checkpoint, package = packages[name]
    folder = _rdf_path(package, tmp_path).parent
    raw = np.load(folder / "test_input.npy")  # (1, C, H, W)
    expected = np.load(folder / "test_output.npy")  # (1, K, H, W)
    image = raw[0, 0] if raw.shape[1] == 1 else np.moveaxis(raw[0], 0, -1)
    (tmp_path / "in").mkdir()
    file = "test.tif" if image.dtype.kind == "f" else "test.png"  # float32 input: a TIFF
    pixelwise.data.write_image(tmp_path / "in" / file, image)
    assert main(["predict", str(checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                 "--probs", "--precision", "fp32", "--no-progress"]) == 0  # fmt: skip
    probs = read_stack(tmp_path / "o" / "probs" / "test.tif")  # (K, H, W)
    assert probs.shape == expected.shape[1:]
    assert np.abs(expected - 1 / expected.shape[1]).max() > 0.05  # not a flat output
    np.testing.assert_allclose(expected[0], probs, atol=1e-5)


def test_architecture_file_runs_without_pixelwise(packages: dict, tmp_path: Path) -> None:
    """architecture.py + the state dict, in a Python where `import pixelwise` fails, give the
    test output."""
    _, package = packages["fcn"]
    rdf = yaml.safe_load((package / RDF_NAME).read_text())
    entry = rdf["weights"]["pytorch_state_dict"]
    script = f"""
import importlib.util, sys
import numpy as np, torch
sys.modules["pixelwise"] = None  # any pixelwise import raises
spec = importlib.util.spec_from_file_location("arch", {str(package / "architecture.py")!r})
arch = importlib.util.module_from_spec(spec); spec.loader.exec_module(arch)
model = getattr(arch, {entry["architecture"]["callable"]!r})(**{entry["architecture"]["kwargs"]!r})
model.load_state_dict(torch.load({str(package / entry["source"])!r}, weights_only=True))
raw = np.load({str(package / "test_input.npy")!r}).astype(np.float32)
gain = np.asarray({rdf["inputs"][0]["preprocessing"][1]["kwargs"]["gain"]!r}, np.float32)
offset = np.asarray({rdf["inputs"][0]["preprocessing"][1]["kwargs"]["offset"]!r}, np.float32)
x = torch.from_numpy(raw * gain[:, None, None] + offset[:, None, None])
with torch.no_grad():
    y = model.eval()(x).numpy()
print(float(np.abs(y - np.load({str(package / "test_output.npy")!r})).max()))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 1e-5


def test_zip_and_folder_hold_the_same_files(packages: dict, tmp_path: Path) -> None:
    """The command line's folder form (with the descriptive options) and the zip form."""
    checkpoint, zipped = packages["unet"]
    folder = tmp_path / "pkg"
    argv = ["export", str(checkpoint), "--bioimageio", str(folder), "--weights", "torchscript",
            "--name", "Nuclei U-Net", "--author", "Ada Lovelace <ada@example.org>", "--author",
            "Bob", "--cite", "Our paper, 2026|https://example.org/paper", "--tag", "nuclei",
            "--license", "MIT"]  # fmt: skip
    assert main(argv) == 0
    rdf = yaml.safe_load((folder / RDF_NAME).read_text())
    assert rdf["name"] == "Nuclei U-Net" and rdf["license"] == "MIT"
    assert rdf["authors"] == [{"name": "Ada Lovelace", "email": "ada@example.org"}, {"name": "Bob"}]
    assert rdf["cite"] == [{"text": "Our paper, 2026", "url": "https://example.org/paper"}]
    assert "nuclei" in rdf["tags"] and list(rdf["weights"]) == ["torchscript"]
    with zipfile.ZipFile(zipped) as zf:
        names = set(zf.namelist())
    common = {RDF_NAME, "README.md", "cover.png", "test_input.npy", "test_output.npy",
              "sample_input.tif", "sample_output.tif"}  # fmt: skip
    assert common | {"weights_torchscript.pt"} == {p.name for p in folder.iterdir()}
    assert common | {"weights_torchscript.pt", "weights_state_dict.pt", "architecture.py",
                     "weights.onnx"} == names  # fmt: skip
    np.testing.assert_array_equal(
        np.load(folder / "test_output.npy"),
        np.load(_rdf_path(zipped, tmp_path).parent / "test_output.npy"),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg", "unzipped"]  # no staging left
    readme = (folder / "README.md").read_text()
    for words in (
        "three-class",
        "halo of 20 pixels",
        "Training data",
        "objects_from_probabilities",
    ):
        assert words in readme


# -- bioimageio.core -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unet", "deep", "fcn", "same", "pct"])
def test_core_model_test_passes(name: str, packages: dict) -> None:
    core = pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed")
    _, package = packages[name]
    summary = core.test_model(package)
    assert summary.status == "passed", summary.format()


@pytest.mark.parametrize("name", ["unet", "deep"])
def test_core_prediction_whole_and_tiled_equals_pixelwise_predict(
    name: str, packages: dict
) -> None:
    """bioimageio.core's prediction, of the whole image and in tiles overlapping by the halo,
    is `pixelwise predict`'s whole-image probabilities: "unet" (depth 3: margin 20 = halo,
    tiles of 44 + 4·10), "deep" (depth 5: margin 92, halo 96, 4 extra mirrored pixels, tiles
    of 208 + 16·2)."""
    core = pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed")
    from bioimageio.core.digest_spec import create_sample_for_model

    checkpoint, package = packages[name]
    shape, ns = ((120, 172), 10) if name == "unet" else ((400, 464), 2)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)  # "deep": float input
    if name == "unet":  # normalised uint8 input
        image = (image * 255).astype(np.uint8)
    expected = pixelwise.Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    expected = expected.predict(image).probabilities  # (K, H, W)
    model = core.load_description(package)
    for blocksize in (None, ns):
        sample = create_sample_for_model(model, inputs={"input": image[None, None]})
        got = core.predict(model=model, inputs=sample, blocksize_parameter=blocksize)
        np.testing.assert_allclose(
            got.members["output"].data.values[0], expected, atol=1e-5, err_msg=str(blocksize)
        )


# -- errors --------------------------------------------------------------------------------


def _export(*args: str) -> int:
    return main(["export", *args])


def test_existing_out_is_refused(packages: dict, capsys: pytest.CaptureFixture) -> None:
    checkpoint, package = packages["fcn"]
    before = sorted(p.name for p in package.iterdir())
    assert _export(str(checkpoint), "--bioimageio", str(package)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --bioimageio ") and "exists" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in package.iterdir()) == before


def test_unknown_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.safetensors"
    assert _export(str(missing), "--bioimageio", str(tmp_path / "p.zip")) == 2
    err = capsys.readouterr().err
    assert "no such checkpoint file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.zip").exists()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--weights", "tensorflow"], "choose from pytorch_state_dict, torchscript, onnx"),
        (["--cite", "no separator"], "write it as 'TEXT|DOI_OR_URL'"),
        (["--cite", "paper|not-a-doi"], "neither a DOI"),
        (["--input-dtype", "uint16"], "contradicts the checkpoint"),
        (["--input-dtype", "float"], "choose from float32, uint8, uint16"),
        (["--author", "<a@b.org>"], "write it as 'Name [<email>] [@github_user]'"),
    ],
)
def test_bad_options_get_one_line(
    flags: list[str], words: str, instance_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "p.zip"
    assert _export(str(instance_checkpoint), "--bioimageio", str(out), *flags) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_test_images(instance_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(BioimageioError, match="smaller than the model's smallest package input 44"):
        export_bioimageio(
            instance_checkpoint, tmp_path / "a", test_image=np.zeros((30, 60), np.uint8)
        )
    with pytest.raises(BioimageioError, match="dtype uint16, but the model takes uint8"):
        export_bioimageio(
            instance_checkpoint, tmp_path / "b", test_image=np.zeros((64, 64), np.uint16)
        )
    assert list(tmp_path.iterdir()) == []


def test_a_given_test_image_is_cropped_to_a_valid_size(
    instance_checkpoint: Path, tmp_path: Path
) -> None:
    image = (np.random.default_rng(1).random((71, 50)) * 255).astype(np.uint8)
    export_bioimageio(instance_checkpoint, tmp_path / "p", test_image=image, weights=["onnx"])
    raw = np.load(tmp_path / "p" / "test_input.npy")
    np.testing.assert_array_equal(raw[0, 0], image[:68, :48])  # 44 + 4k ≤ 71 and ≤ 50


def test_export_needs_a_target(instance_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    assert _export(str(instance_checkpoint)) == 2
    assert "export needs --onnx FILE or --bioimageio OUT" in capsys.readouterr().err


def test_missing_spec_library_is_one_message(monkeypatch, instance_checkpoint, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    with pytest.raises(BioimageioError, match=r"pip install 'pixelwise\[bioimageio\]'"):
        export_bioimageio(instance_checkpoint, tmp_path / "p")


def test_every_registered_model_has_an_architecture_file() -> None:
    from pixelwise.bioimageio.architecture import architecture_source
    from pixelwise.models import REGISTRY

    for name in REGISTRY:
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, None))
        sys.modules[name] = module  # dataclasses look their module up
        try:
            exec(compile(architecture_source(name), f"{name}.py", "exec"), module.__dict__)
        finally:
            del sys.modules[name]
        args = {"depth": 2, "base_channels": 2} if name == "unet" else {"width": 1 / 32}
        model = module.packaged_model(pad=0, num_classes=2, **args)
        assert sorted(model.state_dict()) == sorted(
            PackagedModel(build(name, num_classes=2, **args)).state_dict()
        )


@pytest.mark.parametrize("out", ["p.zip", "p"])
def test_a_failed_export_leaves_nothing(out: str, instance_checkpoint, tmp_path, monkeypatch):
    """A package that fails at the last step (here its validation) is neither at OUT nor
    beside it: it is built in a hidden folder that is removed."""
    from pixelwise.bioimageio import package

    def invalid(path: Path) -> None:
        assert (path.parent / "weights_torchscript.pt").is_file()  # built, then refused
        raise BioimageioError("the package does not validate with bioimageio.spec: test")

    monkeypatch.setattr(package, "_validate", invalid)
    with pytest.raises(BioimageioError, match="does not validate"):
        export_bioimageio(instance_checkpoint, tmp_path / out, weights=["torchscript"])
    assert list(tmp_path.iterdir()) == []
