"""pixelwise.Segmenter: raw image → normalised input → tiling.predict → objects, as recorded."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import pixelwise
from conftest import INSTANCE_NORM, instance_unet
from pixelwise import tiling
from pixelwise.data import DataError, to_chw_float
from pixelwise.instances import PostProcessing, object_scores, objects_from_probabilities
from pixelwise.models import UNet
from pixelwise.tiling import PredictOptions

NORM = INSTANCE_NORM
NAMES = ["background", "interior", "boundary"]


def _model() -> UNet:
    """The tiny three-class U-Net of the `instance_checkpoint` fixture: ~45 objects of `_raw`."""
    return instance_unet()


def _raw(h: int = 40, w: int = 52, seed: int = 0) -> np.ndarray:
    """uint8 image with blobs and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    img = 110 + 40 * np.sin(x / 4.0) * np.cos(y / 5.0) + rng.normal(0, 12, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def semantic_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seg") / "semantic.safetensors"
    pixelwise.save(_model(), path, normalization=NORM, class_names=["bg", "a", "b"])
    return path


def test_exported_from_the_package() -> None:
    assert pixelwise.Segmenter.__module__ == "pixelwise.segmenter"
    assert pixelwise.Segmentation.__module__ == "pixelwise.segmenter"


def test_predict_applies_the_recorded_normalisation(instance_checkpoint: Path) -> None:
    segmenter = pixelwise.Segmenter.from_checkpoint(instance_checkpoint, device="cpu")
    raw = _raw()
    result = segmenter.predict(raw)
    x = to_chw_float(raw, normalization=NORM)  # (1, H, W)
    expected = tiling.predict(_model(), x, output="probs")
    assert result.probabilities.shape == (3, 40, 52) and result.probabilities.dtype == np.float32
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    unnormalised = tiling.predict(_model(), to_chw_float(raw), output="probs")
    assert np.abs(unnormalised - expected).max() > 0.05  # the normalisation mattered
    assert result.labels.dtype == np.uint8
    np.testing.assert_array_equal(result.labels, expected.argmax(0))
    assert segmenter.meta["class_names"] == NAMES and segmenter.normalization == NORM


def test_instances_are_the_recorded_post_processing_of_the_probabilities(
    instance_checkpoint: Path,
) -> None:
    segmenter = pixelwise.Segmenter.from_checkpoint(instance_checkpoint, device="cpu")
    assert segmenter.postprocessing == PostProcessing() and segmenter.is_instance_model
    result = segmenter.predict(_raw())
    expected = objects_from_probabilities(result.probabilities, PostProcessing())
    assert result.instances.dtype == np.int32 and result.instances.max() >= 10  # not vacuous
    np.testing.assert_array_equal(result.instances, expected)
    np.testing.assert_array_equal(result.scores, object_scores(result.probabilities, expected))
    assert result.scores.shape == (expected.max(),)
    assert ((result.scores >= 0) & (result.scores <= 1)).all()


def test_postprocessing_argument_replaces_the_record(instance_checkpoint: Path) -> None:
    recorded = pixelwise.Segmenter.from_checkpoint(instance_checkpoint, device="cpu")
    larger = recorded.postprocessing.replace(min_size=40)
    custom = pixelwise.Segmenter.from_checkpoint(
        instance_checkpoint, postprocessing=larger, device="cpu"
    )
    assert custom.postprocessing == larger
    a, b = recorded.predict(_raw()), custom.predict(_raw())
    assert b.instances.max() < a.instances.max()
    np.testing.assert_array_equal(b.instances, objects_from_probabilities(b.probabilities, larger))


def test_semantic_model_has_no_instances(semantic_checkpoint: Path) -> None:
    segmenter = pixelwise.Segmenter.from_checkpoint(semantic_checkpoint, device="cpu")
    assert segmenter.postprocessing is None and not segmenter.is_instance_model
    result = segmenter.predict(_raw())
    assert result.instances is None and result.scores is None
    assert result.probabilities.shape == (3, 40, 52)


def test_in_memory_model_equals_from_checkpoint(instance_checkpoint: Path) -> None:
    meta = pixelwise.read_metadata(instance_checkpoint)
    options = PredictOptions(tile_size=44, device="cpu")
    in_memory = pixelwise.Segmenter(_model(), meta=meta, options=options)
    loaded = pixelwise.Segmenter.from_checkpoint(instance_checkpoint, options=options)
    assert in_memory.options == loaded.options == options
    a, b = in_memory.predict(_raw()), loaded.predict(_raw())
    np.testing.assert_array_equal(a.instances, b.instances)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    bare = pixelwise.Segmenter(_model(), device="cpu")  # no metadata: dtype scaling only
    assert bare.meta == {} and bare.predict(_raw()).instances is None
    np.testing.assert_allclose(
        bare.predict(_raw()).probabilities,
        tiling.predict(_model(), to_chw_float(_raw()), output="probs"),
        atol=1e-6,
    )


def test_options_and_inputs_are_checked(instance_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match=r"tile_size 50 is not a valid input size"):
        pixelwise.Segmenter.from_checkpoint(instance_checkpoint, tile_size=50)
    with pytest.raises(TypeError, match="unknown prediction option"):
        pixelwise.Segmenter(_model(), tile=44)
    with pytest.raises(ValueError, match="target 'two-class' needs a model with 2 classes"):
        pixelwise.Segmenter(_model(), postprocessing=PostProcessing(target="two-class"))
    with pytest.raises(TypeError, match="postprocessing must be a PostProcessing"):
        pixelwise.Segmenter(_model(), postprocessing={"target": "three-class"})
    segmenter = pixelwise.Segmenter.from_checkpoint(instance_checkpoint, device="cpu")
    with pytest.raises(ValueError, match=r"has 3 channel\(s\).*np.moveaxis\(image, 0, -1\)"):
        segmenter.predict(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(DataError, match="scan.png"):  # float pixels, a uint8 record: named
        segmenter.predict(np.zeros((20, 20), np.float32), source="scan.png")


def test_tiling_predict_warns_once_for_integer_images_only() -> None:
    model = _model()
    with pytest.warns(UserWarning) as caught:
        tiling.predict(model, _raw(), tile_size=44)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "dtype uint8" in message and "normalised float input" in message
    assert "pixelwise.Segmenter.from_checkpoint(path).predict(image)" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 input, and the Segmenter on raw pixels: none
        tiling.predict(model, _raw().astype(np.float32), tile_size=44)
        pixelwise.Segmenter(model, meta={"normalization": NORM}).predict(_raw())
