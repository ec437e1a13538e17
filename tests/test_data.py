"""Tests for pixelwise.data layouts, the dataset survey, the torch dataset and `data check`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pixelwise.data import (
    VOC_PALETTE,
    DataError,
    MaskEncoding,
    Sample,
    SegmentationDataset,
    SurveyReport,
    check_dataset,
    load_dataset,
    open_dataset,
    survey_dataset,
    write_image,
)
from pixelwise.data import survey as survey_module


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _folder(root: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """images/<stem>.png + masks/<stem>.png for each pair."""
    for stem, (image, mask) in pairs.items():
        _png(root / "images" / f"{stem}.png", image)
        _png(root / "masks" / f"{stem}.png", mask)
    return root


def _image(h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _labels(h: int = 16, w: int = 16, n: int = 3, seed: int = 1) -> np.ndarray:
    return _rng(seed).integers(0, n, (h, w), dtype=np.uint8)


def _messages(report: SurveyReport) -> list[str]:
    return [f"{Path(p.path).name}: {p.message}" for p in report.problems]


def _jpeg_like_mask() -> np.ndarray:
    """A 0/255 disc that went through JPEG: ringing adds dozens of grey values."""
    yy, xx = np.mgrid[:64, :64]
    disc = (((yy - 30) ** 2 + (xx - 34) ** 2) < 400).astype(np.uint8) * 255
    return disc


# ------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------


def test_folder_pairs_match_by_stem_in_natural_order(tmp_path: Path) -> None:
    pairs = {str(i): (_image(seed=i), _labels(seed=i)) for i in (10, 2, 1)}
    index = open_dataset(_folder(tmp_path, pairs))
    assert index.layout == "folder"
    assert [s.name for s in index.samples] == ["1", "2", "10"]
    assert index.samples[0].mask_path == tmp_path / "masks" / "1.png"
    assert index.problems == []


def test_pairing_by_trailing_number_when_no_stem_matches(tmp_path: Path) -> None:
    for n in (1, 21):
        _png(tmp_path / "img" / f"t{n:02d}.png", _image())
        _png(tmp_path / "gt" / f"man_seg{n:02d}.png", _labels())
    index = open_dataset(tmp_path)
    assert [(s.image_path.name, s.mask_path.name) for s in index.samples if s.mask_path] == [
        ("t01.png", "man_seg01.png"),
        ("t21.png", "man_seg21.png"),
    ]
    assert "paired files by trailing number (e.g. t01.png <-> man_seg01.png)" in index.notices[0]


def test_split_subfolders_camvid_style(tmp_path: Path) -> None:
    for split, stems in (("train", "ab"), ("val", "c")):
        for stem in stems:
            _png(tmp_path / split / f"{stem}.png", _image())
            _png(tmp_path / f"{split}annot" / f"{stem}.png", _labels())
    assert [s.name for s in open_dataset(tmp_path, split="val").samples] == ["val/c"]
    every = open_dataset(tmp_path)
    assert [s.name for s in every.samples] == ["train/a", "train/b", "val/c"]
    assert every.notices == ["using all splits: train, val (pass split= / --split to choose one)"]
    with pytest.raises(DataError, match="split 'test' not found \\(available: 'train', 'val'\\)"):
        open_dataset(tmp_path, split="test")


def test_explicit_dirs_and_unknown_layout(tmp_path: Path) -> None:
    _png(tmp_path / "pics" / "a.png", _image())
    _png(tmp_path / "lbl" / "a.png", _labels())
    with pytest.raises(DataError, match="no dataset layout found; expected images/ \\+ masks/"):
        open_dataset(tmp_path)
    index = open_dataset(tmp_path, images_dir="pics", masks_dir=tmp_path / "lbl")
    assert [s.name for s in index.samples] == ["a"]
    with pytest.raises(DataError, match="dataset folder does not exist"):
        open_dataset(tmp_path / "nope")


def test_half_a_folder_pair_names_the_missing_folder(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", _image())
    with pytest.raises(DataError) as info:
        open_dataset(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: no dataset layout found: images/ is there but masks/ is missing; create "
        f"{tmp_path / 'masks'}/ holding one mask per image, with the same file name stem "
        "(images/a.png <-> masks/a.png)"
    )
    _png(tmp_path / "train" / "labels" / "a.png", _labels())
    (tmp_path / "images" / "a.png").unlink()
    (tmp_path / "images").rmdir()
    with pytest.raises(DataError, match="labels/ is there but images/ is missing; create "):
        open_dataset(tmp_path)
    text, problems = check_dataset(tmp_path)
    assert [p.path for p in problems] == [str(tmp_path / "train")]
    assert "images_dir" not in text


def test_empty_folder_fix_names_arguments_only_when_given(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", _image())
    (tmp_path / "masks").mkdir()
    found = open_dataset(tmp_path).problems[0]
    assert found.fix == "put the masks/ files there, named like their pairs' files"
    given = open_dataset(tmp_path, images_dir="images", masks_dir="masks").problems[0]
    assert (
        given.fix == "put the files there, or point images_dir= / masks_dir= at the right folders"
    )


def _voc(root: Path) -> dict[str, np.ndarray]:
    masks = {}
    for i, stem in enumerate(("2007_000001", "2007_000002", "2007_000003")):
        Image.fromarray(_rng(i).integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(
            _mkdir(root / "JPEGImages") / f"{stem}.jpg"
        )
        mask = np.zeros((6, 8), np.uint8)
        mask[1:4, 2:6] = i + 1
        mask[0, :] = 255  # object boundary, ignored
        write_image(root / "SegmentationClass" / f"{stem}.png", mask, palette=VOC_PALETTE)
        masks[stem] = mask
    sets = _mkdir(root / "ImageSets" / "Segmentation")
    (sets / "train.txt").write_text("2007_000001\n2007_000003\n")
    (sets / "val.txt").write_text("2007_000002\n2007_000009\n")
    return masks


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_voc_layout_with_split_and_255_ignore(tmp_path: Path) -> None:
    masks = _voc(tmp_path / "VOCdevkit" / "VOC2012")
    index = open_dataset(tmp_path, split="train")
    assert index.layout == "voc"
    assert [s.name for s in index.samples] == ["2007_000001", "2007_000003"]
    assert (index.encoding.num_classes, index.encoding.ignore_index) == (21, 255)
    report = survey_dataset(index)
    assert report.ok, report.format()
    assert report.ignore_pixels == 2 * 8
    assert report.class_pixels[[0, 1, 3]].tolist() == [2 * (48 - 8 - 12), 12, 12]
    dataset = SegmentationDataset(index.samples, encoding=report.encoding)
    np.testing.assert_array_equal(dataset[1]["mask"].numpy(), masks["2007_000003"])
    assert dataset[1]["image"].shape == (3, 6, 8)
    val = survey_dataset(open_dataset(tmp_path, split="val"))
    assert _messages(val) == [
        "2007_000009.jpg: listed in val.txt but the file is missing",
        "2007_000009.png: listed in val.txt but the file is missing",
    ]
    with pytest.raises(DataError, match="split file not found \\(available splits: train, val\\)"):
        open_dataset(tmp_path, split="test")


def test_tiff_stack_pairs_each_page_a_sample(tmp_path: Path) -> None:
    images = _rng().integers(0, 256, (3, 8, 8), dtype=np.uint8)
    labels = np.where(_rng(1).random((3, 8, 8)) > 0.5, 255, 0).astype(np.uint8)
    tifffile.imwrite(tmp_path / "train-volume.tif", images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(tmp_path / "test-volume.tif", images, photometric="minisblack")
    index = open_dataset(tmp_path)
    assert index.layout == "tiff-stack"
    assert [(s.name, s.page) for s in index.samples] == [
        ("train-volume/0", 0),
        ("train-volume/1", 1),
        ("train-volume/2", 2),
    ]
    dataset = load_dataset(tmp_path, normalization={"mean": [0.0], "std": [1.0]})
    item = dataset[2]
    np.testing.assert_allclose(item["image"].numpy()[0], images[2] / 255, rtol=1e-6)
    np.testing.assert_array_equal(item["mask"].numpy(), labels[2] // 255)
    assert dataset.report is not None
    assert (
        dataset.report.notices[0]
        == "3 of 3 mask(s) stored as 0/255 were read as 0/1 (255 -> class 1)"
    )
    tifffile.imwrite(tmp_path / "train-labels.tif", labels[:2], photometric="minisblack")
    report = survey_dataset(open_dataset(tmp_path))
    assert _messages(report) == [
        "train-labels.tif: label stack has 2 pages but image stack train-volume.tif has 3"
    ]


# ------------------------------------------------------------------------------------------
# Dataset survey
# ------------------------------------------------------------------------------------------


def test_survey_collects_every_problem(tmp_path: Path) -> None:
    root = _folder(
        tmp_path,
        {
            "good": (_image(), _labels()),
            "small": (_image(), _labels(8, 12)),
            "range": (_image(), np.full((16, 16), 5, np.uint8)),
            "lonely": (_image(), _labels()),
        },
    )
    (root / "masks" / "lonely.png").rename(root / "masks" / "orphan.png")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG garbage")
    _png(root / "masks" / "broken.png", _labels())
    tifffile.imwrite(root / "images" / "good.tif", np.zeros((16, 16), np.uint8))
    rgb = VOC_PALETTE[_labels()]
    rgb[0, 0] = (1, 2, 3)
    _png(root / "images" / "colour.png", _image())
    _png(root / "masks" / "colour.png", rgb)
    nan_image = np.zeros((16, 16), np.float32)
    nan_image[3, 4] = np.nan
    tifffile.imwrite(root / "images" / "nan.tif", nan_image)
    _png(root / "masks" / "nan.png", _labels())
    Image.fromarray(_jpeg_like_mask()).save(root / "masks" / "jpeg.jpg", quality=75)
    _png(root / "images" / "jpeg.png", _image(64, 64))

    report = survey_dataset(open_dataset(root), num_classes=3)
    assert not report.ok
    messages = _messages(report)
    expected_fragments = [
        "good.png: duplicate stem 'good': good.png, good.tif",
        "lonely.png: no mask with stem 'lonely' in",
        "orphan.png: no image with stem 'orphan' in",
        "broken.png: cannot read image (",
        "colour.png: RGB mask has 1 colour(s) not in the VOC palette: (1, 2, 3) on 1 px",
        "jpeg.jpg: mask looks lossy-compressed (JPEG?):",
        "nan.tif: image has 1 NaN or infinite values",
        "range.png: mask has values outside classes 0..2: [5] (num_classes=3, ignore_index=None)",
        "small.png: size mismatch: mask is 8x12 (HxW) but image small.png is 16x16",
        "nan.tif: image has 1 channel(s) of float32 but most images (5) have 1 of uint8",
    ]
    for fragment in expected_fragments:
        assert sum(m.startswith(fragment) for m in messages) == 1, (fragment, messages)
    assert len(messages) == len(expected_fragments)
    text = report.format()
    assert text.startswith(f"{len(messages)} problem(s) in 9 file(s):")
    for problem in report.problems:
        assert f"  {problem.path}\n" in text
        assert f"      fix: {problem.fix}" in text
    assert "fix: save masks as PNG (lossless) with one integer value per class" in text
    with pytest.raises(DataError) as info:
        load_dataset(root, num_classes=3)
    assert str(info.value) == f"{root}: dataset has problems\n{text}"
    assert len(info.value.problems) == len(messages)


def test_empty_folder_and_no_samples(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", _image())
    (tmp_path / "masks").mkdir()
    report = survey_dataset(open_dataset(tmp_path))
    assert _messages(report) == [
        "masks: folder has no image files (.png, .jpg, .jpeg, .tif, .tiff)",
        "a.png: no mask with stem 'a' in " + str(tmp_path / "masks"),
    ]
    empty = survey_dataset([])
    assert [(p.path, p.message) for p in empty.problems] == [
        ("dataset", "no image/mask pairs found")
    ]


def test_binary_0_255_masks_give_notice_and_two_classes(tmp_path: Path) -> None:
    binary = np.zeros((16, 16), np.uint8)
    binary[:4] = 255
    root = _folder(tmp_path, {"a": (_image(), binary), "b": (_image(), np.zeros_like(binary))})
    report = survey_dataset(open_dataset(root))
    assert report.ok
    assert report.encoding.num_classes == 2
    assert report.class_pixels.tolist() == [256 + 256 - 64, 64]
    assert report.notices[0] == "1 of 2 mask(s) stored as 0/255 were read as 0/1 (255 -> class 1)"
    _png(root / "images" / "c.png", _image())
    _png(root / "masks" / "c.png", _labels(n=4))
    mixed = survey_dataset(open_dataset(root))
    assert _messages(mixed) == [
        "c.png: mask has labels up to 3 while 1 other mask(s) are 0/255 binary"
    ]


def test_survey_reads_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path, {str(i): (_image(seed=i), _labels(seed=i)) for i in range(4)})
    calls: list[str] = []
    original = survey_module.read_image

    def counting(path: os.PathLike[str], *, page: int | None = None) -> np.ndarray:
        calls.append(Path(path).name)
        return original(path, page=page)

    monkeypatch.setattr(survey_module, "read_image", counting)
    assert survey_dataset(open_dataset(root)).ok
    assert len(calls) == 8
    assert len(set(zip(calls[::2], calls[1::2], strict=True))) == 4


# ------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------


def _noisy_transform(
    image: np.ndarray, mask: np.ndarray, weight: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    flip = bool(rng.integers(2))
    image = image + rng.normal(size=image.shape).astype(np.float32)
    if flip:
        image, mask = image[..., ::-1], mask[..., ::-1]
        weight = None if weight is None else weight[..., ::-1]
    return image, mask, weight


def test_dataset_items_are_deterministic_per_seed_epoch_index(tmp_path: Path) -> None:
    root = _folder(tmp_path, {str(i): (_image(seed=i), _labels(seed=i)) for i in range(3)})
    samples = open_dataset(root).samples

    def make() -> SegmentationDataset:
        return SegmentationDataset(
            samples, encoding=MaskEncoding(3), transform=_noisy_transform, seed=5
        )

    first, second = make(), make()
    a, b = first[1], second[1]
    assert torch.equal(a["image"], b["image"])
    assert torch.equal(a["mask"], b["mask"])
    assert not torch.equal(first[0]["image"], first[1]["image"])
    second.set_epoch(1)
    assert not torch.equal(second[1]["image"], a["image"])
    second.set_epoch(0)
    assert torch.equal(second[1]["image"], a["image"])
    plain = SegmentationDataset(samples, encoding=MaskEncoding(3))[1]
    assert set(plain) == {"image", "mask", "name", "index"}
    assert plain["name"] == "1"
    assert plain["mask"].dtype == torch.int64
    np.testing.assert_allclose(plain["image"].numpy()[0], _image(seed=1) / 255, rtol=1e-6)


def test_dataset_instances_and_cached_weights(tmp_path: Path) -> None:
    ids = np.zeros((16, 16), np.uint16)
    ids[2:5, 2:5] = 4
    ids[8:12, 9:13] = 9
    root = _folder(tmp_path, {"cell": (_image(), ids)})
    calls: list[int] = []

    def weight_fn(mask: np.ndarray, instances: np.ndarray | None) -> np.ndarray:
        assert instances is not None
        calls.append(int(instances.max()))
        return 1.0 + (instances > 0)

    dataset = load_dataset(root, instances=True, weight_fn=weight_fn)
    assert dataset.num_classes == 2
    item = dataset[0]
    np.testing.assert_array_equal(item["instances"].numpy(), ids)
    np.testing.assert_array_equal(item["mask"].numpy(), ids > 0)
    np.testing.assert_array_equal(item["weight"].numpy(), 1.0 + (ids > 0))
    dataset[0]
    assert calls == [9]
    assert dataset.report is not None
    assert "instance masks: 2-2 objects per mask" in dataset.report.notices
    # Objects 4 (3×3 = 9 px) and 9 (4×4 = 16 px): √(4·9/π) = 3.385 and √(4·16/π) = 4.514 px.
    np.testing.assert_allclose(dataset.report.object_diameters, [3.3851375, 4.5135167])
    with pytest.raises(ValueError, match="every sample needs a mask"):
        SegmentationDataset([Sample(root / "images" / "cell.png", None, "cell")])


def test_loaded_samples_are_cached_per_file_within_the_budget(tmp_path: Path, monkeypatch) -> None:
    """Each file is read once (the cache hands out copies, keyed by the file, so reordering the
    samples, as the training split does, keeps them right); a budget too small caches nothing."""
    import pixelwise.data.dataset as dataset_module

    root = _folder(tmp_path, {str(i): (_image(seed=i), _labels(seed=i)) for i in range(3)})
    samples = open_dataset(root).samples
    reads: list[str] = []
    real_read = dataset_module.read_image
    monkeypatch.setattr(
        dataset_module,
        "read_image",
        lambda path, **kw: reads.append(Path(path).parent.name) or real_read(path, **kw),
    )
    uncached = SegmentationDataset(samples, encoding=MaskEncoding(3), cache_bytes=0)
    expected = [uncached.load(i) for i in range(3)]
    assert len(reads) == 6  # image + mask of each, nothing kept
    uncached.load(0)
    assert len(reads) == 8
    cached = SegmentationDataset(samples, encoding=MaskEncoding(3))
    reads.clear()
    for _ in range(2):
        for i in range(3):
            loaded = cached.load(i)
            for got, want in zip(loaded, expected[i], strict=True):
                assert (got is None and want is None) or np.array_equal(got, want)
    assert sorted(reads) == ["images"] * 3 + ["masks"] * 3  # read once each
    loaded.image[:] = -1  # a copy: the cache is untouched
    assert np.array_equal(cached.load(2).image, expected[2].image)
    cached.samples = cached.samples[::-1]  # the split reorders: same files, same arrays
    assert np.array_equal(cached.load(0).mask, expected[2].mask)
    small = SegmentationDataset(samples, encoding=MaskEncoding(3), cache_bytes=expected[0].nbytes)
    reads.clear()
    for i in (0, 1, 0, 1):
        small.load(i)
    assert reads.count("images") == 3  # only the first fits the budget


# ------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------


def test_check_dataset_on_small_folder(tmp_path: Path) -> None:
    m1 = np.zeros((16, 16), np.uint8)
    m1[:4] = 1  # 64 px of class 1
    m2 = np.full((8, 12), 2, np.uint8)
    m2[0, :] = 9  # 12 ignored px
    root = _folder(
        tmp_path,
        {"a": (_image(), m1), "b": (_image(seed=3), m1), "c": (_image(8, 12), m2)},
    )
    text, problems = check_dataset(root, ignore_index=9)
    assert problems == []
    lines = text.splitlines()
    assert lines[0] == f"Dataset: {root} (layout: folder, split: all)"
    assert lines[1:5] == [
        "Samples: 3 image/mask pair(s)",
        "Image sizes (HxW): 16x16 (2), 8x12 (1)",
        "Channels: 1 (3)",
        "Dtype: uint8 (3)",
    ]
    assert "Classes: 3 (ignore_index: 9)" in lines
    total = 2 * 256 + 96  # 608 mask pixels
    table = "\n".join(lines)
    assert f"       0 {2 * 192:>14,} {100 * 384 / total:>6.1f}%" in table
    assert f"       1 {128:>14,} {100 * 128 / total:>6.1f}%" in table
    assert f"       2 {84:>14,} {100 * 84 / total:>6.1f}%" in table
    assert f"  ignore {12:>14,} {100 * 12 / total:>6.1f}%" in table
    assert lines[-1] == "Status: OK"
    _png(root / "images" / "d.png", _image())
    text, problems = check_dataset(root, ignore_index=9)
    assert [p.message for p in problems] == [f"no mask with stem 'd' in {root / 'masks'}"]
    assert text.endswith("Status: FAILED (1 problems)")
    assert "fix: add the mask or remove the image" in check_dataset(root, ignore_index=9)[0]
    text, problems = check_dataset(tmp_path / "missing")
    assert [p.message for p in problems] == ["dataset folder does not exist"]


# ------------------------------------------------------------------------------------------
# Real data (skipped without ../shared)
# ------------------------------------------------------------------------------------------


def test_real_isbi2012_pairs_map_to_two_classes(shared_data: Callable[[str], Path]) -> None:
    index = open_dataset(shared_data("isbi2012"))
    assert len(index.samples) == 30
    assert index.samples[0].image_path.parent.name == "image"
    report = survey_dataset(index)
    assert report.ok, report.format()
    assert report.encoding.num_classes == 2
    assert report.sizes == {(512, 512): 30}
    share = report.class_pixels[1] / report.class_pixels.sum()
    assert 0.73 < share < 0.83  # PROVENANCE: ~78% cell interior (255)
    mask = SegmentationDataset(index.samples, encoding=report.encoding)[0]["mask"]
    assert set(torch.unique(mask).tolist()) == {0, 1}


def test_real_camvid_void_is_ignore(shared_data: Callable[[str], Path]) -> None:
    index = open_dataset(shared_data("camvid"), split="val", ignore_index=11)
    assert len(index.samples) == 51
    report = survey_dataset(index)
    assert report.ok, report.format()
    assert report.encoding.num_classes == 11
    assert report.ignore_pixels > 0
    assert report.channels == {3: 51}
    assert report.sizes == {(360, 480): 51}


def test_real_nuclei_gowt1_instances(shared_data: Callable[[str], Path]) -> None:
    index = open_dataset(shared_data("nuclei") / "N2DH-GOWT1", instances=True)
    assert [(s.image_path.name, s.mask_path.name) for s in index.samples if s.mask_path][:2] == [
        ("t01.tif", "man_seg01.tif"),
        ("t21.tif", "man_seg21.tif"),
    ]
    report = survey_dataset(index)
    assert report.ok, report.format()
    item = SegmentationDataset(index.samples, encoding=report.encoding)[0]
    ids = item["instances"]
    assert ids.shape == (1024, 1024)
    assert 22 <= len(torch.unique(ids)) - 1 <= 31  # PROVENANCE: K 22-31 nuclei per frame
    assert torch.equal(item["mask"], (ids > 0).long())
